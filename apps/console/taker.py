"""The newest message of the graph's high-rate topics, taken when the console needs it.

The arm state comes at 500 Hz and two cameras at 30 fps; a subscription callback for each
message would run Python on the rig's executor (in ``rig-up``, the franka node's) 1000+ times a
second for a page that shows a few updates a second. :class:`LatestTaker` instead holds those
subscriptions on a private node that no executor spins, with a history of one (best effort, so
it matches reliable and sensor publishers): DDS keeps only the newest sample, and
:meth:`LatestTaker.take` deserialises it when a page asks (at most ``frame_hz`` / ``state_hz``).
The console's cost thus follows the pages' rates, not the publishers'.
"""

from __future__ import annotations

import threading
from typing import Any

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

NEWEST_ONLY = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


class LatestTaker:
    def __init__(self, context: Any, namespace: str = "", name: str = "console_taker") -> None:
        import rclpy

        self.node = rclpy.create_node(name, namespace=namespace or "", context=context,
                                      enable_rosout=False, start_parameter_services=False)
        self._lock = threading.Lock()
        self._subs: dict[str, Any] = {}
        self._last: dict[str, Any] = {}

    def add(self, key: str, msg_type: Any, topic: str) -> None:
        self._subs[key] = self.node.create_subscription(msg_type, topic, lambda _m: None, NEWEST_ONLY)

    def take(self, key: str) -> tuple[Any, bool]:
        """(the newest message of ``key`` or None, whether it arrived since the last take)."""
        with self._lock:
            sub = self._subs[key]
            new = None
            while True:  # depth 1: at most one waits, but a burst may land between takes
                with sub.handle:
                    got = sub.handle.take_message(sub.msg_type, sub.raw)
                if got is None:
                    break
                new = got[0]
            if new is not None:
                self._last[key] = new
            return self._last.get(key), new is not None

    def close(self) -> None:
        with self._lock:
            self._subs.clear()
            try:
                self.node.destroy_node()
            except Exception:  # the context is already shut down
                pass
