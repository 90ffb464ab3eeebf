"""Shared pieces of the rig's ROS 2 nodes: parameters, QoS, diagnostics, rates, main().

Every node of the rig is a ``rclpy.lifecycle`` node built the same way:

* its parameters come from a structured-config dataclass in ``robot/config.py``
  (one source of truth; ``rig-up`` passes the hydra values as node parameters):
  :func:`declare_dataclass` declares one ROS parameter per field (nested
  dataclasses become dotted names such as ``safety.max_tilt``, descriptions are
  taken from the field's trailing ``# comment``), and :func:`read_dataclass`
  reads them back into a dataclass, coercing ints to floats and raising
  :class:`ParameterError` (which names the parameter, the value and the fix) on a
  wrong type; the node adds its own range checks with :func:`require` and fails
  ``configure`` with that message;
* QoS profiles: :data:`SENSOR_QOS` (images), :data:`STATE_QOS` (robot state at
  control rate), :data:`COMMAND_QOS` (targets: reliable, every message counts),
  :data:`LATCHED_QOS` (flags whose last value a late joiner needs);
* health goes to ``/diagnostics`` through :class:`Diagnostics`;
* loop timing is measured with :class:`PeriodStats` (achieved rate, p50/p99 period);
* :func:`run_lifecycle_node` is the body of every node's ``main()``: it configures
  and activates the node (unless ``autostart`` is false, for a lifecycle manager),
  spins a single-threaded executor (which holds ~1 kHz here, unlike the
  multi-threaded one) and shuts down cleanly on Ctrl-C / SIGTERM (nodes should
  release threads and devices in ``destroy_node()`` as well as in ``on_shutdown``:
  after Ctrl-C the context is gone and no transition can run).

Only ``rclpy`` and standard message packages are imported; nothing runs at import.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import rclpy
import rclpy.exceptions
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

__all__ = [
    "SENSOR_QOS",
    "STATE_QOS",
    "COMMAND_QOS",
    "LATCHED_QOS",
    "ParameterError",
    "declare_dataclass",
    "read_dataclass",
    "require",
    "Diagnostics",
    "PeriodStats",
    "stamp",
    "run_lifecycle_node",
    "OK",
    "WARN",
    "ERROR",
    "STALE",
]

# ------------------------------------------------------------------------- QoS
#: camera images and camera_info: best effort, keep the last 5
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
#: robot state at control rate (joint_states, ee_pose, ...): reliable, keep the last 10
STATE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: commands (targets, gripper commands, teleop): reliable, so per-message deltas are never lost
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: flags a late subscriber must see (e.g. teleop/intervening): reliable + transient local.
#: A VOLATILE subscriber (as the franka node uses) matches both latched and plain publishers.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE


# ------------------------------------------------------------------ parameters
class ParameterError(ValueError):
    """A node parameter with a bad value; the message names it, the value and the fix."""


def require(ok: bool, name: str, value: Any, must: str) -> None:
    """Raise :class:`ParameterError` unless ``ok``: ``parameter 'name' = value: must ...``."""
    if not ok:
        raise ParameterError(f"parameter {name!r} = {value!r}: {must}")


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's fields (used as parameter descriptions)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, flags=re.MULTILINE):
        out[m.group(1)] = m.group(2).strip()
    # comments on the line(s) above a field
    lines = src.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s+(\w+)\s*:", line)
        if m and m.group(1) not in out and i > 0:
            above = lines[i - 1].strip()
            if above.startswith("#"):
                out[m.group(1)] = above.lstrip("# ").strip()
    return out


def _resolve_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - unresolved forward refs
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _kind(tp: Any) -> str:
    """'bool' | 'int' | 'float' | 'str' | 'list[float]' | 'list[int]' | 'list[str]' | 'dataclass'."""
    if dataclasses.is_dataclass(tp):
        return "dataclass"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _kind(args[0]) if len(args) == 1 else "str"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else float
        return f"list[{_kind(inner)}]"
    for k in (bool, int, float, str):
        if tp is k:
            return k.__name__
    return "str"


def _flat_fields(cfg: Any, prefix: str) -> list[tuple[str, Any, str, str]]:
    """(parameter name, value, kind, description) for every leaf field of a dataclass instance."""
    cls = type(cfg)
    hints = _resolve_types(cls)
    comments = _field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        kind = _kind(hints.get(f.name, type(value)))
        if kind == "dataclass" or dataclasses.is_dataclass(value):
            out.extend(_flat_fields(value, f"{name}."))
            continue
        out.append((name, value, kind, comments.get(f.name, "")))
    return out


def declare_dataclass(
    node: Node,
    cfg: Any,
    prefix: str = "",
    descriptions: Mapping[str, str] | None = None,
    read_only: tuple[str, ...] = (),
    constraints: Mapping[str, str] | None = None,
) -> list[str]:
    """Declare one parameter per (nested) field of dataclass instance ``cfg``, its value the default.

    Floats are declared with dynamic typing so ``-p rate:=500`` (an int) is accepted and
    coerced by :func:`read_dataclass`. Descriptions come from ``descriptions`` (name -> text),
    else from the fields' trailing comments. ``constraints`` (name -> text, e.g. ``"in [1, 2000]"``)
    fill the descriptors' ``additional_constraints`` shown by ``ros2 param describe``.
    Returns the declared names.
    """
    constraints = constraints or {}
    names = []
    descriptions = descriptions or {}
    for name, value, kind, comment in _flat_fields(cfg, prefix):
        if isinstance(value, tuple):
            value = list(value)
        if kind.startswith("list") and not value:
            # an empty list has no ROS type; declare by type so overrides still work
            value = {
                "list[float]": rclpy.Parameter.Type.DOUBLE_ARRAY,
                "list[int]": rclpy.Parameter.Type.INTEGER_ARRAY,
            }.get(kind, rclpy.Parameter.Type.STRING_ARRAY)
        desc = ParameterDescriptor(
            name=name,
            description=descriptions.get(name) or comment,
            read_only=name in read_only,
            additional_constraints=constraints.get(name, ""),
            dynamic_typing=kind in ("float", "list[float]"),
        )
        node.declare_parameter(name, value, desc)
        names.append(name)
    return names


def _coerce(name: str, value: Any, kind: str) -> Any:
    def bad(expect: str) -> ParameterError:
        return ParameterError(f"parameter {name!r} = {value!r}: expected {expect}, got {type(value).__name__}")

    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("a bool (true/false)")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise bad("a string")
    if kind.startswith("list"):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise bad("a list")
        inner = kind[5:-1]
        return [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(list(value))]
    return value


def read_dataclass(node: Node, cls: type, prefix: str = "") -> Any:
    """Read the parameters declared by :func:`declare_dataclass` back into a ``cls`` instance."""
    hints = _resolve_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints.get(f.name, f.type)
        if _kind(tp) == "dataclass":
            sub = tp if dataclasses.is_dataclass(tp) else type(getattr(cls(), f.name))
            kwargs[f.name] = read_dataclass(node, sub, f"{name}.")
            continue
        try:
            value = node.get_parameter(name).value
        except rclpy.exceptions.ParameterUninitializedException:
            value = []  # declared by type (an empty-list default) and never set
        kwargs[f.name] = _coerce(name, value, _kind(tp))
    return cls(**kwargs)


# ----------------------------------------------------------------- diagnostics
def stamp(t: float):
    """A builtin_interfaces/Time from seconds since the epoch."""
    from builtin_interfaces.msg import Time

    sec = int(t)
    return Time(sec=sec, nanosec=int((t - sec) * 1e9))


class Diagnostics:
    """Publishes one node's health on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray).

    ``set(level, message, **values)`` records the current status (thread-safe; cheap,
    callable from a control loop); a timer publishes it every ``period`` seconds (none
    with ``period=None``), and :meth:`publish_now` sends it at once (use on errors so
    they are seen immediately).
    """

    def __init__(self, node: Node, name: str, hardware_id: str = "", period: float | None = 1.0):
        self._node = node
        self._name = name
        self._hardware_id = hardware_id
        self._lock = threading.Lock()
        self._level = OK
        self._message = "starting"
        self._values: dict[str, str] = {}
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # period None: no timer; the owner calls publish_now() itself (e.g. from a supervisor thread)
        self._timer = node.create_timer(period, self.publish_now) if period else None

    @property
    def level(self) -> int:
        return int.from_bytes(self._level, "little") if isinstance(self._level, bytes) else int(self._level)

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
            return DiagnosticStatus(
                level=self._level,
                name=f"{self._node.get_fully_qualified_name()}: {self._name}",
                message=self._message,
                hardware_id=self._hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in sorted(self._values.items())],
            )

    def publish_now(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status()]
        try:
            self._pub.publish(msg)
        except Exception:  # context shutting down
            pass

    def destroy(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
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


# ------------------------------------------------------------------------ main
def run_lifecycle_node(
    factory: Callable[[], LifecycleNode],
    args: list[str] | None = None,
    autostart: bool | None = None,
    before_spin: Callable[[LifecycleNode], None] | None = None,
) -> int:
    """Body of a node executable's ``main()``: init, configure+activate, spin, shut down.

    ``autostart`` defaults to the node's ``autostart`` parameter when it declares one
    (else True); with it false the node waits in ``unconfigured`` for a lifecycle
    manager. ``before_spin(node)`` runs in the executor thread just before spinning
    (e.g. to raise that thread's scheduling priority). Returns a process exit code
    (1 when configure or activate fails).
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = factory()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0

    def _term(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term) if threading.current_thread() is threading.main_thread() else None
    try:
        if autostart is None:
            autostart = (
                bool(node.get_parameter("autostart").value) if node.has_parameter("autostart") else True
            )
        if autostart:
            for step in (node.trigger_configure, node.trigger_activate):
                if step() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().error(f"{step.__name__} failed; see the error above")
                    code = 1
                    break
        if code == 0:
            if before_spin is not None:
                before_spin(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # After Ctrl-C rclpy has already shut the context down and a lifecycle transition can no
        # longer be published: nodes must also release their resources in destroy_node().
        if node.context.ok():
            try:
                node.trigger_shutdown()
            except Exception:
                pass
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return code


def monotonic() -> float:
    return time.monotonic()
