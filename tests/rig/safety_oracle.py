"""An independent check of the safety filter's limits, shared by the fuzz tests and ``benchmarks/safety_fuzz.py``.

:class:`Oracle` drives a :class:`rig.safety.SafetyFilter` and, after every call,
checks what came out against the limits with its own arithmetic (numpy, not the
filter's scalar helpers): every call either raises :class:`CommandRejected` and
changes nothing, or returns a command inside the workspace box and tilt cone,
within the per-tick step and velocity limits, within the acceleration limits
(relaxed only where a long tick's step cap forces a harder stop), held when no
fresh target is in force. Any other exception is a violation too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rig.geometry import quat_conj, quat_mul, quat_to_rotvec
from rig.safety import CommandRejected, SafetyFilter, apply_twist

ROUND = 1e-12  # m / rad: rounding allowance on positions and angles
MIN_DT = 1e-6  # s: the filter does not move in a shorter tick (no time passed)

# the safety tests' nominal tick (500 Hz) and start pose (home, the hand pointing down)
DT = 0.002
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
HOME = np.array([0.45, 0.0, 0.35])


def _rot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vector from orientation b to a (base frame), by numpy's arctan2 (accurate near 0)."""
    return quat_to_rotvec(quat_mul(a, quat_conj(b)))


def _valid_dt(dt: Any, nominal: float) -> float:
    try:
        d = float(dt)
    except (TypeError, ValueError, OverflowError):
        return nominal
    return d if math.isfinite(d) and d > 0 else nominal


