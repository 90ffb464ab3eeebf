"""Synthetic data and small builders shared by the policy tests (and the DDP worker script, and the SFT benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from rig.spec import RigSpec, default_spec

IMAGE = 32


def tiny_spec(**action) -> RigSpec:
    spec = default_spec(IMAGE)
    if action:
        import dataclasses

        spec = dataclasses.replace(spec, action=dataclasses.replace(spec.action, **action))
    return spec


def observation(spec: RigSpec, seed: int = 0, instruction: str = "pick up the red cube") -> dict:
    rng = np.random.default_rng(seed)
    obs = {k: rng.normal(size=s.shape).astype(np.float32) for k, s in spec.state_specs().items()}
    for c in spec.cameras:
        obs[f"images/{c.name}"] = rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
    obs["instruction"] = instruction
    return obs


class SyntheticChunks(Dataset):
    """Samples whose action chunk is a fixed function of the proprioception (learnable)."""

    def __init__(self, spec: RigSpec, n: int = 16, seed: int = 0) -> None:
        self.spec, self.n, self.seed = spec, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        obs = observation(self.spec, self.seed * 100_000 + i, instruction=("push", "pick")[i % 2])
        h = self.spec.action.chunk_horizon
        base = np.tanh(self.spec.proprio(obs)[:7])
        obs["actions"] = np.stack([base * (1 - k / h) for k in range(h)]).astype(np.float32)
        pad = np.zeros(h, bool)
        pad[h - (i % 3):] = True  # some chunks run past the episode end
        obs["action_is_pad"] = pad
        return obs


def damage_head_weight(checkpoint: Any, value: float, index: int = 0) -> str:
    """Write ``value`` (NaN or Inf) into one element of the first multi-element floating-point head tensor of a
    saved checkpoint's weights; returns the tensor's name (the loaders must name it when they refuse)."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from policy.checkpoint import WEIGHTS

    file = str(Path(checkpoint) / WEIGHTS)
    tensors = load_file(file)
    name = next(k for k, v in tensors.items() if k.startswith("head.") and v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[index] = value
    save_file(tensors, file, metadata={"format": "pt"})
    return name


def batch_of(samples: list[dict]) -> dict:
    out = {k: np.stack([s[k] for s in samples]) for k in samples[0] if k != "instruction"}
    out["instruction"] = [s["instruction"] for s in samples]
    return out


class TimedLoader:
    """Wraps a DataLoader for ``policy.train.train``, appending ``time.perf_counter()`` to ``times`` at each batch.

    Keeps the loader's ``batch_sampler`` (train sets its epoch and resume point); samples/s is then
    ``(len(times) - 1 - k) * batch / (times[-1] - times[k])`` after ``k`` warm-up steps.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.batch_sampler = loader.batch_sampler
        self.times: list[float] = []

    def __iter__(self) -> Iterator[Any]:
        for b in self.loader:
            self.times.append(time.perf_counter())
            yield b
