"""Test harness for the franka node: the node plus a probe node, over real DDS, in a private context.

Each harness gets its own ``rclpy.Context`` and a unique namespace, so tests
never share ROS state; the executor spins in a thread while the test publishes,
waits on topics and calls services. Also: :class:`RecordingBackend`, a wrapper
that records every target the node streams to the real backend (to prove a
NaN or out-of-box target never reaches franky).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from waiting import wait_for

from robot.backends.base import Backend
from robot.nodes.franka_node import FrankaNode, make_backend
from robot.ros.lifecycle import spin_in_background
from robot.ros.qos import STATE_QOS

DOWN = np.array([1.0, 0.0, 0.0, 0.0])


class RecordingBackend:
    """Delegates to a real backend and records every command (pos, quat) it is sent."""

    def __init__(self, inner: Backend):
        self._inner = inner
        self.commands: list[tuple[np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def command(self, pos: np.ndarray, quat: np.ndarray) -> None:
        with self._lock:
            self.commands.append((np.array(pos, dtype=float), np.array(quat, dtype=float)))
        self._inner.command(pos, quat)

    def recorded(self) -> list[tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            return list(self.commands)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Harness:
    """A FrankaNode and a probe in one private context; see the module docstring."""

    TOPICS = {
        "joint_states": JointState,
        "ee_pose": PoseStamped,
        "command_applied": PoseStamped,
        "gripper/state": JointState,
        "gripper/command_applied": JointState,
    }

    def __init__(self, params: dict[str, Any], record: bool = False, activate: bool = True):
        self.ns = f"/t{uuid.uuid4().hex[:10]}"
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.recorder: RecordingBackend | None = None

        def factory(cfg):
            b = make_backend(cfg)
            if record:
                self.recorder = RecordingBackend(b)
                return self.recorder
            return b

        self.node = FrankaNode(
            "franka", namespace=self.ns, context=self.context, backend_factory=factory,
            parameter_overrides=[rclpy.Parameter(k, value=v) for k, v in params.items()],
        )
        self.probe = rclpy.create_node("probe", namespace=self.ns, context=self.context)
        self._lock = threading.Lock()
        self.last: dict[str, Any] = {}
        self.counts: dict[str, int] = dict.fromkeys(self.TOPICS, 0)
        self.diags: list[Any] = []
        for topic, typ in self.TOPICS.items():
            self.probe.create_subscription(typ, topic, lambda m, t=topic: self._store(t, m), STATE_QOS)
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.pub_pose = self.probe.create_publisher(PoseStamped, "target_pose", 10)
        self.pub_twist = self.probe.create_publisher(TwistStamped, "target_twist", 10)
        self.pub_gripper = self.probe.create_publisher(JointState, "gripper/command", 10)
        self.pub_intervening = self.probe.create_publisher(Bool, "teleop/intervening", 10)
        self.pub_teleop_twist = self.probe.create_publisher(TwistStamped, "teleop/twist", 10)
        self.pub_teleop_gripper = self.probe.create_publisher(JointState, "teleop/gripper", 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self._thread = spin_in_background(self.executor, self.context.ok)
        if activate:
            self.activate()

    # ------------------------------------------------------------- life cycle
    def activate(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS, "configure failed"
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS, "activate failed"

    def close(self) -> None:
        try:
            self.node.trigger_shutdown()
        except Exception:
            pass
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1.0)
        self.probe.destroy_node()
        self.node.destroy_node()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --------------------------------------------------------------- topics
    def _store(self, topic: str, msg: Any) -> None:
        with self._lock:
            self.last[topic] = msg
            self.counts[topic] += 1

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith(f"{self.ns}/franka"):
                with self._lock:
                    self.diags.append(s)

    @staticmethod
    def _unpack(s: Any) -> tuple[int, str, dict[str, str]]:
        level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
        return level, s.message, {kv.key: kv.value for kv in s.values}

    def diag(self) -> tuple[int, str, dict[str, str]] | None:
        """The node's latest /diagnostics status as (level, message, values)."""
        with self._lock:
            if not self.diags:
                return None
            s = self.diags[-1]
        return self._unpack(s)

    def diag_seen(self, pred: Callable[[int, str, dict[str, str]], bool]) -> tuple | None:
        """The first status received so far that satisfies ``pred(level, message, values)``."""
        with self._lock:
            history = list(self.diags)
        for s in history:
            d = self._unpack(s)
            if pred(*d):
                return d
        return None

    def ee(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.last["ee_pose"].pose
        return (np.array([m.position.x, m.position.y, m.position.z]),
                np.array([m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w]))

    def applied(self) -> np.ndarray:
        p = self.last["command_applied"].pose.position
        return np.array([p.x, p.y, p.z])

    def wait_for(self, pred: Callable[[], Any], timeout: float, every: Callable[[], None] | None = None,
                 period: float = 0.02) -> Any:
        """:func:`waiting.wait_for`, calling ``every`` before each look; a topic not heard yet reads as falsy."""

        def look() -> Any:
            if every is not None:
                every()
            try:
                return pred()
            except (KeyError, TypeError, IndexError):
                return None

        return wait_for(look, timeout, period)

    def stamp(self):
        return self.probe.get_clock().now().to_msg()

    # -------------------------------------------------------------- commands
    def send_pose(self, pos: Any, quat: Any = DOWN, frame: str = "panda_link0") -> None:
        m = PoseStamped()
        m.header.stamp, m.header.frame_id = self.stamp(), frame
        p, o = m.pose.position, m.pose.orientation
        p.x, p.y, p.z = (float(v) for v in pos)
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self.pub_pose.publish(m)

    def _twist_msg(self, lin: Any, ang: Any, frame: str) -> TwistStamped:
        m = TwistStamped()
        m.header.stamp, m.header.frame_id = self.stamp(), frame
        t = m.twist
        t.linear.x, t.linear.y, t.linear.z = (float(v) for v in lin)
        t.angular.x, t.angular.y, t.angular.z = (float(v) for v in ang)
        return m

    def send_twist(self, lin: Any, ang: Any = (0, 0, 0), frame: str = "panda_link0") -> None:
        self.pub_twist.publish(self._twist_msg(lin, ang, frame))

    def send_teleop_twist(self, lin: Any, ang: Any = (0, 0, 0)) -> None:
        self.pub_teleop_twist.publish(self._twist_msg(lin, ang, "panda_link0"))

    def send_gripper(self, width: float, speed: float = 0.1, force: float = 0.0, teleop: bool = False) -> None:
        m = JointState(name=["width"], position=[float(width)], velocity=[float(speed)], effort=[float(force)])
        m.header.stamp = self.stamp()
        (self.pub_teleop_gripper if teleop else self.pub_gripper).publish(m)

    def intervene(self, on: bool) -> None:
        self.pub_intervening.publish(Bool(data=on))

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0) -> Any:
        cli = self.probe.create_client(srv_type, name)
        try:
            assert cli.wait_for_service(timeout_sec=10.0), f"service {name} not available"
            fut = cli.call_async(request)
            done = threading.Event()
            fut.add_done_callback(lambda _f: done.set())
            assert done.wait(timeout), f"service {name} timed out"
            return fut.result()
        finally:
            self.probe.destroy_client(cli)

    def stream(self, send: Callable[[], None], seconds: float, hz: float = 50.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            send()
            time.sleep(1.0 / hz)
