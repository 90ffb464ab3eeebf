"""Test helpers: a ROS 2 probe in its own rclpy context, and running lifecycle nodes in-process.

Each probe / node group gets a private ``rclpy.Context``, so tests never share
global ROS state; they still talk over real DDS (the session's isolated domain id).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from robot.ros.lifecycle import spin_in_background


class Spinner:
    """A private context + single-threaded executor spinning in a thread."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list[Any] = []
        self._thread: threading.Thread | None = None

    def add(self, node: Any, activate: bool = True) -> Any:
        self.nodes.append(node)
        self.executor.add_node(node)
        if activate and hasattr(node, "trigger_configure"):
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, "configure failed"
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS, "activate failed"
        return node

    def start(self) -> Spinner:
        self._thread = spin_in_background(self.executor, self.context.ok)
        return self

    def close(self) -> None:
        for n in self.nodes:
            if hasattr(n, "trigger_shutdown"):
                try:
                    n.trigger_shutdown()
                except Exception:
                    pass
        self.context.try_shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1.0)
        for n in self.nodes:
            n.destroy_node()


class Probe(Spinner):
    """Subscribes to topics and records (receive time, message)."""

    def __init__(self, name: str = "probe", namespace: str = "") -> None:
        super().__init__()
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.add(self.node, activate=False)
        self.msgs: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self.start()

    def subscribe(self, topic: str, msg_type: Any, qos: Any = 10) -> None:
        def cb(msg: Any, topic: str = topic) -> None:
            with self._lock:
                self.msgs[topic].append((time.time(), msg))

        self.node.create_subscription(msg_type, topic, cb, qos)

    def publisher(self, topic: str, msg_type: Any, qos: Any = 10) -> Any:
        return self.node.create_publisher(msg_type, topic, qos)

    def got(self, topic: str) -> list[Any]:
        with self._lock:
            return [m for _, m in self.msgs[topic]]

    def clear(self, topics: Sequence[str] | None = None) -> None:
        with self._lock:
            for t in topics or list(self.msgs):
                self.msgs[t].clear()

