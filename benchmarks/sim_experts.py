"""Scripted-expert success rates per sim task: noise 0 (near perfect) and human-like noise.

    .venv/bin/python benchmarks/sim_experts.py                 # 100 seeds per task and noise level
    .venv/bin/python benchmarks/sim_experts.py --quick         # 10 seeds
    .venv/bin/python benchmarks/sim_experts.py --seeds 50 --noise 0 1.0 --tasks PegInsert

Prints a markdown table (success rate, mean episode length); ``--out`` also writes it.
Goals: >= 98 % at noise 0; between 60 % and 90 % at the human-like noise (1.0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sim  # noqa: E402
from benchmarks.tables import markdown_table, publish  # noqa: E402


def run(task_id: str, noise: float, seeds: int) -> tuple[float, float, float]:
    env = sim.make(task_id, cameras=())
    ex = sim.expert(env, noise=noise, seed=12345)
    ok, lens = [], []
    t0 = time.perf_counter()
    steps = 0
    try:
        for s in range(seeds):
            obs, info = env.reset(seed=1000 + s)
            ex.reset()
            n = 0
            while True:
                obs, r, term, trunc, info = env.step(ex.act(obs))
                n += 1
                if term or trunc:
                    break
            ok.append(bool(info["is_success"]))
            lens.append(n)
            steps += n
    finally:
        env.close()
    return float(np.mean(ok)), float(np.mean(lens)), steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="10 seeds per task")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--tasks", nargs="*", default=None, help="task ids or short names (default: all)")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    seeds = 10 if args.quick else args.seeds
    tasks = args.tasks or sim.list_tasks()
    rows = []
    for task_id in tqdm(tasks, desc="tasks"):
        info = sim.task_info(task_id)
        cells = []
        for noise in args.noise:
            rate, length, sps = run(info["task_id"], noise, seeds)
            cells.append((rate, length))
            tqdm.write(f"{info['task_id']} noise={noise}: success {rate:.0%}, mean length {length:.1f}, "
                       f"{sps:.0f} steps/s")
        rows.append((info, cells))
    table = markdown_table(["task", "group", *(f"noise {n}: success (mean len)" for n in args.noise)],
                           [[info["task_id"], info["group"], *(f"{r:.0%} ({n:.0f})" for r, n in cells)]
                            for info, cells in rows])
    publish(table, args.out, f"{seeds} seeds per task and noise level")
    return 0


if __name__ == "__main__":
    sys.exit(main())
