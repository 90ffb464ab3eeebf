"""Supervised fine-tuning of the VLA: behaviour cloning of action chunks.

``train(model, data, cfg)`` takes any iterable of batch dicts (spec observation
keys with a batch dimension, ``"instruction"`` list, ``"actions"`` (B, H, 7),
``"action_is_pad"`` (B, H)), e.g. ``make_loader(dataset, batch_size)`` over a
torch ``Dataset`` of single samples; the flywheel wires in its episode store.

* bf16 autocast on CUDA, gradient accumulation, gradient clipping,
  warm-up + cosine learning rate;
* several GPUs with ``torchrun`` (DDP; NCCL on CUDA, gloo on CPU):
  ``make_loader`` shards the dataset with a ``DistributedSampler``;
* checkpoints under ``out_dir/checkpoints/step_NNNNNN/``: a full policy
  checkpoint (loadable with ``policy.load``) plus ``optimizer.safetensors`` /
  ``train_state.json``; written to a temporary directory and renamed, so a
  crash never leaves a half checkpoint. ``resume=True`` continues from the
  newest one. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from policy.config import TrainConfig
from policy.inference import pick_device
from policy.model import VLA, WEIGHTS

log = logging.getLogger(__name__)

OPTIM_WEIGHTS = "optimizer.safetensors"
TRAIN_STATE = "train_state.json"


# --------------------------------------------------------------------- distributed
def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when run by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool = True, num_workers: int = 0, seed: int = 0,
                drop_last: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader over a map-style dataset of sample dicts, sharded across DDP ranks."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, generator=gen)


def _cycle(data: Iterable[Any]) -> Iterator[Any]:
    epoch = 0
    while True:
        sampler = getattr(data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        n = 0
        for batch in data:
            n += 1
            yield batch
        if n == 0:
            raise ValueError("training data yielded no batch (empty dataset, or batch_size > dataset size)")
        epoch += 1


# ---------------------------------------------------------------------- optimizer
def optimizer_state_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as safetensors-compatible tensors plus JSON metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    for name, v in meta.get("scalars", {}).items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / max(1, cfg.warmup_steps)
    prog = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))


# ---------------------------------------------------------------------- checkpoints
def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.is_dir() and (p / TRAIN_STATE).is_file() and "." not in p.name]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(model: VLA, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> Path:
    from safetensors.torch import save_file

    root = Path(cfg.out_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tensors, meta = optimizer_state_to_flat(opt)
    save_file(tensors, str(tmp / OPTIM_WEIGHTS))
    state = {"step": step, "optimizer": meta, "train_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    (tmp / TRAIN_STATE).write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(cfg.out_dir)[: -max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: VLA, opt: torch.optim.Optimizer) -> int:
    """Restore weights and optimizer state in place; returns the step to continue from."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / WEIGHTS), strict=False)
    state = json.loads((path / TRAIN_STATE).read_text())
    tensors = load_file(str(path / OPTIM_WEIGHTS))
    opt.load_state_dict(optimizer_state_from_flat(tensors, state["optimizer"]))
    return int(state["step"])


# --------------------------------------------------------------------------- train
def train(model: VLA, data: Iterable[dict[str, Any]], cfg: TrainConfig, *,
          device: str | torch.device | None = None) -> dict[str, Any]:
    """Behaviour cloning for ``cfg.steps`` optimizer steps; returns the final metrics."""
    rank, world, local_rank = init_distributed()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    torch.manual_seed(cfg.seed + rank)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.backbone_lr, cfg.weight_decay))
    base_lrs = [g["lr"] for g in opt.param_groups]
    start = 0
    ckpts = checkpoint_dirs(cfg.out_dir) if cfg.resume else []
    if ckpts:
        start = load_checkpoint(ckpts[-1], model, opt)
        log.info("resumed from %s (step %d)", ckpts[-1], start)
    ddp: torch.nn.Module = model
    if world > 1:
        ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    amp = cfg.amp and dev.type == "cuda"
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    logf = (out / "train_log.jsonl").open("a") if rank == 0 else None
    params = [p for g in opt.param_groups for p in g["params"]]
    batches = _cycle(data)
    metrics: dict[str, Any] = {"step": start}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc="policy sft")
    t0 = time.perf_counter()
    try:
        for step in bar:
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * lr_factor(step, cfg)
            total = 0.0
            for micro in range(cfg.grad_accum):
                prep = model.prepare(next(batches), dev)
                sync = world == 1 or micro == cfg.grad_accum - 1
                ctx = contextlib.nullcontext() if sync else ddp.no_sync()
                with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss = ddp(prep) / cfg.grad_accum
                    loss.backward()
                total += float(loss.detach())
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            metrics = {"step": done, "loss": total, "grad_norm": gnorm, "lr": opt.param_groups[0]["lr"],
                       "elapsed_s": time.perf_counter() - t0}
            if rank == 0:
                bar.set_postfix(loss=f"{total:.4f}")
                if done % cfg.log_every == 0 or done == cfg.steps:
                    logf.write(json.dumps(metrics) + "\n")
                    logf.flush()
            if done % cfg.save_every == 0 or done == cfg.steps:
                if rank == 0:
                    metrics["checkpoint"] = str(save_checkpoint(model, opt, done, cfg))
                if world > 1:
                    dist.barrier()
    finally:
        if logf is not None:
            logf.close()
    return metrics
