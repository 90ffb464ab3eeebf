"""The review queue: which of the reward classifier's positives the operator audits, and what the audit says.

A false success silently becomes training data, so the console samples the classifier's
positives for a one-click confirm/reject. The sampling rule (:func:`review_rate`) is pure:

* all of them while fewer than ``min_audits`` have been reviewed (a new classifier);
* then a rate that follows an upper confidence bound on the false-positive share
  ``fp_ub = 1 - wilson_lower(confirmed, reviewed)``: ``rate = fp_ub / full_review_fp``,
  clipped to ``[min_rate, 1]``. A classifier whose precision might be 0.8 or worse is
  reviewed in full; one at 0.99 (bound) about every 20th positive, never less than ``min_rate``.

Whether an episode is sampled (:func:`sampled`) is a hash of its key against the rate at the
time it entered the queue, so a restart gives the same queue and the sample is independent of
the episode's content. The audit (:func:`audit`) weighs each review by the inverse of its
sampling rate (Horvitz-Thompson), so precision and false positives per 100 episodes stay
unbiased when the rate changes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReviewPolicy:
    min_audits: int = 20  # review every positive until this many are reviewed
    full_review_fp: float = 0.2  # review all while the false-positive share's upper bound is at least this
    min_rate: float = 0.05  # never review fewer than this share of positives
    z: float = 1.96  # confidence of the bound (1.96: 95 %, two-sided)

    def __post_init__(self) -> None:
        if self.min_audits < 0:
            raise ValueError(f"min_audits {self.min_audits}: must be >= 0")
        if not 0.0 < self.full_review_fp <= 1.0:
            raise ValueError(f"full_review_fp {self.full_review_fp}: must be in (0, 1]")
        if not 0.0 < self.min_rate <= 1.0:
            raise ValueError(f"min_rate {self.min_rate}: must be in (0, 1]")
        if not self.z > 0.0:
            raise ValueError(f"z {self.z}: must be > 0")


def wilson_lower(successes: int, n: int, z: float = 1.96) -> float:
    """Wilson score lower bound of a binomial proportion (0 when ``n`` is 0)."""
    if n <= 0:
        return 0.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} must be in [0, n={n}]")
    p = successes / n
    den = 1.0 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / den)


def review_rate(confirmed: int, rejected: int, policy: ReviewPolicy = ReviewPolicy()) -> float:
    """The share of new classifier positives to review, given the reviews so far (module docstring)."""
    if confirmed < 0 or rejected < 0:
        raise ValueError(f"confirmed {confirmed} and rejected {rejected} must be >= 0")
    n = confirmed + rejected
    if n < policy.min_audits:
        return 1.0
    fp_ub = 1.0 - wilson_lower(confirmed, n, policy.z)
    return min(1.0, max(policy.min_rate, fp_ub / policy.full_review_fp))


def unit_hash(key: str) -> float:
    """A uniform number in [0, 1) fixed by ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def sampled(key: str, rate: float) -> bool:
    """Whether the episode ``key`` is reviewed at ``rate`` (deterministic; ``rate`` 1 takes all)."""
    return unit_hash(key) < rate


def episode_key(record: Any) -> str:
    """The stable key of a store record (index and start time: a replaced store gives new keys)."""
    return f"{int(record.index)}@{float(record.started_at):.6f}"


def is_classifier_positive(record: Any) -> bool:
    """A committed success that a learned classifier (not a person) labelled.

    ``extra["success_by"]`` says who labelled it when the writer knows (``classifier``,
    ``operator``); without it, successes of policy or RL episodes count (their ``success``
    events come from the env adapter's reward classifier), human teleop ones do not.
    """
    review = record.extra.get("review") if isinstance(record.extra, Mapping) else None
    was = review.get("previous") if isinstance(review, Mapping) else record.success
    if was is not True:
        return False
    by = record.extra.get("success_by") if isinstance(record.extra, Mapping) else None
    if by is not None:
        return by == "classifier"
    return record.source in ("policy", "rl")


@dataclass(frozen=True)
class Audit:
    reviewed: int
    confirmed: int
    rejected: int
    precision: float | None  # weighted share of confirmed reviews (None before any review)
    fp_per_100: float | None  # estimated false positives per 100 episodes
    rate: float  # the review rate for the next positive

    def as_dict(self) -> dict[str, Any]:
        return {"reviewed": self.reviewed, "confirmed": self.confirmed, "rejected": self.rejected,
                "precision": self.precision, "fp_per_100": self.fp_per_100, "rate": self.rate}


