"""Operator labels beside an episode store: the review of an episode's success, kept in a sidecar.

An episode's ``success`` is written once, when it is committed (by the operator's key, or by
the reward classifier through the env adapter). The operator's console audits the
classifier's positives afterwards, while a recorder may still hold the store's writer lock, so
a review never rewrites the store: it is appended to ``PATH.labels.jsonl`` (next to the
store, like ``PATH.writer.lock``), one JSON object a line::

    {"index": 3, "started_at": 1790000000.1, "success": false, "previous": true,
     "verdict": "reject", "by": "operator", "at": 1790000100.2, "audit": {...}}

Every :class:`~flywheel.data.store.EpisodeStore` applies the sidecar to its records when it
loads or refreshes them (:func:`apply_labels`): the latest line of an episode sets its
``success`` and puts the line in ``record.extra["review"]`` (``previous`` is the label before
the review). A line whose ``started_at`` differs from the record's (the store was replaced)
is ignored. Appends take an exclusive ``flock``; remote (fsspec) stores have no sidecar.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".labels.jsonl"
VERDICTS = ("confirm", "reject")
_cache: dict[str, tuple[tuple[int, int], dict[int, dict[str, Any]]]] = {}


def labels_path(store_path: str | os.PathLike) -> Path | None:
    """The sidecar of a local store (None for a remote one)."""
    s = str(store_path)
    if "://" in s and not s.startswith("file://"):
        return None
    p = Path(s[len("file://"):] if s.startswith("file://") else s)
    return p.parent / (p.name + SUFFIX)


def read_labels(store_path: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Episode index -> its latest label line (cached until the file changes)."""
    path = labels_path(store_path)
    if path is None:
        return {}
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    key = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    out: dict[int, dict[str, Any]] = {}
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out[int(d["index"])] = d
            except (ValueError, KeyError, TypeError) as e:  # a torn last line: skip it, say where
                log.warning("%s line %d ignored: %s", path, n, e)
    _cache[str(path)] = (key, out)
    return out


def apply_labels(store_path: str | os.PathLike, records: list[Any]) -> int:
    """Apply the sidecar's labels to ``records`` (EpisodeRecords, in place); returns how many apply."""
    labels = read_labels(store_path)
    applied = 0
    for rec in records:
        d = labels.get(rec.index)
        if d is None or abs(float(d.get("started_at", -1.0)) - float(rec.started_at)) > 1e-6:
            continue
        rec.success = None if d.get("success") is None else bool(d["success"])
        rec.extra = {**rec.extra, "review": d}
        applied += 1
    return applied


def append_label(store_path: str | os.PathLike, record: Any, success: bool, verdict: str,
                 by: str = "operator", **extra: Any) -> dict[str, Any]:
    """Append a review of ``record`` (an EpisodeRecord) to the sidecar; returns the line written."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} must be one of {VERDICTS}")
    path = labels_path(store_path)
    if path is None:
        raise ValueError(f"store {store_path}: labels need a local store (the sidecar is a local file)")
    review = record.extra.get("review") if isinstance(record.extra, dict) else None
    previous = review.get("previous") if isinstance(review, dict) else record.success
    line = {"index": int(record.index), "started_at": float(record.started_at), "success": bool(success),
            "previous": previous, "verdict": verdict, "by": str(by), "at": time.time(), **extra}
    text = json.dumps(line, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return line
