"""A specialist trained in a child process, so that it can train while the iteration does other work.

A ``sac`` specialist needs only its task (state-only observations), not the generalist, so
``flywheel-iterate`` starts it early (budget ``early_specialists``) beside pretraining and the
first evaluation, and its ``specialists`` stage waits for it. The child runs
``python -m flywheel.distill.specialist.background`` (a fresh interpreter: no hydra app around
it, one torch thread), logs to ``<workdir>/train.log`` and is sent SIGTERM when its parent dies
(Linux), so a killed job leaves no orphan; a rerun resumes the run from its own checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SpecialistProcess:
    """One specialist's training in a child process: :meth:`start`, then :meth:`wait` for its record."""

    def __init__(self, task: str, cfg: dict[str, Any], workdir: str | Path):
        self.task = task
        self.cfg = dict(cfg)
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def log_file(self) -> Path:
        return self.workdir / "train.log"

    def start(self) -> SpecialistProcess:
        if self.proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = json.dumps({"task": self.task, "cfg": self.cfg, "workdir": str(self.workdir)})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", __name__, args], stdout=out, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.started_at = time.time()
        log.info("specialist %s: training in process %d (log %s)", self.task, self.proc.pid, self.log_file)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> dict[str, Any]:
        """Block until the training ends; its record (as :func:`flywheel.distill.specialist.train` returns)."""
        if self.proc is None:
            self.start()
        assert self.proc is not None
        rc = self.proc.wait()
        if rc != 0:
            tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"specialist {self.task}: training process exited with {rc} (log {self.log_file}):\n"
                               f"{tail}")
        rec = json.loads((self.workdir / "record.json").read_text())
        log.info("specialist %s: done, %.0f s after its start here", self.task, time.time() - self.started_at)
        return rec

    def stop(self) -> None:
        """End the training (a specialist the iteration did not need); its checkpoint stays for a rerun."""
        if self.running():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _child(task: str, cfg: dict[str, Any], workdir: str) -> None:
    import torch

    from flywheel.distill.specialist import SpecialistConfig, train

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rec = train(task, SpecialistConfig(**cfg), workdir, progress=False)
    tmp = Path(workdir) / "record.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(Path(workdir) / "record.json")


if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    _child(a["task"], a["cfg"], a["workdir"])