def audit(reviews: Iterable[tuple[bool, float]], num_episodes: int, policy: ReviewPolicy = ReviewPolicy()) -> Audit:
    """Audited precision and false positives per 100 episodes from ``(confirmed, rate)`` reviews.

    Each review counts ``1 / rate`` positives (the rate at which it was sampled); ``num_episodes``
    is every committed episode the classifier's positives came from.
    """
    w_ok = w_bad = 0.0
    n_ok = n_bad = 0
    for ok, rate in reviews:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"review rate {rate}: must be in (0, 1]")
        if ok:
            w_ok, n_ok = w_ok + 1.0 / rate, n_ok + 1
        else:
            w_bad, n_bad = w_bad + 1.0 / rate, n_bad + 1
    total = w_ok + w_bad
    precision = w_ok / total if total > 0 else None
    fp_per_100 = 100.0 * w_bad / num_episodes if num_episodes > 0 and total > 0 else None
    return Audit(n_ok + n_bad, n_ok, n_bad, precision, fp_per_100, review_rate(n_ok, n_bad, policy))


START_TOLERANCE = 1.0  # s between a start event the console saw and the record's started_at


class ReviewQueue:
    """The classifier positives of one episode store awaiting review, and the audit so far.

    Opens the store read-only (a recorder may be writing it) and relabels through the store's
    label sidecar (:mod:`flywheel.data.labels`). Not thread-safe: one owner calls it.
    """

    def __init__(self, store_path: str, policy: ReviewPolicy = ReviewPolicy()) -> None:
        self.path = str(store_path)
        self.policy = policy
        self.store: Any = None
        self._decided: dict[str, float] = {}  # episode key -> sampling rate (0: not sampled)
        self.error = ""
        self.classifier_starts: list[float] = []  # episodes the console saw the classifier call (start times)
        self._observed: set[int] = set()

    def is_positive(self, rec: Any) -> bool:
        """A classifier positive: by its record (:func:`is_classifier_positive`), or the success whose
        start is the nearest (within :data:`START_TOLERANCE` s) to one the console saw the classifier call."""
        return is_classifier_positive(rec) or rec.index in self._observed

    def _match_observed(self) -> None:
        successes = []
        for r in self.records:
            review = r.extra.get("review") if isinstance(r.extra, Mapping) else None
            if (review.get("previous") if isinstance(review, Mapping) else r.success) is True:
                successes.append(r)
        for s in self.classifier_starts:
            best = min(successes, key=lambda r: abs(float(r.started_at) - s), default=None)
            if best is not None and abs(float(best.started_at) - s) <= START_TOLERANCE:
                self._observed.add(best.index)

    def refresh(self) -> None:
        """See newly committed episodes; sample the new classifier positives at the current rate."""
        from flywheel.data import EpisodeStore
        from flywheel.data.labels import apply_labels
        from flywheel.data.store import StoreError

        try:
            if self.store is None:
                self.store = EpisodeStore(self.path, "r")
            else:
                self.store.refresh()
            self.error = ""
        except (StoreError, OSError, KeyError, ValueError) as e:  # not created yet, or being replaced
            self.store, self.error = None, f"{type(e).__name__}: {e}"
            return
        apply_labels(self.path, self.store._records)  # the reviews so far (also when the store applies them)
        self._match_observed()
        rate = self.audit().rate
        for rec in self.store.records:
            key = episode_key(rec)
            if key in self._decided or not self.is_positive(rec):
                continue
            review = rec.extra.get("review")
            if isinstance(review, Mapping):  # reviewed before (another console, an earlier session)
                self._decided[key] = float(review.get("rate", 1.0))
            else:
                self._decided[key] = rate if sampled(key, rate) else 0.0

    @property
    def records(self) -> list[Any]:
        return self.store.records if self.store is not None else []

    def pending(self) -> list[Any]:
        """Sampled positives not yet reviewed, oldest first."""
        return [r for r in self.records if self._decided.get(episode_key(r), 0.0) > 0.0
                and not isinstance(r.extra.get("review"), Mapping)]

    def _reviews(self, skip: int | None = None) -> list[tuple[bool, float]]:
        out = []
        for r in self.records:
            rv = r.extra.get("review")
            if isinstance(rv, Mapping) and rv.get("by") == "operator" and r.index != skip \
                    and self.is_positive(r):
                out.append((rv.get("verdict") == "confirm", float(rv.get("rate", 1.0))))
        return out

    def audit(self) -> Audit:
        return audit(self._reviews(), len(self.records), self.policy)

    def review(self, index: int, verdict: str) -> Any:
        """Confirm or reject positive ``index``: relabel it in the store, with the audit after it."""
        if verdict not in ("confirm", "reject"):
            raise ValueError(f"verdict {verdict!r}: must be confirm or reject")
        if self.store is None:
            raise LookupError(f"no episode store at {self.path} yet")
        rec = next((r for r in self.records if r.index == index), None)
        if rec is None or not self.is_positive(rec):
            raise LookupError(f"episode {index} is not a classifier positive of {self.path}")
        from flywheel.data.labels import append_label, apply_labels

        rate = self._decided.get(episode_key(rec)) or 1.0
        ok = verdict == "confirm"
        after = audit([*self._reviews(skip=index), (ok, rate)], len(self.records), self.policy)
        append_label(self.path, rec, ok, verdict, "operator", rate=rate, audit=after.as_dict())
        apply_labels(self.path, self.store._records)
        return next(r for r in self.records if r.index == index)
