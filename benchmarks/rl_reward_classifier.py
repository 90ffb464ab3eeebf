"""The reward classifier on rendered sim frames, evaluated against the task's own success test.

    .venv/bin/python benchmarks/rl_reward_classifier.py                # LiftCube-Blue, front camera 64 px
    .venv/bin/python benchmarks/rl_reward_classifier.py --quick

Frames come from noisy (human-like) expert episodes that go on after success, so
both classes appear; each frame is labelled by the sim's success test (the stand-in
for the operator's success/failure events on the rig). The split is by episode.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from flywheel.rl.reward_classifier import ClassifierConfig, precision_recall, train_classifier


def collect(task: str, episodes: int, size: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    import sim

    env = sim.make(task, cameras=("front",), image_size=size, terminate_on_success=False)
    expert = sim.expert(env, noise=1.0, seed=seed)
    imgs, labels, groups = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        expert.reset()
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(expert.act(obs))
            imgs.append(obs["images/front"])
            labels.append(bool(info["is_success"]))
            groups.append(ep)
            done = term or trunc
    env.close()
    return {"images/front": np.stack(imgs)}, np.array(labels), np.array(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="LiftCube-Blue")
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="outputs/bench/rl_reward_classifier")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.episodes, a.epochs = 10, 2
    torch.set_num_threads(2)
    t0 = time.time()
    images, labels, groups = collect(a.task, a.episodes, a.size, 0)
    t_collect = time.time() - t0
    cfg = ClassifierConfig(image_keys=["images/front"], epochs=a.epochs, lr=1e-3)
    t0 = time.time()
    model, m = train_classifier(images, labels, cfg, groups=groups, seed=0, progress=True)
    t_train = time.time() - t0
    # fresh episodes (other seeds): the classifier's reward vs the sim success test, frame by frame
    test_imgs, test_labels, _ = collect(a.task, max(5, a.episodes // 4), a.size, 10_000)
    pred = model.predict_proba(test_imgs) > cfg.threshold
    fresh = precision_recall(pred, test_labels)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "classifier.safetensors")
    res = {"task": a.task, "frames": int(len(labels)), "success_frames": int(labels.sum()),
           "held_out_split": m, "fresh_episodes_vs_sim_success": fresh,
           "collect_s": t_collect, "train_s": t_train, "loadavg": os.getloadavg()}
    print(json.dumps(res, indent=2))
    (out / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
