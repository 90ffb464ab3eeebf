"""Recording throughput of the episode store: two 640x480 rgb cameras at 30 fps plus 500 Hz state.

Drives the recorder core (the recorder-node minus DDS) with synthetic streams in
simulated time: state samples at 500 Hz, camera frames at 30 fps, control ticks at
30 Hz (so every frame is recorded at full resolution, JPEG q95). Modes:

* paced at ``k`` x real time (``--speeds 1 3``): the producer sleeps to keep pace, the
  writer thread must keep up through the bounded queue; dropped steps are counted;
* ``max``: the producer waits whenever the queue is full (no drops by construction):
  the sustained real-time factor (recorded seconds per wall second).

Also reports the compression ratio of the written store against raw arrays, and the CPU
time used per recorded second (all threads), since a shared machine's wall-clock rate
depends on the other jobs; ``rtf_2_idle_cores_from_cpu`` = 2 / that.

    .venv/bin/python benchmarks/data_recording.py [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from flywheel.data import EpisodeStore
from flywheel.data.recorder import Recorder
from rig.spec import ActionSpec, CameraSpec, RigSpec


def frames(n: int, h: int = 480, w: int = 640, seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames: smooth shading, a few moving objects, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([90 + 60 * xx / w, 80 + 50 * yy / h, 70 + 30 * (xx + yy) / (w + h)], -1)
    texture = rng.normal(0, 12, size=(h, w, 1)).astype(np.float32)
    out = []
    for i in range(n):
        img = base + texture
        for k in range(3):
            cx, cy = (w * (0.3 + 0.2 * k) + 40 * np.sin(i / 5 + k)), h * (0.4 + 0.1 * k)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (30 + 10 * k) ** 2
            img[mask] = [200 - 50 * k, 60 + 40 * k, 50 + 70 * k]
        img += rng.normal(0, 3, size=img.shape).astype(np.float32)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def run(store_path: str, seconds: float, speed: float | None, imgs: list[np.ndarray], queue_size: int) -> dict:
    spec = RigSpec(cameras=(CameraSpec("front", 480, 640), CameraSpec("wrist", 480, 640)),
                   action=ActionSpec(control_hz=30.0))
    shutil.rmtree(store_path, ignore_errors=True)
    store = EpisodeStore(store_path, "w", spec)
    rec = Recorder(store, queue_size=queue_size, episode_meta={"task": "bench"}).connect()
    q0 = np.array([1.0, 0.0, 0.0, 0.0])
    state_dt, tick_dt = 1 / 500, 1 / 30
    n_state = int(seconds * 500)
    rec.start_episode()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    next_tick, frame_i, waited = 0.0, 0, 0.0
    for i in range(n_state):
        t = i * state_dt
        if speed is not None:  # keep pace with k x real time
            lag = t / speed - (time.perf_counter() - wall0)
            if lag > 0:
                time.sleep(lag)
        x = np.array([0.4 + 0.05 * np.sin(t), 0.0, 0.3])
        rec.push("joint_states", t, (np.full(7, t), np.zeros(7)))
        rec.push("ee_pose", t, (x, q0))
        rec.push("ee_wrench", t, np.zeros(6))
        rec.push("gripper", t, 0.04)
        rec.push("command", t, (x + 0.005, q0))
        if t + 1e-9 >= next_tick:
            img = imgs[frame_i % len(imgs)]
            rec.push("images/front", t, img)
            rec.push("images/wrist", t, imgs[(frame_i + 7) % len(imgs)])
            frame_i += 1
            if speed is None:
                w0 = time.perf_counter()
                while rec.queue_depth >= queue_size - 1:
                    time.sleep(0.001)
                waited += time.perf_counter() - w0
            rec.tick(t)
            next_tick += tick_dt
    rec.end_episode(True)
    assert rec.wait_idle(600)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    rec.close()
    stored, raw = store.nbytes_stored(), store.nbytes_raw()
    steps = store.num_steps
    store.close()
    return {
        "mode": "max" if speed is None else f"{speed:g}x paced",
        "recorded_s": seconds,
        "wall_s": round(wall, 2),
        "real_time_factor": round(seconds / wall, 2),
        "cpu_s_per_recorded_s": round(cpu / seconds, 2),
        # what 2 idle cores would sustain, from the CPU time actually used (the machine is shared)
        "rtf_2_idle_cores_from_cpu": round(2 * seconds / cpu, 1),
        "frames_per_camera": frame_i,
        "steps_written": steps,
        "dropped_steps": rec.counters["dropped"],
        "skipped_ticks": rec.counters["skipped_missing"] + rec.counters["skipped_stale"],
        "MiB_on_disk": round(stored / 2**20, 1),
        "compression_ratio": round(raw / stored, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="recorded seconds per run")
    ap.add_argument("--speeds", type=float, nargs="*", default=[1.0, 3.0])
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="3 s per run")
    ap.add_argument("--dir", default=None, help="where to write the store (default: a temp dir)")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    imgs = frames(30)
    tmp = args.dir or tempfile.mkdtemp(prefix="bench_rec_")
    results = []
    try:
        for speed in [*args.speeds, None]:
            r = run(os.path.join(tmp, "rec.zarr"), seconds, speed, imgs, args.queue_size)
            print(json.dumps(r))
            results.append(r)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
