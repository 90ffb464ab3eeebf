"""What a smaller low-dimensional chunk costs, and what it saves when a chunk is damaged.

For each ``lowdim_chunk`` (steps per chunk of the state/action/reward/... arrays) it writes
the same episodes (low-dimensional keys only: images are one chunk per step whatever this
setting) and measures: commit time per episode, read time per episode (every key, through
``Episode.to_dict``), one whole-array read, files and bytes on disk, and the episodes made
unreadable by one damaged chunk (mean and worst over all chunks of ``action``). CPU time
is reported next to wall time: the machine is shared.

    .venv/bin/python benchmarks/data_damage.py [--episodes 200] [--steps 150] [--chunks 4096 1024 256 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from flywheel.data import EpisodeStore
from rig.spec import RigSpec


def episodes(spec: RigSpec, n: int, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(steps // 2, steps * 3 // 2))
        ep = {k: rng.standard_normal((length, *s.shape)).astype(s.dtype) for k, s in spec.observation_specs().items()}
        ep["action"] = rng.uniform(-1, 1, (length, spec.action.dim)).astype(np.float32)
        ep["reward"] = (np.arange(length) == length - 1).astype(np.float32)
        ep["intervention"] = rng.random(length) < 0.1
        out.append(ep)
    return out


def run(chunk: int, eps: list[dict], spec: RigSpec, root: Path) -> dict[str, float]:
    path = root / f"c{chunk}.zarr"
    w0, c0 = time.perf_counter(), time.process_time()
    with EpisodeStore(path, "w", spec, lowdim_chunk=chunk) as s:
        for ep in eps:
            s.add_episode(ep, task="bench", source="rl")
    write_wall, write_cpu = time.perf_counter() - w0, time.process_time() - c0
    s = EpisodeStore(path)
    r0, rc0 = time.perf_counter(), time.process_time()
    for e in s:
        e.to_dict()
    read_wall, read_cpu = time.perf_counter() - r0, time.process_time() - rc0
    a0, ac0 = time.perf_counter(), time.process_time()
    for k in s.keys:
        s.read(k, 0, s.num_steps)
    whole, whole_cpu = time.perf_counter() - a0, time.process_time() - ac0
    files = [f for f in path.rglob("*") if f.is_file()]
    lost = [len(s.episodes_at(i * chunk, min((i + 1) * chunk, s.num_steps))) for i in range(-(-s.num_steps // chunk))]
    n = len(eps)
    return {
        "lowdim_chunk": chunk,
        "commit_ms_per_episode": 1e3 * write_wall / n, "commit_cpu_ms_per_episode": 1e3 * write_cpu / n,
        "read_ms_per_episode": 1e3 * read_wall / n, "read_cpu_ms_per_episode": 1e3 * read_cpu / n,
        "whole_array_read_ms": 1e3 * whole, "whole_array_read_cpu_ms": 1e3 * whole_cpu, "files": len(files),
        "mib_on_disk": sum(f.stat().st_size for f in files) / 2**20,
        "episodes_lost_per_damaged_chunk_mean": float(np.mean(lost)), "episodes_lost_worst": int(max(lost)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=150, help="mean steps per episode")
    ap.add_argument("--chunks", type=int, nargs="*", default=[4096, 1024, 256, 64])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    spec = RigSpec(cameras=())
    eps = episodes(spec, a.episodes, a.steps)
    root = Path(tempfile.mkdtemp(prefix="data_damage_"))
    try:
        rows = [run(c, eps, spec, root) for c in a.chunks]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = sum(len(e["action"]) for e in eps)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{a.episodes} episodes, {total} steps, low-dimensional keys only")
    print("| steps/chunk | commit ms/ep (CPU) | read ms/ep (CPU) | whole-store read ms (CPU) | files | MiB | "
          "episodes lost per damaged chunk (mean / worst) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['lowdim_chunk']} | {r['commit_ms_per_episode']:.1f} ({r['commit_cpu_ms_per_episode']:.1f}) | "
              f"{r['read_ms_per_episode']:.1f} ({r['read_cpu_ms_per_episode']:.1f}) | {r['whole_array_read_ms']:.0f} "
              f"({r['whole_array_read_cpu_ms']:.0f}) | "
              f"{r['files']} | {r['mib_on_disk']:.1f} | {r['episodes_lost_per_damaged_chunk_mean']:.1f} / "
              f"{r['episodes_lost_worst']} |")


if __name__ == "__main__":
    main()
