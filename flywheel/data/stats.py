"""Normalisation statistics of an episode store, saved beside checkpoints.

``compute_stats`` gives, per key, ``mean``, ``std``, ``min``, ``max``, the
quantiles ``q01``/``q10``/``q50``/``q90``/``q99`` and ``count`` (float64
arrays of the key's per-step shape). Images get per-channel statistics of
pixel values scaled to [0, 1] with shape (C, 1, 1), over a subsample of frames,
as LeRobot's ``stats.json`` has them. ``save_stats`` writes both
``stats.json`` (readable) and ``stats.safetensors`` (exact float arrays);
``load_stats`` reads either. Nothing is pickled. This is the one statistics format: a
policy checkpoint's ``stats.json`` holds its ``mean``/``std`` of the proprio keys and
the action (:mod:`policy.normalize`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.store import EpisodeStore

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("mean", "std", "min", "max", *QUANTILES, "count")


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over the first (time) axis."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no steps to compute statistics from")
    out = {
        "mean": x.mean(0),
        "std": x.std(0),
        "min": x.min(0),
        "max": x.max(0),
        "count": np.array([len(x)], np.float64),
    }
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    out.update({k: qs[i] for i, k in enumerate(QUANTILES)})
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (N, H, W, C) uint8 frames scaled to [0, 1], shaped (C, 1, 1)."""
    f = np.asarray(frames, dtype=np.float64) / 255.0
    flat = f.reshape(-1, f.shape[-1])
    s = array_stats(flat)
    s["count"] = np.array([len(frames)], np.float64)
    return {k: (v.reshape(-1, 1, 1) if k != "count" else v) for k, v in s.items()}


def compute_stats(
    store: EpisodeStore,
    keys: Sequence[str] | None = None,
    episodes: Sequence[int] | None = None,
    max_image_frames: int = 256,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of ``keys`` (default: every state key and the action; images if named)."""
    spec = store.spec
    keys = list(keys) if keys is not None else [*spec.state_specs(), "action"]
    eps = store.select() if episodes is None else list(episodes)  # select(): not the quarantined
    if not eps:
        raise ValueError(f"{store.path}: no episodes to compute statistics from")
    recs = [store.record(e) for e in eps]
    steps = np.concatenate([np.arange(r.start, r.end) for r in recs])
    out: dict[str, dict[str, np.ndarray]] = {}
    for k in keys:
        if k.startswith(("images/", "depth/")):
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(steps, size=min(max_image_frames, len(steps)), replace=False))
            frames = np.stack([store.read_image(k, int(s)) for s in pick])
            if frames.ndim == 3:
                frames = frames[..., None]
            out[k] = image_stats(frames) if frames.dtype == np.uint8 else array_stats(
                frames.reshape(-1, frames.shape[-1]))
        else:
            full = store.read(k, 0, store.num_steps)
            out[k] = array_stats(full[steps])
    return out


def floor_std(stats: Mapping[str, Mapping[str, Any]], min_std: float) -> dict[str, dict[str, Any]]:
    """``stats`` with every ``std`` at least ``min_std`` (a near-constant input, e.g. the bimodal +-1 gripper
    command, keeps its scale and is never divided by ~0)."""
    return {k: {**d, **({"std": np.maximum(np.asarray(d["std"], np.float64), float(min_std))} if "std" in d else {})}
            for k, d in stats.items()}


def _flat(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{k}/{s}": np.ascontiguousarray(v, dtype=np.float64) for k, d in stats.items() for s, v in d.items()}


def save_stats(stats: Mapping[str, Mapping[str, Any]], directory: str | Path) -> tuple[Path, Path]:
    """Write ``stats.json`` and ``stats.safetensors`` into ``directory``."""
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    js = {k: {s: np.asarray(v).tolist() for s, v in sd.items()} for k, sd in stats.items()}
    jpath, spath = d / "stats.json", d / "stats.safetensors"
    jpath.write_text(json.dumps(js, indent=2, sort_keys=True))
    save_file(_flat(stats), str(spath), metadata={"format": "flywheel-stats-v1"})
    return jpath, spath


def load_stats(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read stats from a directory (prefers the safetensors file), a .json or a .safetensors file."""
    p = Path(path)
    if p.is_dir():
        p = p / "stats.safetensors" if (p / "stats.safetensors").exists() else p / "stats.json"
    if not p.exists():
        raise FileNotFoundError(f"no normalisation statistics at {p}")
    out: dict[str, dict[str, np.ndarray]] = {}
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        for name, v in load_file(str(p)).items():
            k, s = name.rsplit("/", 1)
            out.setdefault(k, {})[s] = v
    else:
        for k, sd in json.loads(p.read_text()).items():
            out[k] = {s: np.asarray(v, dtype=np.float64) for s, v in sd.items()}
    return out


def normalize(x: Any, stats: Mapping[str, Any], mode: str = "mean_std", eps: float = 1e-8) -> Any:
    """Normalise numpy arrays or torch tensors: ``mean_std`` or ``min_max`` (to [-1, 1])."""
    if mode == "mean_std":
        return (x - _like(stats["mean"], x)) / (_like(stats["std"], x) + eps)
    if mode == "min_max":
        lo, hi = _like(stats["min"], x), _like(stats["max"], x)
        return 2.0 * (x - lo) / (hi - lo + eps) - 1.0
    raise ValueError(f"unknown normalisation mode {mode!r}: use 'mean_std' or 'min_max'")


def unnormalize(x: Any, stats: Mapping[str, Any], mode: str = "mean_std", eps: float = 1e-8) -> Any:
    if mode == "mean_std":
        return x * (_like(stats["std"], x) + eps) + _like(stats["mean"], x)
    if mode == "min_max":
        lo, hi = _like(stats["min"], x), _like(stats["max"], x)
        return (x + 1.0) * 0.5 * (hi - lo + eps) + lo
    raise ValueError(f"unknown normalisation mode {mode!r}: use 'mean_std' or 'min_max'")


def _like(v: Any, x: Any) -> Any:
    if type(x).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(np.asarray(v), dtype=x.dtype, device=x.device)
    return np.asarray(v, dtype=np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64)
