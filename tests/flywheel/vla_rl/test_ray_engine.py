"""The rollout engine's waves: deterministic on their own, so Ray workers give the serial run's batch exactly."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import vla_rl_toy
from vla_rl_toy import make_vec

from flywheel.cluster import ClusterConfig
from flywheel.vla_rl.engine import RolloutBatch, RolloutEngine
from flywheel.vla_rl.policies import FlowChunkPolicy, GaussianChunkPolicy, StateFeatures

SEEDS = [11, 12, 13, 14]


def _policy(kind: str = "gaussian", seed: int = 0):
    torch.manual_seed(seed)
    enc = StateFeatures(["state/pos", "state/goal"], [2, 2])
    if kind == "flow":
        return FlowChunkPolicy(enc, 2, 2, hidden=(16,), value_hidden=(16,), steps=2)
    return GaussianChunkPolicy(enc, 1, 2, hidden=(16,), value_hidden=(16,), init_log_std=0.0)


def assert_same(a: RolloutBatch, b: RolloutBatch) -> None:
    for name in ("feats", "actions", "logp", "rewards", "episode", "group", "success", "ret", "length", "progress",
                 "terminal", "final_feats"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)
    assert (a.tasks, a.seeds, a.env_steps) == (b.tasks, b.seeds, b.env_steps)


class ListRecorder:
    """Stands in for StoreRecorder: what would go to the store, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def record(self, task, instruction, obs, actions, rewards, success, seed, group, interventions=None) -> int:
        self.calls.append((task, instruction, len(obs), [a.tolist() for a in actions], rewards, success, seed, group,
                           interventions))
        return len(self.calls)


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_a_wave_is_deterministic_on_its_own(kind):
    """The same seeds give the same batch whatever the global RNG did, and a wave run alone equals the
    same wave inside a bigger collect (what lets workers split the waves)."""
    pol = _policy(kind)
    eng = RolloutEngine(pol, make_vec, ["reach"], group_size=2, num_envs=4, exec_horizon=pol.horizon)
    torch.manual_seed(1)
    a = eng.collect(4, seeds=SEEDS, tasks=["reach"] * 4)
    torch.manual_seed(2)
    b = eng.collect(4, seeds=SEEDS, tasks=["reach"] * 4)
    assert_same(a, b)
    assert len({tuple(x) for x in a.actions[:, 0].tolist()}) == a.num_steps  # the noise differs per decision
    # the second wave (seeds 13, 14: groups 2, 3) alone
    alone = eng.collect(2, seeds=SEEDS[2:], tasks=["reach"] * 2)
    sub = a.select(a.group >= 2)
    assert_same(alone, replace(sub, group=sub.group - 2, env_steps=int(sub.length.sum())))
    # two engines with one seed: the same batches, call after call
    other = RolloutEngine(_policy(kind), make_vec, ["reach"], group_size=2, num_envs=4, exec_horizon=pol.horizon)
    fresh = RolloutEngine(_policy(kind), make_vec, ["reach"], group_size=2, num_envs=4, exec_horizon=pol.horizon)
    for _ in range(2):
        assert_same(other.collect(3), fresh.collect(3))


def test_waves_cut_groups_per_task():
    eng = RolloutEngine(_policy(), make_vec, ["a", "b"], group_size=2, num_envs=5)
    waves = eng.waves([1, 2, 3, 4, 5], ["a", "b", "a", "a", "b"], 2, False)
    assert [(w.task, w.seeds, w.groups) for w in waves] == [("a", (1, 3), (0, 2)), ("a", (4,), (3,)),
                                                           ("b", (2, 5), (1, 4))]
    assert len({w.noise_seed() for w in waves}) == 3
    assert waves[0].noise_seed() != eng.waves([1, 3], ["a", "a"], 2, True)[0].noise_seed()


def test_the_cli_validates_the_cluster_switch(tmp_path):
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    from flywheel.vla_rl.cli import register, run

    register()
    GlobalHydra.instance().clear()
    with initialize(version_base=None, config_path=None):
        cfg = compose("flywheel_vla_rl", overrides=["cluster.kind=slurm", f"out_dir={tmp_path}"])
    assert cfg.cluster.workers == 2
    with pytest.raises(ValueError, match="cluster.kind"):
        run(cfg)
    with pytest.raises(ValueError, match="cluster.workers"):
        RolloutEngine(_policy(), make_vec, ["reach"], cluster=ClusterConfig(kind="ray", workers=0))


