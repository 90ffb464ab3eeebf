"""RL speed: learner updates per second (batch 256; state-only and with images) and actor steps per second.

    .venv/bin/python benchmarks/rl_speed.py            # full
    .venv/bin/python benchmarks/rl_speed.py --quick    # fewer repetitions
    .venv/bin/python benchmarks/rl_speed.py --pixels   # pixel specialists: pretrained (cached) vs conv, 64/128 px

Prints a markdown table and writes it (with the machine's load average) to
``--out`` (JSON). Updates are timed on synthetic replay data with the shapes a
sim task produces; actor steps on the real sim env (policy inference + physics,
plus rendering when cameras are on).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from flywheel.rl.buffers import ReplayBuffer, rlpd_batch
from flywheel.rl.sac import SACAgent, SACConfig


def _fill(buf: ReplayBuffer, n: int, rng: np.random.Generator) -> None:
    batch = {}
    for k, (shape, dtype) in buf.layout.items():
        if np.dtype(dtype) == np.uint8:
            batch[k] = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        elif np.dtype(dtype) == np.bool_:
            batch[k] = rng.random((n, *shape)) < 0.1
        elif np.dtype(dtype).kind == "i":
            batch[k] = rng.integers(0, 3, (n, *shape))
        else:
            batch[k] = rng.uniform(-1, 1, (n, *shape)).astype(dtype)
    buf.add_batch(batch)


def bench_updates(name: str, cfg: SACConfig, shapes: dict, n: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    agent = SACAgent(cfg, shapes)
    demo, online = ReplayBuffer(2048, agent.obs_shapes), ReplayBuffer(2048, agent.obs_shapes)
    _fill(demo, 2048, rng)
    _fill(online, 2048, rng)
    for _ in range(3):
        agent.update([rlpd_batch(demo, online, cfg.batch_size, rng) for _ in range(cfg.utd_ratio)])
    t = time.perf_counter()
    for _ in range(n):
        agent.update([rlpd_batch(demo, online, cfg.batch_size, rng) for _ in range(cfg.utd_ratio)])
    dt = time.perf_counter() - t
    return {"what": f"learner: {name}", "per_s": n * cfg.utd_ratio / dt, "unit": "critic updates/s",
            "threads": threads}


def bench_actor(task: str, cameras: tuple[str, ...], steps: int, image_size: int, encoder: str = "") -> dict:
    import sim
    from flywheel.rl.actor import Actor
    from flywheel.rl.sac import obs_shapes_of

    torch.set_num_threads(1)
    env = sim.make(task, cameras=cameras, image_size=image_size, privileged_state=not cameras)
    enc = encoder or ("conv" if cameras else "state")
    if enc == "pretrained":  # the frozen trunk once per env step, in the env wrapper
        from flywheel.rl.pretrained import FeatureEnv, ImageFeaturizer

        env = FeatureEnv(env, ImageFeaturizer(10, image_size))
    agent = SACAgent(SACConfig(hidden_dims=[128, 128], encoder=enc, arm_dims=[0, 1, 2],
                               state_keys=None if not cameras else ["state/ee_pos", "state/gripper_width"]),
                     obs_shapes_of(env.observation_space))
    actor = Actor(env, agent, seed=0)
    actor.step()
    t = time.perf_counter()
    for _ in range(steps):
        actor.step()
    dt = time.perf_counter() - t
    env.close()
    cam = f"{len(cameras)} cameras {image_size}px ({enc} encoder)" if cameras else "state-only"
    return {"what": f"actor: {task}, {cam}", "per_s": steps / dt, "unit": "env steps/s (policy + sim)",
            "threads": 1}


def pixel_rows(quick: bool, threads: int) -> list[dict]:
    """Pixel specialists (issue #17): the frozen pretrained trunk's cached features vs the conv encoder on
    images, 2 cameras at 64 and 128 px: learner updates (batch 256, MLP 128x2 as the lift preset) and actor steps."""
    from flywheel.rl.pretrained import ImageFeaturizer

    proprio = {"state/ee_pos": ((3,), "float32"), "state/gripper_width": ((1,), "float32")}
    keys = ["state/ee_pos", "state/gripper_width"]
    steps = 15 if quick else 40
    rows = []
    for px in (64, 128):
        feat = ImageFeaturizer(10, px).out_shape
        imgs = {**proprio, **{f"images/{c}": ((px, px, 3), "uint8") for c in ("front", "wrist")}}
        feats = {**proprio, **{f"features/{c}": (feat, "float16") for c in ("front", "wrist")}}
        rows.append(bench_updates(f"2x{px}px conv on images, batch 256", SACConfig(
            encoder="conv", hidden_dims=[128, 128], state_keys=keys), imgs, 3 if px == 128 else 6, threads))
        rows.append(bench_updates(f"2x{px}px pretrained (cached {feat[0]}x{feat[1]}x{feat[2]} fp16 features), "
                                  "batch 256", SACConfig(encoder="pretrained", hidden_dims=[128, 128], state_keys=keys),
                                  feats, 10 if quick else 30, threads))
        for enc in ("conv", "pretrained"):
            rows.append(bench_actor("LiftCube-Blue", ("front", "wrist"), steps, px, enc))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="outputs/bench/rl_speed.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pixels", action="store_true", help="only the pixel-specialist rows (issue #17)")
    a = ap.parse_args()
    n = 10 if a.quick else 40
    steps = 30 if a.quick else 150
    state_shapes = {"state/ee_pos": ((3,), "float32"), "state/gripper_width": ((1,), "float32"),
                    "state/privileged": ((4,), "float32")}
    img64 = {**state_shapes, "images/front": ((64, 64, 3), "uint8"), "images/wrist": ((64, 64, 3), "uint8")}
    img128 = {**state_shapes, "images/front": ((128, 128, 3), "uint8"), "images/wrist": ((128, 128, 3), "uint8")}
    rows = pixel_rows(a.quick, a.threads) if a.pixels else [
        bench_updates("state-only, MLP 128x2, 2 critics, batch 256", SACConfig(hidden_dims=[128, 128]),
                      state_shapes, n * 5, a.threads),
        bench_updates("state-only, MLP 256x2, 10 critics (RLPD), batch 256",
                      SACConfig(hidden_dims=[256, 256], num_critics=10), state_shapes, n * 2, a.threads),
        bench_updates("images 2x64px conv, batch 256", SACConfig(encoder="conv", hidden_dims=[256, 256],
                      state_keys=["state/ee_pos", "state/gripper_width"]), img64, n, a.threads),
        bench_updates("images 2x128px conv, batch 256", SACConfig(encoder="conv", hidden_dims=[256, 256],
                      state_keys=["state/ee_pos", "state/gripper_width"]), img128, max(3, n // 3), a.threads),
        bench_actor("PegInsert", (), steps, 64),
        bench_actor("LiftCube-Blue", (), steps, 64),
        bench_actor("LiftCube-Blue", ("front", "wrist"), max(20, steps // 3), 64),
    ]
    load = os.getloadavg()
    print("| what | rate | unit | torch threads |\n|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['per_s']:.1f} | {r['unit']} | {r['threads']} |")
    print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "loadavg": load, "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=2)


if __name__ == "__main__":
    main()
