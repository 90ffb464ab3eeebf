"""Shared test set-up.

ROS 2 isolation: every test session gets its own DDS domain id and keeps
discovery on the loopback interface, so parallel runs (or a lab network) never
see each other's nodes.
"""

from __future__ import annotations

import faulthandler
import glob
import os
import random
import shutil
from typing import Any

import pytest

# Set before anything imports rclpy.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------- hangs
# The suite runs in one xdist worker (pyproject: ``-n 1``) with pytest-timeout's thread method: a test
# that outlives its timeout (a native deadlock no signal can interrupt, say) ends its worker, which xdist
# replaces, and pytest-rerunfailures runs that one test again in the fresh worker (``--reruns 1`` with an
# ``--only-rerun`` pattern no failure matches: a failed assertion is never rerun, only a crash or a hang).
# A worker cannot print to the terminal, so the hung test's thread stacks go to a file that the
# controller prints at the end of the run.


def _hangs(config: Any) -> str:
    return os.path.join(str(config.rootpath), ".pytest_cache", "hangs")


def _timeout_of(item: Any) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0.0)


def pytest_configure(config: Any) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist): start clean
        shutil.rmtree(_hangs(config), ignore_errors=True)
    os.makedirs(_hangs(config), exist_ok=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> Any:
    timeout = _timeout_of(item)
    if timeout <= 0:
        yield
        return
    worker = getattr(item.config, "workerinput", {}).get("workerid", "main")
    with open(os.path.join(_hangs(item.config), f"{worker}.txt"), "w") as f:
        f.write(f"{item.nodeid} outlived {timeout - 2:.0f} s; its threads:\n")
        f.flush()
        # exit=True: faulthandler's watchdog is a C thread that needs no GIL, so it also ends a worker whose
        # hang holds the GIL (a native call that never releases it; seen once in a fresh-clone run), which
        # pytest-timeout's Python thread cannot; either way the worker ends and its test is rerun once.
        faulthandler.dump_traceback_later(max(timeout - 2.0, 1.0), exit=True, file=f)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
            f.truncate(0)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in sorted(glob.glob(os.path.join(_hangs(terminalreporter.config), "*.txt"))):
        with open(path) as f:
            text = f.read()
        if "Thread 0x" in text or "Current thread" in text:
            terminalreporter.section(f"a hung test ({os.path.basename(path)})", sep="-")
            terminalreporter.write(text)
