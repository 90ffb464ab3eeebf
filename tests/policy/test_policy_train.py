"""Supervised fine-tuning: learning, gradient accumulation, checkpoints with resume, DDP on two CPU ranks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from policy_helpers import SyntheticChunks, batch_of, tiny_spec

import policy
from policy.config import PolicyConfig, TrainConfig
from policy.model import VLA
from policy.train import (
    checkpoint_dirs,
    distributed_loader,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    train,
)


def make(backbones, head="token_learner") -> VLA:
    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(backbones["smolvlm"]), head=head, hidden_dim=32, num_tokens=4, expert_heads=2)
    return VLA.from_backbone(cfg, tiny_spec())


def test_training_reduces_the_loss(tiny_backbones, tmp_path):
    m = make(tiny_backbones)
    data = [batch_of([SyntheticChunks(m.spec)[i] for i in range(4)])]
    prep = m.prepare(data[0])
    with torch.no_grad():
        before = float(m(prep))
    cfg = TrainConfig(out_dir=str(tmp_path), steps=25, lr=3e-3, backbone_lr=1e-3, warmup_steps=2, save_every=1000)
    metrics = train(m, data, cfg)
    with torch.no_grad():
        after = float(m(prep))
    assert after < 0.5 * before, (before, after)
    assert metrics["step"] == 25
    assert (tmp_path / "checkpoints" / "step_000025").is_dir()  # the final step is always saved
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 25


def test_checkpoints_resume_where_they_stopped(tiny_backbones, tmp_path):
    m = make(tiny_backbones, head="flow")
    loader = distributed_loader(SyntheticChunks(m.spec, n=6), batch_size=2)
    cfg = TrainConfig(out_dir=str(tmp_path), steps=4, grad_accum=2, save_every=2, keep_checkpoints=1,
                      warmup_steps=0)
    train(m, loader, cfg)
    ckpts = checkpoint_dirs(tmp_path)
    assert [p.name for p in ckpts] == ["step_000004"]  # keep_checkpoints=1 pruned step 2
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    # the checkpoint is a policy checkpoint too
    assert policy.load(ckpts[-1], spec=tiny_spec()).horizon == m.spec.action.chunk_horizon
    # a fresh model resumes at step 4 with the saved weights and optimizer state
    m2 = make(tiny_backbones, head="flow")
    m2.head.out[1].weight.data.zero_()
    seen = []

    class Counting(list):
        def __iter__(self):
            for b in loader:
                seen.append(1)
                yield b

    metrics = train(m2, Counting(), TrainConfig(**{**cfg.__dict__, "steps": 5}))
    assert metrics["step"] == 5 and len(seen) == 2  # one optimizer step of two micro-batches
    # a finished run resumes to a no-op
    m3 = make(tiny_backbones, head="flow")
    assert train(m3, Counting(), TrainConfig(**{**cfg.__dict__, "steps": 5}))["step"] == 5
    sd3, sd2 = m3.state_dict(), m2.state_dict()
    assert all(torch.equal(sd3[k], sd2[k]) for k in sd2)


def test_optimizer_state_round_trips_through_flat_tensors():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    tensors, meta = optimizer_state_to_flat(opt)
    meta = json.loads(json.dumps(meta))  # JSON-serialisable
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    opt2.load_state_dict(optimizer_state_from_flat(tensors, meta))
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"], opt.state[p]["exp_avg"])


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks(tiny_backbones, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to the interpreter")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parents[1])]), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           str(here / "ddp_worker.py"), str(tiny_backbones["smolvlm"]), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(x["world"] == 2 for x in ranks)
    assert ranks[0]["n_batches"] == 2  # 8 samples, batch 2, sharded over 2 ranks
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # gradients were averaged: identical replicas
    assert ranks[0]["loss"] != ranks[1]["loss"]  # ... trained on different shards
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000002"]
    shutil.rmtree(tmp_path / "checkpoints")