@pytest.mark.parametrize("head,kind", [("mlp", "gaussian"), ("flow", "flow")])
def test_a_generalist_policy_survives_the_trip_to_a_worker(tmp_path, head, kind):
    """What a Ray worker gets (the module through the object store's pickler) acts as the driver's does."""
    pytest.importorskip("policy.compact")
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    import pickle

    from test_adapters import _obs, make_checkpoint

    from flywheel.vla_rl.checkpoint import build_policy

    model = make_checkpoint(tmp_path / "g0", head)
    pol = build_policy({"kind": kind, "hidden": [16], "value_hidden": [16]}, {"type": "checkpoint",
                                                                            "path": str(tmp_path / "g0")})
    copy_ = pickle.loads(cloudpickle.dumps(pol))
    obs = _obs(model.spec, 3)
    f, g = pol.features(obs), copy_.features(obs)
    assert torch.equal(f, g)
    with torch.no_grad():
        a = pol.act(f, generator=torch.Generator().manual_seed(1))[0]
        b = copy_.act(g, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ on Ray
def _engines(kind: str = "gaussian") -> tuple[RolloutEngine, RolloutEngine]:
    """(serial, ray) engines: 4 groups of 2 on 2 envs -> 4 waves."""
    pol = _policy(kind)
    kw = dict(group_size=2, num_envs=2, exec_horizon=pol.horizon, seed=5)
    serial = RolloutEngine(pol, make_vec, ["reach"], recorder=ListRecorder(), **kw)
    ray_eng = RolloutEngine(copy.deepcopy(pol), make_vec, ["reach"], recorder=ListRecorder(),
                            cluster=ClusterConfig(kind="ray", workers=2), **kw)
    return serial, ray_eng


@pytest.fixture
def toy_by_value(ray_cluster):
    """The toy env module travels by value (the workers do not have the tests on their path)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(vla_rl_toy)
    yield ray_cluster
    cloudpickle.unregister_pickle_by_value(vla_rl_toy)


@pytest.mark.slow
def test_ray_collect_equals_serial_batch_by_batch(toy_by_value):
    ray = toy_by_value
    serial, on_ray = _engines()
    try:
        for it in range(2):
            a, b = serial.collect(4), on_ray.collect(4)
            assert_same(a, b)
            assert b.num_episodes == 8 and len(set(b.seeds)) == 4
            assert on_ray.recorder.calls == serial.recorder.calls and len(serial.recorder.calls) == 8 * (it + 1)
            with torch.no_grad():  # an update: the next collect must broadcast the new weights
                for p, q in zip(serial.policy.parameters(), on_ray.policy.parameters(), strict=True):
                    p.add_(0.1)
                    q.add_(0.1)
        assert serial.env_steps == on_ray.env_steps
        assert_same(serial.collect(2, deterministic=True, seeds=[7, 8], group_size=1, count=False),
                    on_ray.collect(2, deterministic=True, seeds=[7, 8], group_size=1, count=False))
        infos = ray.get([w.info.remote() for w in on_ray.pool.workers])
        assert len({i["pid"] for i in infos}) == 2  # two worker processes did the work
        assert 3 in {i["version"] for i in infos} <= {2, 3}  # weights of the 3rd collect (one wave: one worker)
        assert on_ray.pool.replaced == 0
    finally:
        serial.close()
        on_ray.close()
    assert on_ray.pool is None


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_wave_reruns(toy_by_value):
    ray = toy_by_value
    serial, on_ray = _engines("flow")
    arrived: list[int] = []

    def kill_once(pool, k: int) -> None:
        arrived.append(k)
        if len(arrived) == 1:  # mid-collect: a worker dies, whatever it was running is lost
            ray.kill(pool.workers[0], no_restart=True)

    try:
        on_ray._pool().on_wave = kill_once
        a, b = serial.collect(4), on_ray.collect(4)
        assert on_ray.pool.replaced >= 1
        assert_same(a, b)
        assert sorted(arrived) == [0, 1, 2, 3]  # every wave counted exactly once
        assert sorted(b.seeds) == sorted(s for s in a.seeds) and b.num_episodes == 8
        assert on_ray.recorder.calls == serial.recorder.calls
    finally:
        serial.close()
        on_ray.close()


@pytest.mark.slow
def test_flywheel_vla_rl_on_ray_trains_as_the_serial_run(toy_by_value, tmp_path):
    """``cluster.kind=ray`` end to end: the same evaluations and final policy as ``cluster.kind=local``."""
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    from flywheel.vla_rl.checkpoint import load_policy
    from flywheel.vla_rl.cli import register, run

    register()
    res = {}
    for kind in ("local", "ray"):
        GlobalHydra.instance().clear()
        with initialize(version_base=None, config_path=None):
            cfg = compose("flywheel_vla_rl", overrides=[
                "env.factory=vla_rl_toy:make_vec", "env.state_keys=[state/pos,state/goal]", "head.action_dim=2",
                "head.hidden=[16]", "head.value_hidden=[16]", "tasks=[reach]", "num_envs=4", "algo=grpo",
                "algo.groups_per_iter=4", "algo.group_size=2", "env_steps=150", "train.eval_every=100",
                "train.eval_episodes=4", "train.final_eval_episodes=4", "train.progress=false",
                f"out_dir={tmp_path / kind}", f"cluster.kind={kind}", "cluster.workers=2"])
        res[kind] = run(cfg)
    assert res["ray"]["iterations"] >= 2 and res["ray"]["evals"] == res["local"]["evals"] and res["ray"]["env_steps"] == res["local"]["env_steps"]
    a, b = (load_policy(tmp_path / k / "policy").state_dict() for k in ("local", "ray"))
    assert all(torch.equal(a[k], b[k]) for k in a)
