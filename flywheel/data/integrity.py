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

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.where}: {self.what}"


def check_store(path: str, *, decode_images: bool = True, max_problems: int = 100) -> list[Problem]:
    """Every problem found in the store at ``path`` (empty list: healthy)."""
    probs: list[Problem] = []

    def add(sev: str, where: str, what: str) -> None:
        if len(probs) < max_problems:
            probs.append(Problem(sev, where, what))

    try:
        s = EpisodeStore(path, "r")
    except Exception as e:  # noqa: BLE001 - report whatever stops the store from opening
        return [Problem("error", path, f"cannot open the store: {type(e).__name__}: {e}")]
    t = s.num_steps
    ends = s.episode_ends
    if np.any(np.diff(np.concatenate([[0], ends])) <= 0):
        add("error", "meta/episode_ends", f"not strictly increasing: {ends.tolist()[:20]}")
    prev = 0
    for r in s.records:
        where = f"episode {r.index}"
        if (r.start, r.end) != (prev, int(ends[r.index])):
            add("error", where, f"record spans [{r.start}, {r.end}) but episode_ends give [{prev}, {ends[r.index]})")
        prev = int(ends[r.index])
        if r.source not in ("human", "policy", "rl"):
            add("error", where, f"unknown source {r.source!r}")
    for key in s.keys:
        try:
            a = s._array(key)
        except Exception as e:  # noqa: BLE001
            add("error", f"data/{key}", f"cannot open: {e}")
            continue
        spec = s.array_specs[key]
        if a.shape[0] < t:
            add("error", f"data/{key}", f"holds {a.shape[0]} steps but {t} are committed")
            continue
        if a.shape[0] > t:
            add("warning", f"data/{key}", f"{a.shape[0] - t} uncommitted steps beyond the end (a writer "
                "is active or crashed; the next writer truncates them)")
        if tuple(a.shape[1:]) != tuple(spec.shape) or np.dtype(a.dtype) != np.dtype(spec.dtype):
            add("error", f"data/{key}", f"shape/dtype {a.shape[1:]}/{a.dtype} contradict the spec "
                f"{tuple(spec.shape)}/{spec.dtype}")
            continue
        if key.startswith(("images/", "depth/")):
            _check_images(s, key, t, decode_images, add)
        else:
            try:
                v = s.read(key, 0, t)
            except Exception as e:  # noqa: BLE001
                add("error", f"data/{key}", f"unreadable: {type(e).__name__}: {e}")
                continue
            if v.dtype.kind == "f" and key != "timestamp":
                bad = ~np.isfinite(v.reshape(t, -1)).all(axis=1)
                if bad.any():
                    add("error", f"data/{key}", f"NaN/Inf at {int(bad.sum())} steps, first {int(np.argmax(bad))}")
            if key == "action" and t and np.abs(v).max() > 1 + 1e-6:
                add("error", "data/action", f"values outside [-1, 1] (max {float(np.abs(v).max()):.3g})")
    if _is_local(path):
        partial = list(_local_path(path).rglob("*.partial"))
        if partial:
            add("warning", str(partial[0].parent), f"{len(partial)} temporary *.partial files of an "
                "interrupted write (removed by the next writer)")
    return probs


def _check_images(s: EpisodeStore, key: str, t: int, decode: bool, add) -> None:
    if _is_local(s.path):
        root = _local_path(s.path) / "data" / key / "c"
        tail = "/".join(["0"] * len(s.array_specs[key].shape))
        missing = [i for i in range(t) if not (root / str(i) / tail).is_file()]
        if missing:
            add("error", f"data/{key}", f"{len(missing)} image chunks missing, first at step {missing[0]}")
    if decode:
        for i in range(t):
            try:
                img = s.read_image(key, i)
            except Exception as e:  # noqa: BLE001
                add("error", f"data/{key}", f"step {i} does not decode: {type(e).__name__}: {e}")
                return
            if img.shape != tuple(s.array_specs[key].shape):
                add("error", f"data/{key}", f"step {i} decodes to shape {img.shape}")
                return


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

