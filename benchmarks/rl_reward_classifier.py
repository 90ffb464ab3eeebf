"""The reward classifier on rendered sim frames, evaluated against the task's own success test.

    .venv/bin/python benchmarks/rl_reward_classifier.py                # conv vs pretrained, LiftCube-Blue
    .venv/bin/python benchmarks/rl_reward_classifier.py --quick

Frames come from noisy (human-like, noise 1.0) scripted-operator episodes that go on
``--post-success`` steps after the first success (as a recording would after the operator's
success event), so both classes appear; each frame is labelled by the sim's success test (the
stand-in for the operator's success/failure labels). Front and wrist cameras, rendered at 128 px.

Per encoder (``conv`` on 64 px pixels, ``efficientnet-lite0`` frozen features at 128 px):
train on ``--train`` labelled episodes, choose the threshold on ``--held-out`` episodes for
``--target-precision`` (grouped by episode), then score ``--fresh`` episodes of other seeds:
frame-level precision/recall and, at episode level, false positives per 100 episodes (the reward
fires before the true success, ending the episode with a wrong success) and detected successes.
The threshold is re-chosen for each ``consecutive`` (frames in a row above it before it fires),
for frame- and episode-level precision (rule ``episode``, what the classifier does); rule ``frame``
asks frame-level precision only (k=1), rule ``0.5`` is the uncalibrated default.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from flywheel.rl.reward_classifier import ClassifierConfig, split_by_group, train_classifier
from flywheel.rl.reward_threshold import choose_threshold, evaluate

CAMERAS = ("front", "wrist")


def collect(task: str, seeds: range, size: int, post_success: int, noise: float = 1.0
            ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """Frames of scripted-operator episodes (one per seed), labels from the success test, episode ids."""
    import sim

    env = sim.make(task, cameras=CAMERAS, image_size=size, terminate_on_success=False)
    expert = sim.expert(env, noise=noise, seed=seeds.start)
    imgs: dict[str, list[np.ndarray]] = {f"images/{c}": [] for c in CAMERAS}
    labels, groups, successes = [], [], 0
    for ep, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        done, after = False, -1
        while not done and after < post_success:
            obs, _, term, trunc, info = env.step(expert.act(obs))
            for k in imgs:
                imgs[k].append(obs[k])
            labels.append(bool(info["is_success"]))
            groups.append(ep)
            after = after + 1 if (after >= 0 or info["is_success"]) else -1
            done = term or trunc
        successes += after >= 0
    env.close()
    return ({k: np.stack(v) for k, v in imgs.items()}, np.array(labels), np.array(groups),
            successes / max(1, len(seeds)))


def downsample(images: dict[str, np.ndarray], factor: int) -> dict[str, np.ndarray]:
    """Box-filtered uint8 frames, ``factor`` times smaller (the conv encoder's input)."""
    if factor == 1:
        return images
    out = {}
    for k, v in images.items():
        n, h, w, c = v.shape
        out[k] = v.reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4)).round().astype(np.uint8)
    return out


