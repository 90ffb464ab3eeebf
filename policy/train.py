"""Supervised fine-tuning of the VLA: behaviour cloning of action chunks.

``train(model, data, cfg)`` takes any iterable of batch dicts (spec observation
keys with a batch dimension, ``"instruction"`` list, ``"actions"`` (B, H, 7),
``"action_is_pad"`` (B, H)), e.g. ``distributed_loader(dataset, batch_size)`` over a
torch ``Dataset`` of single samples; the flywheel wires in its episode store.

* bf16 autocast on CUDA, gradient accumulation, gradient clipping,
  warm-up + cosine learning rate;
* several processes under ``accelerate launch --multi_gpu --num_processes N`` or
  ``torchrun --nproc_per_node N`` (NCCL on CUDA, gloo on the CPU), DDP or FSDP
  full-shard by ``TrainConfig.strategy`` (:mod:`policy.distributed`);
  ``distributed_loader`` gives each process its slice of the same global batches, so
  N processes at batch B/N follow one process at batch B; the logged
  ``loss_global`` is the mean over the processes;
* gradient checkpointing of the backbone (``gradient_checkpointing``);
* checkpoints under ``out_dir/checkpoints/step_NNNNNN/``: a full policy
  checkpoint (loadable with ``policy.load``) plus ``optimizer.safetensors`` /
  ``train_state.json``; written to a temporary directory and renamed, so a
  crash never leaves a half checkpoint. ``resume=True`` continues from the
  newest one, on any number of processes and with either strategy (the
  checkpoint is always the full, gathered one). Nothing is pickled.
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
from tqdm import tqdm

from policy import distributed as pdist
from policy.checkpoint import WEIGHTS
from policy.config import TrainConfig
from policy.inference import pick_device
from policy.model import VLA

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


def distributed_loader(dataset: Any, batch_size: int, *, shuffle: bool = True, num_workers: int = 0, seed: int = 0,
                       drop_last: bool = True, pin_memory: bool | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over a map-style dataset of sample dicts: ``batch_size`` per process, each process its
    slice of the same global batches (:class:`policy.distributed.GlobalBatchSampler`); pinned memory on CUDA."""
    from torch.utils.data import DataLoader

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    sampler = pdist.GlobalBatchSampler(len(dataset), batch_size, rank=rank, world=world, shuffle=shuffle, seed=seed,
                                       drop_last=drop_last)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin)


def _cycle(data: Iterable[Any], skip: int = 0) -> Iterator[Any]:
    """Batches forever; ``skip`` batches already consumed (a resumed run) are passed over without loading
    them where the loader's batch sampler is a :class:`policy.distributed.GlobalBatchSampler`."""
    epoch = 0
    bs = getattr(data, "batch_sampler", None)
    if skip and isinstance(bs, pdist.GlobalBatchSampler) and len(bs):
        epoch, bs.start_batch = divmod(skip, len(bs))
    while True:
        for sampler in (getattr(data, "sampler", None), getattr(data, "batch_sampler", None)):
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
def optimizer_state_to_flat(opt: torch.optim.Optimizer | dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, Any]]:
    """Optimizer state (an optimizer or its state dict) as safetensors-compatible tensors plus JSON metadata."""
    sd = opt if isinstance(opt, dict) else opt.state_dict()
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


