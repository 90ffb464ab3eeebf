"""``recorder-node``: records the rig's topics into the episode store.

Subscribes (relative names) to ``joint_states``, ``ee_pose``, ``ee_wrench``,
``gripper/state``, ``command_applied``, ``gripper/command_applied``,
``teleop/intervening``, ``episode/event``, ``policy/instruction`` and
``cameras/<name>/image_raw``; samples them at ``control_hz`` by the
latest-at-or-before rule on the messages' header stamps and writes episodes
through :class:`flywheel.data.recorder.Recorder` (a writer thread with a bounded
queue, so the store never blocks the executor). ``episode/event`` starts
(``start``), labels and ends (``success``/``failure``), ends unlabelled
(``reset``) or discards (``abort``) episodes. Health (recorded steps, drops,
skips, queue depth, errors) goes to ``/diagnostics``.

Parameters: the fields of :class:`flywheel.data.recorder.RecorderConfig`
(``store``, ``control_hz``, ``cameras``, ``image_size``, ``task``, ``source``...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String

from flywheel.data.recorder import Recorder, RecorderConfig
from flywheel.data.store import SOURCES, EpisodeStore
from robot.nodes.common import (
    ERROR,
    LATCHED_QOS,
    OK,
    SENSOR_QOS,
    STATE_QOS,
    WARN,
    Diagnostics,
    ParameterError,
    declare_dataclass,
    read_dataclass,
    require,
    run_lifecycle_node,
)

EVENTS = ("start", "success", "failure", "reset", "abort")


def _t(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> (H, W, 3) uint8 rgb."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {msg.encoding!r}: the recorder takes rgb8 (or bgr8)")
    a = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
    a = a.reshape(msg.height, msg.width, 3)
    return np.ascontiguousarray(a[..., ::-1]) if msg.encoding == "bgr8" else a.copy()


class RecorderNode(LifecycleNode):
    def __init__(self, name: str = "recorder", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        declare_dataclass(self, RecorderConfig())
        self.recorder: Recorder | None = None
        self.store: EpisodeStore | None = None
        self._subs: list[Any] = []
        self._timer = None
        self._diag_timer = None
        self._instruction = ""
        self._last_dropped = 0

    # ---------------------------------------------------------- life cycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            p: RecorderConfig = read_dataclass(self, RecorderConfig)
            require(0 < p.control_hz <= 1000, "control_hz", p.control_hz, "must be in (0, 1000]")
            require(p.source in SOURCES, "source", p.source, f"must be one of {SOURCES}")
            require(p.queue_size > 0, "queue_size", p.queue_size, "must be > 0")
            require(p.image_size > 0, "image_size", p.image_size, "must be > 0")
            require(all("=" in c for c in p.camera_ids), "camera_ids", p.camera_ids,
                    "give name=serial pairs, e.g. front=123456")
        except ParameterError as e:
            self.get_logger().error(str(e))
            return TransitionCallbackReturn.FAILURE
        self.p = p
        try:
            self.store = EpisodeStore(p.store, "a", p.rig_spec(), image_codec=p.image_codec,
                                      image_quality=p.image_quality)
        except Exception as e:  # spec mismatch, lock held, permissions: say which and stop
            self.get_logger().error(f"cannot open the episode store {p.store!r}: {e}")
            return TransitionCallbackReturn.FAILURE
        meta = dict(task=p.task, source=p.source, policy_version=p.policy_version, rig_id=p.rig_id,
                    calibration_id=p.calibration_id,
                    camera_ids=dict(c.split("=", 1) for c in p.camera_ids))
        self.recorder = Recorder(self.store, queue_size=p.queue_size, max_age=p.max_age,
                                 success_reward=p.success_reward, episode_meta=meta)
        self.diag = Diagnostics(self, "recorder", hardware_id=p.store)
        r = self.recorder
        sub = self.create_subscription
        self._subs = [
            sub(JointState, "joint_states", lambda m: r.push(
                "joint_states", _t(m.header), (np.array(m.position[:7]), np.array(m.velocity[:7]))), STATE_QOS),
            sub(PoseStamped, "ee_pose", lambda m: r.push("ee_pose", _t(m.header), _pose(m)), STATE_QOS),
            sub(WrenchStamped, "ee_wrench", lambda m: r.push("ee_wrench", _t(m.header), _wrench(m)), STATE_QOS),
            sub(JointState, "gripper/state", lambda m: r.push("gripper", _t(m.header), m.position[0]), STATE_QOS),
            sub(PoseStamped, "command_applied", lambda m: r.push("command", _t(m.header), _pose(m)), STATE_QOS),
            sub(JointState, "gripper/command_applied",
                lambda m: r.push("gripper_command", _t(m.header), m.position[0]), STATE_QOS),
            sub(Bool, "teleop/intervening", self._on_intervening, LATCHED_QOS),
            sub(String, "episode/event", self._on_event, 10),
            sub(String, "policy/instruction", self._on_instruction, LATCHED_QOS),
        ]
        for cam in p.cameras:
            self._subs.append(sub(Image, f"cameras/{cam}/image_raw",
                                  lambda m, c=cam: self._on_image(c, m), SENSOR_QOS))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.recorder.connect()
        self._timer = self.create_timer(1.0 / self.p.control_hz, self._on_tick)
        self._diag_timer = self.create_timer(1.0, self._update_diagnostics)
        self.diag.set(OK, "recording on episode/event start", store=self.p.store)
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for t in (self._timer, self._diag_timer):
            if t is not None:
                self.destroy_timer(t)
        self._timer = self._diag_timer = None
        if self.recorder is not None:
            self.recorder.end_episode(None)
            self.recorder.wait_idle()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        if self.recorder is not None:
            self.recorder.close()  # an open episode is committed unlabelled
            self.recorder = None
        if self.store is not None:
            self.store.close()
            self.store = None
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []

    # ------------------------------------------------------------ callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_tick(self) -> None:
        self.recorder.tick(self._now())

    def _on_intervening(self, m: Bool) -> None:
        # Bool has no header: stamp with the arrival time
        self.recorder.push("intervening", self._now(), bool(m.data))

    def _on_instruction(self, m: String) -> None:
        self._instruction = m.data

    def _on_image(self, cam: str, m: Image) -> None:
        try:
            self.recorder.push(f"images/{cam}", _t(m.header), image_to_numpy(m))
        except ValueError as e:
            self.diag.set(ERROR, str(e))

    def _on_event(self, m: String) -> None:
        ev = m.data.strip().lower()
        if ev not in EVENTS:
            self.get_logger().warning(f"episode/event {m.data!r} ignored: expected one of {EVENTS}")
            return
        meta = {"instruction": self._instruction} if ev == "start" else {}
        self.recorder.on_event(ev, **meta)
        self.get_logger().info(f"episode/event {ev}")

    def _update_diagnostics(self) -> None:
        r = self.recorder
        if r is None:
            return
        c = r.counters
        values = dict(c, queue_depth=r.queue_depth, recording=r.active, last_skip=r.last_skip,
                      last_error=r.last_error, episodes_in_store=self.store.num_episodes)
        if r.last_error:
            self.diag.set(ERROR, r.last_error, **values)
        elif c["dropped"] > self._last_dropped:
            self.diag.set(WARN, f"dropped {c['dropped'] - self._last_dropped} steps: the writer is "
                          "behind (slow disk?)", **values)
        else:
            self.diag.set(OK, "recording" if r.active else "idle", **values)
        self._last_dropped = c["dropped"]


def _pose(m: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, q = m.pose.position, m.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])


def _wrench(m: WrenchStamped) -> np.ndarray:
    f, t = m.wrench.force, m.wrench.torque
    return np.array([f.x, f.y, f.z, t.x, t.y, t.z])


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
