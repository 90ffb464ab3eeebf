"""The safety filter between every command source and the arm (numpy only, no ROS).

Every TCP target the franka node sends (from ``target_pose``, ``target_twist``,
teleop, or a sim env) goes through :class:`SafetyFilter`, configured by
:class:`SafetyConfig`. The filter is *total*: any input (any value, magnitude,
shape, dtype or time) gives either a command inside every limit below or a
:class:`CommandRejected` naming the field, and the state it keeps stays valid.

* **rejection** (:class:`CommandRejected`): NaN, Inf, numbers beyond float64,
  wrong shapes or dtypes, degenerate (near zero) quaternions, non-finite times,
  stamps from the future or already stale never reach the backend; the previous
  target stays in force. Quaternions of any finite magnitude are normalised
  (scaled by their largest component before the norm, so ``1e154`` does not
  overflow);
* **workspace**: a fresh target is clipped into the position box
  (``workspace_min`` .. ``workspace_max``) and into the orientation cone (at most
  ``max_tilt`` rad away from ``nominal_quat``);
* **rate limits**: each tick the applied command moves toward the (clipped) target
  by at most ``min(max_step_translation, max_linear_velocity * dt)`` metres and
  ``min(max_step_rotation, max_angular_velocity * dt)`` radians, always measured
  from the last *applied* pose (``dt``: the measured tick; a tick under 1 us moves
  nothing);
* **acceleration limits**: the commanded velocity (applied step / dt) changes by
  at most ``max_linear_acceleration * dt`` (m/s) and ``max_angular_acceleration *
  dt`` (rad/s) per tick, and slows down in time to stop at the target without
  overshooting it; alternating targets therefore never reverse at full speed. The
  angular speed is also kept low enough to brake within a quarter turn
  (``sqrt(pi * max_angular_acceleration)``, above the velocity limit at the defaults).
  Two exceptions, both only slowing the command: a stop (watchdog, hold, reset)
  freezes it at once (the impedance controller brakes the arm), and a tick longer
  than ``max_step_translation / max_linear_velocity`` (6 ms at the defaults) is
  capped by the per-tick step even where that brakes harder;
* **watchdog**: a target is fresh while ``now - t <= watchdog_timeout``, where ``t``
  is the earlier of its arrival (``now`` at :meth:`SafetyFilter.set_target`) and
  the sender's ``stamp`` (the message header, on the filter's clock); without a
  fresh target the filter holds the last applied pose (the arm stops where it is,
  it does not finish a stale motion). Stamps more than ``max_clock_skew`` ahead of
  ``now``, or already stale, are rejected; a target time ahead of the clock of
  :meth:`SafetyFilter.step` (time went backwards) also holds, so no time value
  can disable the hold;
* **gripper**: width clipped to ``gripper_min`` .. ``gripper_max``, speed and force to
  the Franka Hand's ranges, NaN/Inf rejected.

:meth:`SafetyFilter.step` returns the command actually applied; that is what the
node sends, publishes on ``command_applied`` and the recorder stores.

The filter starts from the measured pose (:meth:`SafetyFilter.reset`) and only
ever moves by rate-limited steps whose braking distance stays inside the
workspace box and the tilt cone, so a command applied from a pose inside the
workspace never leaves it; if the arm starts outside, holding keeps it still
until a target pulls it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.safety_math import (
    _MIN_QUAT_NORM,
    MAX_TWIST_ROTATION,
    MAX_TWIST_TRANSLATION,
    CommandRejected,
    _accelerate,
    _brake,
    _canonical,
    _norm,
    _qmul,
    _quat_of,
    _realized,
    _rotvec_between,
    _stop_speed,
    _time,
    _unit_quat,
    _vec,
    apply_twist,
)

__all__ = [
    "CommandRejected",
    "SafetyConfig",
    "Applied",
    "GripperCommand",
    "SafetyFilter",
    "validate_safety_config",
    "apply_twist",
    "GRIPPER_MAX_SPEED",
    "GRIPPER_MAX_FORCE",
    "MAX_TWIST_TRANSLATION",
    "MAX_TWIST_ROTATION",
]

GRIPPER_MAX_SPEED = 0.1  # m/s, Franka Hand
GRIPPER_MIN_SPEED = 0.001  # m/s
GRIPPER_MAX_FORCE = 70.0  # N, Franka Hand continuous grasp force
_TILT_EPS = 1e-12  # rad: rounding allowance of the braking-path checks (the applied pose is clamped)
_BOX_EPS = 1e-12  # m
_QUARTER_TURN = math.pi / 2  # rad: the longest braking turn (see _move_angular)
_MAX_MEASURED = 100.0  # m: a measured TCP position farther out is a broken reading
_MIN_DT = 1e-6  # s: a shorter tick moves nothing (no time passed)
_LAND = 1e-12  # m / rad: closer than this to the goal, land on it


@dataclass
class SafetyConfig:
    # workspace box of the TCP position, m, base frame
    workspace_min: list[float] = field(default_factory=lambda: [0.25, -0.35, 0.005])
    workspace_max: list[float] = field(default_factory=lambda: [0.75, 0.35, 0.60])
    # orientation: largest angle (rad) away from the nominal (pointing down) TCP orientation
    max_tilt: float = 1.0
    # nominal orientation, quaternion (x, y, z, w): gripper pointing down
    nominal_quat: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0, 0.0])
    max_step_translation: float = 0.003  # m per filter tick (at 500 Hz: 1.5 m/s)
    max_step_rotation: float = 0.01  # rad per filter tick
    max_linear_velocity: float = 0.5  # m/s
    max_angular_velocity: float = 1.5  # rad/s
    max_linear_acceleration: float = 10.0  # m/s^2 of the commanded TCP (the Panda allows 13)
    max_angular_acceleration: float = 20.0  # rad/s^2 of the commanded TCP (the Panda allows 25)
    gripper_min: float = 0.0
    gripper_max: float = 0.08
    watchdog_timeout: float = 0.5  # s without a fresh target -> hold
    max_clock_skew: float = 0.05  # s a target's stamp may be ahead of the filter's clock



@dataclass(frozen=True)
class Applied:
    """The TCP command actually applied at one filter tick."""

    pos: np.ndarray  # (3,) m, base frame
    quat: np.ndarray  # (4,) x, y, z, w
    stamp: float  # s, the caller's clock
    clipped: bool  # the workspace or a rate limit changed the target
    holding: bool  # watchdog, hold() or no target yet: holding the last applied pose
    target_stamp: float  # s, when the target in force was sent or received, the earlier (nan: none)


@dataclass(frozen=True)
class GripperCommand:
    width: float  # m
    speed: float  # m/s
    force: float  # N; > 0 grasps, else a plain move
    clipped: bool = False

    @property
    def grasp(self) -> bool:
        return self.force > 0.0


def validate_safety_config(cfg: Any, prefix: str = "safety.") -> None:
    """Raise ValueError naming the key, its value and the fix, for a bad SafetyConfig."""

    def fail(key: str, value: Any, must: str) -> None:
        raise ValueError(f"{prefix}{key} = {value!r}: {must}")

    def num(key: str) -> float:
        value = getattr(cfg, key)
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            fail(key, value, "must be a number")
        return v

    def vec(key: str, n: int, must: str) -> np.ndarray:
        value = getattr(cfg, key)
        try:
            a = np.asarray(value, dtype=float)
        except (TypeError, ValueError, OverflowError):
            a = np.zeros(0)
        if a.shape != (n,) or not np.all(np.isfinite(a)):
            fail(key, list(value) if isinstance(value, (list, tuple)) else value, must)
        return a

    lo = vec("workspace_min", 3, "must be 3 finite numbers [x, y, z] in m")
    hi = vec("workspace_max", 3, "must be 3 finite numbers [x, y, z] in m")
    if not np.all(lo < hi):
        fail("workspace_min", list(cfg.workspace_min), f"must be below workspace_max {list(cfg.workspace_max)} on every axis")
    q = vec("nominal_quat", 4, "must be a non-zero quaternion [x, y, z, w]")
    if np.max(np.abs(q)) * np.linalg.norm(q / max(np.max(np.abs(q)), 1e-300)) < _MIN_QUAT_NORM:
        fail("nominal_quat", list(cfg.nominal_quat), "must be a non-zero quaternion [x, y, z, w]")
    for key, upper in (("max_tilt", math.pi / 2), ("max_step_translation", 0.05), ("max_step_rotation", 0.5)):
        v = num(key)
        if not (0.0 < v <= upper):
            fail(key, v, f"must be in (0, {upper}]")
    for key in ("max_linear_velocity", "max_angular_velocity", "max_linear_acceleration",
                "max_angular_acceleration", "watchdog_timeout"):
        v = num(key)
        if not (math.isfinite(v) and v > 0.0):
            fail(key, v, "must be a positive number")
    skew = num("max_clock_skew")
    if not (0.0 <= skew <= num("watchdog_timeout")):
        fail("max_clock_skew", skew, f"must be in [0, watchdog_timeout = {num('watchdog_timeout')}] s")
    gmin, gmax = num("gripper_min"), num("gripper_max")
    if not (0.0 <= gmin < gmax <= 0.08 + 1e-9):
        fail("gripper_min", gmin, f"need 0 <= gripper_min < gripper_max ({gmax}) <= 0.08 m")


class SafetyFilter:
    """Clips, rate-limits and watches TCP targets; see the module docstring.

    Times are in seconds on any monotonic clock the caller uses consistently
    (``step``'s ``now`` is the reference: :meth:`set_target` refuses a ``now`` further
    than ``watchdog_timeout + max_clock_skew`` from the last step's). ``dt`` is the
    nominal tick period (1 / control rate), used when ``step`` is not told the
    measured one.
    """

    def __init__(self, cfg: Any, dt: float):
        validate_safety_config(cfg)
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt = {dt!r}: must be a positive tick period in s")
        self.cfg = cfg
        self.dt = float(dt)
        self._lo = tuple(float(v) for v in cfg.workspace_min)
        self._hi = tuple(float(v) for v in cfg.workspace_max)
        self._nominal = _unit_quat("nominal_quat", cfg.nominal_quat)
        self._max_tilt = float(cfg.max_tilt)
        self._pos: tuple[float, ...] | None = None
        self._quat: tuple[float, ...] | None = None
        self._vel = (0.0, 0.0, 0.0)  # commanded velocity of the last tick, m/s
        self._omega = (0.0, 0.0, 0.0)  # rad/s, base frame
        self._safe_lin = self._safe_rot = False  # braking from the last velocity ends inside the box / cone
        self._target: tuple[tuple, tuple] | None = None  # clipped target in force
        self._target_clipped = False
        self._target_time = float("nan")
        self._clock: float | None = None  # the last step's now
        self._hold = False
        self.rejected = 0  # counters for diagnostics
        self.clipped = 0
        self.stale_holds = 0
        self.last_rejection = ""  # why the last command was rejected
        self._stale = False

    # ----------------------------------------------------------------- state
    @property
    def ready(self) -> bool:
        return self._pos is not None

    @property
    def applied_pose(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pos is None or self._quat is None:
            raise RuntimeError("SafetyFilter: call reset(measured pose) before use")
        return np.array(self._pos), np.array(self._quat)

    @property
    def applied_velocity(self) -> tuple[np.ndarray, np.ndarray]:
        """The commanded (linear m/s, angular rad/s) velocity of the last tick, base frame."""
        return np.array(self._vel), np.array(self._omega)

    @property
    def holding(self) -> bool:
        return self._hold

    @property
    def target(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (clipped) target in force, or None while holding."""
        return None if self._target is None else (np.array(self._target[0]), np.array(self._target[1]))

    @property
    def stale(self) -> bool:
        return self._stale

    def _rejected(self, e: CommandRejected) -> None:
        self.rejected += 1
        self.last_rejection = str(e)

    def reset(self, pos: Any, quat: Any) -> None:
        """Start from the measured pose, at rest; no target is in force (the arm holds still).

        A bad measured pose raises :class:`CommandRejected` and changes nothing.
        """
        p = _vec("measured position", pos, 3)
        if max(map(abs, p)) > _MAX_MEASURED:  # a broken reading: float rounding out there breaks every limit
            raise CommandRejected(f"measured position {list(p)}: more than {_MAX_MEASURED:g} m from the base")
        q = _unit_quat("measured quaternion", quat)
        self._pos, self._quat = p, q
        self._stop_here()
        self._target = None
        self._target_time = float("nan")
        self._clock = None
        self._stale = False

    def set_hold(self, hold: bool) -> None:
        """True: hold the current applied pose and ignore targets until released."""
        self._hold = bool(hold)
        self._target = None

    # -------------------------------------------------------------- commands
    def clip_pose(self, pos: Any, quat: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        """Project a pose into the workspace box and the orientation cone."""
        p, q, clipped = self._clip(_vec("position", pos, 3), _unit_quat("quaternion", quat))
        return np.array(p), np.array(q), clipped

    def _in_box(self, p: tuple, eps: float = 0.0) -> bool:
        lo, hi = self._lo, self._hi
        return all(lo[i] - eps <= p[i] <= hi[i] + eps for i in range(3))

    def _tilt(self, q: tuple) -> float:
        return _norm(_rotvec_between(q, self._nominal))

    def _into_cone(self, q: tuple) -> tuple[tuple, bool]:
        r = _rotvec_between(q, self._nominal)
        angle = _norm(r)
        if angle <= self._max_tilt:
            return q, False
        return _canonical(_qmul(_quat_of(r, self._max_tilt * (1.0 - 1e-12) / angle), self._nominal)), True

    def _clip(self, p: tuple, q: tuple) -> tuple[tuple, tuple, bool]:
        c = tuple(min(max(v, lo), hi) for v, lo, hi in zip(p, self._lo, self._hi, strict=True))
        q, tilted = self._into_cone(q)
        return c, q, tilted or c != p

    def set_target(self, pos: Any, quat: Any, now: float, stamp: float | None = None) -> bool:
        """Validate and accept an absolute TCP target; returns True when it had to be clipped.

        ``now``: arrival time; ``stamp``: when the sender stamped it (the message
        header, converted to this clock), None if unknown. The target is fresh for
        ``watchdog_timeout`` from the earlier of the two. Raises
        :class:`CommandRejected` (counted in ``rejected``, the previous target stays in
        force) for NaN, Inf, out-of-range numbers, wrong shapes or dtypes, a degenerate
        quaternion, a non-finite time, a ``stamp`` more than ``max_clock_skew`` ahead of
        ``now`` or already stale, or a ``now`` far off the clock of :meth:`step`.
        """
        cfg = self.cfg
        try:
            p = _vec("target position", pos, 3)
            q = _unit_quat("target quaternion", quat)
            t_now = _time("now", now)
            t = t_now if stamp is None else _time("stamp", stamp)
            skew, timeout = float(cfg.max_clock_skew), float(cfg.watchdog_timeout)
            clock = self._clock
            if clock is not None and not (clock - timeout <= t_now <= clock + timeout + skew):
                raise CommandRejected(
                    f"now = {t_now!r}: more than watchdog_timeout + max_clock_skew from the clock of step() ({clock!r})")
            if t > t_now + skew:
                raise CommandRejected(f"stamp = {t!r}: {t - t_now:.3g} s in the future (max_clock_skew {skew:g} s)")
            if t_now - t > timeout:
                raise CommandRejected(f"stamp = {t!r}: stale, {t_now - t:.3g} s old on arrival "
                                      f"(watchdog_timeout {timeout:g} s)")
        except CommandRejected as e:
            self._rejected(e)
            raise
        if self._hold:
            return False
        p, q, clipped = self._clip(p, q)
        self._target = (p, q)
        self._target_clipped = clipped
        self._target_time = min(t, t_now)
        self._stale = False
        return clipped

    def gripper(self, width: Any, speed: Any, force: Any) -> GripperCommand:
        """Validate and clip a gripper command (raises :class:`CommandRejected` on NaN/Inf)."""
        try:
            w, s, f = (_time(n, v) for n, v in (("width", width), ("speed", speed), ("force", force)))
        except CommandRejected as e:
            self._rejected(e)
            raise
        cw = min(max(w, float(self.cfg.gripper_min)), float(self.cfg.gripper_max))
        cs = min(max(s, GRIPPER_MIN_SPEED), GRIPPER_MAX_SPEED)
        cf = min(max(f, 0.0), GRIPPER_MAX_FORCE)
        clipped = (cw, cs, cf) != (w, s, f)
        return GripperCommand(cw, cs, cf, clipped)

    # ------------------------------------------------------------------ tick
    def step(self, now: float, dt: float | None = None) -> Applied:
        """Advance one control tick and return the command to apply.

        ``dt``: the measured tick period (None, non-finite or <= 0: the nominal one).
        A non-finite ``now`` raises :class:`CommandRejected` and changes nothing.
        """
        if self._pos is None or self._quat is None:
            raise RuntimeError("SafetyFilter: call reset(measured pose) before step()")
        try:
            now = _time("now", now)
        except CommandRejected as e:
            self._rejected(e)
            raise
        try:
            dt = self.dt if dt is None else float(dt)
        except (TypeError, ValueError, OverflowError):
            dt = self.dt
        if not (math.isfinite(dt) and dt > 0.0):
            dt = self.dt
        self._clock = now
        cfg = self.cfg
        holding = self._hold or self._target is None
        if not holding and not (-float(cfg.max_clock_skew) <= now - self._target_time <= cfg.watchdog_timeout):
            # stale command (or one from the future: the clock went back): stop where we are
            self._target = None
            self._stale = True
            self.stale_holds += 1
            holding = True
        if holding:
            self._stop_here()
            return Applied(np.array(self._pos), np.array(self._quat), now, False, True, self._target_time)

        goal_p, goal_q = self._target  # type: ignore[misc]
        if dt < _MIN_DT:  # no time passed: the same pose, the same velocity
            return Applied(np.array(self._pos), np.array(self._quat), now, True, False, self._target_time)
        pos, vel = self._move_linear(goal_p, dt)
        quat, omega = self._move_angular(goal_q, dt)
        self._pos, self._quat, self._vel, self._omega = pos, quat, vel, omega
        clipped = self._target_clipped or pos != goal_p or quat != goal_q  # a limit held it back this tick
        if clipped:
            self.clipped += 1
        return Applied(np.array(pos), np.array(quat), now, clipped, False, self._target_time)

    def _stop_here(self) -> None:
        """At rest where it is: the braking path is the pose itself."""
        assert self._pos is not None and self._quat is not None, "reset() first"
        self._vel = self._omega = (0.0, 0.0, 0.0)
        self._safe_lin = self._in_box(self._pos)
        self._safe_rot = self._tilt(self._quat) <= self._max_tilt + _TILT_EPS

    def _move_linear(self, goal: tuple, dt: float) -> tuple[tuple, tuple]:
        """The next applied position toward ``goal`` and the velocity it realises.

        ``_safe_lin``: the braking path of the last velocity is known to end inside the box (from a
        start inside it, always); then a velocity whose own braking path would leave the box is
        replaced by braking along the last one.
        """
        cfg = self.cfg
        p, v0 = self._pos, self._vel
        assert p is not None, "reset() first"
        acc = float(cfg.max_linear_acceleration)
        cap = min(float(cfg.max_linear_velocity), float(cfg.max_step_translation) / dt)
        e = (goal[0] - p[0], goal[1] - p[1], goal[2] - p[2])
        dist = _norm(e)
        if dist <= _LAND and dist / dt + _norm(v0) <= min(acc * dt, cap):  # land on it and stop
            self._safe_lin = self._in_box(goal)
            return goal, (e[0] / dt, e[1] / dt, e[2] / dt)
        v = _accelerate(v0, e, dist, cap, acc, dt)
        safe = self._safe_lin
        if self._in_box(p):
            k = dt + _norm(v) / (2.0 * acc)
            if self._in_box((p[0] + v[0] * k, p[1] + v[1] * k, p[2] + v[2] * k), _BOX_EPS):
                self._safe_lin = True
            else:
                v = _brake(v0, acc * dt, cap)  # stays on the last braking path: inside if that was safe
        else:
            self._safe_lin = False  # outside (the arm started there): no promise until the check passes
        new: tuple[float, ...] = (p[0] + v[0] * dt, p[1] + v[1] * dt, p[2] + v[2] * dt)
        if (safe or self._safe_lin) and not self._in_box(new):  # rounding only
            new = tuple(min(max(x, lo), hi) for x, lo, hi in zip(new, self._lo, self._hi, strict=True))
        # the velocity actually realised (a tiny dt rounds the step away): the next tick accelerates from it
        return new, _realized((new[0] - p[0], new[1] - p[1], new[2] - p[2]), dt, cap)

    def _move_angular(self, goal: tuple, dt: float) -> tuple[tuple, tuple]:
        """The next applied orientation toward ``goal`` and the angular velocity it realises (as for the box,
        with the tilt cone and ``_safe_rot``)."""
        cfg = self.cfg
        q, w0 = self._quat, self._omega
        assert q is not None, "reset() first"
        acc = float(cfg.max_angular_acceleration)
        # and slow enough to brake within a quarter turn: a longer braking arc could leave the cone between
        # two ends inside it (sqrt(pi * acc): 7.9 rad/s at the default acceleration, above the velocity limit)
        cap = min(float(cfg.max_angular_velocity), float(cfg.max_step_rotation) / dt, _stop_speed(_QUARTER_TURN, acc, dt))
        r = _rotvec_between(goal, q)  # goal = quat(r) * q
        dist = _norm(r)
        if dist <= _LAND and dist / dt + _norm(w0) <= min(acc * dt, cap):
            self._safe_rot = self._tilt(goal) <= self._max_tilt + _TILT_EPS
            return goal, (r[0] / dt, r[1] / dt, r[2] / dt)
        w = _accelerate(w0, r, dist, cap, acc, dt)
        safe = self._safe_rot
        if self._tilt(q) <= self._max_tilt + _TILT_EPS:
            if self._tilt(_qmul(_quat_of(w, dt + _norm(w) / (2.0 * acc)), q)) <= self._max_tilt + _TILT_EPS:
                self._safe_rot = True
            else:
                w = _brake(w0, acc * dt, cap)
        else:
            self._safe_rot = False
        new = _canonical(_qmul(_quat_of(w, dt), q))
        if safe or self._safe_rot:
            new = self._into_cone(new)[0]  # rounding only
        return new, _realized(_rotvec_between(new, q), dt, cap)