def save_checkpoint(model: VLA, opt: torch.optim.Optimizer | dict[str, Any], step: int, cfg: TrainConfig, *,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint (rank 0); ``weights``: the gathered full state dict of a sharded model."""
    from safetensors.torch import save_file

    root = Path(cfg.out_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if weights is None:
        model.save_pretrained(tmp)
    else:  # a sharded model: save_pretrained writes what state_dict() gives, here the gathered weights
        model.state_dict = lambda *a, **k: weights  # type: ignore[method-assign]
        try:
            model.save_pretrained(tmp)
        finally:
            del model.state_dict
    tensors, meta = optimizer_state_to_flat(opt)
    save_file(tensors, str(tmp / OPTIM_WEIGHTS))
    state = {"step": step, "optimizer": meta, "train_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    (tmp / TRAIN_STATE).write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(cfg.out_dir)[: -max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: VLA, opt: torch.optim.Optimizer | None) -> int:
    """Restore weights (into the unwrapped model) and, given ``opt``, its state; returns the step to continue from."""
    from safetensors.torch import load_model

    if opt is None or not pdist.is_sharded(model):
        load_model(model, str(path / WEIGHTS), strict=False)
    if opt is not None:
        pdist.load_optim_state(model, opt, load_optimizer_state(path))
    return int(json.loads((path / TRAIN_STATE).read_text())["step"])


def load_optimizer_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = json.loads((path / TRAIN_STATE).read_text())
    return optimizer_state_from_flat(load_file(str(path / OPTIM_WEIGHTS)), state["optimizer"])


# --------------------------------------------------------------------------- train
def train(model: VLA, data: Iterable[dict[str, Any]], cfg: TrainConfig, *,
          device: str | torch.device | None = None) -> dict[str, Any]:
    """Behaviour cloning for ``cfg.steps`` optimizer steps; returns the final metrics."""
    strategy = pdist.check_strategy(getattr(cfg, "strategy", "ddp"))
    rank, world, local_rank = init_distributed()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    torch.manual_seed(cfg.seed + rank)
    amp = cfg.amp and dev.type == "cuda"
    start = 0
    ckpts = checkpoint_dirs(cfg.out_dir) if cfg.resume else []
    if ckpts:  # weights into the plain model first: any number of processes, either strategy
        start = load_checkpoint(ckpts[-1], model, None)
    if getattr(cfg, "gradient_checkpointing", False):
        bb = getattr(model, "backbone", None)
        if bb is None or not hasattr(bb, "gradient_checkpointing_enable"):
            raise ValueError("policy_train.gradient_checkpointing=true: this model's backbone does not support it")
        bb.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(dev).train()
    ddp = pdist.wrap(model, strategy, dev, world, bf16=amp)
    sharded = pdist.is_sharded(model)
    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.backbone_lr, cfg.weight_decay))
    base_lrs = [g["lr"] for g in opt.param_groups]  # before the saved state (its lr is a scheduled one)
    if ckpts:
        pdist.load_optim_state(model, opt, load_optimizer_state(ckpts[-1]))
        log.info("resumed from %s (step %d, %d processes, %s)", ckpts[-1], start, world, strategy)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    logf = (out / "train_log.jsonl").open("a") if rank == 0 else None
    params = [p for g in opt.param_groups for p in g["params"]]
    batches = _cycle(data, skip=start * cfg.grad_accum)
    metrics: dict[str, Any] = {"step": start}
    # a bar on a terminal only (None: off when stderr is a file, e.g. a job's log)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=True if rank != 0 else None,
               desc="policy sft")
    t0 = time.perf_counter()
    try:
        for step in bar:
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * lr_factor(step, cfg)
            total = 0.0
            for micro in range(cfg.grad_accum):
                prep = model.prepare(next(batches), dev)
                sync = world == 1 or micro == cfg.grad_accum - 1
                if sharded:
                    model.set_requires_gradient_sync(sync)  # type: ignore[operator]
                ctx = contextlib.nullcontext() if sync or sharded else ddp.no_sync()
                with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss = ddp(prep) / cfg.grad_accum
                    loss.backward()
                total += float(loss.detach())
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            gnorm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            metrics = {"step": done, "loss": total, "loss_global": pdist.mean_over_ranks(total), "grad_norm": gnorm,
                       "lr": opt.param_groups[0]["lr"], "elapsed_s": time.perf_counter() - t0, "world": world}
            if rank == 0:
                bar.set_postfix(loss=f"{metrics['loss_global']:.4f}")
                if done % cfg.log_every == 0 or done == cfg.steps:
                    logf.write(json.dumps(metrics) + "\n")
                    logf.flush()
            if done % cfg.save_every == 0 or done == cfg.steps:
                weights = pdist.full_model_state(model)  # collective when sharded
                opt_state = pdist.full_optim_state(model, opt)
                if rank == 0:
                    metrics["checkpoint"] = str(save_checkpoint(model, opt_state, done, cfg, weights=weights))
                if world > 1:
                    dist.barrier()
    finally:
        if logf is not None:
            logf.close()
    return metrics
