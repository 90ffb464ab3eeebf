"""Rollouts on Ray (flywheel.cluster): episode-by-episode equality with the serial run, dead workers replaced."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from flywheel.cluster import ClusterConfig, PolicySource, RayEpisodePool, run_seeded
from flywheel.evaluate import EvalConfig, run_eval

TASK = "PandaRig/PegInsert-v0"
SEEDS = list(range(1_000_000, 1_000_006))
# a noisy expert cut short: episodes differ in steps, return and success, so equality means something
SRC = PolicySource(checkpoint="expert", expert_noise=1.0, env="sim", env_kwargs={"cameras": []}, max_steps=25)


def test_cluster_config_validates():
    ClusterConfig().validate()
    for bad, field in ((ClusterConfig(kind="slurm"), "cluster.kind"), (ClusterConfig(workers=0), "cluster.workers"),
                       (ClusterConfig(max_worker_restarts=-1), "cluster.max_worker_restarts")):
        with pytest.raises(ValueError, match=field):
            bad.validate()
    with pytest.raises(ValueError, match="cluster.kind"):
        run_eval(OmegaConf.structured(EvalConfig(episodes=1, cluster=ClusterConfig(kind="slurm"))))


def serial_records() -> dict:
    from flywheel.cluster import episode_record, make_agent, make_env

    env = make_env(SRC, TASK)
    try:
        eps = run_seeded(env, make_agent(SRC, None, env), SEEDS, max_steps=SRC.max_steps)
    finally:
        env.close()
    return {(TASK, e.seed): episode_record(TASK, e) for e in eps}


def test_episodes_are_their_seeds_alone():
    """The serial run gives the same episode whatever ran before it (what lets workers split the seeds)."""
    full = serial_records()
    from flywheel.cluster import episode_record, make_agent, make_env

    env = make_env(SRC, TASK)
    try:
        rev = run_seeded(env, make_agent(SRC, None, env), SEEDS[::-1], max_steps=SRC.max_steps)
    finally:
        env.close()
    assert {(TASK, e.seed): episode_record(TASK, e) for e in rev} == full
    assert len({r["steps"] for r in full.values()} | {r["ret"] for r in full.values()}) > 2  # not all alike


@pytest.mark.slow
def test_ray_eval_equals_serial_episode_by_episode(ray_cluster, tmp_path):
    serial = serial_records()
    with RayEpisodePool(SRC, ClusterConfig(kind="ray", workers=2)) as pool:
        got = pool.run([(TASK, s) for s in SEEDS])
        pids = ray_cluster.get([w.info.remote() for w in pool.workers])
    assert got == serial
    assert len({p["pid"] for p in pids}) == 2  # two worker processes did the work

    # flywheel-eval with the switch: the same per-episode successes as the serial flywheel-eval
    def cfg(kind: str) -> object:
        return OmegaConf.structured(EvalConfig(policy="expert", tasks=[TASK], episodes=4, cameras=[], expert_noise=1.0,
                                               max_steps=25, out=str(tmp_path / f"{kind}.json"), progress=False,
                                               cluster=ClusterConfig(kind=kind, workers=2),
                                               tensorboard=str(tmp_path / f"tb_{kind}")))
    a, b = run_eval(cfg("local"))[TASK], run_eval(cfg("ray"))[TASK]
    assert b.success_per_episode == a.success_per_episode and b.seeds == a.seeds
    assert (b.mean_steps, b.mean_return) == pytest.approx((a.mean_steps, a.mean_return), abs=1e-9)
    # TensorBoard across the workers: one running point per episode, ending at the result; serial: the total
    ray_tb, local_tb = scalars(tmp_path / "tb_ray"), scalars(tmp_path / "tb_local")
    rate = ray_tb[f"eval/{TASK}/success_rate"]
    assert [s for s, _ in rate] == [1, 2, 3, 4] and rate[-1][1] == pytest.approx(b.rate)
    assert len(ray_tb["eval/episodes_per_min"]) == 4 and all(v > 0 for _, v in ray_tb["eval/episodes_per_min"])
    assert ray_tb["eval/workers_replaced"][-1][1] == 0
    assert local_tb[f"eval/{TASK}/success_rate"] == [(4, pytest.approx(a.rate))]


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_nothing_is_double_counted(ray_cluster):
    serial = serial_records()
    seen: list = []

    def kill_once(pool: RayEpisodePool, rec: dict) -> None:
        seen.append((rec["task"], rec["seed"]))
        if len(seen) == 1:  # mid-run: one worker dies, whatever it was running is lost
            for w in pool.workers:
                ray_cluster.kill(w, no_restart=True)
                break

    with RayEpisodePool(SRC, ClusterConfig(kind="ray", workers=2)) as pool:
        got = pool.run([(TASK, s) for s in SEEDS], on_result=kill_once)
        assert pool.replaced >= 1
    assert got == serial
    assert sorted(seen) == sorted(serial)  # every episode reported exactly once


def test_a_worker_rebuilds_the_policy_from_the_object_store_files(tmp_path):
    """What goes in the object store (the checkpoint's files) is the policy: same actions as policy.load."""
    import numpy as np
    import torch

    import policy
    from flywheel.cluster import EpisodeWorker, checkpoint_files
    from policy.config import PolicyConfig
    from policy.model import VLA
    from policy.tiny import make_tiny_backbone
    from rig.spec import default_spec

    bb = make_tiny_backbone("smolvlm", tmp_path / "bb")
    torch.manual_seed(0)
    VLA.from_backbone(PolicyConfig(backbone=str(bb), hidden_dim=32, num_tokens=4), default_spec(32)).save_pretrained(
        tmp_path / "ckpt")
    files = checkpoint_files(tmp_path / "ckpt")
    assert "policy_config.json" in files and "model.safetensors" in files
    w = EpisodeWorker(PolicySource(checkpoint="/nonexistent/on/the/worker", device="cpu"), files)
    try:
        ref = policy.load(tmp_path / "ckpt", device="cpu")
        rng = np.random.default_rng(0)
        obs = {k: rng.normal(size=s.shape).astype(np.float32) for k, s in ref.spec.state_specs().items()}
        for c in ref.spec.cameras:
            obs[f"images/{c.name}"] = rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
        obs["instruction"] = "insert the peg"
        np.testing.assert_allclose(w.policy.infer(obs)["actions"], ref.infer(obs)["actions"], atol=1e-6)
    finally:
        w.close()
    with pytest.raises(FileNotFoundError, match="policy_config.json"):
        checkpoint_files(tmp_path)


def test_iterate_and_distill_evaluations_take_the_switch(tmp_path, monkeypatch):
    import flywheel.cluster as cluster_mod
    from flywheel.distill.generalist import GeneralistConfig, evaluate
    from flywheel.iterate import IterateConfig, Iteration

    cfg = OmegaConf.structured(IterateConfig(workdir=str(tmp_path), cluster=ClusterConfig(kind="ray", workers=3)))
    assert Iteration(cfg)._cluster() == ClusterConfig(kind="ray", workers=3)
    cfg.cluster.kind = "slurm"
    with pytest.raises(ValueError, match="cluster.kind"):
        Iteration(cfg)._cluster()

    seen = {}

    def fake(tasks, src, episodes, **kw):
        seen.update(tasks=tasks, src=src, episodes=episodes, **kw)
        return {}

    monkeypatch.setattr(cluster_mod, "evaluate_tasks", fake)
    g = GeneralistConfig(cameras=["front"], image_size=32, execute=2)
    evaluate(tmp_path / "ckpt", [TASK], 7, g, seed=5, device="cpu", cluster=ClusterConfig(kind="ray"))
    src = seen["src"]
    assert (seen["tasks"], seen["episodes"], seen["seed"]) == ([TASK], 7, 5)
    assert (src.checkpoint, src.execute, src.env, src.env_kwargs) == (str(tmp_path / "ckpt"), 2, "collect",
                                                                      {"cameras": ("front",), "image_size": 32})
