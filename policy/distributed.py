"""Data-parallel training of the VLA over several processes: DDP or FSDP (full shard), one switch.

``policy.train.train`` runs unchanged under ``accelerate launch --multi_gpu
--num_processes N`` or ``torchrun --nproc_per_node N`` (both set RANK /
WORLD_SIZE / MASTER_ADDR; NCCL on CUDA, gloo on the CPU); a single process
stays plain (no wrapper). ``TrainConfig.strategy`` picks the wrapper:

* ``ddp``: every process holds the whole model, gradients are averaged;
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``), every transformer
  block of the backbone its own unit, then the whole model: parameters,
  gradients and optimizer state sharded across the processes (the
  transformers-VLM family at 0.5-3B).

:class:`GlobalBatchSampler` cuts every epoch into *global* batches of
``batch_size x world`` samples and gives each process its slice, so N processes
at ``batch_size = B/N`` see the same global batches as one process at ``B``.
Checkpoints stay the normal, full policy checkpoint (gathered to rank 0, the
optimizer state keyed by parameter order): they resume on any number of
processes and with either strategy, and ``policy.load`` reads them as is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp")
BLOCK_SUFFIXES = ("DecoderLayer", "EncoderLayer", "Block")  # transformer blocks: one FSDP unit each


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Index batches: epoch ``e`` permutes with ``seed + e``; global batch ``k`` is this rank's slice of it."""

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.n, self.batch_size, self.rank, self.world = int(n), int(batch_size), int(rank), int(world)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0
        self.start_batch = 0  # batches of the next epoch to pass over (a resumed run); then 0 again

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        g = self.batch_size * self.world
        return self.n // g if self.drop_last else -(-self.n // g)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        g = self.batch_size * self.world
        first, self.start_batch = self.start_batch, 0
        for k in range(first, len(self)):
            glob = order[k * g:(k + 1) * g]
            mine = glob[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            if mine:
                yield mine


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"policy_train.strategy={strategy!r}: use one of {STRATEGIES}")
    return strategy


def fsdp_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks FSDP shards one by one (outermost matches only)."""
    out: list[torch.nn.Module] = []
    for _, m in model.named_modules():
        if type(m).__name__.endswith(BLOCK_SUFFIXES) and not any(m is o or _inside(m, o) for o in out):
            out.append(m)
    return out


def _inside(m: torch.nn.Module, outer: torch.nn.Module) -> bool:
    return any(m is x for x in outer.modules())


def wrap(model: torch.nn.Module, strategy: str, dev: torch.device, world: int, *,
         bf16: bool = False) -> torch.nn.Module:
    """The module the training step calls: the model itself (1 process), DDP, or the model fully sharded."""
    check_strategy(strategy)
    if world <= 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in fsdp_blocks(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)  # in place: `model` is the FSDP module now
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _param_names(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on the CPU (collective when sharded; None off rank 0 then)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if dist.get_rank() == 0 else None


def full_optim_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The optimizer's full state, keyed by parameter order as ``opt.state_dict()`` (collective when sharded)."""
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    index = {n: i for i, n in enumerate(_param_names(model, opt))}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]}
              for g in sd["param_groups"]]
    return {"state": {index[n]: st for n, st in sd["state"].items()}, "param_groups": groups}


def load_optim_state(model: torch.nn.Module, opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load an order-keyed full optimizer state (a checkpoint's) into ``opt``, sharded or not."""
    if not is_sharded(model):
        opt.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, opt)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[int(i)] for i in g["params"]]}
              for g in sd["param_groups"]]
    fqn = {"state": {names[int(i)]: st for i, st in sd["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, opt, optim_state_dict=fqn, options=StateDictOptions(full_state_dict=True))


def mean_over_ranks(x: float) -> float:
    """``x`` averaged over the processes (itself in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
