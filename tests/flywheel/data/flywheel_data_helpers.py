"""Helpers for the data tests: a small rig spec and deterministic episodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rig.spec import CameraSpec, RigSpec


def small_spec(size: int = 32, depth: bool = True) -> RigSpec:
    return RigSpec(cameras=(CameraSpec("front", size, size + 8, depth=depth), CameraSpec("wrist", size, size)))


def make_episode(spec: RigSpec, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic episode: smooth images (JPEG-friendly), every state key, actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for k, s in spec.observation_specs().items():
        if k.startswith("images/"):
            h, w, _ = s.shape
            yy, xx = np.mgrid[0:h, 0:w]
            t = np.arange(n)[:, None, None]
            base = (xx * 4 + yy * 2 + t * 3 + seed * 10) % 200 + 20
            out[k] = np.stack([base, base // 2 + 30, 255 - base], axis=-1).astype(np.uint8)
        elif k.startswith("depth/"):
            out[k] = rng.integers(0, 5000, size=(n, *s.shape)).astype(np.uint16)
        else:
            out[k] = rng.standard_normal((n, *s.shape)).astype(np.float32)
    out["action"] = rng.uniform(-1, 1, size=(n, spec.action.dim)).astype(np.float32)
    out["reward"] = rng.standard_normal(n).astype(np.float32)
    out["intervention"] = rng.random(n) < 0.3
    out["timestamp"] = 1.7e9 + np.arange(n) * 0.1 + seed
    return out


def step(ep: dict[str, np.ndarray], spec: RigSpec, i: int) -> dict:
    obs = {k: ep[k][i] for k in spec.observation_specs()}
    return dict(obs=obs, action=ep["action"][i], reward=float(ep["reward"][i]),
                intervention=bool(ep["intervention"][i]), timestamp=float(ep["timestamp"][i]))


def write_store(path: str | Path, spec: RigSpec, lengths: Sequence[int],
                meta: Callable[[int], dict[str, Any]]) -> Path:
    """A new store at ``path`` holding ``make_episode(spec, n, seed=i)`` for each ``n`` of ``lengths``;
    ``meta(i)`` gives episode ``i``'s ``add_episode`` keywords (task, source, success, ...)."""
    from flywheel.data import EpisodeStore

    with EpisodeStore(path, "w", spec) as s:
        for i, n in enumerate(lengths):
            s.add_episode(make_episode(spec, n, seed=i), **meta(i))
    return Path(path)
