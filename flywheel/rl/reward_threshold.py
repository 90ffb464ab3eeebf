"""Choosing the reward classifier's threshold for a target precision, and the episode-level view.

Pure numpy on per-frame scores ``p(success)``, labels and episode ids (frames of one episode
contiguous and in time order). The reward fires on a frame when the last ``consecutive``
frames of its episode all score above the threshold (:func:`fires`).

For RL the episode-level numbers matter: the first firing ends the episode with a success, so
an episode is a *false positive* when the reward fires before the true success (or in an
episode that never succeeds), and a *detected* success when its first firing is at or after
the true success (:func:`episode_metrics`).

:func:`choose_threshold` picks the smallest threshold whose frame-level precision and
episode-level precision (detected / fired episodes) on held-out episodes both reach the target
(placed midway between neighbouring held-out scores).
"""

from __future__ import annotations

import numpy as np


def fires(scores: np.ndarray, groups: np.ndarray, threshold: float, consecutive: int = 1) -> np.ndarray:
    """Per frame: the last ``consecutive`` frames of its episode (itself included) all score > threshold."""
    if consecutive < 1:
        raise ValueError(f"consecutive={consecutive}: must be >= 1")
    pos = np.asarray(scores) > threshold
    groups = np.asarray(groups)
    out = pos.copy()
    for j in range(1, consecutive):
        prev = np.zeros_like(pos)
        prev[j:] = pos[:-j] & (groups[j:] == groups[:-j])
        out &= prev
    return out


def precision_recall(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Frame-level precision, recall and accuracy of boolean predictions."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0,
        "positives": float(labels.sum()), "n": float(len(labels)),
    }


def episode_metrics(fired: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Episode-level view of per-frame firings against per-frame success labels.

    ``false_positives_per_100``: episodes whose first firing comes before the true success
    (or that never succeed), per 100 episodes. ``episode_recall``: successful episodes whose
    first firing is at or after the success. ``episode_precision``: detected / fired episodes.
    ``delay_steps``: mean frames from the true success to the firing, over detected episodes.
    """
    fired, labels, groups = np.asarray(fired, bool), np.asarray(labels, bool), np.asarray(groups)
    n = fp = detected = successes = 0
    delays: list[int] = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        f, y = fired[idx], labels[idx]
        first_fire = int(np.argmax(f)) if f.any() else None
        first_success = int(np.argmax(y)) if y.any() else None
        n += 1
        successes += first_success is not None
        if first_fire is None:
            continue
        if first_success is None or first_fire < first_success:
            fp += 1
        else:
            detected += 1
            delays.append(first_fire - first_success)
    fired_eps = fp + detected
    return {
        "episodes": float(n), "successful_episodes": float(successes),
        "false_positive_episodes": float(fp),
        "false_positives_per_100": 100.0 * fp / n if n else 0.0,
        "episode_recall": detected / successes if successes else 0.0,
        "episode_precision": detected / fired_eps if fired_eps else 0.0,
        "delay_steps": float(np.mean(delays)) if delays else 0.0,
    }


def evaluate(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, threshold: float,
             consecutive: int = 1) -> dict[str, float]:
    """Frame-level precision/recall and the episode-level metrics at one threshold."""
    f = fires(scores, groups, threshold, consecutive)
    return {**precision_recall(f, labels), **episode_metrics(f, labels, groups),
            "threshold": float(threshold), "consecutive": float(consecutive)}


def choose_threshold(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, target_precision: float = 0.95,
                     consecutive: int = 1, episode_level: bool = True, max_candidates: int = 400
                     ) -> dict[str, float]:
    """The smallest threshold above which the held-out precision stays at ``target_precision``.

    Precision is the frame-level one and, with ``episode_level``, the episode-level one too
    (detected / fired episodes: a firing before the true success is a false positive). The
    frame-level precision must hold both for the ``consecutive`` firings and for every single
    frame scoring above the cut: the run length is then a margin for fresh episodes, not a
    licence for a lower threshold (which, on a small held-out set, lands inside the negatives). The
    threshold is the smallest cut that fires on some frame and from which every higher cut
    meets the target (cuts that fire nothing count as meeting it): an isolated lucky cut
    below a failing one is not taken. Candidates are cuts midway between neighbouring
    held-out scores (with many frames, between ``max_candidates`` of their quantiles), a
    margin on both sides for fresh frames. When no cut qualifies, the one with the highest
    frame precision is returned with ``target_met = 0``. Returns :func:`evaluate` at the
    chosen threshold plus ``target_met``.
    """
    scores = np.asarray(scores, np.float64)
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision={target_precision}: must be in (0, 1]")
    if len(scores) == 0:
        raise ValueError("no held-out frames to choose a threshold on")
    cand = np.unique(scores)
    if len(cand) > max_candidates:
        cand = np.unique(np.quantile(scores, np.linspace(0, 1, max_candidates)))
    cuts = np.concatenate([[cand[0] / 2], (cand[:-1] + cand[1:]) / 2])
    chosen: dict[str, float] | None = None
    best: dict[str, float] | None = None
    for t in cuts[::-1]:  # from the top down, while every cut meets the target
        m = evaluate(scores, labels, groups, float(t), consecutive)
        if best is None or m["precision"] > best["precision"]:
            best = m
        if not fires(scores, groups, float(t), consecutive).any():
            continue
        frame_p = min(m["precision"], precision_recall(scores > t, labels)["precision"])
        if frame_p < target_precision or (episode_level and m["episode_precision"] < target_precision):
            break
        chosen = m
    if chosen is not None:
        return {**chosen, "target_met": 1.0}
    assert best is not None
    return {**best, "target_met": 0.0}
