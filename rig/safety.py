"""The safety filter between every command source and the arm (numpy only, no ROS).

Every TCP target the franka node sends (from ``target_pose``, ``target_twist``,
teleop, or a sim env) goes through :class:`SafetyFilter`, configured by
:class:`SafetyConfig`:

* **rejection** (:class:`CommandRejected`): NaN, Inf, wrong shapes, zero-norm
  quaternions never reach the backend; the previous target stays in force;
* **workspace**: a fresh target is clipped into the position box
  (``workspace_min`` .. ``workspace_max``) and into the orientation cone (at most
  ``max_tilt`` rad away from ``nominal_quat``);
* **rate limits**: each tick the applied command moves toward the (clipped) target
  by at most ``min(max_step_translation, max_linear_velocity * dt)`` metres and
  ``min(max_step_rotation, max_angular_velocity * dt)`` radians;
* **watchdog**: with no fresh target for ``watchdog_timeout`` s the filter holds the
  last applied pose (the arm stops where it is, it does not finish a stale motion);
* **gripper**: width clipped to ``gripper_min`` .. ``gripper_max``, speed and force to
  the Franka Hand's ranges, NaN/Inf rejected.

:meth:`SafetyFilter.step` returns the command actually applied; that is what the
node sends, publishes on ``command_applied`` and the recorder stores.

The filter starts from the measured pose (:meth:`SafetyFilter.reset`) and only
ever moves by rate-limited steps toward targets clipped into the workspace, so a
command applied from a pose inside the workspace never leaves it; if the arm
starts outside the box, holding keeps it still until a target pulls it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
]

GRIPPER_MAX_SPEED = 0.1  # m/s, Franka Hand
GRIPPER_MIN_SPEED = 0.001  # m/s
GRIPPER_MAX_FORCE = 70.0  # N, Franka Hand continuous grasp force


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
    gripper_min: float = 0.0
    gripper_max: float = 0.08
    watchdog_timeout: float = 0.5  # s without a fresh target -> hold



class CommandRejected(ValueError):
    """A command the filter refuses outright (NaN, Inf, wrong shape); nothing is applied."""


@dataclass(frozen=True)
class Applied:
    """The TCP command actually applied at one filter tick."""

    pos: np.ndarray  # (3,) m, base frame
    quat: np.ndarray  # (4,) x, y, z, w
    stamp: float  # s, the caller's clock
    clipped: bool  # the workspace or a rate limit changed the target
    holding: bool  # watchdog, hold() or no target yet: holding the last applied pose
    target_stamp: float  # s, when the target in force was received (nan: none)


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

    lo = np.asarray(cfg.workspace_min, dtype=float)
    hi = np.asarray(cfg.workspace_max, dtype=float)
    if lo.shape != (3,) or not np.all(np.isfinite(lo)):
        fail("workspace_min", list(cfg.workspace_min), "must be 3 finite numbers [x, y, z] in m")
    if hi.shape != (3,) or not np.all(np.isfinite(hi)):
        fail("workspace_max", list(cfg.workspace_max), "must be 3 finite numbers [x, y, z] in m")
    if not np.all(lo < hi):
        fail("workspace_min", list(cfg.workspace_min), f"must be below workspace_max {list(cfg.workspace_max)} on every axis")
    q = np.asarray(cfg.nominal_quat, dtype=float)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-6:
        fail("nominal_quat", list(cfg.nominal_quat), "must be a non-zero quaternion [x, y, z, w]")
    for key, upper in (("max_tilt", math.pi / 2), ("max_step_translation", 0.05), ("max_step_rotation", 0.5)):
        v = float(getattr(cfg, key))
        if not (0.0 < v <= upper):
            fail(key, v, f"must be in (0, {upper}]")
    for key in ("max_linear_velocity", "max_angular_velocity", "watchdog_timeout"):
        v = float(getattr(cfg, key))
        if not (math.isfinite(v) and v > 0.0):
            fail(key, v, "must be a positive number")
    gmin, gmax = float(cfg.gripper_min), float(cfg.gripper_max)
    if not (0.0 <= gmin < gmax <= 0.08 + 1e-9):
        fail("gripper_min", gmin, f"need 0 <= gripper_min < gripper_max ({gmax}) <= 0.08 m")


def _vec(name: str, value: Any, n: int) -> tuple[float, ...]:
    """A finite n-vector as a tuple of floats, else CommandRejected."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CommandRejected(f"{name}: not numeric ({e})") from None
    if a.shape != (n,):
        raise CommandRejected(f"{name}: expected shape ({n},), got {a.shape}")
    t = tuple(a.tolist())
    if not all(map(math.isfinite, t)):
        raise CommandRejected(f"{name}: contains NaN or Inf: {list(t)}")
    return t


