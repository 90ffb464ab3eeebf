"""Scalar math of the safety filter: input validation, quaternions, velocity profiles (no numpy in the loop).

The filter runs every control tick (500 Hz - 1 kHz) in Python, where plain float
math is ~10x cheaper than numpy on 3- and 4-vectors. Same conventions as
:mod:`rig.geometry` (quaternions ``(x, y, z, w)``, rotation vectors). Every helper
that takes outside input raises :class:`CommandRejected` naming the field, never
another error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["CommandRejected", "apply_twist", "MAX_TWIST_TRANSLATION", "MAX_TWIST_ROTATION"]

_MIN_QUAT_NORM = 1e-6  # a quaternion shorter than this is degenerate (uninitialised, underflowed)
MAX_TWIST_TRANSLATION = 10.0  # m in one apply_twist (the Panda reaches 0.855 m): beyond is rejected
MAX_TWIST_ROTATION = math.pi  # rad in one apply_twist: beyond, a rotation vector is ambiguous


class CommandRejected(ValueError):
    """A command the filter refuses outright (NaN, Inf, wrong shape, bad time); nothing is applied."""


# ------------------------------------------------------------------ validation of inputs
def _vec(name: str, value: Any, n: int) -> tuple[float, ...]:
    """A finite n-vector of real numbers as a tuple of floats, else CommandRejected naming ``name``."""
    # fast paths (every control tick): float64 arrays and sequences of Python floats
    if type(value) is np.ndarray and value.dtype == np.float64 and value.shape == (n,):
        t = tuple(value.tolist())
        if all(map(math.isfinite, t)):
            return t
    elif type(value) in (list, tuple) and len(value) == n and all(type(x) is float for x in value):
        if all(map(math.isfinite, value)):
            return tuple(value)
    if isinstance(value, (str, bytes)):
        raise CommandRejected(f"{name}: not numeric ({type(value).__name__})")
    try:
        with np.errstate(all="ignore"):
            a = np.asarray(value)
            if a.dtype.kind not in "iuf" and a.dtype != object:
                raise CommandRejected(f"{name}: not real numbers (dtype {a.dtype})")
            a = a.astype(np.float64)
    except CommandRejected:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise CommandRejected(f"{name}: not numeric or beyond float64 ({type(e).__name__}: {e})") from None
    if a.shape != (n,):
        raise CommandRejected(f"{name}: expected shape ({n},), got {a.shape}")
    t = tuple(a.tolist())
    if not all(map(math.isfinite, t)):
        raise CommandRejected(f"{name}: contains NaN or Inf: {list(t)}")
    return t


def _time(name: str, value: Any) -> float:
    """A finite time in s, else CommandRejected."""
    return _vec(name, [value], 1)[0]


def _norm(v: tuple) -> float:
    """Euclidean norm without overflow or underflow (scaled by the largest component)."""
    m = max(abs(x) for x in v)
    if m == 0.0 or not math.isfinite(m):
        return m
    return m * math.sqrt(sum((x / m) * (x / m) for x in v))


def _unit_quat(name: str, value: Any) -> tuple[float, float, float, float]:
    """A unit quaternion (w >= 0) of any finite non-degenerate input, else CommandRejected."""
    q = _vec(name, value, 4)
    m = max(abs(x) for x in q)
    if m == 0.0:
        raise CommandRejected(f"{name}: zero quaternion")
    x, y, z, w = (v / m for v in q)  # largest component +-1: no overflow, no underflow below
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if m * n < _MIN_QUAT_NORM:
        raise CommandRejected(f"{name}: degenerate quaternion (norm {m * n:.3g} < {_MIN_QUAT_NORM:g}): {list(q)}")
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
    """Unit quaternion of the rotation vector r * scale (finite, any magnitude)."""
    rx, ry, rz = r[0] * scale, r[1] * scale, r[2] * scale
    angle = _norm((rx, ry, rz))
    if not math.isfinite(angle):
        raise CommandRejected(f"rotation {list(r)} * {scale}: beyond float64")
    half = math.fmod(0.5 * angle, 2.0 * math.pi)  # the same rotation; keeps sin/cos accurate
    k = math.sin(half) / angle if angle > 1e-12 else 0.5
    return _canonical((rx * k, ry * k, rz * k, math.cos(half)))


def _canonical(q: tuple) -> tuple[float, float, float, float]:
    n = _norm(q)
    if q[3] < 0:
        n = -n
    return (q[0] / n, q[1] / n, q[2] / n, q[3] / n)


def _clamp_norm(v: tuple, cap: float) -> tuple[float, float, float]:
    n = _norm(v)
    if n <= cap:
        return v
    k = cap / n
    return (v[0] * k, v[1] * k, v[2] * k)


def _brake(v: tuple, dv: float, cap: float) -> tuple[float, float, float]:
    """Slow ``v`` by ``dv`` along its own direction (to rest if it is slower), then cap it."""
    n = _norm(v)
    if n <= dv:
        return (0.0, 0.0, 0.0)
    k = min(n - dv, cap) / n
    return (v[0] * k, v[1] * k, v[2] * k)


def _stop_speed(dist: float, acc: float, dt: float) -> float:
    """Largest speed u with u * dt + u**2 / (2 acc) <= dist: this tick, then braking, ends by ``dist``."""
    return 2.0 * dist / (dt + math.sqrt(dt * dt + 2.0 * dist / acc))


def _accelerate(v: tuple, goal: tuple, dist: float, cap: float, acc: float, dt: float) -> tuple[float, float, float]:
    """Velocity for this tick: toward ``goal`` (a displacement of length ``dist``) at most at ``cap``,
    ready to stop there, reached from the previous velocity ``v`` with at most ``acc * dt`` of change."""
    if dist > 0.0:
        k = min(cap, _stop_speed(dist, acc, dt)) / dist
        want = (goal[0] * k, goal[1] * k, goal[2] * k)
    else:
        want = (0.0, 0.0, 0.0)
    dv = _clamp_norm((want[0] - v[0], want[1] - v[1], want[2] - v[2]), acc * dt)
    return _clamp_norm((v[0] + dv[0], v[1] + dv[1], v[2] + dv[2]), cap)


def _realized(d: tuple, dt: float, cap: float) -> tuple[float, float, float]:
    """The velocity of a step ``d`` in ``dt``, at most ``cap`` (a rounding-level step in a tiny dt is not fast)."""
    n = _norm(d)
    if n == 0.0:
        return (0.0, 0.0, 0.0)
    k = 1.0 / dt if n < cap * dt else cap / n
    return (d[0] * k, d[1] * k, d[2] * k)


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
    by ``quat``); otherwise in the base frame. Raises :class:`CommandRejected` naming
    the field on NaN/Inf, wrong shapes, a displacement over :data:`MAX_TWIST_TRANSLATION`
    or a turn over :data:`MAX_TWIST_ROTATION`; never another error.
    """
    v = _vec("twist linear", linear, 3)
    w = _vec("twist angular", angular, 3)
    q = _unit_quat("pose quaternion", quat)
    p = _vec("pose position", pos, 3)
    s = _time("twist scale", scale)
    if ee_frame:  # rotate into the base frame: q * (v, 0) * q^-1 (a rotation: no overflow below 1e308 / 3)
        qc = (-q[0], -q[1], -q[2], q[3])
        v = _vec("twist linear", _qmul(_qmul(q, (*v, 0.0)), qc)[:3], 3)
        w = _vec("twist angular", _qmul(_qmul(q, (*w, 0.0)), qc)[:3], 3)
    d = _vec("twist linear", (v[0] * s, v[1] * s, v[2] * s), 3)
    if not _norm(d) <= MAX_TWIST_TRANSLATION:
        raise CommandRejected(f"twist linear: {list(v)} * {s} moves {_norm(d):.3g} m > {MAX_TWIST_TRANSLATION:g} m")
    rot = _vec("twist angular", (w[0] * s, w[1] * s, w[2] * s), 3)
    if not _norm(rot) <= MAX_TWIST_ROTATION:
        raise CommandRejected(f"twist angular: {list(w)} * {s} turns {_norm(rot):.3g} rad > pi")
    new_p = _vec("twist linear", (p[0] + d[0], p[1] + d[1], p[2] + d[2]), 3)
    return np.array(new_p), np.array(_canonical(_qmul(_quat_of(rot), q)))
