"""Collection throughput: episodes/min serially vs on Ray workers, at the G0 setting (issue #20).

The scripted operator at noise 1 (human-like) on ``--task`` with two 128 px cameras
(front + wrist), ``--episodes`` seeds recorded into an episode store: once serially
(one process rolls and writes) and once on a pool of ``--workers`` Ray workers
(:mod:`flywheel.cluster`: the workers roll, this process writes, in seed order). The
two stores are checked equal episode by episode (every action, reward and image;
the script exits otherwise). Reported: episodes/min of the run proper, the pool's
start-up (Ray up + workers importing the stack and building their env), the
per-episode cost and the load average.

    .venv/bin/python benchmarks/cluster_collect.py                  # 16 episodes, a few minutes
    .venv/bin/python benchmarks/cluster_collect.py --episodes 4 --image-size 32   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stores_equal(a, b) -> None:
    if a.num_episodes != b.num_episodes:
        raise SystemExit(f"{a.num_episodes} serial episodes, {b.num_episodes} on Ray")
    keys = [*a.spec.observation_specs(), "action", "reward", "intervention"]
    for i in range(a.num_episodes):
        ra, rb = a.record(i), b.record(i)
        if (ra.extra, ra.success, ra.length) != (rb.extra, rb.success, rb.length):
            raise SystemExit(f"episode {i}: {ra.extra, ra.success, ra.length} != {rb.extra, rb.success, rb.length}")
        for k in keys:
            if not np.array_equal(a.read(k, ra.start, ra.end), b.read(k, rb.start, rb.end)):
                raise SystemExit(f"episode {i} (seed {ra.extra['seed']}): {k} differs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="PandaRig/LiftCube-Red-v0")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=None, help="default: the env's own limit")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import ray
    import torch

    torch.set_num_threads(1)
    from flywheel.cluster import ClusterConfig, PolicySource, RayEpisodePool
    from flywheel.data import EpisodeStore
    from flywheel.distill import collect

    kw = {"cameras": ("front", "wrist"), "image_size": args.image_size, "privileged_state": True}
    seeds = list(range(args.episodes))
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        env = collect.make_env(args.task, **kw)
        spec = env.unwrapped.rig_spec

        def run(name: str, agent, pool) -> tuple[EpisodeStore, float, collect.CollectStats]:
            store = EpisodeStore(Path(tmp) / name, "a", spec=spec)
            t0 = time.perf_counter()
            st = collect.record_rollouts(store, env, agent, seeds, source="human", collection="bench",
                                         max_steps=None if pool else args.max_steps, progress=False, pool=pool)
            return store, time.perf_counter() - t0, st

        serial, serial_s, st = run("serial", collect.ExpertAgent(env, noise=args.noise), None)
        src = PolicySource(checkpoint="expert", expert_noise=args.noise, env="collect", env_kwargs=kw,
                           max_steps=args.max_steps)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        with RayEpisodePool(src, ClusterConfig(kind="ray", workers=args.workers)) as pool:
            # warm up: each worker builds its env (seeds outside the measured ones, into a scratch store)
            with EpisodeStore(Path(tmp) / "warm", "a", spec=spec) as warm:
                collect.record_rollouts(warm, env, None, [10**6 + i for i in range(args.workers)], source="human",
                                        collection="warm", progress=False, pool=pool)
            start_s = time.perf_counter() - t0
            on_ray, ray_s, _ = run("ray", None, pool)
        ray.shutdown()
        env.close()
        stores_equal(serial, on_ray)
        steps = st.steps
    res = {"task": args.task, "episodes": args.episodes, "steps": steps, "successes": st.successes,
           "image_size": args.image_size, "workers": args.workers, "serial_s": serial_s, "ray_s": ray_s,
           "start_s": start_s, "serial_eps_per_min": 60 * args.episodes / serial_s,
           "ray_eps_per_min": 60 * args.episodes / ray_s, "per_episode_s": serial_s / args.episodes,
           "load_before": load0, "load_after": os.getloadavg(), "cores": os.cpu_count()}
    print(f"\n| collection ({args.episodes} episodes, {steps} steps, 2 x {args.image_size} px) | episodes/min | wall s |")
    print("| --- | --- | --- |")
    print(f"| serial (1 process) | {res['serial_eps_per_min']:.1f} | {serial_s:.1f} |")
    print(f"| Ray, {args.workers} workers (driver writes) | {res['ray_eps_per_min']:.1f} | {ray_s:.1f} "
          f"(+ {start_s:.1f} start-up) |")
    print(f"\nper-episode cost {res['per_episode_s']:.2f} s serially ({steps / args.episodes:.0f} steps); stores "
          f"equal episode by episode; load average before {load0}, after {res['load_after']}; {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