def _unit_quat(name: str, value: Any) -> tuple[float, float, float, float]:
    x, y, z, w = _vec(name, value, 4)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n < 1e-6:
        raise CommandRejected(f"{name}: zero-norm quaternion")
    if w < 0:
        n = -n
    return (x / n, y / n, z / n, w / n)


# Scalar quaternion helpers: the filter runs every control tick (500 Hz - 1 kHz) in Python, where
# plain float math is ~10x cheaper than numpy on 3- and 4-vectors. Same conventions as rig.geometry.
def _qmul(a: tuple, b: tuple) -> tuple[float, float, float, float]:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz)


def _rotvec_between(a: tuple, b: tuple) -> tuple[float, float, float]:
    """Rotation vector r (shortest way) with quat(r) * b == a, for unit quaternions a, b."""
    bx, by, bz, bw = b
    x, y, z, w = _qmul(a, (-bx, -by, -bz, bw))
    if w < 0:
        x, y, z, w = -x, -y, -z, -w
    s = math.sqrt(x * x + y * y + z * z)
    k = 2.0 * math.atan2(s, w) / s if s > 1e-12 else 2.0
    return (x * k, y * k, z * k)


def _quat_of(r: tuple, scale: float = 1.0) -> tuple[float, float, float, float]:
    """Unit quaternion of the rotation vector r * scale."""
    rx, ry, rz = r[0] * scale, r[1] * scale, r[2] * scale
    angle = math.sqrt(rx * rx + ry * ry + rz * rz)
    k = math.sin(0.5 * angle) / angle if angle > 1e-12 else 0.5
    return (rx * k, ry * k, rz * k, math.cos(0.5 * angle))


def _norm(v: tuple) -> float:
    return math.sqrt(sum(x * x for x in v))


def _canonical(q: tuple) -> tuple[float, float, float, float]:
    n = _norm(q)
    if q[3] < 0:
        n = -n
    return (q[0] / n, q[1] / n, q[2] / n, q[3] / n)


