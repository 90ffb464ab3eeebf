"""Health on ``/diagnostics``: :class:`Diagnostics`, :class:`CallbackErrors`, :class:`PeriodStats`.

Every node reports through :class:`Diagnostics` (one status per node or device).
A node built on :class:`robot.ros.lifecycle.RigNode` links its statuses to the
node's :class:`CallbackErrors`, so every status it publishes carries
``callback_errors`` (the total caught by the node's guarded callbacks),
``callback_errors.<callback>`` per callback and ``last_callback_error``; for
:data:`RECENT_ERROR_S` seconds after an error an OK status is raised to WARN
and names it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

__all__ = ["OK", "WARN", "ERROR", "STALE", "RECENT_ERROR_S", "level_of", "Diagnostics", "CallbackErrors",
           "PeriodStats"]

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE

#: seconds after a callback error during which an OK status is reported as WARN
RECENT_ERROR_S = 5.0


def level_of(level: Any) -> int:
    """A DiagnosticStatus level (bytes in rclpy, or an int) as an int."""
    return int.from_bytes(level, "little") if isinstance(level, bytes) else int(level)


class CallbackErrors:
    """Errors caught by one node's guarded callbacks: counts per callback, the last one; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._total = 0
        self._last = ""
        self._last_t = -float("inf")

    def add(self, where: str, exc: BaseException) -> int:
        """Count an error of callback ``where``; returns the node's total."""
        text = f"{where}: {type(exc).__name__}: {exc}"
        if len(text) > 300:  # a hostile message can make the error text huge
            text = text[:297] + "..."
        with self._lock:
            self._counts[where] = self._counts.get(where, 0) + 1
            self._total += 1
            self._last, self._last_t = text, time.monotonic()
            return self._total

    @property
    def total(self) -> int:
        return self._total

    @property
    def last(self) -> str:
        return self._last

    def count(self, where: str) -> int:
        with self._lock:
            return self._counts.get(where, 0)

    def recent(self, within: float = RECENT_ERROR_S) -> bool:
        return time.monotonic() - self._last_t <= within

    def values(self) -> dict[str, str]:
        with self._lock:
            out = {"callback_errors": str(self._total), "last_callback_error": self._last}
            out.update({f"callback_errors.{k}": str(v) for k, v in self._counts.items()})
            return out


class Diagnostics:
    """Publishes one node's health on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray).

    ``set(level, message, **values)`` records the current status (thread-safe; cheap,
    callable from a control loop); a timer publishes it every ``period`` seconds (none
    with ``period=None``), and :meth:`publish_now` sends it at once (use on errors so
    they are seen immediately). ``errors``: the node's :class:`CallbackErrors`, reported
    in every status (see the module docstring).
    """

    def __init__(self, node: Node, name: str, hardware_id: str = "", period: float | None = 1.0,
                 errors: CallbackErrors | None = None):
        self._node = node
        self._name = name
        self._hardware_id = hardware_id
        self._errors = errors
        self._lock = threading.Lock()
        self._level = OK
        self._message = "starting"
        self._values: dict[str, str] = {}
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # period None: no timer; the owner calls publish_now() itself (e.g. from a supervisor thread)
        self._timer = node.create_timer(period, self.publish_now) if period else None

    @property
    def level(self) -> int:
        return level_of(self._level)

    @property
    def message(self) -> str:
        return self._message

    def set(self, level: Any, message: str, **values: Any) -> None:
        with self._lock:
            self._level = level
            self._message = message
            self._values.update({k: _fmt(v) for k, v in values.items()})

    def update(self, **values: Any) -> None:
        """Update key/values without changing level or message."""
        with self._lock:
            self._values.update({k: _fmt(v) for k, v in values.items()})

    def status(self) -> DiagnosticStatus:
        with self._lock:
            level, message, values = self._level, self._message, dict(self._values)
        e = self._errors
        if e is not None:
            values.update(e.values())
            if e.total and e.recent() and level_of(level) == level_of(OK):
                level, message = WARN, f"{message} (callback error: {e.last})"
        return DiagnosticStatus(
            level=level,
            name=f"{self._node.get_fully_qualified_name()}: {self._name}",
            message=message,
            hardware_id=self._hardware_id,
            values=[KeyValue(key=k, value=v) for k, v in sorted(values.items())],
        )

    def publish_now(self) -> None:
        msg = DiagnosticArray()
        try:
            msg.header.stamp = self._node.get_clock().now().to_msg()
            msg.status = [self.status()]
            self._pub.publish(msg)
        except Exception:  # context shutting down
            pass

    def destroy(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        self._node.destroy_publisher(self._pub)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class PeriodStats:
    """Rolling statistics of a loop's period: achieved rate, p50 / p99 / max period (ms).

    ``tick(t)`` records a loop iteration at monotonic time ``t`` (seconds); ``summary()``
    summarises the last ``window`` periods. Thread-safe enough for one writer.
    """

    def __init__(self, window: int = 2000):
        self._buf = np.zeros(window)
        self._n = 0
        self._last: float | None = None

    def tick(self, t: float) -> None:
        if self._last is not None:
            self._buf[self._n % len(self._buf)] = t - self._last
            self._n += 1
        self._last = t

    def reset(self) -> None:
        self._n = 0
        self._last = None

    @property
    def count(self) -> int:
        return self._n

    def summary(self) -> dict[str, float]:
        n = min(self._n, len(self._buf))
        if n == 0:
            return {"rate_hz": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        p = self._buf[:n]
        return {
            "rate_hz": float(1.0 / p.mean()),
            "p50_ms": float(np.percentile(p, 50) * 1e3),
            "p99_ms": float(np.percentile(p, 99) * 1e3),
            "max_ms": float(p.max() * 1e3),
        }
