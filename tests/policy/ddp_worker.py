"""Run by torchrun in test_policy_train.py: two gloo ranks train the tiny VLA with DDP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from policy_helpers import SyntheticChunks, tiny_spec

from policy.config import PolicyConfig, TrainConfig
from policy.model import VLA
from policy.train import distributed_loader, init_distributed, train


def main() -> None:
    backbone, out = sys.argv[1], Path(sys.argv[2])
    rank, world, _ = init_distributed()
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    cfg = PolicyConfig(backbone=backbone, hidden_dim=32, num_tokens=4)
    model = VLA.from_backbone(cfg, tiny_spec())
    loader = distributed_loader(SyntheticChunks(tiny_spec(), n=8), batch_size=2, seed=0)
    metrics = train(model, loader, TrainConfig(out_dir=str(out), steps=2, grad_accum=2, save_every=2,
                                               warmup_steps=0, lr=1e-3))
    total = sum(float(p.double().sum()) for p in model.parameters())
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "checksum": total, "loss": metrics["loss"],
                                                      "n_batches": len(loader)}))


if __name__ == "__main__":
    main()
