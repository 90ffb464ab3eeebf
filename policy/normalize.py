"""Normalisation statistics of proprioception and actions (saved as ``stats.json``).

The stats dict is ``{"proprio": {"mean": [...], "std": [...]}, "actions":
{"mean": [...], "std": [...]}}``; missing entries default to the identity
(mean 0, std 1). :func:`compute_stats` derives it from arrays. Per-key stats as
the episode store computes them (``state/ee_pos``, ``state/ee_quat``,
``state/gripper_width``, ``action``; extra keys ignored) are accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

KEYS = ("proprio", "actions")
EPS = 1e-6


class Normalizer:
    """z-scores proprio and actions with fixed statistics."""

    def __init__(self, stats: Mapping[str, Any] | None, dims: Mapping[str, int]) -> None:
        stats = from_per_key(dict(stats or {}))
        unknown = set(stats) - set(KEYS)
        if unknown:
            raise ValueError(f"normalisation stats: unknown keys {sorted(unknown)}; expected {list(KEYS)}")
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        for key in KEYS:
            s = stats.get(key) or {}
            mean = np.asarray(s.get("mean", np.zeros(dims[key])), np.float32).reshape(-1)
            std = np.asarray(s.get("std", np.ones(dims[key])), np.float32).reshape(-1)
            for name, arr in (("mean", mean), ("std", std)):
                if arr.shape != (dims[key],):
                    raise ValueError(
                        f"normalisation stats: {key}.{name} has {arr.shape[0]} entries, expected {dims[key]}"
                    )
                if not np.all(np.isfinite(arr)):
                    raise ValueError(f"normalisation stats: {key}.{name} contains NaN or Inf")
            self.mean[key], self.std[key] = mean, np.maximum(std, EPS)

    def normalize(self, key: str, x: Any) -> Any:
        return (x - _like(self.mean[key], x)) / _like(self.std[key], x)

    def unnormalize(self, key: str, x: Any) -> Any:
        return x * _like(self.std[key], x) + _like(self.mean[key], x)

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {k: {"mean": self.mean[k].tolist(), "std": self.std[k].tolist()} for k in KEYS}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def read(path: str | Path) -> dict[str, Any]:
        return json.loads(Path(path).read_text())


def from_per_key(stats: dict[str, Any]) -> dict[str, Any]:
    """Per-key store stats (``state/...``, ``action``) -> ``{"proprio", "actions"}``; others unchanged."""
    from rig.spec import PROPRIO_KEYS

    if not any(k in stats for k in (*PROPRIO_KEYS, "action")):
        return stats
    out: dict[str, Any] = {}
    if all(k in stats for k in PROPRIO_KEYS):
        out["proprio"] = {
            m: np.concatenate([np.asarray(stats[k][m], np.float32).reshape(-1) for k in PROPRIO_KEYS])
            for m in ("mean", "std")
        }
    if "action" in stats:
        out["actions"] = {m: np.asarray(stats["action"][m], np.float32).reshape(-1) for m in ("mean", "std")}
    return out


def _like(arr: np.ndarray, x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return arr
    import torch

    return torch.as_tensor(arr, device=x.device, dtype=x.dtype)


def compute_stats(proprio: np.ndarray, actions: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Stats from (N, P) proprio and (N, A) or (N, H, A) actions."""
    p = np.asarray(proprio, np.float64).reshape(-1, np.shape(proprio)[-1])
    a = np.asarray(actions, np.float64).reshape(-1, np.shape(actions)[-1])
    return {
        "proprio": {"mean": p.mean(0).tolist(), "std": p.std(0).tolist()},
        "actions": {"mean": a.mean(0).tolist(), "std": a.std(0).tolist()},
    }
