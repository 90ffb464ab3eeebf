"""Integrity check and summary of an episode store (the engine of ``flywheel-data check|info``)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.data.store import EpisodeStore, _is_local, _local_path


@dataclass
class Problem:
    severity: str  # "error" (data is wrong or unreadable) or "warning" (leftovers, nothing lost)
    where: str
    what: str
    episodes: tuple[int, ...] = ()  # the committed episodes it makes unreadable

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.where}: {self.what}"


def check_store(path: str, *, decode_images: bool = True, max_problems: int = 100) -> list[Problem]:
    """Every problem found in the store at ``path`` (empty list: healthy); damaged episodes are named.

    It keeps going past damage: each unreadable chunk is one problem naming its array, file and
    episodes (at most ``max_problems`` listed), and a last problem lists every damaged episode.
    """
    from flywheel.data.damage import scan

    probs: list[Problem] = []

    def add(sev: str, where: str, what: str, episodes: tuple[int, ...] = ()) -> None:
        if len(probs) < max_problems:
            probs.append(Problem(sev, where, what, episodes))

    if _is_local(path) and (_local_path(path) / "zarr.json").exists():
        _check_journal(path, add)
    try:
        s = EpisodeStore(path, "r")
    except Exception as e:  # noqa: BLE001 - report whatever stops the store from opening
        return [*probs, Problem("error", path, f"cannot open the store: {e}")]
    t = s.num_steps
    ends = s.episode_ends
    if np.any(np.diff(np.concatenate([[0], ends])) <= 0):
        add("error", "meta/episode_ends", f"not strictly increasing: {ends.tolist()[:20]}")
    prev = 0
    for r in s.records:
        where = f"episode {r.index}"
        if (r.start, r.end) != (prev, int(ends[r.index])):
            add("error", where, f"record spans [{r.start}, {r.end}) but episode_ends give [{prev}, {ends[r.index]})",
                (r.index,))
        prev = int(ends[r.index])
        if r.source not in ("human", "policy", "rl"):
            add("error", where, f"unknown source {r.source!r}")
        if r.quarantined:
            add("warning", where, f"quarantined: {r.quarantined}")
    for key in s.keys:
        try:
            a = s._array(key)
        except Exception:  # noqa: BLE001 - scan() reports it with the episodes it costs
            continue
        spec = s.array_specs[key]
        if a.shape[0] < t:
            add("error", f"data/{key}", f"holds {a.shape[0]} steps but {t} are committed", tuple(range(len(ends))))
            continue
        if a.shape[0] > t:
            add("warning", f"data/{key}", f"{a.shape[0] - t} uncommitted steps beyond the end (a writer "
                "is active or crashed; the next writer truncates them)")
        if tuple(a.shape[1:]) != tuple(spec.shape) or np.dtype(a.dtype) != np.dtype(spec.dtype):
            add("error", f"data/{key}", f"shape/dtype {a.shape[1:]}/{a.dtype} contradict the spec "
                f"{tuple(spec.shape)}/{spec.dtype}", tuple(range(len(ends))))
    quarantined = {r.index for r in s.records if r.quarantined}
    for d in scan(s, decode_images=decode_images):
        fresh = tuple(i for i in d.episodes if i not in quarantined)
        add("error" if fresh else "warning", d.array, f"steps [{d.start}, {d.end}) of episode(s) "
            f"{_span(d.episodes)}: {d.what} ({d.file})", fresh)
    if _is_local(path):
        partial = list(_local_path(path).rglob("*.partial"))
        if partial:
            add("warning", str(partial[0].parent), f"{len(partial)} temporary *.partial files of an "
                "interrupted write (removed by the next writer)")
    damaged = sorted({i for p in probs if p.severity == "error" for i in p.episodes})
    if damaged:
        probs.append(Problem("error", path, f"{len(damaged)} damaged episodes: {_span(damaged)}; "
                             f"`flywheel-data repair {path}` quarantines them", tuple(damaged)))
    return probs


def _span(idx: list[int] | tuple[int, ...], most: int = 20) -> str:
    return ", ".join(map(str, idx[:most])) + (f" ... ({len(idx)} in all)" if len(idx) > most else "")


def _check_journal(path: str, add) -> None:
    from flywheel.data import journal

    st = journal.read_journal(_local_path(path))
    if not journal.journal_path(_local_path(path)).exists():
        add("warning", journal.JOURNAL, "no journal (a store from before journals): damaged metadata cannot be "
            "rebuilt; the next writer writes one")
    elif not st.usable:
        add("error", journal.JOURNAL, f"does not read ({st.error}); the next writer rebuilds it")
    elif st.bad_lines:
        add("warning", journal.JOURNAL, f"{st.bad_lines} unreadable lines after episode {st.num_episodes - 1} "
            "(a torn append; the next writer rebuilds it)")


def summarize(path: str) -> dict[str, Any]:
    """Counts per task and source, success rate, steps, bytes on disk and the compression ratio."""
    s = EpisodeStore(path, "r")
    by_task: dict[str, Counter] = defaultdict(Counter)
    by_source: dict[str, Counter] = defaultdict(Counter)
    for r in s.records:
        for table, name in ((by_task, r.task or "-"), (by_source, r.source)):
            c = table[name]
            c["episodes"] += 1
            c["steps"] += r.length
            c["success"] += int(r.success is True)
            c["labelled"] += int(r.success is not None)
    inter = s.read("intervention", 0, s.num_steps) if s.num_steps else np.zeros(0, bool)
    stored = s.nbytes_stored()
    raw = s.nbytes_raw()
    return {
        "path": s.path,
        "schema_version": s.info["schema_version"],
        "rig": s.spec.name,
        "cameras": list(s.spec.camera_names),
        "image_codec": s.info["image_codec"],
        "control_hz": s.spec.action.control_hz,
        "episodes": s.num_episodes,
        "steps": s.num_steps,
        "hours": s.num_steps / s.spec.action.control_hz / 3600.0,
        "intervention_fraction": float(inter.mean()) if len(inter) else 0.0,
        "by_task": {k: dict(v) for k, v in sorted(by_task.items())},
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "bytes_on_disk": stored,
        "bytes_raw": raw,
        "compression_ratio": raw / stored if stored else 0.0,
    }


def format_summary(info: dict[str, Any]) -> str:
    def table(title: str, rows: dict[str, dict]) -> list[str]:
        out = [f"{title:<24s} {'episodes':>9s} {'steps':>9s} {'success':>9s}"]
        for name, c in rows.items():
            rate = f"{c['success'] / c['labelled']:.0%}" if c["labelled"] else "-"
            out.append(f"{name:<24s} {c['episodes']:>9d} {c['steps']:>9d} {rate:>9s}")
        return out

    lines = [
        f"store        {info['path']}",
        f"rig          {info['rig']} (schema {info['schema_version']}), cameras {info['cameras']}, "
        f"{info['control_hz']:g} Hz, images {info['image_codec']['name']}",
        f"episodes     {info['episodes']}   steps {info['steps']}   ({info['hours']:.2f} h)   "
        f"interventions {info['intervention_fraction']:.1%} of steps",
        f"size         {info['bytes_on_disk'] / 2**20:.1f} MiB on disk, {info['bytes_raw'] / 2**20:.1f} MiB raw, "
        f"compression {info['compression_ratio']:.1f}x",
        "",
        *table("task", info["by_task"]),
        "",
        *table("source", info["by_source"]),
    ]
    return "\n".join(lines)


def to_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2, default=str)

