"""Batches that mix sample groups at set ratios (RLPD's symmetric 50/50 demo/online sampling).

RLPD (Ball et al. 2023) draws half of every batch from the offline demonstrations
and half from the online replay, however large either grows. Here the groups are
index sets into one dataset (e.g. by episode source, from
``EpisodeDataset.sources``) or into a ``ConcatDataset`` of several stores (use
:func:`concat_groups`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def groups_by_source(sources: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
    """Sample indices per source label."""
    s = np.asarray(sources)
    return {str(v): np.flatnonzero(s == v) for v in np.unique(s)}


def concat_groups(lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Index groups of a ConcatDataset built from datasets of these lengths, in this order."""
    out, off = {}, 0
    for name, n in lengths.items():
        out[name] = np.arange(off, off + n)
        off += n
    return out


class MixedBatchSampler:
    """Yields batches with ``round(ratio * batch_size)`` samples from each group, with replacement.

    ``ratios`` are normalised to sum to 1; the largest-remainder rule makes the counts add up
    to ``batch_size`` exactly. Pass it as a DataLoader's ``batch_sampler`` (it needs no torch). A group with a positive ratio but no samples is an error (it
    names the group), since silently re-weighting would change the algorithm.
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[int] | np.ndarray],
        ratios: Mapping[str, float],
        batch_size: int,
        num_batches: int,
        seed: int = 0,
    ) -> None:
        unknown = sorted(set(ratios) - set(groups))
        if unknown:
            raise KeyError(f"ratios name groups {unknown} that do not exist; groups: {sorted(groups)}")
        if any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
            raise ValueError(f"ratios must be >= 0 with a positive sum, got {dict(ratios)}")
        self.groups = {k: np.asarray(groups[k], dtype=np.int64) for k in ratios if ratios[k] > 0}
        empty = [k for k, v in self.groups.items() if len(v) == 0]
        if empty:
            raise ValueError(f"groups {empty} have a positive ratio but no samples")
        total = sum(ratios[k] for k in self.groups)
        exact = {k: ratios[k] / total * batch_size for k in self.groups}
        counts = {k: int(np.floor(v)) for k, v in exact.items()}
        for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: batch_size - sum(counts.values())]:
            counts[k] += 1
        self.counts = counts
        self.batch_size = int(batch_size)
        self.num_batches = int(num_batches)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        for _ in range(self.num_batches):
            parts = [rng.choice(self.groups[k], size=c, replace=True) for k, c in self.counts.items() if c]
            batch = np.concatenate(parts)
            rng.shuffle(batch)
            yield batch.tolist()


def episode_probabilities(episode_of_sample: np.ndarray, weights: Sequence[float],
                          keep: np.ndarray | None = None) -> np.ndarray:
    """Per-sample probabilities from per-episode ``weights`` (indexed by ``episode_of_sample``), each
    episode's weight spread evenly over its samples: episode ``i`` is drawn with ``weights[i] / sum``.
    ``keep`` (per-sample bool): only those samples are drawn, each episode's weight spread over its kept
    samples; an episode with none kept drops out (the others' weights renormalised)."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights={list(np.atleast_1d(w))}: must be finite, >= 0 and not all 0")
    ep = np.asarray(episode_of_sample, np.int64)
    k = np.ones(len(ep), bool) if keep is None else np.asarray(keep, bool)
    if k.shape != ep.shape:
        raise ValueError(f"keep: {k.shape} for {ep.shape} samples")
    counts = np.bincount(ep[k], minlength=len(w))
    pw = np.where(k, w[ep] / np.maximum(counts[ep], 1), 0.0)
    if pw.sum() <= 0:
        raise ValueError("no sample left to draw: every episode with weight has no kept sample")
    return pw / pw.sum()


class RandomBatchSampler:
    """Random batches of sample indices from one generator seeded once (every pass continues its stream).

    With per-sample probabilities ``p`` (e.g. :func:`episode_probabilities`) each batch draws
    ``batch_size`` samples with replacement, so that every draw follows ``p``; without, ``replace=True``
    draws with replacement and ``replace=False`` draws ``min(batch_size, n)`` distinct samples.
    ``num_batches`` per pass (default ``max(1, n // batch_size)``). Pass it as a DataLoader's
    ``batch_sampler`` (e.g. through :func:`flywheel.data.loader.random_batches`).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, p: np.ndarray | None = None,
                 replace: bool = True, num_batches: int | None = None) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"RandomBatchSampler: needs n >= 1 samples and batch_size >= 1, got {n}, {batch_size}")
        if p is not None and len(p) != n:
            raise ValueError(f"RandomBatchSampler: {len(p)} probabilities for {n} samples")
        self.n, self.batch_size, self.p, self.replace = int(n), int(batch_size), p, bool(replace)
        self.num_batches = int(num_batches) if num_batches is not None else max(1, self.n // self.batch_size)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.num_batches):
            if self.p is not None or self.replace:
                idx = self.rng.choice(self.n, size=self.batch_size, p=self.p)
            else:
                idx = self.rng.choice(self.n, size=min(self.batch_size, self.n), replace=False)
            yield idx.tolist()
