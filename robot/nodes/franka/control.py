"""The franka node's control and supervisor threads around a backend, and the backend factory.

:class:`ArmLoop` owns two threads (no ROS types; the node hands it callbacks):

* **control** (``franka-control``, SCHED_FIFO at ``rt_priority`` when > 0), at
  ``state_rate_hz``: read the backend state, :meth:`CommandMux.tick` on it, stream the
  applied TCP target to the backend, hand state and command to ``publish_state``; ticks over
  a period late are dropped, not burst; an exception is reported and the loop goes on;
* **supervisor** (``franka-supervisor``, one priority level below): connect and reconnect
  the backend every ``reconnect_period``, recover from robot errors when ``auto_recover`` is
  set, and call ``report`` every 0.5 s (and at once on every change of health).

While homing or recovering (:meth:`ArmLoop.home`, :meth:`ArmLoop.recover`) and while the
robot reports an error, the control loop only publishes state; afterwards the filter
restarts from the measured pose.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from robot.backends.base import ArmState, Backend, ConnectionLost
from robot.backends.franky_backend import FrankyLimits
from robot.config import RobotConfig
from robot.nodes.franka.mux import CommandMux
from robot.ros.diagnostics import PeriodStats

__all__ = ["ArmLoop", "Latency", "make_backend", "set_thread_priority"]

DIAG_PERIOD = 0.5  # s between the supervisor's health reports
SUPERVISE_PERIOD = 0.05  # s


def make_backend(cfg: RobotConfig) -> Backend:
    """The backend a (validated) RobotConfig names; nothing connects yet."""
    if cfg.backend == "franky":
        from robot.backends.franky_backend import FrankyBackend

        return FrankyBackend(
            cfg.host,
            realtime=cfg.realtime,
            translational_stiffness=cfg.translational_stiffness,
            rotational_stiffness=cfg.rotational_stiffness,
            damping_ratio=cfg.damping_ratio,
            gripper=cfg.gripper,
            limits=FrankyLimits.of(cfg),
        )
    from robot.backends.sim_backend import SimBackend

    return SimBackend(
        translational_stiffness=cfg.translational_stiffness,
        rotational_stiffness=cfg.rotational_stiffness,
        damping_ratio=cfg.damping_ratio,
        home_joints=cfg.home_joints,
        rt_priority=max(0, cfg.rt_priority - 1),
    )


def set_thread_priority(priority: int) -> str:
    """Make the calling thread SCHED_FIFO at ``priority`` (0: leave it); returns '' or why it failed."""
    if priority <= 0:
        return ""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return ""
    except (OSError, AttributeError) as e:
        return f"cannot run the control thread SCHED_FIFO at priority {priority} ({e}); needs CAP_SYS_NICE " \
               "or an rtprio limit (/etc/security/limits.conf); running with normal scheduling"


class Latency:
    """Rolling command-to-backend latencies (s)."""

    def __init__(self, n: int = 2000):
        self._d: deque[float] = deque(maxlen=n)

    def add(self, v: float) -> None:
        self._d.append(v)

    def summary(self) -> dict[str, float]:
        if not self._d:
            return {"p50_ms": float("nan"), "p99_ms": float("nan")}
        a = np.fromiter(self._d, float)
        return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3)}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


class _NoLog:
    info = warning = error = staticmethod(_quiet)


class ArmLoop:
    """The control and supervisor threads of one backend (module docstring).

    ``publish_state(state, applied)``: every tick with a state (``applied`` None while the
    loop only publishes state); ``report()``: publish health now; ``log``: a logger with
    ``info``/``warning``/``error`` (rclpy's: each call site keeps one severity, as rclpy requires);
    ``alive()``: False once the process is shutting down (the loop then stops quietly);
    ``on_connect(backend)``: after every (re)connection.
    """

    def __init__(self, backend: Backend, mux: CommandMux, cfg: RobotConfig, *,
                 publish_state: Callable[[ArmState, Any], None] = _quiet, report: Callable[[], None] = _quiet,
                 log: Any = None, alive: Callable[[], bool] = lambda: True,
                 on_connect: Callable[[Backend], None] = _quiet):
        self.backend = backend
        self.mux = mux
        self.cfg = cfg
        self._publish_state = publish_state
        self._report = report
        self._log = log if log is not None else _NoLog()
        self._alive = alive
        self._on_connect = on_connect
        self.stats = PeriodStats(window=max(1000, int(cfg.state_rate_hz * 10)))  # the last 10 s of ticks
        self.latency = Latency()
        self.connected = False
        self.lost_reason = "not connected yet"
        self.robot_error = ""
        self.busy = ""  # "homing" / "recovering": the control loop only publishes state
        self.reconnects = 0
        self.recoveries = 0
        self.state: ArmState | None = None  # the latest measured state
        self._last_connect_try = -1e9
        self._last_recover_try = -1e9
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------ life cycle
    def connect_now(self) -> None:
        """Connect in the caller's thread (the sim backend at configure); raises on failure."""
        self.backend.connect()
        self.connected = True

    def start(self) -> None:
        self._stop.clear()
        self.mux.request_reset()
        self.threads = [
            threading.Thread(target=self._control_loop, name="franka-control", daemon=True),
            threading.Thread(target=self._supervise, name="franka-supervisor", daemon=True),
        ]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Stop both threads (the arm holds where it is)."""
        self._stop.set()
        for t in self.threads:
            t.join(timeout=10.0)
        self.threads = []

    # ------------------------------------------------------------- requests
    def home(self, joints: Any) -> tuple[bool, str]:
        """Move to ``joints`` (blocking); (success, message)."""
        b = self.backend
        if not self.connected:
            return False, f"not connected: {self.lost_reason}"
        self.busy = "homing"
        self._report()
        try:
            ok = b.home(np.asarray(joints))
        finally:
            self.mux.request_reset()
            self.busy = ""
        return bool(ok), "homed" if ok else f"homing failed: {b.error() or 'timeout'}"

    def recover(self, why: str) -> tuple[bool, str]:
        """Clear a robot error (blocking); (success, message)."""
        b = self.backend
        if not self.connected:
            return False, f"not connected: {self.lost_reason}"
        self.busy = "recovering"
        try:
            ok = b.recover()
        finally:
            self.mux.request_reset()
            self.busy = ""
        self.recoveries += int(ok)
        msg = "recovered" if ok else f"recovery failed: {b.error()}"
        if ok:  # one severity per log call site (rclpy refuses a change)
            self._log.info(f"{msg} ({why})")
            self.robot_error = ""
        else:
            self._log.error(f"{msg} ({why})")
        return ok, msg

    # ---------------------------------------------------------- control loop
    def _control_loop(self) -> None:
        why = set_thread_priority(self.cfg.rt_priority)
        if why:
            self._log.warning(why)
        period = 1.0 / self.cfg.state_rate_hz
        next_t = time.monotonic()
        last = None
        while not self._stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            next_t += period
            if now > next_t:  # over a period late: drop the missed ticks rather than burst to catch up
                next_t = now + period
            dt = now - last if last is not None else period
            last = now
            try:
                self.tick(now, dt)
            except Exception as e:  # never let the loop die; report and carry on
                if not self._alive():  # shutting down (Ctrl-C): stop quietly
                    return
                self.robot_error = f"control loop: {type(e).__name__}: {e}"
                self._log.error(self.robot_error, throttle_duration_sec=1.0)
            self.stats.tick(now)

    def tick(self, now: float, dt: float) -> None:
        """One control tick at monotonic ``now``, ``dt`` s after the last one."""
        b = self.backend
        if not self.connected:
            return
        try:
            s = b.read()
        except ConnectionLost as e:
            self._lost(str(e))
            return
        self.state = s
        err = "" if self.busy else b.error()
        if err and err != self.robot_error:
            self.robot_error = err
            self._log.error(f"robot error: {err}")
            self._report()
        applied = None
        if not self.busy and not err:
            t = self.mux.tick(s.ee_pos, s.ee_quat, now, dt)
            applied = t.applied
            b.command(applied.pos, applied.quat)
            if t.pending_stamp is not None:
                self.latency.add(time.time() - t.pending_stamp)
        elif err:
            self.mux.request_reset()
        self._publish_state(s, applied)

    def _lost(self, why: str) -> None:
        self.mux.request_reset()  # commands are ignored until the reconnected arm's state arrives
        if self.connected:
            self.connected = False
            self.lost_reason = why
            self._log.error(f"backend lost: {why}; reconnecting every {self.cfg.reconnect_period:g} s")
            self._report()

    # ------------------------------------------------------------ supervisor
    def _supervise(self) -> None:
        cfg = self.cfg
        set_thread_priority(max(0, cfg.rt_priority - 1))  # light work; must not hold the GIL for long
        next_diag = 0.0
        while not self._stop.wait(SUPERVISE_PERIOD):
            now = time.monotonic()
            if not self.connected and now - self._last_connect_try >= cfg.reconnect_period:
                self._last_connect_try = now
                self._try_connect()
            elif (self.connected and self.robot_error and cfg.auto_recover and not self.busy
                  and now - self._last_recover_try >= cfg.reconnect_period):
                self._last_recover_try = now
                self.recover("auto_recover")
            if now >= next_diag:
                next_diag = now + DIAG_PERIOD
                self._report()

    def _try_connect(self) -> None:
        b = self.backend
        try:
            b.close()
            b.connect()
        except Exception as e:
            why = f"{type(e).__name__}: {e}" if not isinstance(e, ConnectionLost) else str(e)
            if why != self.lost_reason:
                self._log.warning(f"connect failed: {why}")
            self.lost_reason = why
            return
        self._on_connect(b)
        self.mux.request_reset()
        self.robot_error = ""
        self.connected = True
        self.reconnects += 1
        self._log.info(f"connected to the {b.name} backend")
        self._report()
