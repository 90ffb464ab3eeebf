"""RLDG (Xu et al. 2024): distil RL specialists into the generalist by fine-tuning on their rollouts.

The generalist is fine-tuned on the successful rollouts of converged RL
specialists (``source="rl"`` in the store). The baseline is the same
generalist fine-tuned on the same number of human-like demonstrations of the
same tasks (``source="human"``: the noisy scripted operator in sim, teleop
demos on the rig). Both fine-tunings use the same steps, learning rates and
replay of the generalist's earlier training data (``replay``: the fraction of
each batch drawn from it, against forgetting), so the only difference is where
the new data came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.distill import collect
from flywheel.distill.generalist import finetune

log = logging.getLogger(__name__)


@dataclass
class RLDGConfig:
    episodes_per_task: int = 30  # successful rollouts per task used for fine-tuning
    replay: float = 0.3  # batch fraction drawn from the replay episodes (0: new data only)


def pick_episodes(store: Any, tasks: Sequence[str], source: str | Sequence[str], n: int,
                  collection: str | Sequence[str] | None = None) -> list[int]:
    """``n`` successful episodes per task from ``source`` (oldest first); fails if a task has too few."""
    out: list[int] = []
    for t in tasks:
        idx = collect.select(store, task=t, source=source, collection=collection, success=True)
        if not idx:
            raise ValueError(f"no successful {source} episodes of {t} in {store.path}: collect them first")
        if len(idx) < n:
            log.warning("%s: only %d successful %s episodes (wanted %d)", t, len(idx), source, n)
        out += idx[:n]
    return out


def mix_weights(new: Sequence[int], replay: Sequence[int], replay_fraction: float) -> tuple[list[int], list[float] | None]:
    """Episodes and per-episode weights so that ``replay_fraction`` of the samples come from ``replay``."""
    fresh = set(new)
    replay = [i for i in replay if i not in fresh]
    if not replay or replay_fraction <= 0:
        return list(new), None
    w_new = (1 - replay_fraction) / len(new)
    w_old = replay_fraction / len(replay)
    return list(new) + list(replay), [w_new] * len(new) + [w_old] * len(replay)


def distill(
    parent: str | Path,
    store: Any,
    tasks: Sequence[str],
    out_dir: str | Path,
    sft: Any,
    cfg: Any,
    *,
    source: str | Sequence[str] = "rl",
    replay_episodes: Sequence[int] = (),
    collection: str | Sequence[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``parent`` on successful ``source`` episodes of ``tasks``; returns (checkpoint, data used).

    ``source="rl"`` is RLDG; ``source="human"`` is the human-demo baseline.
    """
    new = pick_episodes(store, tasks, source, int(cfg.episodes_per_task), collection)
    eps, weights = mix_weights(new, replay_episodes, float(cfg.replay))
    ckpt = finetune(parent, store, eps, out_dir, sft, weights=weights)
    steps = sum(store.record(i).length for i in new)
    data = {"source": source if isinstance(source, str) else list(source), "tasks": list(tasks), "episodes": new, "steps": steps,
            "replay_episodes": len(eps) - len(new), "replay_fraction": float(cfg.replay) if weights else 0.0}
    return ckpt, data