def run_variant(name: str, cfg: ClassifierConfig, train: tuple, fresh: tuple, consecutive: list[int],
                target: float) -> dict:
    images, labels, groups = train
    t0 = time.time()
    model, held = train_classifier(images, labels, cfg, groups=groups, seed=0, progress=True)
    t_train = time.time() - t0
    _, va = split_by_group(groups, cfg.val_fraction, np.random.default_rng(0))  # train_classifier's split
    p_val = model.predict_proba({k: v[va] for k, v in images.items()})
    f_images, f_labels, f_groups = fresh
    t0 = time.time()
    p_fresh = model.predict_proba(f_images)
    t_score = time.time() - t0
    rows = []
    for rule, k in [("episode", k) for k in consecutive] + [("frame", 1), ("0.5", 1)]:
        if rule == "0.5":
            chosen = evaluate(p_val, labels[va], groups[va], 0.5)
        else:
            chosen = choose_threshold(p_val, labels[va], groups[va], target, k, episode_level=rule == "episode")
        rows.append({"rule": rule, "consecutive": k, "threshold": chosen["threshold"], "held_out": chosen,
                     "fresh": evaluate(p_fresh, f_labels, f_groups, chosen["threshold"], k)})
    scores = {"val_scores": p_val, "val_labels": labels[va], "val_groups": groups[va], "fresh_scores": p_fresh,
              "fresh_labels": f_labels, "fresh_groups": f_groups}
    return {"encoder": name, "model": model, "scores": scores, "train_s": t_train, "score_fresh_s": t_score,
            "score_ms_per_frame": 1000 * t_score / max(1, len(f_labels)), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="LiftCube-Blue")
    ap.add_argument("--train", type=int, default=40, help="labelled training episodes")
    ap.add_argument("--held-out", type=int, default=20, help="labelled episodes for the threshold")
    ap.add_argument("--fresh", type=int, default=50, help="episodes of other seeds for the final numbers")
    ap.add_argument("--post-success", type=int, default=10)
    ap.add_argument("--target-precision", type=float, default=0.95)
    ap.add_argument("--consecutive", default="1,2,3")
    ap.add_argument("--encoders", default="conv,efficientnet-lite0")
    ap.add_argument("--out", default="outputs/bench/rl_reward_classifier")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.train, a.held_out, a.fresh = 6, 3, 4
    torch.set_num_threads(1)
    t0 = time.time()
    n_lab = a.train + a.held_out
    images, labels, groups, rate = collect(a.task, range(0, n_lab), 128, a.post_success)
    fresh = collect(a.task, range(10_000, 10_000 + a.fresh), 128, a.post_success)
    t_collect = time.time() - t0
    ks = [int(k) for k in a.consecutive.split(",")]
    keys = [f"images/{c}" for c in CAMERAS]
    val_fraction = a.held_out / n_lab
    results = []
    for enc in a.encoders.split(","):
        if enc == "conv":
            cfg = ClassifierConfig(image_keys=keys, encoder="conv", epochs=8 if not a.quick else 2, lr=1e-3,
                                   val_fraction=val_fraction, target_precision=a.target_precision)
            tr, fr = (downsample(images, 2), labels, groups), (downsample(fresh[0], 2), fresh[1], fresh[2])
        else:
            cfg = ClassifierConfig(image_keys=keys, encoder=enc, feature_block=10, feature_size=128,
                                   epochs=30 if not a.quick else 3, lr=1e-3, val_fraction=val_fraction,
                                   target_precision=a.target_precision)
            tr, fr = (images, labels, groups), fresh[:3]
        res = run_variant(enc, cfg, tr, fr, ks, a.target_precision)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        np.savez(Path(a.out) / f"scores_{enc}.npz", **res.pop("scores"))  # to re-choose thresholds offline
        model = res.pop("model")  # its threshold and k as train_classifier chose them: algo.classifier=<this file>
        res["saved"] = str(model.save(Path(a.out) / f"classifier_{enc}.safetensors"))
        res["saved_threshold"], res["saved_consecutive"] = model.cfg.threshold, model.cfg.consecutive
        results.append(res)
        for r in res["rows"]:
            f, h = r["fresh"], r["held_out"]
            print(f"{enc:20s} {r['rule']:7s} k={r['consecutive']} thr={r['threshold']:.3f} held-out P={h['precision']:.3f} "
                  f"R={h['recall']:.3f} | fresh P={f['precision']:.3f} R={f['recall']:.3f} "
                  f"FP/100ep={f['false_positives_per_100']:.1f} ep-recall={f['episode_recall']:.2f} "
                  f"delay={f['delay_steps']:.1f}", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"task": a.task, "args": vars(a), "labelled_frames": int(len(labels)),
           "labelled_success_frames": int(labels.sum()), "fresh_frames": int(len(fresh[1])),
           "fresh_success_frames": int(fresh[1].sum()), "operator_success_rate": rate,
           "fresh_operator_success_rate": fresh[3], "collect_s": t_collect, "variants": results,
           "loadavg": os.getloadavg()}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "variants"}, indent=2))


if __name__ == "__main__":
    main()
