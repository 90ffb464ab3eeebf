"""The observer: the rig's topics in time-indexed buffers, and the spec observation at a tick.

One assembly of "topics -> spec observation" for the whole project: the ROS env adapter
(:mod:`robot.env`), the recorder (:mod:`flywheel.data.recorder` and its node) and the policy
node all use :class:`Observer`.

* :class:`TimeBuffer`: the samples of one stream, sorted by stamp, with "latest at or before"
  lookups (:meth:`TimeBuffer.at`); old samples are dropped after ``keep_s``;
* :class:`Observer`: one buffer per stream (``joint_states``, ``ee_pose``, ``ee_wrench``,
  ``gripper``, ``images/<cam>``, ``depth/<cam>``, and with ``commands`` the franka node's
  ``command``, ``gripper_command``, the operator's ``intervening`` and the ``target`` poses sent to
  it). :meth:`Observer.observe`
  takes, for every stream, the latest sample stamped at or before the tick and builds the spec
  observation (``state/...``, ``images/<camera>``) with each stream's age; a missing stream or one
  older than ``max_age`` raises :class:`ObservationUnavailable` naming it and its topic (streams
  listed in ``optional`` give zeros instead). :meth:`Observer.commanded_action` is the spec action
  the arm was commanded between two ticks: the applied target's step from the target in force at
  the first tick (:meth:`rig.spec.ActionSpec.from_target` around the commanded pose, never the
  measured one, so tracking lag does not shrink it), its window ends moved to the policy's targets
  (:meth:`Observer.boundary`) so the phase of the ticks does not split a step;
* :meth:`Observer.subscribe` makes the ROS subscriptions on a node (guarded on a
  :class:`~robot.ros.lifecycle.RigNode`) and converts each message with :mod:`robot.ros.convert`.

The core is numpy only: ``rclpy`` and the message packages are imported in :meth:`Observer.subscribe`,
so a ROS-free caller (the recorder core, a bag importer, a benchmark) pushes samples itself.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.spec import RigSpec
from robot.ros.convert import (
    ConversionError,
    finite,
    gripper_width,
    header_time,
    image_to_numpy,
    joints_to_numpy,
    pose_to_numpy,
    resize,
    wrench_to_numpy,
)

__all__ = ["TimeBuffer", "Observer", "Observation", "ObservationUnavailable", "STATE_STREAMS",
           "COMMAND_STREAMS", "ORIGIN_STAMP_OFFSET", "stream_topic"]

#: the robot state streams of every observation, in the order they are checked
STATE_STREAMS = ("joint_states", "ee_pose", "ee_wrench", "gripper")
#: s after the ``ee_pose`` sample it steps from that a measured-origin sender stamps its ``target_pose``, so
#: the recorder's window (which starts just before the target's stamp) starts at that very sample
ORIGIN_STAMP_OFFSET = 1e-5
#: the franka node's applied commands and the operator's flag (``Observer(commands=True)``)
COMMAND_STREAMS = ("command", "gripper_command", "intervening", "target")
_TOPICS = {
    "joint_states": "joint_states", "ee_pose": "ee_pose", "ee_wrench": "ee_wrench", "gripper": "gripper/state",
    "command": "command_applied", "gripper_command": "gripper/command_applied", "intervening": "teleop/intervening",
    "target": "target_pose",
}


def stream_topic(key: str) -> str:
    """The (relative) topic of a stream: ``ee_pose`` -> ``ee_pose``, ``images/front`` -> ``cameras/front/image_raw``."""
    if key.startswith("images/"):
        return f"cameras/{key[7:]}/image_raw"
    if key.startswith("depth/"):
        return f"cameras/{key[6:]}/depth/image_raw"
    return _TOPICS[key]


class ObservationUnavailable(RuntimeError):
    """A stream has no sample at or before the tick (``kind`` missing) or only one older than ``max_age`` (stale)."""

    def __init__(self, key: str, kind: str, tick: float, sample_t: float | None, max_age: float,
                 newest_t: float | None = None) -> None:
        self.key, self.kind, self.tick, self.sample_t, self.max_age = key, kind, tick, sample_t, max_age
        self.topic = stream_topic(key)
        if kind == "missing":
            why = ("no sample yet" if newest_t is None else
                   f"only samples stamped after the tick (clock skew of {newest_t - tick:.3f} s?)")
        else:
            why = f"the newest sample at or before the tick is {tick - (sample_t or 0.0):.3f} s old"
        self.why = why
        super().__init__(f"observation {key!r} from topic {self.topic!r}: {why} (max_age={max_age} s)")

    @property
    def age(self) -> float | None:
        return None if self.sample_t is None else self.tick - self.sample_t


class TimeBuffer:
    """Samples ``(stamp, value)`` of one stream, sorted by stamp; thread safe.

    Samples older than ``keep_s`` behind the newest are dropped (at least ``min_keep`` stay).
    """

    def __init__(self, keep_s: float = 2.0, min_keep: int = 8) -> None:
        self.keep_s, self.min_keep = float(keep_s), int(min_keep)
        self.t: list[float] = []
        self.v: list[Any] = []
        self._lock = threading.Lock()

    def push(self, t: float, v: Any) -> None:
        with self._lock:
            if self.t and t < self.t[-1]:  # out of order (rare): keep the list sorted
                i = bisect.bisect_right(self.t, t)
                self.t.insert(i, t)
                self.v.insert(i, v)
            else:
                self.t.append(t)
                self.v.append(v)
            if len(self.t) > 4 * self.min_keep and self.t[-1] - self.t[0] > 2 * self.keep_s:
                cut = max(0, min(bisect.bisect_left(self.t, self.t[-1] - self.keep_s), len(self.t) - self.min_keep))
                del self.t[:cut], self.v[:cut]

    add = push

    def at(self, t: float) -> tuple[float, Any] | None:
        """The latest sample stamped at or before ``t``, or None."""
        with self._lock:
            i = bisect.bisect_right(self.t, t) - 1
            return None if i < 0 else (self.t[i], self.v[i])

    def latest(self) -> tuple[float, Any] | None:
        with self._lock:
            return (self.t[-1], self.v[-1]) if self.t else None

    def upto(self, t: float, n: int) -> list[tuple[float, Any]]:
        """The last ``n`` samples stamped at or before ``t``, oldest first."""
        with self._lock:
            j = bisect.bisect_right(self.t, t)
            i = max(0, j - n)
            return list(zip(self.t[i:j], self.v[i:j], strict=True))

    def after(self, t0: float, t1: float) -> list[tuple[float, Any]]:
        """The samples stamped in (``t0``, ``t1``], oldest first."""
        with self._lock:
            i, j = bisect.bisect_right(self.t, t0), bisect.bisect_right(self.t, t1)
            return list(zip(self.t[i:j], self.v[i:j], strict=True))

    def clear(self) -> None:
        with self._lock:
            self.t.clear()
            self.v.clear()

    def __len__(self) -> int:
        return len(self.t)


@dataclass
class Observation:
    """The spec observation at ``tick`` and, per stream used, the age of its sample (s)."""

    tick: float
    obs: dict[str, np.ndarray]
    ages: dict[str, float] = field(default_factory=dict)

    @property
    def age(self) -> float:
        """The oldest sample's age (0 when every stream was optional and silent)."""
        return max(self.ages.values(), default=0.0)


