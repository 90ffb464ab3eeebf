"""Env steps per second of the sim twin, side by side with gym-hil's PandaPickCube.

    .venv/bin/python benchmarks/sim_speed.py            # 300 steps per cell
    .venv/bin/python benchmarks/sim_speed.py --quick    # 60 steps per cell

Cells: state only and two 128x128 cameras (front + wrist), single env and
vectorised (gymnasium SyncVectorEnv / AsyncVectorEnv, ``--num-envs``, default 2),
for ours (``PandaRig/LiftCube-Red-v0``, primitive and mesh visuals) and gym-hil
(``gym_hil/PandaPickCubeBase-v0``, ``image_obs`` False/True; a benchmark-only
use). Both step 10 Hz control over 2 ms physics (50 substeps, a Python
controller every substep). Random actions (gym-hil's xyz scaled to its 1 cm
step); episodes reset when they end. A cell stops after ``--cell-seconds``
(30) and reports the rate over the steps it did. Prints a markdown table;
``--out`` writes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import sim  # noqa: E402
from benchmarks.tables import markdown_table, publish  # noqa: E402

OURS = "PandaRig/LiftCube-Red-v0"
HIL = "gym_hil/PandaPickCubeBase-v0"


def _hil_kwargs(cams: bool) -> dict:
    return {"image_obs": cams, "random_block_position": True}


def _ours_kwargs(cams: bool, visual: str) -> dict:
    return {"cameras": ("front", "wrist") if cams else (), "image_size": 128, "visual": visual}


def _scale(action: np.ndarray, hil: bool) -> np.ndarray:
    if hil:
        action = action.copy()
        action[..., :3] *= 0.01  # gym-hil's base env takes metres per step
    return action


CELL_SECONDS = 30.0  # a cell stops early after this long (gym-hil's camera cells are slow)


def bench_single(make, hil: bool, steps: int) -> float:
    env = make()
    rng = np.random.default_rng(0)
    try:
        env.reset(seed=0)
        for _ in range(5):  # warm up (renderer contexts, caches)
            env.step(_scale(rng.uniform(-1, 1, 7).astype(np.float32), hil))
        t0 = time.perf_counter()
        done = 0
        while done < steps and time.perf_counter() - t0 < CELL_SECONDS:
            _, _, term, trunc, _ = env.step(_scale(rng.uniform(-1, 1, 7).astype(np.float32), hil))
            done += 1
            if term or trunc:
                env.reset()
        return done / (time.perf_counter() - t0)
    finally:
        env.close()


def bench_vec(env_id: str, kwargs: dict, hil: bool, mode: str, n: int, steps: int) -> float:
    if hil:  # spawned workers: forking after EGL was initialised deadlocks on render
        vk = {"context": "spawn"} if mode == "async" else {}
        venv = gym.make_vec(env_id, num_envs=n, vectorization_mode=mode, vector_kwargs=vk, **kwargs)
    else:
        venv = sim.make_vec(env_id, num_envs=n, vectorization_mode=mode, **kwargs)
    rng = np.random.default_rng(0)
    try:
        venv.reset(seed=0)
        for _ in range(3):
            venv.step(_scale(rng.uniform(-1, 1, (n, 7)).astype(np.float32), hil))
        t0 = time.perf_counter()
        done = 0
        while done < steps and time.perf_counter() - t0 < CELL_SECONDS:
            venv.step(_scale(rng.uniform(-1, 1, (n, 7)).astype(np.float32), hil))
            done += n
        return done / (time.perf_counter() - t0)
    finally:
        venv.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="60 steps per cell")
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cell-seconds", type=float, default=CELL_SECONDS,
                    help="stop a cell early after this many seconds (rate from the steps done)")
    args = ap.parse_args(argv)
    globals()["CELL_SECONDS"] = args.cell_seconds
    steps = 60 if args.quick else args.steps
    n = args.num_envs
    import gym_hil  # noqa: F401  (registers the gym_hil/* ids)

    sim.list_tasks()  # registers PandaRig/*
    configs = [
        ("ours (primitive visuals)", OURS, False, "primitive"),
        ("ours (gym-hil meshes)", OURS, False, "mesh"),
        ("gym-hil PandaPickCube", HIL, True, None),
    ]
    rows = []
    for label, env_id, hil, visual in configs:
        for cams in (False, True):
            if visual == "mesh" and not cams:
                continue  # visuals only matter when rendering
            kw = _hil_kwargs(cams) if hil else _ours_kwargs(cams, visual)
            single = bench_single(lambda env_id=env_id, kw=kw: gym.make(env_id, **kw), hil, steps)
            sync = bench_vec(env_id, kw, hil, "sync", n, steps)
            asyn = bench_vec(env_id, kw, hil, "async", n, steps)
            load = os.getloadavg()[0]
            cam = "2 x 128x128 rgb" if cams else "state only"
            rows.append((label, cam, single, sync, asyn, load))
            print(f"{label:28s} {cam:16s} single {single:7.1f}  sync x{n} {sync:7.1f}  async x{n} {asyn:7.1f}"
                  f"  (load {load:.1f})", flush=True)
    def fmt(v: float) -> str:
        return f"{v:.0f}" if v >= 10 else f"{v:.1f}"

    table = markdown_table(
        ["env", "observation", "single (steps/s)", f"SyncVectorEnv x{n}", f"AsyncVectorEnv x{n}", "load avg"],
        [[a, b, fmt(c), fmt(d), fmt(e), f"{f:.1f}"] for a, b, c, d, e, f in rows])
    publish(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
