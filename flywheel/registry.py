"""A model registry on disk: which generalist is current, and where each came from.

``<root>/registry.json`` holds one record per registered checkpoint (id, path,
parent, data used, metrics, time) and the id of the promoted (deployed) model.
Writes are atomic (temp file + rename), so a killed job never leaves a torn
registry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelRecord:
    id: str
    path: str
    parent: str | None = None
    created: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, path: Path) -> Path:
    """Put the fully written directory ``tmp`` at ``path``; an existing ``path`` is moved aside first and
    removed only once the new one is in place (checkpoint directories of the RL learner and flywheel-vla-rl)."""
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.file = self.root / "registry.json"

    def _load(self) -> dict[str, Any]:
        if not self.file.exists():
            return {"models": {}, "current": None, "history": []}
        return json.loads(self.file.read_text())

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.file, json.dumps(state, indent=2))

    def register(self, record: ModelRecord) -> ModelRecord:
        state = self._load()
        if record.parent is not None and record.parent not in state["models"]:
            raise KeyError(f"parent model {record.parent!r} is not registered in {self.file}")
        state["models"][record.id] = asdict(record)
        self._save(state)
        return record

    def get(self, model_id: str) -> ModelRecord:
        models = self._load()["models"]
        if model_id not in models:
            raise KeyError(f"model {model_id!r} is not in {self.file}; registered: {sorted(models)}")
        return ModelRecord(**models[model_id])

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._load()["models"]

    def promote(self, model_id: str, reason: str = "") -> None:
        state = self._load()
        if model_id not in state["models"]:
            raise KeyError(f"cannot promote unregistered model {model_id!r}")
        state["history"].append({"time": time.time(), "from": state["current"], "to": model_id, "reason": reason})
        state["current"] = model_id
        self._save(state)

    @property
    def current(self) -> ModelRecord | None:
        cur = self._load()["current"]
        return None if cur is None else self.get(cur)

    def lineage(self, model_id: str) -> list[ModelRecord]:
        """The chain from ``model_id`` back to its root ancestor."""
        out, cur = [], model_id
        while cur is not None:
            rec = self.get(cur)
            out.append(rec)
            cur = rec.parent
        return out

    def history(self) -> list[dict[str, Any]]:
        return self._load()["history"]
