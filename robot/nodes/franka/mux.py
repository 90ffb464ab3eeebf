"""The franka node's command multiplexer: which command source drives the arm, and how (pure, no ROS).

:class:`CommandMux` sits between the command sources and the :class:`rig.safety.SafetyFilter`;
the node converts messages to numbers and calls it from its callbacks, the control loop
calls :meth:`CommandMux.tick` once per control tick. Thread-safe: one lock guards the
filter and the command state.

* **arbitration**: while :meth:`~CommandMux.set_intervening` is on, only the operator's
  commands (:meth:`~CommandMux.teleop_twist`, :meth:`~CommandMux.teleop_gripper`) apply and
  the policy's (:meth:`~CommandMux.target_pose`, :meth:`~CommandMux.target_twist`,
  :meth:`~CommandMux.gripper`) are ignored (counted in :attr:`~CommandMux.ignored`); otherwise
  the operator's are dropped. A switch of source clears the velocity command and starts the
  new source from a still arm where it is;
* **hold** (:meth:`~CommandMux.set_hold`): the filter holds the applied pose; targets and
  gripper commands are ignored until released;
* **twists**: ``velocity`` mode (m/s, rad/s) stores the twist and the control tick
  integrates it over the measured ``dt`` while it is fresh (``watchdog_timeout`` from the
  earlier of its arrival and its stamp); ``delta`` mode (policy only) displaces the target in
  force (or the applied pose) once per message. ``frame_id`` ``panda_link0`` or empty: base
  frame; ``panda_hand_tcp``: the TCP frame; anything else is rejected;
* **poses**: absolute TCP targets in the base frame, straight into the filter;
* **rejections** (bad frame, NaN/Inf, a twist that cannot integrate, a stale or future
  stamp) never reach the arm; each counts once in the filter's ``rejected`` with the reason in
  its ``last_rejection``, and goes to ``warn``.

Stamps are wall-clock seconds (a message header; ``<= 0``: unstamped). A stamp's age
(``wall() - stamp``) is carried over to the filter's monotonic clock, so a message delayed on
the way is as old to the watchdog as it is. The clocks are injectable for tests.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rig.safety import Applied, CommandRejected, GripperCommand, SafetyFilter, apply_twist
from rig.spec import BASE_FRAME, TCP_FRAME

__all__ = ["CommandMux", "Outcome", "Tick", "TWIST_MODES", "frame_is_ee"]

TWIST_MODES = ("velocity", "delta")


class Outcome(enum.Enum):
    """What became of one command."""

    ACCEPTED = "accepted"
    IGNORED = "ignored"  # arbitration, hold, or no arm state yet: counted in ``ignored``
    DROPPED = "dropped"  # not this source's turn (teleop while not intervening), or not ready (delta)
    REJECTED = "rejected"  # bad value, frame or stamp: counted in the filter's ``rejected``


@dataclass(frozen=True)
class Tick:
    """One control tick: the command to stream, and the stamp of the command it first carries (latency)."""

    applied: Applied
    pending_stamp: float | None  # wall-clock s of the newest command accepted since the last tick, or None


@dataclass(frozen=True)
class _Velocity:
    lin: np.ndarray
    ang: np.ndarray
    ee: bool
    t: float  # monotonic s: fresh from here (the earlier of arrival and stamp)


def frame_is_ee(frame_id: str) -> bool | None:
    """False: the base frame (or empty); True: the TCP frame; None: any other frame."""
    f = frame_id.lstrip("/")
    if f in ("", BASE_FRAME):
        return False
    if f == TCP_FRAME:
        return True
    return None


def _three(v: Any) -> np.ndarray | None:
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError, OverflowError):
        return None
    return a if a.shape == (3,) else None


class CommandMux:
    """Arbitrates the command sources into a :class:`SafetyFilter` (module docstring).

    ``twist_mode``: ``velocity`` or ``delta`` (for :meth:`target_twist`); ``gripper_speed``:
    the speed of a gripper command that names none (m/s); ``warn(text)``: told about each
    rejection (e.g. a throttled log); ``monotonic`` / ``wall``: the clocks (s).
    """

    def __init__(self, filter: SafetyFilter, twist_mode: str = "velocity", gripper_speed: float = 0.1, *,
                 warn: Callable[[str], Any] | None = None, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        if twist_mode not in TWIST_MODES:
            raise ValueError(f"twist_mode = {twist_mode!r}: must be 'velocity' or 'delta'")
        self.filter = filter
        self.twist_mode = twist_mode
        self.gripper_speed = float(gripper_speed)
        self._warn = warn or (lambda text: None)
        self._mono = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._intervening = False
        self._velocity: _Velocity | None = None
        self._pending: float | None = None
        self._need_reset = True  # the filter starts from the measured pose at the next tick
        self.ignored = 0  # commands dropped by the arbitration rule, a hold or a pending reset

    # ---------------------------------------------------------------- state
    @property
    def intervening(self) -> bool:
        return self._intervening

    @property
    def holding(self) -> bool:
        return self.filter.holding

    @property
    def velocity_active(self) -> bool:
        """A velocity command is stored (the tick integrates it while it is fresh)."""
        return self._velocity is not None

    @property
    def needs_reset(self) -> bool:
        return self._need_reset

    def request_reset(self) -> None:
        """Restart from the measured pose at the next tick (after a connect, home, recovery or robot error);
        until then pose targets are ignored and the velocity command is dropped."""
        with self._lock:
            self._need_reset = True
            self._velocity = None

    # ---------------------------------------------------------- arbitration
    def set_intervening(self, flag: bool) -> bool:
        """Switch the command source (True: the operator); returns whether it changed."""
        flag = bool(flag)
        with self._lock:
            if flag == self._intervening:
                return False
            self._intervening = flag
            self._velocity = None
            self._pending = None
            f = self.filter
            # the new command source starts from a still arm where it is now
            if f.ready and not self._need_reset:
                p, q = f.applied_pose
                try:
                    f.set_target(p, q, self._mono())
                except CommandRejected:  # counted; the watchdog holds the arm anyway
                    pass
            return True

    def set_hold(self, flag: bool) -> None:
        """True: hold the applied pose and ignore targets until released."""
        with self._lock:
            self.filter.set_hold(bool(flag))
            self._velocity = None

    # ------------------------------------------------------------- commands
    def target_pose(self, pos: Any, quat: Any, frame_id: str = "", stamp: float = 0.0) -> Outcome:
        """The policy's absolute TCP target (base frame)."""
        if self._intervening:
            return self._ignore()
        if frame_id.lstrip("/") not in ("", BASE_FRAME):
            return self._reject("target_pose", f"frame_id {frame_id[:40]!r}: send targets in {BASE_FRAME!r}")
        f = self.filter
        with self._lock:
            if not f.ready or f.holding or self._need_reset:  # a reset would clear it
                self.ignored += 1
                return Outcome.IGNORED
            try:
                f.set_target(pos, quat, *self._times(stamp))
            except CommandRejected as e:  # counted by the filter
                self._warn(f"target rejected: {e}")
                return Outcome.REJECTED
            self._velocity = None
            self._pending = self._pending_of(stamp)
        return Outcome.ACCEPTED

    def target_twist(self, lin: Any, ang: Any, frame_id: str = "", stamp: float = 0.0) -> Outcome:
        """The policy's twist: a velocity or a displacement, by ``twist_mode``."""
        if self._intervening:
            return self._ignore()
        tw = self._twist_of(lin, ang, frame_id, "target_twist")
        if tw is None:
            return Outcome.REJECTED
        if self.twist_mode == "delta":
            return self._delta(*tw, stamp)
        return self._set_velocity(*tw, stamp, "target_twist")

    def teleop_twist(self, lin: Any, ang: Any, frame_id: str = "", stamp: float = 0.0) -> Outcome:
        """The operator's velocity (m/s, rad/s); applies only while intervening."""
        if not self._intervening:
            return Outcome.DROPPED
        tw = self._twist_of(lin, ang, frame_id, "teleop/twist")
        if tw is None:
            return Outcome.REJECTED
        return self._set_velocity(*tw, stamp, "teleop/twist")

    def gripper(self, width: float | None, speed: float | None = None,
                force: float | None = None) -> GripperCommand | None:
        """The policy's gripper command; the command to send, or None (ignored or rejected)."""
        if self._intervening:
            self._ignore()
            return None
        return self._gripper(width, speed, force, "gripper/command")

    def teleop_gripper(self, width: float | None, speed: float | None = None,
                       force: float | None = None) -> GripperCommand | None:
        """The operator's gripper command; applies only while intervening."""
        if not self._intervening:
            return None
        return self._gripper(width, speed, force, "teleop/gripper")

    # ----------------------------------------------------------------- tick
    def tick(self, pos: Any, quat: Any, now: float, dt: float) -> Tick:
        """One control tick at monotonic ``now`` (``dt``: the measured period) from the measured TCP pose.

        Resets the filter to the measured pose when a reset is pending, integrates a fresh velocity
        command (a stale one is dropped; one that cannot integrate is rejected), steps the filter.
        Raises :class:`CommandRejected` only for a broken measured pose or a non-finite ``now``.
        """
        f = self.filter
        with self._lock:
            if self._need_reset:
                f.reset(pos, quat)
                self._need_reset = False
                self._velocity = None
            v = self._velocity
            if v is not None:
                if now - v.t <= f.cfg.watchdog_timeout:
                    p, q = f.applied_pose
                    try:  # a rejection is counted, never raised: the arm holds
                        p, q = apply_twist(p, q, v.lin, v.ang, dt, v.ee)
                    except CommandRejected as e:
                        self._count_rejection("twist", str(e))
                        self._velocity = None
                    else:
                        try:
                            f.set_target(p, q, now, stamp=v.t)
                        except CommandRejected:  # counted by the filter
                            self._velocity = None
                else:
                    self._velocity = None
            applied = f.step(now, dt)
            pending, self._pending = self._pending, None
        return Tick(applied, pending)

    # ------------------------------------------------------------- internals
    def _ignore(self) -> Outcome:
        with self._lock:
            self.ignored += 1
        return Outcome.IGNORED

    def _count_rejection(self, what: str, why: str) -> None:
        f = self.filter
        f.rejected += 1
        f.last_rejection = f"{what}: {why}"[:200]
        self._warn(f"{what} rejected: {why}")

    def _reject(self, what: str, why: str) -> Outcome:
        with self._lock:
            self._count_rejection(what, why)
        return Outcome.REJECTED

    def _times(self, stamp: float) -> tuple[float, float | None]:
        """(now, when the sender stamped it) on the monotonic clock; None: unstamped."""
        now = self._mono()
        return now, (now - (self._wall() - stamp) if stamp > 0 else None)

    def _pending_of(self, stamp: float) -> float:
        return stamp if stamp > 0 else self._wall()

    def _twist_of(self, lin: Any, ang: Any, frame_id: str, what: str) -> tuple[np.ndarray, np.ndarray, bool] | None:
        ee = frame_is_ee(frame_id)
        if ee is None:
            self._reject(what, f"frame_id {frame_id[:40]!r}: use {BASE_FRAME!r} or {TCP_FRAME!r}")
            return None
        lv, av = _three(lin), _three(ang)
        if lv is None or av is None:
            self._reject(what, "linear and angular must be 3 numbers each")
            return None
        if not (np.all(np.isfinite(lv)) and np.all(np.isfinite(av))):
            self._reject(what, "NaN or Inf")
            return None
        return lv, av, ee

    def _set_velocity(self, lin: np.ndarray, ang: np.ndarray, ee: bool, stamp: float, what: str) -> Outcome:
        f = self.filter
        with self._lock:
            if f.holding:
                self.ignored += 1
                return Outcome.IGNORED
            if f.ready:  # one tick of it must integrate, or the control loop would reject it there
                p, q = f.applied_pose
                try:
                    apply_twist(p, q, lin, ang, f.dt, ee)
                except (CommandRejected, ValueError, OverflowError) as e:
                    self._count_rejection(what, f"{type(e).__name__}: {e}")
                    return Outcome.REJECTED
            now, sent = self._times(stamp)
            if sent is not None and not (now - f.cfg.watchdog_timeout <= sent <= now + f.cfg.max_clock_skew):
                self._count_rejection(what, f"header stamp {sent - now:+.3f} s from now: stale or in the future")
                return Outcome.REJECTED
            self._velocity = _Velocity(lin, ang, ee, now if sent is None else min(now, sent))
            self._pending = self._pending_of(stamp)
        return Outcome.ACCEPTED

    def _delta(self, lin: np.ndarray, ang: np.ndarray, ee: bool, stamp: float) -> Outcome:
        f = self.filter
        if not f.ready:
            return Outcome.DROPPED
        with self._lock:
            if f.holding:
                self.ignored += 1
                return Outcome.IGNORED
            base = f.target if f.target is not None else f.applied_pose
            try:
                pos, quat = apply_twist(base[0], base[1], lin, ang, 1.0, ee)
            except CommandRejected as e:
                self._count_rejection("target_twist", str(e))
                return Outcome.REJECTED
            try:
                f.set_target(pos, quat, *self._times(stamp))
            except CommandRejected as e:  # counted by the filter: name the source, count it once
                f.last_rejection = f"target_twist: {e}"[:200]
                self._warn(f"target_twist rejected: {e}")
                return Outcome.REJECTED
            self._velocity = None
            self._pending = self._pending_of(stamp)
        return Outcome.ACCEPTED

    def _gripper(self, width: float | None, speed: float | None, force: float | None,
                 what: str) -> GripperCommand | None:
        if width is None:
            self._reject(what, "position[0] (the width in m) is missing")
            return None
        if speed is None or (isinstance(speed, (int, float)) and math.isfinite(speed) and speed <= 0.0):
            speed = self.gripper_speed  # unset (0): the configured speed; NaN is rejected by the filter
        with self._lock:
            try:
                cmd = self.filter.gripper(width, speed, 0.0 if force is None else force)
            except CommandRejected as e:  # counted by the filter
                self._warn(f"{what} rejected: {e}")
                return None
            if self.filter.holding:
                self.ignored += 1
                return None
        return cmd