class SafetyFilter:
    """Clips, rate-limits and watches TCP targets; see the module docstring.

    Times are in seconds on any monotonic clock the caller uses consistently.
    ``dt`` is the nominal tick period (1 / control rate), used when ``step`` is
    not told the measured one.
    """

    def __init__(self, cfg: Any, dt: float):
        validate_safety_config(cfg)
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt = {dt!r}: must be a positive tick period in s")
        self.cfg = cfg
        self.dt = float(dt)
        self._lo = tuple(float(v) for v in cfg.workspace_min)
        self._hi = tuple(float(v) for v in cfg.workspace_max)
        self._nominal = _canonical(tuple(float(v) for v in cfg.nominal_quat))
        self._max_tilt = float(cfg.max_tilt)
        self._pos: tuple[float, ...] | None = None
        self._quat: tuple[float, ...] | None = None
        self._target: tuple[tuple, tuple] | None = None  # clipped target in force
        self._target_clipped = False
        self._target_time = float("nan")
        self._hold = False
        self.rejected = 0  # counters for diagnostics
        self.clipped = 0
        self.stale_holds = 0
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
    def holding(self) -> bool:
        return self._hold

    @property
    def target(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (clipped) target in force, or None while holding."""
        return None if self._target is None else (np.array(self._target[0]), np.array(self._target[1]))

    @property
    def stale(self) -> bool:
        return self._stale

    def reset(self, pos: Any, quat: Any) -> None:
        """Start from the measured pose; no target is in force (the arm holds still)."""
        self._pos = _vec("measured position", pos, 3)
        self._quat = _unit_quat("measured quaternion", quat)
        self._target = None
        self._target_time = float("nan")
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

    def _clip(self, p: tuple, q: tuple) -> tuple[tuple, tuple, bool]:
        c = tuple(min(max(v, lo), hi) for v, lo, hi in zip(p, self._lo, self._hi, strict=True))
        clipped = c != p
        r = _rotvec_between(q, self._nominal)
        angle = _norm(r)
        if angle > self._max_tilt:
            q = _canonical(_qmul(_quat_of(r, self._max_tilt / angle), self._nominal))
            clipped = True
        return c, q, clipped

    def set_target(self, pos: Any, quat: Any, now: float) -> bool:
        """Validate and accept an absolute TCP target; returns True when it had to be clipped.

        Raises :class:`CommandRejected` for NaN, Inf, wrong shapes or a zero quaternion
        (counted in ``rejected``); the previous target stays in force then.
        """
        try:
            p = _vec("target position", pos, 3)
            q = _unit_quat("target quaternion", quat)
        except CommandRejected:
            self.rejected += 1
            raise
        if self._hold:
            return False
        p, q, clipped = self._clip(p, q)
        self._target = (p, q)
        self._target_clipped = clipped
        self._target_time = float(now)
        self._stale = False
        return clipped

    def gripper(self, width: Any, speed: Any, force: Any) -> GripperCommand:
        """Validate and clip a gripper command (raises :class:`CommandRejected` on NaN/Inf)."""
        try:
            w, s, f = (_vec(n, [v], 1)[0] for n, v in (("width", width), ("speed", speed), ("force", force)))
        except CommandRejected:
            self.rejected += 1
            raise
        cw = min(max(w, float(self.cfg.gripper_min)), float(self.cfg.gripper_max))
        cs = min(max(s, GRIPPER_MIN_SPEED), GRIPPER_MAX_SPEED)
        cf = min(max(f, 0.0), GRIPPER_MAX_FORCE)
        clipped = (cw, cs, cf) != (w, s, f)
        return GripperCommand(cw, cs, cf, clipped)

    # ------------------------------------------------------------------ tick
    def step(self, now: float, dt: float | None = None) -> Applied:
        """Advance one control tick and return the command to apply."""
        if self._pos is None or self._quat is None:
            raise RuntimeError("SafetyFilter: call reset(measured pose) before step()")
        dt = self.dt if dt is None or not (dt > 0) else float(dt)
        cfg = self.cfg
        holding = self._hold or self._target is None
        if not holding and now - self._target_time > cfg.watchdog_timeout:
            # stale command: stop where we are
            self._target = None
            self._stale = True
            self.stale_holds += 1
            holding = True
        if holding:
            return Applied(np.array(self._pos), np.array(self._quat), now, False, True, self._target_time)

        goal_p, goal_q = self._target  # type: ignore[misc]
        clipped = self._target_clipped
        max_t = min(cfg.max_step_translation, cfg.max_linear_velocity * dt)
        max_r = min(cfg.max_step_rotation, cfg.max_angular_velocity * dt)

        px, py, pz = self._pos
        dx, dy, dz = goal_p[0] - px, goal_p[1] - py, goal_p[2] - pz
        n = math.sqrt(dx * dx + dy * dy + dz * dz)
        if n > max_t:
            k = max_t / n
            dx, dy, dz = dx * k, dy * k, dz * k
            clipped = True
        pos = (px + dx, py + dy, pz + dz)

        r = _rotvec_between(goal_q, self._quat)
        a = _norm(r)
        if a > max_r:
            quat = _canonical(_qmul(_quat_of(r, max_r / a), self._quat))
            clipped = True
        else:
            quat = goal_q
        self._pos, self._quat = pos, quat
        if clipped:
            self.clipped += 1
        return Applied(np.array(pos), np.array(quat), now, clipped, False, self._target_time)


def apply_twist(
    pos: np.ndarray,
    quat: np.ndarray,
    linear: Any,
    angular: Any,
    scale: float = 1.0,
    ee_frame: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Displace a pose by a twist times ``scale`` (dt for a velocity, 1 for a per-message delta).

    ``ee_frame``: the twist is expressed in the TCP frame (rotated into the base frame
    by ``quat``); otherwise in the base frame. Raises :class:`CommandRejected` on NaN/Inf.
    """
    v = _vec("twist linear", linear, 3)
    w = _vec("twist angular", angular, 3)
    q = _unit_quat("pose quaternion", quat)
    if ee_frame:  # rotate into the base frame: q * (v, 0) * q^-1
        qc = (-q[0], -q[1], -q[2], q[3])
        v = _qmul(_qmul(q, (*v, 0.0)), qc)[:3]
        w = _qmul(_qmul(q, (*w, 0.0)), qc)[:3]
    p = _vec("pose position", pos, 3)
    new_p = (p[0] + v[0] * scale, p[1] + v[1] * scale, p[2] + v[2] * scale)
    return np.array(new_p), np.array(_canonical(_qmul(_quat_of(w, scale), q)))
