"""Finding and containing damage in an episode store (the engine of ``flywheel-data check|repair``).

:func:`scan` reads every chunk of every array once and names what does not read
(the array, the chunk file, the episodes that overlap it) and keeps going.
:func:`repair` first rebuilds damaged metadata from the journal (the root
``zarr.json``, an array's ``zarr.json``, the ``meta/*`` arrays), then overwrites
each damaged data chunk with the fill value and quarantines every episode that
overlapped it, so the rest of the store reads as before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data import journal
from flywheel.data.store import EpisodeStore
from flywheel.data.store_layout import ROOT_ATTR, StoreError, chunk_file, is_local, local_path
from flywheel.data.store_writer import write_image_chunk

log = logging.getLogger(__name__)


@dataclass
class Damage:
    array: str  # e.g. "data/action"
    start: int  # damaged steps [start, end)
    end: int
    file: str
    what: str
    episodes: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.array} steps [{self.start}, {self.end}): {self.what} ({self.file})"


def scan(s: EpisodeStore, *, decode_images: bool = True) -> list[Damage]:
    """Every chunk of committed steps that is missing, does not decode, or holds NaN/Inf where it must not."""
    out: list[Damage] = []
    t = s.num_steps
    every_chunk = bool(s.info.get("every_chunk_written")) and is_local(s.path)
    for key in s.keys:
        name = f"data/{key}"
        try:
            arr = s._array(key)
        except StoreError as e:
            out.append(Damage(name, 0, t, f"{s.path}/{name}/zarr.json", str(e).split(": ", 1)[-1],
                              s.episodes_at(0, t)))
            continue
        if t == 0:
            continue
        c = int(arr.chunks[0])
        dims = len(s.array_specs[key].shape)
        image = key.startswith(("images/", "depth/"))
        for i in range(-(-t // c)):
            lo, hi = i * c, min((i + 1) * c, t)
            f = chunk_file(f"{s._local_root or s.path}/data", key, dims, i)
            what = ""
            if (every_chunk or key.startswith("images/")) and is_local(s.path) and not os.path.exists(f):
                what = "chunk file missing"
            elif not image or decode_images:
                try:
                    v = s.read_image(key, lo)[None] if image else np.asarray(arr[lo:hi])
                    if v.dtype.kind == "f" and key != "timestamp" and not np.isfinite(v).all():
                        what = "NaN or Inf in the values"
                    elif key == "action" and np.abs(v).max() > 1 + 1e-6:
                        what = f"actions outside [-1, 1] (max {float(np.abs(v).max()):.3g})"
                except Exception as e:  # noqa: BLE001 - any failure to read is damage
                    what = _short(e) if isinstance(e, StoreError) else "does not decode: " + _short(e)
            if what:
                out.append(Damage(name, lo, hi, f, what, s.episodes_at(lo, hi)))
    return out


def _short(e: BaseException) -> str:
    msg = str(e)
    if isinstance(e, StoreError) and "does not read: " in msg:  # from read/read_image: keep its cause
        return msg.split("does not read: ", 1)[1].split("; run `flywheel-data", 1)[0][:300]
    return f"{type(e).__name__}: {msg}"[:300]


# ------------------------------------------------------------------- repair
def _reads_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _root_ok(root: Path) -> bool:
    try:
        return ROOT_ATTR in json.loads((root / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def repair_metadata(path: str) -> list[str]:
    """Rebuild the root ``zarr.json``, arrays' ``zarr.json`` and ``meta/*`` from the journal where damaged."""
    if not is_local(path):
        raise StoreError(f"{path}: repair works on local stores only")
    root = local_path(path)
    if not (root / "zarr.json").exists() and not journal.journal_path(root).exists():
        raise StoreError(f"no episode store at {path}")
    st = journal.read_journal(root)
    done: list[str] = []

    def need_journal(what: str) -> None:
        if not st.usable:
            raise StoreError(f"{path}: {what} is damaged and there is no usable journal to rebuild it from "
                             f"({st.error or 'no header'})")

    if not _root_ok(root):
        need_journal(f"the root metadata {root}/zarr.json")
        journal.restore_root(root, st)
        done.append(f"rebuilt {root}/zarr.json from the journal ({st.num_episodes} episodes, "
                    f"{st.num_steps} steps)")
    commit = json.loads((root / "zarr.json").read_text())["attributes"][ROOT_ATTR]["commit"]
    n, t = int(commit["num_episodes"]), int(commit["num_steps"])
    for name in st.arrays if st.usable else []:
        if not _reads_json(root / name / "zarr.json"):
            journal.restore_array(root, st, name, n if name.startswith("meta/") else t)
            done.append(f"rebuilt {root}/{name}/zarr.json from the journal")
    if st.usable and st.num_episodes >= n:
        done += _restore_meta_arrays(path, st, n)
    elif not _meta_ok(path, n):
        need_journal("the episode metadata (meta/*)")
    return done


