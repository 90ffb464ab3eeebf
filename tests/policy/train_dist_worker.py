"""Run by test_train_dist.py (plain python, accelerate launch or torchrun): the tiny VLA's SFT at a global batch.

argv: backbone out_dir strategy global_batch steps [stop_after]: a run stopped after ``stop_after`` steps
(its data runs out, as a killed job) keeps the learning-rate schedule of ``steps``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from policy_helpers import SyntheticChunks, tiny_spec

from policy.config import PolicyConfig, TrainConfig
from policy.model import VLA
from policy.train import distributed_loader, init_distributed, train


class Unpadded(SyntheticChunks):
    """No padded chunk steps: the masked loss is then a plain mean, the same split over any process count."""

    def __getitem__(self, i: int) -> dict:
        s = super().__getitem__(i)
        s["action_is_pad"][:] = False
        return s


class Stop(Exception):
    pass


class StopAfter:
    """The loader, ending the run after ``n`` batches (``batch_sampler`` still reachable for the resume skip)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n, self.batch_sampler = loader, n, loader.batch_sampler

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i >= self.n:
                raise Stop
            yield b


def main() -> None:
    backbone, out, strategy, global_batch, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \
        int(sys.argv[5])
    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    torch.manual_seed(0)
    model = VLA.from_backbone(PolicyConfig(backbone=backbone, hidden_dim=32, num_tokens=4), tiny_spec())
    loader = distributed_loader(Unpadded(tiny_spec(), n=16), batch_size=global_batch // world, seed=0)
    if len(sys.argv) > 6:
        loader = StopAfter(loader, int(sys.argv[6]))
    try:
        m = train(model, loader, TrainConfig(out_dir=str(out), steps=steps, warmup_steps=0, lr=1e-3, backbone_lr=1e-3,
                                             save_every=2, keep_checkpoints=4, log_every=1, strategy=strategy))
    except Stop:
        return
    if rank == 0:
        (out / f"done_{steps}_w{world}.json").write_text(json.dumps({"world": world, **m}))


if __name__ == "__main__":
    main()