class Oracle:
    """A filter plus the record needed to check each of its outputs; ``violations`` lists what failed."""

    def __init__(self, cfg: Any, dt: float):
        self.cfg = cfg
        self.f = SafetyFilter(cfg, dt)
        self.lo = np.asarray(cfg.workspace_min, float)
        self.hi = np.asarray(cfg.workspace_max, float)
        self.nominal = np.asarray(cfg.nominal_quat, float) / np.linalg.norm(cfg.nominal_quat)
        self.violations: list[str] = []
        self.calls = 0
        self.rejections = 0
        self.ticks = 0
        self.moving_ticks = 0
        self.by_kind: dict[str, list[int]] = {}  # call name -> [calls, rejected, violations]

    # ------------------------------------------------------------ bookkeeping
    def _fail(self, what: str) -> None:
        self.violations.append(what)
        kind = what.split(":", 1)[0].split("(", 1)[0]
        self.by_kind.setdefault(kind, [0, 0, 0])[2] += 1

    def _tilt(self, q: np.ndarray) -> float:
        return float(np.linalg.norm(_rot(q, self.nominal)))

    def _snapshot(self) -> tuple:
        f = self.f
        tgt = f.target
        pose = f.applied_pose if f.ready else None
        return (None if pose is None else (tuple(pose[0]), tuple(pose[1])),
                None if tgt is None else (tuple(tgt[0]), tuple(tgt[1])), f.holding)

    def _call(self, name: str, fn, *args: Any) -> Any:
        """Run one filter call: a CommandRejected must leave the state as it was; nothing else may raise."""
        self.calls += 1
        counts = self.by_kind.setdefault(name, [0, 0, 0])
        counts[0] += 1
        before = self._snapshot()
        rejected_before = self.f.rejected
        try:
            return fn(*args)
        except CommandRejected:
            self.rejections += 1
            counts[1] += 1
            if self._snapshot() != before:
                self._fail(f"{name}: rejected, but the state changed")
            if name not in ("reset", "apply_twist") and self.f.rejected != rejected_before + 1:
                self._fail(f"{name}: rejected, but not counted")
            return None
        except Exception as e:  # noqa: BLE001 - any other exception is what we look for
            self._fail(f"{name}{args!r:.200}: raised {type(e).__name__}: {e}")
            return None

    # ------------------------------------------------------------------- API
    def reset(self, pos: Any, quat: Any) -> None:
        n = self.rejections + len(self.violations)
        self._call("reset", self.f.reset, pos, quat)
        if self.rejections + len(self.violations) == n:  # accepted: the new start
            p, q = self.f.applied_pose
            self.inside = bool(np.all(p >= self.lo) and np.all(p <= self.hi))
            self.in_cone = self._tilt(q) <= self.cfg.max_tilt
            self.prev_v = np.zeros(3)
            self.prev_w = np.zeros(3)

    def set_target(self, pos: Any, quat: Any, now: Any, stamp: Any = None) -> None:
        self._call("set_target", self.f.set_target, pos, quat, now, stamp)

    def twist(self, lin: Any, ang: Any, scale: Any, ee: bool, now: Any) -> None:
        if not self.f.ready:
            return
        p, q = self.f.applied_pose
        out = self._call("apply_twist", apply_twist, p, q, lin, ang, scale, ee)
        if out is not None:
            if not (np.all(np.isfinite(out[0])) and abs(np.linalg.norm(out[1]) - 1.0) < 1e-9):
                self._fail(f"apply_twist returned {out}")
            self.set_target(out[0], out[1], now)

    def gripper(self, w: Any, s: Any, force: Any) -> None:
        g = self._call("gripper", self.f.gripper, w, s, force)
        if g is not None:
            c = self.cfg
            if not (c.gripper_min <= g.width <= c.gripper_max and 0.0 < g.speed <= 0.1 and 0.0 <= g.force <= 70.0):
                self._fail(f"gripper command out of range: {g}")

    def hold(self, on: bool) -> None:
        self._call("set_hold", self.f.set_hold, on)

    def step(self, now: Any, dt: Any = None) -> None:
        with np.errstate(all="ignore"):  # a measured pose of 1e305 m is finite: the filter takes it, holds
            self._step(now, dt)

    def _step(self, now: Any, dt: Any) -> None:
        if not self.f.ready:
            return
        c = self.cfg
        p0, q0 = self.f.applied_pose
        a = self._call("step", self.f.step, now, dt)
        if a is None:
            return
        self.ticks += 1
        d = _valid_dt(dt, self.f.dt)
        p, q = np.asarray(a.pos), np.asarray(a.quat)
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q)) and abs(np.linalg.norm(q) - 1.0) < 1e-9):
            self._fail(f"step: not a finite pose with a unit quaternion: {p} {q}")
            return
        if self.inside and not (np.all(p >= self.lo - ROUND) and np.all(p <= self.hi + ROUND)):
            self._fail(f"step: left the workspace box: {p}")
        tilt = self._tilt(q)
        if self.in_cone and tilt > c.max_tilt + 1e-9:
            self._fail(f"step: tilt {tilt} > max_tilt {c.max_tilt}")
        dp = p - p0
        dr = _rot(q, q0)
        step_t, step_r = float(np.linalg.norm(dp)), float(np.linalg.norm(dr))
        if step_t > min(c.max_step_translation, c.max_linear_velocity * d) + ROUND:
            self._fail(f"step: moved {step_t} m in {d} s")
        if step_r > min(c.max_step_rotation, c.max_angular_velocity * d) + 1e-9:
            self._fail(f"step: turned {step_r} rad in {d} s")
        if a.holding or d < MIN_DT:
            if step_t != 0.0 or step_r > 1e-15:
                self._fail(f"step: moved while holding or in a tick of {d} s")
            if a.holding:
                v = w = np.zeros(3)
            else:  # no time passed: the velocity is what it was
                v, w = self.prev_v, self.prev_w
        else:
            self.moving_ticks += 1
            age = float(a.stamp) - float(a.target_stamp)
            if not (-c.max_clock_skew <= age <= c.watchdog_timeout):
                self._fail(f"step: moving on a target {age} s old (watchdog {c.watchdog_timeout})")
            v, w = dp / d, dr / d  # a denormal dt: the tolerance below is inf as well
            tol = 1e-9 + 1e-15 / d
            for name, new, old, acc, cap in (
                ("linear", v, self.prev_v, c.max_linear_acceleration,
                 min(c.max_linear_velocity, c.max_step_translation / d)),
                ("angular", w, self.prev_w, c.max_angular_acceleration,  # braking turns at most pi / 2:
                 min(c.max_angular_velocity, c.max_step_rotation / d,
                     c.max_angular_acceleration * (math.sqrt(d * d + math.pi / c.max_angular_acceleration) - d))),
            ):
                change = float(np.linalg.norm(new - old))
                allowed = acc * d + max(0.0, float(np.linalg.norm(old)) + acc * d - cap)
                if change > allowed + tol:
                    self._fail(f"step: {name} velocity changed by {change} > {allowed} in {d} s")
        self.prev_v, self.prev_w = v, w


# ------------------------------------------------------------------ random sessions (numpy RNG, for volume)
HOSTILE_SCALARS = (float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 1.7976931348623157e308, 5e-324,
                   1e154, -1e154, 10**400, -(10**400), 0.0, -0.0, True, None, "0.5", 1 + 2j)
HOSTILE_QUATS = ([1e154, 1e154, 0, 1], [1e308, 1e308, 1e308, 1e308], [0, 0, 0, 0], [1e-300, 0, 0, 0],
                 [5e-324, 5e-324, 0, 0], [1e-7, 0, 0, 1e-7], [-1e308, 0, 0, -1e308], [np.inf, 0, 0, 1],
                 [np.nan, 0, 0, 1], [0, 0, 0, 10**400], [1, 0, 0], [1, 0, 0, 0, 0], [[1, 0, 0, 0]])
DTYPES = (np.float16, np.float32, np.float64, np.longdouble, np.int8, np.int64, np.uint64, np.bool_,
          np.complex128, object)


