"""The arm backend interface the franka node drives (franky on the FCI, or the MuJoCo twin).

A backend streams already-filtered TCP targets to a Cartesian impedance
controller, reports the measured state, and runs the gripper without blocking
the caller. Life cycle: construct (stores settings only), ``connect()``
(blocking: opens the connection and starts the controller), ``close()``.

Errors: :meth:`Backend.read` raises :class:`ConnectionLost` when the
robot/server went away (the node reconnects); a robot-side fault such as a
reflex or a communication-constraints violation shows in :meth:`Backend.error`
while the state still reads (the node reports it and calls ``recover()``).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from rig.safety import GripperCommand

__all__ = ["ArmState", "GripperState", "Backend", "BackendError", "ConnectionLost", "RobotError", "GripperWorker"]


class BackendError(RuntimeError):
    """Base class of backend failures."""


class ConnectionLost(BackendError):
    """The robot (or franka-sim, or the sim thread) is not reachable; reconnect."""


class RobotError(BackendError):
    """A robot-side fault (reflex, limit or communication violation); recover() clears it."""


@dataclass
class ArmState:
    """One measured arm state (base frame, SI units)."""

    stamp: float  # s since the epoch, when it was read
    joint_pos: np.ndarray  # (7,) rad
    joint_vel: np.ndarray  # (7,) rad/s
    joint_effort: np.ndarray  # (7,) N m, measured link-side torques
    ee_pos: np.ndarray  # (3,) m, TCP
    ee_quat: np.ndarray  # (4,) x, y, z, w
    ee_wrench: np.ndarray  # (6,) N, N m: estimated external wrench at the TCP


@dataclass
class GripperState:
    stamp: float = 0.0
    width: float = 0.0  # m
    speed: float = 0.0  # m/s, estimated from successive widths
    force: float = 0.0  # N, the grasp force in force while grasping, else 0
    grasped: bool = False
    busy: bool = False  # a command is executing
    error: str = ""
    last_command: GripperCommand | None = field(default=None, repr=False)


class Backend(ABC):
    """See the module docstring. Methods other than connect/close/recover/home must not block."""

    name = "backend"

    @abstractmethod
    def connect(self) -> None:
        """Open the connection and start the impedance controller at the current pose."""

    @abstractmethod
    def close(self) -> None:
        """Stop the controller and release the connection (idempotent)."""

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    def read(self) -> ArmState:
        """The latest measured state (never blocks for long). Raises ConnectionLost."""

    @abstractmethod
    def command(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Stream one (already filtered) TCP target to the impedance controller."""

    @abstractmethod
    def set_impedance(self, translational: float, rotational: float, damping_ratio: float) -> None: ...

    @abstractmethod
    def gripper_command(self, cmd: GripperCommand) -> None:
        """Queue a gripper move/grasp; returns at once (a newer command supersedes an older one)."""

    @abstractmethod
    def gripper_state(self) -> GripperState | None:
        """The latest gripper state, or None without a gripper."""

    @abstractmethod
    def recover(self) -> bool:
        """Clear a robot error and restart the controller at the current pose (blocking)."""

    @abstractmethod
    def home(self, joints: np.ndarray, timeout: float = 20.0) -> bool:
        """Move to the home joint configuration and restart the controller there (blocking)."""

    def error(self) -> str:
        """The current robot error ('' when fine)."""
        return ""

    def diagnostics(self) -> dict[str, object]:
        """Backend-specific health values for /diagnostics (cheap to call)."""
        return {}


class GripperWorker:
    """Runs gripper commands off the control loop, the latest command wins.

    ``execute(cmd)`` starts one command and returns a future with ``wait(timeout) -> bool``
    (done?) and ``get() -> bool`` (success), like franky's ``BoolFuture``; ``poll() ->
    (width, grasped)`` reads the gripper (may block briefly); ``stop()`` aborts the running
    command. A newer command aborts the one in progress; repeats of the command in force
    (width within 1 mm, same speed, force and mode) are dropped, so a policy may stream
    its gripper command every tick.
    """

    def __init__(self, execute, poll, stop, poll_period: float = 0.05, name: str = "gripper"):
        self._execute, self._poll, self._stop_fn = execute, poll, stop
        self.poll_period = poll_period
        self._cv = threading.Condition()
        self._pending: GripperCommand | None = None
        self._last_sent: GripperCommand | None = None
        self._state = GripperState()
        self._running = False
        self._thread: threading.Thread | None = None
        self._name = name
        self.commands_sent = 0

    def start(self) -> None:
        with self._cv:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, cmd: GripperCommand) -> None:
        with self._cv:
            last = self._pending or self._last_sent
            if (
                last is not None
                and abs(last.width - cmd.width) < 1e-3
                and last.speed == cmd.speed
                and last.force == cmd.force
                and not self._state.error
            ):
                return
            self._pending = cmd
            self._cv.notify_all()

    @property
    def state(self) -> GripperState:
        with self._cv:
            s = self._state
            return GripperState(s.stamp, s.width, s.speed, s.force, s.grasped, s.busy, s.error, s.last_command)

    def _update(self, width: float, grasped: bool, busy: bool, error: str | None = None) -> None:
        now = time.time()
        with self._cv:
            s = self._state
            dt = now - s.stamp
            speed = (width - s.width) / dt if s.stamp > 0 and dt > 1e-3 else 0.0
            cmd = self._last_sent
            force = cmd.force if (cmd is not None and cmd.grasp and grasped) else 0.0
            self._state = GripperState(now, width, speed, force, grasped, busy,
                                       s.error if error is None else error, cmd)

    def _take(self) -> GripperCommand | None:
        with self._cv:
            if self._running and self._pending is None:
                self._cv.wait(self.poll_period)
            cmd, self._pending = self._pending, None
            if cmd is not None:
                self._last_sent = cmd
            return cmd

    def _run(self) -> None:
        while self._running:
            try:
                cmd = self._take()
                if not self._running:
                    return
                if cmd is None:
                    width, grasped = self._poll()
                    self._update(width, grasped, False)
                    continue
                self.commands_sent += 1
                fut = self._execute(cmd)
                ok = superseded = False
                while self._running:
                    if fut.wait(self.poll_period):
                        ok = bool(fut.get())
                        break
                    width, grasped = self._poll()
                    self._update(width, grasped, True)
                    with self._cv:
                        superseded = self._pending is not None
                    if superseded:
                        self._stop_fn()
                        fut.wait(2.0)
                        break
                width, grasped = self._poll()
                # a grasp that closes on nothing answers False (not a fault); a move cut short
                # by a newer command or by stop() is not a failure either
                failed = not ok and not cmd.grasp and not superseded and self._running
                err = f"gripper move to {cmd.width:.4f} m failed" if failed else ""
                self._update(width, grasped, False, err)
            except Exception as e:  # a gripper fault must never take the arm down
                self._update(self._state.width, False, False, f"{type(e).__name__}: {e}")
                with self._cv:
                    if self._running:
                        self._cv.wait(self.poll_period * 10)

