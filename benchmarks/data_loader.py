"""Loader throughput: samples per second at batch 256 with two 128x128 cameras, on 2 worker processes.

Builds a store of ``--episodes`` x ``--steps`` steps (camera-like JPEG frames, every
state key), then times ``EpisodeDataset`` + ``make_loader`` over ``--batches``
batches: the first pass decodes every image (cold), the second hits the
per-worker decoded-frame cache (warm). Also prints the store's compression ratio.

    .venv/bin/python benchmarks/data_loader.py [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from flywheel.data import EpisodeStore
from flywheel.data.loader import EpisodeDataset, make_loader
from rig.spec import default_spec


def build_store(path: str, episodes: int, steps: int, size: int = 128) -> EpisodeStore:
    spec = default_spec(size)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.stack([90 + 60 * xx / size, 80 + 50 * yy / size, 70 + 30 * (xx + yy) / (2 * size)], -1)
    tex = rng.normal(0, 10, size=(size, size, 1)).astype(np.float32)
    store = EpisodeStore(path, "w", spec)
    for e in range(episodes):
        ep = {k: rng.standard_normal((steps, *s.shape)).astype(np.float32) for k, s in spec.state_specs().items()}
        t = np.arange(steps, dtype=np.float32)[:, None, None, None]
        for i, cam in enumerate(spec.camera_names):
            img = base[None] + tex[None] + 40 * np.sin(t / 7 + i + e + xx[None, ..., None] / 20)
            ep[f"images/{cam}"] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        ep["action"] = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
        store.add_episode(ep, task=f"task{e % 3}", source=["human", "rl"][e % 2], success=bool(e % 3))
    return store


def time_loader(ds: EpisodeDataset, batch: int, workers: int, batches: int) -> list[float]:
    loader = make_loader(ds, batch, num_workers=workers, persistent_workers=workers > 0, seed=0)
    rates = []
    for _ in range(2):  # cold (decode) then warm (cache)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        for i, b in enumerate(loader):
            n += len(b["actions"])
            if i + 1 >= batches:
                break
        rates.append(n / (time.perf_counter() - t0))
        rates.append(n / max(time.process_time() - c0, 1e-9))  # per CPU second (meaningful with 0 workers)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--decode-threads", type=int, default=2, help="decode threads when workers=0")
    ap.add_argument("--n-obs", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.steps, args.batches = 12, 50, 2
    tmp = tempfile.mkdtemp(prefix="bench_loader_")
    try:
        t0 = time.perf_counter()
        store = build_store(os.path.join(tmp, "s.zarr"), args.episodes, args.steps)
        build_s = time.perf_counter() - t0
        print(json.dumps({"store_steps": store.num_steps, "build_s": round(build_s, 1),
                          "MiB_on_disk": round(store.nbytes_stored() / 2**20, 1),
                          "compression_ratio": round(store.nbytes_raw() / store.nbytes_stored(), 1)}))
        store.close()
        for n_obs in args.n_obs:
            for w in args.workers:
                threads = args.decode_threads if w == 0 else 0
                ds = EpisodeDataset(os.path.join(tmp, "s.zarr"), n_obs_steps=n_obs, horizon=8,
                                    decode_threads=threads)
                cold, cold_cpu, warm, warm_cpu = time_loader(ds, args.batch, w, args.batches)
                row = {"n_obs_steps": n_obs, "workers": w, "decode_threads": threads, "batch": args.batch,
                       "cold_samples_per_s": round(cold), "warm_samples_per_s": round(warm)}
                if w == 0:  # in-process: all the CPU time is counted
                    row.update(cold_per_cpu_s=round(cold_cpu), warm_per_cpu_s=round(warm_cpu))
                print(json.dumps(row))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
