"""Node parameters from structured-config dataclasses: declared, read back, validated.

A node's parameters come from a dataclass (``robot/config.py`` and the nodes' own
``*Params``; one source of truth, ``rig-up`` passes the hydra values as node
parameters): :func:`declare_dataclass` declares one ROS parameter per field
(nested dataclasses become dotted names such as ``safety.max_tilt``; descriptions
are taken from the field's trailing ``# comment``), and :func:`read_dataclass`
reads them back into a dataclass, coercing ints to floats and raising
:class:`ParameterError` (which names the parameter, the value and the fix) on a
wrong type; the node adds its own range checks with :func:`require` and fails
``configure`` with that message.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import rclpy
import rclpy.exceptions
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

__all__ = ["ParameterError", "require", "declare_dataclass", "read_dataclass"]


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
        f = re.match(r"^\s+(\w+)\s*:", line)
        if f and f.group(1) not in out and i > 0:
            above = lines[i - 1].strip()
            if above.startswith("#"):
                out[f.group(1)] = above.lstrip("# ").strip()
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
        items = typing.get_args(tp)
        inner = items[0] if items else float
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
            sub: Any = tp if dataclasses.is_dataclass(tp) else type(getattr(cls(), f.name))
            kwargs[f.name] = read_dataclass(node, sub, f"{name}.")
            continue
        try:
            value = node.get_parameter(name).value
        except rclpy.exceptions.ParameterUninitializedException:
            value = []  # declared by type (an empty-list default) and never set
        kwargs[f.name] = _coerce(name, value, _kind(tp))
    return cls(**kwargs)
