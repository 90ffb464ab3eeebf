"""Normalisation statistics of proprioception and actions (saved as ``stats.json`` in a checkpoint).

One format, the episode store's (:func:`flywheel.data.stats.compute_stats`, LeRobot's
``stats.json``): per spec key, ``{"state/ee_pos": {"mean": [...], "std": [...], ...},
"state/ee_quat": ..., "state/gripper_width": ..., "action": ...}``; further statistics
(``min``, ``q01``, ``count``, ...) and further keys (``state/joint_pos``, images) are
ignored; a missing key is the identity (mean 0, std 1). The policy z-scores the
proprio vector (the :data:`rig.spec.PROPRIO_KEYS` concatenated) and the action chunks.

Checkpoints written before this format hold ``{"proprio": {"mean", "std"}, "actions":
{"mean", "std"}}``: :func:`to_per_key` converts them when they are read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rig.spec import PROPRIO_KEYS, STATE_KEYS

KEYS = ("proprio", "actions")  # the normaliser's two vectors
EPS = 1e-6
_OLD = {"proprio", "actions"}


def _dims(key: str) -> int:
    return int(np.prod(STATE_KEYS[key][0]))


def to_per_key(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The one stats format; the old ``{"proprio", "actions"}`` form (old checkpoints) is converted."""
    stats = dict(stats)
    old = _OLD & set(stats)
    if not old:
        return stats
    clash = sorted(k for k in stats if k in (*PROPRIO_KEYS, "action"))
    if clash:
        raise ValueError(f"normalisation stats mix the old keys {sorted(old)} with per-key ones {clash}")
    out = {k: v for k, v in stats.items() if k not in _OLD}
    if "actions" in stats:
        out["action"] = {m: v for m, v in stats["actions"].items() if m in ("mean", "std")}
    if "proprio" in stats:
        want = sum(_dims(k) for k in PROPRIO_KEYS)
        cuts = np.cumsum([_dims(k) for k in PROPRIO_KEYS])[:-1]
        for m, v in stats["proprio"].items():
            if m not in ("mean", "std"):
                continue
            arr = np.asarray(v, np.float64).reshape(-1)
            if arr.shape != (want,):
                raise ValueError(f"normalisation stats: proprio.{m} has {arr.shape[0]} entries, expected {want}")
            for k, part in zip(PROPRIO_KEYS, np.split(arr, cuts), strict=True):
                out.setdefault(k, {})[m] = part.tolist()
    return out


class Normalizer:
    """z-scores proprio and actions with fixed statistics."""

    def __init__(self, stats: Mapping[str, Any] | None, dims: Mapping[str, int]) -> None:
        stats = to_per_key(stats or {})
        unknown = [k for k in stats if k not in STATE_KEYS and k != "action" and not k.startswith(("images/", "depth/"))]
        if unknown:
            raise ValueError(f"normalisation stats: unknown keys {sorted(unknown)}; expected the spec's keys "
                             f"({', '.join(PROPRIO_KEYS)}, action)")
        have = [k for k in PROPRIO_KEYS if k in stats]
        if have and len(have) < len(PROPRIO_KEYS):
            raise ValueError(f"normalisation stats: {sorted(set(PROPRIO_KEYS) - set(have))} missing "
                             f"(the proprio statistics need all of {list(PROPRIO_KEYS)})")
        parts = {"proprio": list(PROPRIO_KEYS) if have else [], "actions": ["action"] if "action" in stats else []}
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        for key in KEYS:
            vec = {}
            for name, default in (("mean", np.zeros(dims[key])), ("std", np.ones(dims[key]))):
                got = [np.asarray(stats[k].get(name, np.full(_dims(k) if k != "action" else dims[key],
                                                             default[0])), np.float32).reshape(-1)
                       for k in parts[key]]
                arr = np.concatenate(got) if got else np.asarray(default, np.float32)
                if arr.shape != (dims[key],):
                    raise ValueError(f"normalisation stats: {'/'.join(parts[key]) or key}.{name} has "
                                     f"{arr.shape[0]} entries, expected {dims[key]}")
                if not np.all(np.isfinite(arr)):
                    raise ValueError(f"normalisation stats: {'/'.join(parts[key])}.{name} contains NaN or Inf")
                vec[name] = arr
            self.mean[key], self.std[key] = vec["mean"], np.maximum(vec["std"], EPS)

    def normalize(self, key: str, x: Any) -> Any:
        return (x - _like(self.mean[key], x)) / _like(self.std[key], x)

    def unnormalize(self, key: str, x: Any) -> Any:
        return x * _like(self.std[key], x) + _like(self.mean[key], x)

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        """The statistics in the one (per-key) format."""
        cuts = np.cumsum([_dims(k) for k in PROPRIO_KEYS])[:-1]
        out = {k: {"mean": m.tolist(), "std": s.tolist()} for k, m, s in
               zip(PROPRIO_KEYS, np.split(self.mean["proprio"], cuts), np.split(self.std["proprio"], cuts), strict=True)}
        out["action"] = {"mean": self.mean["actions"].tolist(), "std": self.std["actions"].tolist()}
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def read(path: str | Path) -> dict[str, Any]:
        """A checkpoint's ``stats.json`` in the one format (an old checkpoint's is converted)."""
        return to_per_key(json.loads(Path(path).read_text()))


def _like(arr: np.ndarray, x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return arr
    import torch

    return torch.as_tensor(arr, device=x.device, dtype=x.dtype)