def _hostile(rng: np.random.Generator, n: int) -> Any:
    """Something that is not a valid n-vector (or barely one): odd values, magnitudes, shapes, dtypes."""
    k = rng.integers(7)
    if k == 0:
        with np.errstate(all="ignore"):
            v = (rng.standard_normal(n) * 10.0 ** rng.integers(-320, 309)).tolist()
        v[rng.integers(n)] = HOSTILE_SCALARS[rng.integers(len(HOSTILE_SCALARS))]
        return v
    if k == 1:
        return [HOSTILE_SCALARS[i] for i in rng.integers(len(HOSTILE_SCALARS), size=n)]
    if k == 2:
        shape = tuple(int(s) for s in rng.integers(0, 5, size=rng.integers(0, 4)))
        return rng.standard_normal(shape)
    if k == 3:
        dt = DTYPES[rng.integers(len(DTYPES))]
        with np.errstate(all="ignore"):
            return (rng.standard_normal(n) * 10.0 ** rng.integers(0, 40)).astype(dt)
    if k == 4:
        return HOSTILE_QUATS[rng.integers(len(HOSTILE_QUATS))]
    if k == 5:
        return HOSTILE_SCALARS[rng.integers(len(HOSTILE_SCALARS))]
    with np.errstate(all="ignore"):
        return rng.standard_normal(n) * 10.0 ** rng.integers(150, 309)  # huge (or past float64: inf)


def _pose(rng: np.random.Generator, o: Oracle) -> tuple[Any, Any]:
    k = rng.integers(10)
    if k < 2:  # hostile
        return (_hostile(rng, 3), rng.standard_normal(4)) if rng.integers(2) else (rng.uniform(0, 1, 3), _hostile(rng, 4))
    span = o.hi - o.lo
    pos = o.lo - 0.5 * span + rng.uniform(size=3) * 2 * span  # in and around the box
    with np.errstate(all="ignore"):
        quat = rng.standard_normal(4) * 10.0 ** rng.integers(-5, 300)  # any orientation, any magnitude
    if k < 5 and o.f.ready:  # near the applied pose (the final approach)
        p, q = o.f.applied_pose
        pos = p + rng.uniform(-0.01, 0.01, 3)
        quat = quat_mul(np.append(rng.uniform(-0.01, 0.01, 3), 1.0), q)
    return pos, quat


def _time(rng: np.random.Generator, now: float) -> Any:
    k = rng.integers(20)
    if k == 0:
        return HOSTILE_SCALARS[rng.integers(len(HOSTILE_SCALARS))]
    if k == 1:
        return now - rng.uniform(0.0, 2.0)  # back in time / stale
    if k == 2:
        return now + rng.uniform(0.0, 2.0)  # the future
    return now


def random_session(o: Oracle, rng: np.random.Generator, n_ops: int) -> None:
    """``n_ops`` random calls on the oracle's filter: targets (valid, hostile, alternating), twists,
    stamps (fresh, stale, future, non-finite), clock jumps, holds, resets, gripper commands, ticks."""
    now = float(rng.uniform(0, 1e4))
    o.reset(o.lo + rng.uniform(size=3) * (o.hi - o.lo),
            quat_mul(np.append(rng.uniform(-0.3, 0.3, 3), 1.0), o.nominal))
    alternate = None
    for _ in range(n_ops):
        k = rng.integers(100)
        if alternate is not None and rng.integers(2):  # alternating far targets, one per tick
            pos, quat = alternate[o.ticks % 2]
            o.set_target(pos, quat, now)
            k = 50  # and a tick
        if k < 25:
            pos, quat = _pose(rng, o)
            stamp = None if rng.integers(2) else _time(rng, now - rng.uniform(0, 0.1))
            o.set_target(pos, quat, _time(rng, now), stamp)
        elif k < 32:
            lin = _hostile(rng, 3) if rng.integers(4) == 0 else rng.standard_normal(3) * 10.0 ** rng.integers(-3, 2)
            ang = _hostile(rng, 3) if rng.integers(4) == 0 else rng.standard_normal(3) * 10.0 ** rng.integers(-3, 2)
            scale = [o.f.dt, 1.0, HOSTILE_SCALARS[rng.integers(len(HOSTILE_SCALARS))]][rng.integers(3)]
            o.twist(lin, ang, scale, bool(rng.integers(2)), now)
        elif k < 34:
            o.hold(bool(rng.integers(3) == 0))
        elif k < 35:
            o.reset(*_pose(rng, o))
        elif k < 37:
            o.gripper(*(_hostile(rng, 1) if rng.integers(3) == 0 else rng.uniform(-1, 1) for _ in range(3)))
        elif k < 39:
            alternate = None if alternate is not None else (_pose(rng, o), _pose(rng, o))
        else:
            dt = [o.f.dt, float(rng.uniform(1e-4, 0.05)), None, HOSTILE_SCALARS[rng.integers(len(HOSTILE_SCALARS))],
                  float(rng.uniform(0.05, 2.0))][rng.integers(5) if rng.integers(4) == 0 else 0]
            now += min(_valid_dt(dt, o.f.dt), 1.0)  # the session's clock (the filter may be told otherwise)
            o.step(_time(rng, now) if rng.integers(10) == 0 else now, dt)
