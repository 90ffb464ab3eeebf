"""The tiny VLA learns from its images: an action that only the camera image determines.

Regression test for the flywheel demo's generalist scoring 0%: with its earlier training settings the
random tiny backbone's vision path carried nothing (its loss equalled that of a model with blank
images), so the policy could not see where the cube or the hole was.
"""

from __future__ import annotations

import numpy as np
import torch
from policy_helpers import tiny_spec

from policy.config import PolicyConfig, TrainConfig
from policy.model import VLA
from policy.train import train


def _samples(spec, n: int, seed: int) -> dict:
    """Blank proprio, one instruction; a red square in one image quadrant sets the action's x and y sign."""
    rng = np.random.default_rng(seed)
    h = spec.action.chunk_horizon
    quad = rng.integers(0, 4, n)
    out: dict = {k: np.zeros((n, *s.shape), np.float32) for k, s in spec.state_specs().items()}
    acts = np.zeros((n, h, spec.action.dim), np.float32)
    for c in spec.cameras:
        imgs = np.full((n, c.height, c.width, 3), 200, np.uint8)
        for i, q in enumerate(quad):
            r0 = (q // 2) * c.height // 2 + rng.integers(0, c.height // 2 - 8)
            c0 = (q % 2) * c.width // 2 + rng.integers(0, c.width // 2 - 8)
            imgs[i, r0:r0 + 8, c0:c0 + 8] = (220, 30, 30)
        out[f"images/{c.name}"] = imgs
    acts[:, :, 0] = np.where(quad % 2, 0.5, -0.5)[:, None]
    acts[:, :, 1] = np.where(quad // 2, 0.5, -0.5)[:, None]
    out["actions"] = acts
    out["instruction"] = ["insert the peg into the hole"] * n
    return out


class _Batches:
    def __init__(self, data: dict, batch: int, seed: int = 0) -> None:
        self.data, self.batch, self.rng = data, batch, np.random.default_rng(seed)

    def __iter__(self):
        n = len(self.data["actions"])
        for _ in range(4):
            idx = self.rng.choice(n, self.batch, replace=False)
            yield {k: ([v[i] for i in idx] if k == "instruction" else v[idx]) for k, v in self.data.items()}


def test_policy_reads_the_object_position_from_its_images(tiny_backbones, tmp_path):
    spec = tiny_spec()
    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(tiny_backbones["smolvlm"]), head="token_learner", hidden_dim=128, num_tokens=4)
    m = VLA.from_backbone(cfg, spec)
    held_out = _samples(spec, 32, seed=1)
    train(m, _Batches(_samples(spec, 96, seed=0), 16), TrainConfig(
        out_dir=str(tmp_path), steps=300, lr=3e-3, backbone_lr=1e-3, warmup_steps=20, save_every=10_000))
    m.eval()
    with torch.no_grad():
        loss = float(m(m.prepare(held_out)))
    blind = float((torch.as_tensor(held_out["actions"]) ** 2).mean())  # best loss without the images
    assert loss < 0.3 * blind, (loss, blind)
