"""Collection on Ray (flywheel.cluster + collect.record_rollouts(pool=)): the serial run's store, episode by episode."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.cluster import ClusterConfig, PolicySource, RayEpisodePool
from flywheel.data import EpisodeStore
from flywheel.distill import collect

TASK = "PandaRig/PegInsert-v0"
ENV = {"cameras": ("wrist",), "image_size": 16, "privileged_state": True}
SEEDS = [3, 0, 2, 1]  # not sorted: the store follows this order
# the noisy operator cut short: episodes differ in actions and length, so equality means something
EXPERT = PolicySource(checkpoint="expert", expert_noise=1.0, expert_seed=123, env="collect", env_kwargs=ENV,
                      max_steps=12)


def episodes(store: EpisodeStore) -> list[dict]:
    out = []
    for i in range(store.num_episodes):
        r = store.record(i)
        ep = {k: store.read(k, r.start, r.end) for k in [*store.spec.observation_specs(), "action", "reward",
                                                          "intervention"]}
        out.append({"seed": r.extra["seed"], "success": r.success, "task": r.task, "source": r.source, **ep})
    return out


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert [e["seed"] for e in a] == [e["seed"] for e in b]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"seed {x['seed']}: {k}")


def collect_into(path, agent_fn, seeds, pool=None, max_steps=EXPERT.max_steps,
                 **kw) -> tuple[EpisodeStore, collect.CollectStats]:
    """Serial with ``agent_fn(env)``, or on ``pool`` (whose PolicySource holds max_steps)."""
    env = collect.make_env(TASK, **ENV)
    store = EpisodeStore(path, "a", spec=env.unwrapped.rig_spec)
    try:
        st = collect.record_rollouts(store, env, agent_fn(env) if pool is None else None, seeds, source="human",
                                     collection="c", max_steps=None if pool is not None else max_steps,
                                     progress=False, pool=pool, **kw)
    finally:
        env.close()
    return store, st


def expert(env):
    return collect.ExpertAgent(env, noise=EXPERT.expert_noise, seed=EXPERT.expert_seed)


def test_serial_collection_is_each_seeds_alone(tmp_path):
    """A seed's episode does not depend on what was collected before it (what lets workers split the seeds)."""
    a, _ = collect_into(tmp_path / "a", expert, SEEDS)
    b, _ = collect_into(tmp_path / "b", expert, SEEDS[::-1])
    ea, eb = episodes(a), episodes(b)
    assert_same(ea, eb[::-1])
    assert [e["seed"] for e in ea] == SEEDS
    assert len({len(e["action"]) for e in ea} | {float(e["action"].sum()) for e in ea}) > 2  # not all alike


def test_pool_refuses_what_workers_cannot_rebuild(tmp_path):
    class Intervener:
        def reset(self):
            pass

        def step(self, obs, action):
            return action, False

    class FakePool:
        src = EXPERT

    with pytest.raises(ValueError, match="interveners"):
        collect_into(tmp_path / "x", expert, [0], pool=FakePool(), intervener=Intervener())
    with pytest.raises(ValueError, match="checkpoint=.*specialist"):
        RayEpisodePool(PolicySource(checkpoint="/some/ckpt", specialist={"config": {}}), ClusterConfig(kind="ray"))


@pytest.mark.slow
def test_ray_collection_equals_serial_and_survives_a_dead_worker(ray_cluster, tmp_path):
    serial, st0 = collect_into(tmp_path / "serial", expert, SEEDS)
    ref = episodes(serial)

    class KillOnce(RayEpisodePool):
        """Kills a worker after the first episode came back: its episode in flight is lost and re-runs."""

        def run(self, jobs, **kw):
            inner, killed = kw.pop("on_result"), []

            def on_result(pool, rec):
                inner(pool, rec)
                if not killed:
                    killed.append(ray_cluster.kill(pool.workers[0], no_restart=True))
            return super().run(jobs, on_result=on_result, **kw)

    with KillOnce(EXPERT, ClusterConfig(kind="ray", workers=2)) as pool:
        store, st = collect_into(tmp_path / "ray", None, SEEDS[:3], pool=pool)
        assert pool.replaced >= 1
        # resume: the recorded seeds are skipped, the rest roll on the pool
        store.close()
        store, st2 = collect_into(tmp_path / "ray", None, SEEDS, pool=pool)
    assert (st.episodes, st2.skipped, st2.episodes) == (3, 3, 1)
    assert st.successes + st2.successes == st0.successes
    assert_same(episodes(store), ref)  # every seed committed once, in seed order, the serial run's arrays


@pytest.mark.slow
def test_ray_collection_with_a_checkpoint_policy_equals_serial(ray_cluster, tmp_path):
    import torch

    import policy
    from flywheel.evaluate import ChunkedPolicy
    from policy.config import PolicyConfig
    from policy.model import VLA
    from policy.tiny import make_tiny_backbone
    from rig.spec import default_spec

    bb = make_tiny_backbone("smolvlm", tmp_path / "bb")
    torch.manual_seed(0)
    VLA.from_backbone(PolicyConfig(backbone=str(bb), hidden_dim=32, num_tokens=4),
                      default_spec(16, ("wrist",))).save_pretrained(tmp_path / "ckpt")
    src = PolicySource(checkpoint=str(tmp_path / "ckpt"), execute=2, env="collect", env_kwargs=ENV, max_steps=5)

    def chunked(env):
        return ChunkedPolicy(policy.load(tmp_path / "ckpt", device="cpu"), env.unwrapped.instruction, execute=2)

    serial, _ = collect_into(tmp_path / "serial", chunked, SEEDS[:2], max_steps=src.max_steps)
    with RayEpisodePool(src, ClusterConfig(kind="ray", workers=2)) as pool:
        store, st = collect_into(tmp_path / "ray", None, SEEDS[:2], pool=pool)
    assert st.episodes == 2
    assert_same(episodes(store), episodes(serial))


def test_a_worker_rebuilds_a_specialist_and_rolls_its_episodes(tmp_path):
    """A specialist travels as its train() record; the worker's whole episodes equal the driver's own rollout."""
    from flywheel.cluster import EpisodeWorker
    from flywheel.distill.specialist import SpecialistConfig, load_agent, train

    info = train(TASK, SpecialistConfig(algo="scripted"), tmp_path)
    w = EpisodeWorker(PolicySource(specialist=info, env="collect", env_kwargs=ENV, max_steps=8))
    env = collect.make_env(TASK, **ENV)
    try:
        keys = list(env.unwrapped.rig_spec.observation_specs())
        got = w.collect(TASK, [1, 0], keys)
        agent = load_agent(TASK, info)
        agent.bind(env)
        for rec in got:
            ref = collect.roll_episode(env, agent, rec["seed"], keys, max_steps=8)
            ep = rec["episode"]
            assert (rec["task"], ep.seed, ep.steps, ep.success) == (TASK, ref.seed, ref.steps, ref.success)
            np.testing.assert_array_equal(ep.action, ref.action)
            for k in keys:
                np.testing.assert_array_equal(ep.obs[k], ref.obs[k])
    finally:
        env.close()
        w.close()
    assert [r["seed"] for r in got] == [1, 0] and got[0]["episode"].steps == 8