class Observer:
    """Buffers of the rig's streams and the spec observation at a tick (module docstring).

    ``max_age``: a sample older than this at the tick is not used. ``optional``: state streams
    (``joint_states``, ``ee_wrench``) that give zeros when missing or stale instead of failing.
    ``resize_images``: images are resized to the spec's size as they arrive (off: kept as they
    come, for a caller that resizes later, e.g. on a writer thread; then :meth:`observe` skips the
    spec check). ``commands``: also buffer the applied commands and the intervention flag.
    """

    def __init__(self, spec: RigSpec, *, max_age: float = 0.25, optional: Iterable[str] = (),
                 resize_images: bool = True, commands: bool = False, keep_s: float = 2.0) -> None:
        if not max_age > 0:
            raise ValueError(f"Observer max_age {max_age!r}: must be > 0 s")
        self.spec = spec
        self.max_age = float(max_age)
        self.optional = frozenset(optional)
        bad = self.optional - {"joint_states", "ee_wrench"}
        if bad:
            raise ValueError(f"Observer optional {sorted(bad)}: only joint_states and ee_wrench may be optional")
        self.resize_images = resize_images
        self.sizes = {}
        for c in spec.cameras:
            self.sizes[f"images/{c.name}"] = (c.height, c.width)
            if c.depth:
                self.sizes[f"depth/{c.name}"] = (c.height, c.width)
        keys = [*STATE_STREAMS, *self.sizes, *(COMMAND_STREAMS if commands else ())]
        self.streams: dict[str, TimeBuffer] = {k: TimeBuffer(keep_s) for k in keys}

    # ----------------------------------------------------------------- input
    def push(self, key: str, t: float, value: Any) -> None:
        """Add a converted sample (see the stream table in :mod:`flywheel.data.recorder`)."""
        s = self.streams.get(key)
        if s is None:
            raise KeyError(f"unknown stream {key!r}; streams: {list(self.streams)}")
        if self.resize_images and key in self.sizes:
            value = resize(value, self.sizes[key])
        s.push(float(t), value)

    def clear(self) -> None:
        for s in self.streams.values():
            s.clear()

    def latest(self, key: str) -> tuple[float, Any] | None:
        return self.streams[key].latest()

    def sample(self, key: str, t: float, max_age: float | None = None) -> tuple[float, Any]:
        """The latest sample of ``key`` at or before ``t``; raises :class:`ObservationUnavailable`."""
        limit = self.max_age if max_age is None else max_age
        buf = self.streams[key]
        s = buf.at(t)
        if s is None:
            newest = buf.latest()
            raise ObservationUnavailable(key, "missing", t, None, limit, None if newest is None else newest[0])
        if t - s[0] > limit:
            raise ObservationUnavailable(key, "stale", t, s[0], limit)
        return s

    def fresh(self, key: str, t: float) -> Any:
        """The value of :meth:`sample`, or None when missing or stale."""
        try:
            return self.sample(key, t)[1]
        except ObservationUnavailable:
            return None

    # ----------------------------------------------------------- assembly
    def observe(self, t: float) -> Observation:
        """The spec observation at tick ``t``: every stream's latest sample at or before it."""
        got: dict[str, Any] = {}
        ages: dict[str, float] = {}
        for key in (*STATE_STREAMS, *self.sizes):
            try:
                s = self.sample(key, t)
            except ObservationUnavailable:
                if key in self.optional:
                    continue
                raise
            got[key] = s[1]
            ages[key] = t - s[0]
        pos, quat = got["ee_pose"]
        if "joint_states" in got:
            jp, jv = got["joint_states"]
        else:
            jp, jv = np.zeros(7), np.zeros(7)
        obs: dict[str, np.ndarray] = {
            "state/ee_pos": np.asarray(pos, np.float32).reshape(3),
            "state/ee_quat": np.asarray(quat, np.float32).reshape(4),
            "state/gripper_width": np.array([float(got["gripper"])], np.float32),
            "state/joint_pos": np.asarray(jp, np.float32).reshape(7),
            "state/joint_vel": np.asarray(jv, np.float32).reshape(7),
            "state/ee_wrench": np.asarray(got.get("ee_wrench", np.zeros(6)), np.float32).reshape(6),
        }
        for key in self.sizes:
            obs[key] = got[key]
        if self.resize_images:
            self.spec.check_observation(obs)
        return Observation(t, obs, ages)

    def boundary(self, t: float, horizon: float) -> float:
        """Where a command window starts at tick ``t``: just before the first ``target_pose`` within ``horizon``.

        A policy (or the env adapter) steps its target from the applied command at its own tick; the
        safety filter ramps it in over part of a tick. Bounding the windows at those targets' stamps
        counts each step whole for the tick it was commanded in, whatever the phase of the ticks.
        While the operator intervenes (a continuous twist), or with no target in the horizon, ``t``.
        """
        if horizon <= 0 or self.intervening(t):
            return t
        nxt = self.streams["target"].after(t, t + horizon)
        return nxt[0][0] - 1e-6 if nxt else t

    def commanded_action(self, t0: float, t1: float, *, max_age: float | None = None,
                         snap: float = 0.0, origin: str = "commanded") -> np.ndarray:
        """The spec action commanded over (``t0``, ``t1``]: the applied target at ``t1`` relative to ``t0``'s.

        Translation and rotation are the applied target at ``t1`` as :meth:`ActionSpec.from_target`
        around the pose at ``t0``: with ``origin="commanded"`` the target in force at ``t0`` (the
        command's step), with ``origin="measured"`` the measured TCP pose at ``t0`` (the pose a
        measured-origin policy stepped from, as in sim); the gripper is the applied gripper command
        at ``t1`` (the measured width when none was applied). With ``snap`` > 0 each end moves to the
        policy's next target within ``snap`` s (:meth:`boundary`). Raises
        :class:`ObservationUnavailable` when the ``command`` stream (or, measured, ``ee_pose``) has
        no sample at an end.
        """
        if origin not in ("commanded", "measured"):
            raise ValueError(f"commanded_action origin {origin!r}: commanded or measured")
        limit = self.max_age if max_age is None else max_age
        b0, b1 = self.boundary(t0, snap), self.boundary(t1, snap)
        p0, q0 = self.sample("command" if origin == "commanded" else "ee_pose", b0, limit)[1]
        p1, q1 = self.sample("command", b1, limit)[1]
        g = self.streams["gripper_command"].at(t1)
        width = float(g[1]) if g is not None else float(self.sample("gripper", t1, np.inf)[1])
        return self.spec.action.from_target(np.asarray(p1), np.asarray(q1), width, np.asarray(p0), np.asarray(q0))

    def intervening(self, t: float) -> bool:
        """The operator's flag at ``t`` (False when never published)."""
        s = self.streams["intervening"].at(t)
        return bool(s[1]) if s is not None else False

    # ------------------------------------------------------------------ ROS
    def subscribe(self, node: Any, qos: dict[str, Any] | None = None,
                  on_error: Callable[[str, BaseException], None] | None = None) -> list[Any]:
        """Subscribe ``node`` to every stream's topic (relative names); returns the subscriptions.

        On a :class:`~robot.ros.lifecycle.RigNode` the callbacks are guarded (an error is counted
        and reported on ``/diagnostics``); on a plain node a malformed message is passed to
        ``on_error`` (default: a throttled warning) and the node goes on.
        """
        from geometry_msgs.msg import PoseStamped, WrenchStamped
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool

        from robot.ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS

        def now() -> float:
            return node.get_clock().now().nanoseconds * 1e-9

        def joints(m: Any) -> tuple[float, Any]:
            pos, vel = joints_to_numpy(m)
            finite("joint_states", pos, vel)
            return header_time(m, now()), (pos, vel)

        def pose(what: str) -> Callable[[Any], tuple[float, Any]]:
            def conv(m: Any) -> tuple[float, Any]:
                pos, quat = pose_to_numpy(m)
                finite(what, pos, quat)
                return header_time(m, now()), (pos, quat)
            return conv

        def wrench(m: Any) -> tuple[float, Any]:
            w = wrench_to_numpy(m)
            finite("ee_wrench", w)
            return header_time(m, now()), w

        def width(what: str) -> Callable[[Any], tuple[float, Any]]:
            def conv(m: Any) -> tuple[float, Any]:
                w = gripper_width(m)
                finite(what, w)
                return header_time(m, now()), w
            return conv

        def flag(m: Any) -> tuple[float, Any]:
            return now(), bool(m.data)  # Bool has no header: stamped on arrival

        def image(key: str) -> Callable[[Any], tuple[float, Any]]:
            depth = key.startswith("depth/")
            size = self.sizes[key] if self.resize_images else None

            def conv(m: Any) -> tuple[float, Any]:
                img = image_to_numpy(m, size)
                if depth != (img.ndim == 2):
                    want = "16UC1 (or mono16)" if depth else "rgb8 (or bgr8, mono8)"
                    raise ConversionError(f"{stream_topic(key)} encoding {m.encoding!r}: expected {want}")
                return header_time(m, now()), img
            return conv

        table: dict[str, tuple[Any, Callable[[Any], tuple[float, Any]], Any]] = {
            "joint_states": (JointState, joints, STATE_QOS),
            "ee_pose": (PoseStamped, pose("ee_pose"), STATE_QOS),
            "ee_wrench": (WrenchStamped, wrench, STATE_QOS),
            "gripper": (JointState, width("gripper/state"), STATE_QOS),
            "command": (PoseStamped, pose("command_applied"), STATE_QOS),
            "gripper_command": (JointState, width("gripper/command_applied"), STATE_QOS),
            "intervening": (Bool, flag, LATCHED_QOS),
            "target": (PoseStamped, pose("target_pose"), COMMAND_QOS),
        }
        for key in self.sizes:
            table[key] = (Image, image(key), SENSOR_QOS)
        guarded = getattr(node, "guarded_subscription", None)
        report = on_error or (lambda where, e: node.get_logger().warning(
            f"{where}: {type(e).__name__}: {e}", throttle_duration_sec=1.0))
        subs = []
        for key in self.streams:
            msg_type, conv, default_qos = table[key]
            topic = stream_topic(key)

            def cb(m: Any, key: str = key, conv: Callable[[Any], tuple[float, Any]] = conv) -> None:
                t, v = conv(m)
                self.push(key, t, v)

            q = (qos or {}).get(key, default_qos)
            if guarded is not None:
                subs.append(guarded(msg_type, topic, cb, q, topic))
            else:
                def safe(m: Any, cb: Callable[[Any], None] = cb, topic: str = topic) -> None:
                    try:
                        cb(m)
                    except Exception as e:  # a malformed message: report it, keep spinning
                        report(topic, e)
                subs.append(node.create_subscription(msg_type, topic, safe, q))
        return subs
