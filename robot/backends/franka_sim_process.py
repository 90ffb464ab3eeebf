"""Start and stop a franka-sim server (FCI over MuJoCo) as a child process, for tests and benchmarks.

franka-sim lives in its own virtual environment (``.fsim-venv``; it pins numpy
1.26 and mujoco 3.2), so it runs as a subprocess of that interpreter, bound to
one loopback address (arm on 1337, gripper on 1338; libfranka's ports are
fixed, so parallel servers differ by address: :func:`free_loopback_host`).
It needs a local MJCF of the arm in ``FR3_MJCF`` (offline); by default the
Panda model gym-hil ships.

    with FrankaSimProcess(free_loopback_host()) as fsim:
        backend = FrankyBackend(fsim.host)

:meth:`FrankaSimProcess.stop` kills the whole process group, so nothing leaks;
``stop()`` then ``start()`` again simulates the FCI going away and coming back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["FrankaSimProcess", "free_loopback_host", "default_mjcf", "default_python", "FCI_PORT", "GRIPPER_PORT"]

FCI_PORT = 1337
GRIPPER_PORT = 1338
_SCRIPT = Path(__file__).with_name("franka_sim_main.py")
_REPO = Path(__file__).resolve().parents[2]


def default_python() -> Path:
    """franka-sim's interpreter: ``$FRANKA_SIM_PYTHON`` or ``<repo>/.fsim-venv/bin/python``."""
    return Path(os.environ.get("FRANKA_SIM_PYTHON", _REPO / ".fsim-venv" / "bin" / "python"))


def default_mjcf() -> Path | None:
    """``$FR3_MJCF``, else the Panda MJCF shipped with gym-hil (None when neither exists)."""
    if os.environ.get("FR3_MJCF"):
        return Path(os.environ["FR3_MJCF"])
    spec = importlib.util.find_spec("gym_hil")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "assets" / "panda.xml"
    return path if path.exists() else None


def _listening(host: str, port: int) -> bool:
    """Whether something listens on host:port (IPv4), read from /proc/net/tcp (no probe connection)."""
    want = "{:02X}{:02X}{:02X}{:02X}:{:04X}".format(*reversed([int(x) for x in host.split(".")]), port)
    try:
        with open("/proc/net/tcp") as f:
            return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(f)[1:])
    except OSError:  # not Linux: fall back to a connect probe
        import socket

        with contextlib.closing(socket.socket()) as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0


def free_loopback_host(rng: random.Random | None = None) -> str:
    """A random 127.x.y.z address with nothing on the FCI ports."""
    rng = rng or random.Random()
    for _ in range(100):
        host = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if not (_listening(host, FCI_PORT) or _listening(host, GRIPPER_PORT)):
            return host
    raise RuntimeError("no free loopback address for franka-sim")


class FrankaSimProcess:
    """One franka-sim server process; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        python: str | os.PathLike | None = None,
        mjcf: str | os.PathLike | None = None,
        gripper_object_width: float | None = 0.03,
        log_path: str | os.PathLike | None = None,
    ):
        self.host = host
        self.python = Path(python) if python is not None else default_python()
        self.mjcf = Path(mjcf) if mjcf is not None else default_mjcf()
        self.gripper_object_width = gripper_object_width
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60.0) -> FrankaSimProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not self.python.exists():
            raise FileNotFoundError(
                f"franka-sim interpreter {self.python} not found: run `make install` (scripts/bootstrap.sh "
                "creates .fsim-venv) or set FRANKA_SIM_PYTHON"
            )
        if self.mjcf is None or not self.mjcf.exists():
            raise FileNotFoundError(f"arm MJCF {self.mjcf} not found: set FR3_MJCF to a local MJCF of the arm")
        if _listening(self.host, FCI_PORT):
            raise RuntimeError(f"{self.host}:{FCI_PORT} is already in use; pick another host (free_loopback_host())")
        cmd = [str(self.python), str(_SCRIPT), "--host", self.host]
        if self.gripper_object_width is not None:
            cmd += ["--gripper-object-width", str(self.gripper_object_width)]
        env = {**os.environ, "FR3_MJCF": str(self.mjcf), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        env.pop("PYTHONPATH", None)
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (_listening(self.host, FCI_PORT) and _listening(self.host, GRIPPER_PORT)):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"franka-sim exited with code {code} during start-up (log: {self.log_path})")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"franka-sim did not listen on {self.host}:{FCI_PORT} within {timeout:g} s")
            time.sleep(0.1)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL); idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        # the listening sockets are gone with the process; wait until the kernel agrees
        deadline = time.monotonic() + 5.0
        while _listening(self.host, FCI_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server at once (the FCI vanishing mid-motion)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5.0)
        self.stop()

    def __enter__(self) -> FrankaSimProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
