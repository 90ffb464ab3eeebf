"""Run the project's console scripts as subprocesses and stop them with a signal (tests/robot/test_signals.py).

A script runs exactly the ``module:function`` that ``pyproject.toml`` declares for it (so a stale
installed wrapper cannot hide a change), in its own session (signals reach only it), with its
output in a log file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: what a node logs once configured and active (robot.ros.lifecycle.RigNode), and once shut down
ACTIVE = "]: active"
SHUT_DOWN = "shut down through the lifecycle"


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name -> "module:function" (tomllib is Python 3.11+)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', section, flags=re.MULTILINE))


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    log: Path
    ready: str
    exit_s: float = field(default=float("nan"))

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def is_ready(self) -> bool:
        return self.ready in self.output()


def start(name: str, args: list[str], log_dir: Path, ready: str = ACTIVE, cwd: Path | None = None) -> Running:
    """Start console script ``name`` with ``args``; ``ready`` is the log text that says it is up."""
    module, func = console_scripts()[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())"
    log = log_dir / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd or REPO, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Running(name, proc, log, ready)


def wait_ready(runs: list[Running], timeout: float) -> list[Running]:
    """Wait until every run is ready; returns those that are not (exited or still starting)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pending = [r for r in runs if not r.is_ready()]
        if not pending or any(r.proc.poll() is not None for r in pending):
            return pending
        time.sleep(0.2)
    return [r for r in runs if not r.is_ready()]


def stop_all(runs: list[Running], sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to every run at once and wait up to ``timeout`` s each (``exit_s``: seconds to exit)."""
    t0 = time.monotonic()
    for r in runs:
        r.proc.send_signal(sig)
    for r in runs:
        try:
            r.proc.wait(timeout=max(0.1, t0 + timeout - time.monotonic()))
            r.exit_s = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            r.proc.send_signal(signal.SIGUSR1)  # rig-up dumps its threads' stacks on SIGUSR1
            time.sleep(1.0)


def kill_all(runs: list[Running]) -> None:
    for r in runs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
