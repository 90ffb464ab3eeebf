"""The RL learner's curves for the console: success, return and intervention rate per episode.

The learner (``flywheel-rl``) logs ``episode/success``, ``episode/return`` and
``episode/intervention_rate`` against env steps to TensorBoard under ``<logdir>/tb``.
:func:`read_curves` reads them (through TensorBoard's own event reader) and returns, per
curve, at most ``max_points`` (env step, value) pairs, each the mean of a moving window over
``window`` episodes, so the page draws a smoothed curve whatever the run's length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CURVES = {"success": "episode/success", "return": "episode/return", "intervention_rate": "episode/intervention_rate"}


def smooth(steps: list[float], values: list[float], window: int = 20, max_points: int = 200) -> list[list[float]]:
    """Moving mean over ``window`` points, thinned to at most ``max_points`` (step, value) pairs."""
    if window < 1 or max_points < 2:
        raise ValueError(f"window {window} must be >= 1 and max_points {max_points} >= 2")
    if not values:
        return []
    v = np.asarray(values, float)
    w = min(window, len(v))
    c = np.cumsum(np.insert(v, 0, 0.0))
    mean = np.concatenate([c[1:w] / np.arange(1, w), (c[w:] - c[:-w]) / w])  # growing, then full windows
    idx = np.unique(np.linspace(0, len(v) - 1, min(max_points, len(v))).round().astype(int))
    return [[float(steps[i]), round(float(mean[i]), 6)] for i in idx]


def read_curves(logdir: str | Path, window: int = 20, max_points: int = 200) -> dict[str, Any]:
    """``{"curves": {name: [[step, value], ...]}, "episodes": n}`` from a learner's logdir (or its tb dir)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(logdir)
    if (path / "tb").is_dir():
        path = path / "tb"
    if not path.is_dir():
        raise FileNotFoundError(f"no learner log at {logdir} (give the flywheel-rl logdir)")
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    out: dict[str, Any] = {}
    n = 0
    for name, tag in CURVES.items():
        if tag in tags:
            ev = acc.Scalars(tag)
            n = max(n, len(ev))
            out[name] = smooth([e.step for e in ev], [e.value for e in ev], window, max_points)
    return {"curves": out, "episodes": n}
