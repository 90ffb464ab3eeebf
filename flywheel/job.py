"""Resumable multi-stage jobs.

A job is an ordered list of named stages. ``<workdir>/job_state.json`` records
each finished stage and what it returned (JSON). Run again after a kill, the job
skips finished stages and re-enters the one that was running; stages keep their
own checkpoints inside ``<workdir>/<stage>/`` so re-entering resumes rather than
restarts. The state file is written atomically after each stage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.registry import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    run: Callable[[JobContext], Any]  # returns JSON-serialisable outputs


class JobContext:
    def __init__(self, workdir: Path, state: dict[str, Any]):
        self.workdir = workdir
        self._state = state

    def stage_dir(self, name: str) -> Path:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def output(self, stage: str) -> Any:
        """What an earlier (finished) stage returned."""
        done = self._state["stages"]
        if stage not in done:
            raise KeyError(f"stage {stage!r} has not finished; finished: {list(done)}")
        return done[stage]["output"]

    def has_output(self, stage: str) -> bool:
        return stage in self._state["stages"]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}``."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


_UNSET = object()


def config_changes(saved: dict[str, Any], new: dict[str, Any], may_change: tuple[str, ...] = (),
                   both_sides_only: bool = False) -> list[str]:
    """Where ``new`` differs from the ``saved`` config of a run, as ``key: saved -> new`` lines (dotted keys,
    sorted), leaving out the keys under ``may_change`` and, ``both_sides_only``, keys only one side has (a setting
    added or removed since the run started); otherwise such a key shows its missing side as ``(unset)``."""
    a, b = _flat(saved), _flat(new)
    keys = set(a) & set(b) if both_sides_only else set(a) | set(b)
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(keys)
            if a.get(k, _UNSET) != b.get(k, _UNSET) and not any(k == f or k.startswith(f + ".") for f in may_change)]



class ResumableJob:
    def __init__(self, workdir: str | Path, stages: list[Stage], config: dict[str, Any] | None = None):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names: {names}")
        self.workdir = Path(workdir)
        self.stages = stages
        self.config = config or {}
        self.state_file = self.workdir / "job_state.json"

    def load_state(self) -> dict[str, Any]:
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            if self.config and state.get("config") not in (None, self.config):
                raise ValueError(
                    f"{self.state_file} was started with a different config; "
                    f"use a new workdir or delete it to start over. Differences (saved -> now):\n  "
                    + "\n  ".join(config_changes(state["config"], self.config))
                )
            return state
        return {"config": self.config, "stages": {}, "started": time.time()}

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_file, json.dumps(state, indent=2))

    def run(self, stop_after: str | None = None) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self.load_state()
        self.save_state(state)
        ctx = JobContext(self.workdir, state)
        for stage in self.stages:
            if stage.name in state["stages"]:
                log.info("stage %s: done earlier, skipping", stage.name)
                continue
            log.info("stage %s: running", stage.name)
            t0 = time.time()
            state["running"] = stage.name
            self.save_state(state)
            out = stage.run(ctx)
            state["stages"][stage.name] = {"output": out, "seconds": time.time() - t0, "finished": time.time()}
            state.pop("running", None)
            self.save_state(state)
            if stop_after == stage.name:
                break
        return state

    @property
    def finished(self) -> bool:
        if not self.state_file.exists():
            return False
        done = json.loads(self.state_file.read_text())["stages"]
        return all(s.name in done for s in self.stages)