def _meta_ok(path: str, n: int) -> bool:
    import zarr

    try:
        ends = zarr.open_array(path, path="meta/episode_ends", mode="r")[:n]
        recs = zarr.open_array(path, path="meta/episodes", mode="r")[:n]
        return len(ends) == n and len(recs) == n and all(json.loads(str(r)) is not None for r in recs)
    except Exception:  # noqa: BLE001
        return False


def _restore_meta_arrays(path: str, st: journal.JournalState, n: int) -> list[str]:
    """Rewrite meta/episode_ends and meta/episodes from the journal if they do not read or disagree."""
    import zarr

    recs = st.records[:n]
    want_ends = np.array([r.end for r in recs], np.int64)
    want_texts = [r.to_json() for r in recs]
    try:
        ends = np.asarray(zarr.open_array(path, path="meta/episode_ends", mode="r")[:n], np.int64)
        texts = [str(x) for x in zarr.open_array(path, path="meta/episodes", mode="r")[:n]]
        if np.array_equal(ends, want_ends) and [json.loads(x) for x in texts] == [json.loads(x) for x in want_texts]:
            return []
    except Exception:  # noqa: BLE001 - damaged: rewritten below
        pass
    root = local_path(path)
    for name, values in (("meta/episode_ends", want_ends), ("meta/episodes", np.array(want_texts, dtype=str))):
        shutil.rmtree(root / name / "c", ignore_errors=True)
        a = zarr.open_array(path, path=name, mode="r+")
        a.resize((n,))
        if n:
            a[:] = values
    return [f"rewrote meta/episode_ends and meta/episodes ({n} episodes) from the journal"]


def repair(path: str, *, decode_images: bool = True) -> list[str]:
    """Make the store at ``path`` readable again; returns what was done (empty: nothing to do).

    Damaged metadata is rebuilt from the journal; each damaged data chunk is overwritten with the
    fill value and every episode overlapping it is quarantined (its record says why).
    """
    done = repair_metadata(path)
    with EpisodeStore(path, "a") as s:
        damage = scan(s, decode_images=decode_images)
        for d in damage:
            if d.file.endswith("zarr.json"):
                raise StoreError(f"{path}: {d}; the journal cannot rebuild it")
            _overwrite_chunk(s, d)
            done.append(f"overwrote the damaged chunk {d.file} ({d.array} steps [{d.start}, {d.end}))")
        reasons: dict[int, list[str]] = {}
        for d in damage:
            for i in d.episodes:
                reasons.setdefault(i, []).append(f"{d.array} steps [{d.start}, {d.end}): {d.what}")
        for i, why in sorted(reasons.items()):
            if not s.record(i).quarantined:
                s.quarantine(i, "; ".join(why)[:500])
                done.append(f"quarantined episode {i}: {'; '.join(why)[:200]}")
    return done


def _overwrite_chunk(s: EpisodeStore, d: Damage) -> None:
    key = d.array[len("data/"):]
    spec = s.array_specs[key]
    Path(d.file).unlink(missing_ok=True)
    zeros = np.zeros((d.end - d.start, *spec.shape), spec.dtype)
    codec = s._direct_codec(key)
    if codec is not None:
        for step in range(d.start, d.end):
            write_image_chunk(s, key, step, codec, zeros[0])
    else:
        s._array(key)[d.start:d.end] = zeros


def summary(damage: list[Damage]) -> dict[int, list[Any]]:
    """Damaged episode -> its damage."""
    out: dict[int, list[Any]] = {}
    for d in damage:
        for i in d.episodes:
            out.setdefault(i, []).append(d)
    return out
