"""The store's journal: a redundant copy of the commit metadata, to recover damaged metadata from.

``PATH/journal.jsonl`` (local stores), one JSON object a line::

    {"header": <the root attributes but the commit>, "arrays": {<array>: <its zarr.json, shape 0>}}
    {"n": 1, "t": 120, "record": {...}}     one per committed episode: the commit record after it
    {"update": {...}}                       an episode record changed later (a quarantine)

The writer appends (and fsyncs) an episode's line after its step data and
``meta/*`` rows and before the commit point, so the journal never lacks a
committed episode; a line beyond the commit (a writer killed in between) is
dropped by the next writer, which also rebuilds a journal that is missing
(stores from before the journal), torn or behind. ``flywheel-data repair``
rebuilds the root ``zarr.json``, an array's ``zarr.json`` and the ``meta/*``
arrays from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.data.store_layout import JOURNAL, ROOT_ATTR, EpisodeRecord

log = logging.getLogger(__name__)

__all__ = ["JOURNAL", "JournalState", "append", "read_journal", "rewrite", "sync"]


@dataclass
class JournalState:
    header: dict[str, Any] | None = None
    arrays: dict[str, Any] = field(default_factory=dict)
    records: list[EpisodeRecord] = field(default_factory=list)
    num_steps: int = 0
    bad_lines: int = 0  # unparseable lines (a torn append, or damage); reading stops at the first
    error: str = ""  # why the journal could not be read at all

    @property
    def num_episodes(self) -> int:
        return len(self.records)

    @property
    def usable(self) -> bool:
        return self.header is not None and not self.error

    def root_info(self) -> dict[str, Any]:
        if self.header is None:
            raise ValueError("the journal has no header")
        return {**self.header, "commit": {"num_episodes": self.num_episodes, "num_steps": self.num_steps}}


def journal_path(root: str | os.PathLike) -> Path:
    return Path(root) / JOURNAL


def read_journal(root: str | os.PathLike) -> JournalState:
    st = JournalState()
    p = journal_path(root)
    try:
        lines = p.read_bytes().splitlines()
    except OSError as e:
        st.error = f"cannot read {p}: {e.strerror or e}"
        return st
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
            if i == 0:
                st.header, st.arrays = dict(entry["header"]), dict(entry["arrays"])
            elif "update" in entry:
                rec = EpisodeRecord.from_dict(entry["update"])
                st.records[rec.index] = rec
            else:
                rec = EpisodeRecord.from_dict(entry["record"])
                if rec.index != len(st.records) or int(entry["n"]) != rec.index + 1:
                    raise ValueError(f"episode {rec.index} out of order")
                st.records.append(rec)
                st.num_steps = int(entry["t"])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            st.bad_lines = len(lines) - i
            if i == 0:
                st.error = f"{p}: the header line does not parse ({e})"
            break
    return st


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, sort_keys=True) + "\n").encode()


def append(root: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Append one line and make it durable (raises OSError)."""
    fd = os.open(journal_path(root), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
    try:
        os.write(fd, _line(entry))
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_entry(rec: EpisodeRecord, n: int, t: int) -> dict[str, Any]:
    return {"n": n, "t": t, "record": rec.to_dict()}


def array_metadata(root: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """The ``zarr.json`` of each array, with its length set to 0 (restored from the commit on repair)."""
    out = {}
    for name in names:
        meta = json.loads((Path(root) / name / "zarr.json").read_text())
        meta["shape"] = [0, *meta["shape"][1:]]
        out[name] = meta
    return out


def rewrite(root: str | os.PathLike, info: dict[str, Any], arrays: dict[str, Any],
            records: list[EpisodeRecord]) -> None:
    """Write a whole journal atomically (temporary file, fsync, rename)."""
    p = journal_path(root)
    tmp = p.with_name(p.name + ".tmp")
    header = {k: v for k, v in info.items() if k != "commit"}
    with open(tmp, "wb") as f:
        f.write(_line({"header": header, "arrays": arrays}))
        for r in records:
            f.write(_line(commit_entry(r, r.index + 1, r.end)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def _key(r: EpisodeRecord) -> tuple:
    return r.index, r.start, r.end, r.started_at, r.quarantined


def sync(root: str | os.PathLike, info: dict[str, Any], array_names: list[str],
         records: list[EpisodeRecord], raw_records: Callable[[], list[EpisodeRecord]]) -> bool:
    """Make the journal agree with the committed episodes (a writer calls this on opening).

    ``records``: the store's (compared by index, steps, start time and quarantine; the label
    sidecar may have changed others), ``raw_records``: reads them as committed, for a rewrite.
    Returns True if it was rewritten. Failing to read the arrays' metadata leaves it as it
    is (``flywheel-data check`` reports that metadata).
    """
    st = read_journal(root)
    same = (st.usable and not st.bad_lines and st.num_episodes == len(records)
            and all(_key(a) == _key(b) for a, b in zip(st.records, records, strict=False))
            and set(st.arrays) == set(array_names))
    if same:
        return False
    try:
        arrays = array_metadata(root, array_names)
        raw = raw_records()
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: not rebuilding the journal, an array's metadata does not read: %s", root, e)
        return False
    rewrite(root, {k: v for k, v in info.items() if k != "commit"}, arrays, raw)
    if st.header is not None:
        log.warning("%s: rebuilt the journal (it held %d episodes, %d committed)", root, st.num_episodes,
                    len(records))
    return True


def restore_root(root: str | os.PathLike, st: JournalState) -> None:
    """Rewrite the root ``zarr.json`` from the journal."""
    doc = {"attributes": {ROOT_ATTR: st.root_info()}, "zarr_format": 3, "node_type": "group"}
    _atomic_json(Path(root) / "zarr.json", doc)


def restore_array(root: str | os.PathLike, st: JournalState, name: str, length: int) -> None:
    """Rewrite an array's ``zarr.json`` from the journal, with ``length`` entries along time."""
    meta = dict(st.arrays[name])
    meta["shape"] = [int(length), *meta["shape"][1:]]
    (Path(root) / name).mkdir(parents=True, exist_ok=True)
    _atomic_json(Path(root) / name / "zarr.json", meta)


def _atomic_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".repair.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
