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

from geometry_msgs.msg import PoseStamped, WrenchStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String

from flywheel.data.recorder import Recorder, RecorderConfig
from flywheel.data.store import SOURCES, EpisodeStore
from robot.ros.convert import (
    ConversionError,
    finite,
    gripper_width,
    image_to_numpy,
    joints_to_numpy,
    pose_to_numpy,
    stamp_seconds,
    wrench_to_numpy,
)
from robot.ros.diagnostics import ERROR, OK, WARN
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import declare_dataclass, read_dataclass, require
from robot.ros.qos import LATCHED_QOS, SENSOR_QOS, STATE_QOS

EVENTS = ("start", "success", "failure", "reset", "abort")
MAX_INSTRUCTION = 10_000  # characters of policy/instruction kept


def _t(msg: Any) -> float:
    return stamp_seconds(msg.header.stamp)


class RecorderNode(RigNode):
    def __init__(self, name: str = "recorder", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        declare_dataclass(self, RecorderConfig())
        self.recorder: Recorder | None = None
        self.store: EpisodeStore | None = None
        self._instruction = ""
        self._last_dropped = 0

    # ---------------------------------------------------------- life cycle
    def setup(self) -> None:
        p: RecorderConfig = read_dataclass(self, RecorderConfig)
        require(0 < p.control_hz <= 1000, "control_hz", p.control_hz, "must be in (0, 1000]")
        require(p.source in SOURCES, "source", p.source, f"must be one of {SOURCES}")
        require(p.queue_size > 0, "queue_size", p.queue_size, "must be > 0")
        require(p.image_size > 0, "image_size", p.image_size, "must be > 0")
        require(all("=" in c for c in p.camera_ids), "camera_ids", p.camera_ids,
                "give name=serial pairs, e.g. front=123456")
        self.p = p
        try:
            self.store = EpisodeStore(p.store, "a", p.rig_spec(), image_codec=p.image_codec,
                                      image_quality=p.image_quality)
        except Exception as e:  # spec mismatch, lock held, permissions: say which and stop
            raise RuntimeError(f"cannot open the episode store {p.store!r}: {e}") from e
        meta = dict(task=p.task, source=p.source, policy_version=p.policy_version, rig_id=p.rig_id,
                    calibration_id=p.calibration_id,
                    camera_ids=dict(c.split("=", 1) for c in p.camera_ids))
        self.recorder = Recorder(self.store, queue_size=p.queue_size, max_age=p.max_age,
                                 success_reward=p.success_reward, episode_meta=meta)
        self.diag = self.make_diagnostics("recorder", hardware_id=p.store)
        sub = self.guarded_subscription
        sub(JointState, "joint_states", self._on_joints, STATE_QOS)
        sub(PoseStamped, "ee_pose", lambda m: self._push_pose("ee_pose", m), STATE_QOS, "ee_pose")
        sub(WrenchStamped, "ee_wrench", self._on_wrench, STATE_QOS)
        sub(JointState, "gripper/state", lambda m: self._push_width("gripper", m), STATE_QOS, "gripper/state")
        sub(PoseStamped, "command_applied", lambda m: self._push_pose("command", m), STATE_QOS,
            "command_applied")
        sub(JointState, "gripper/command_applied", lambda m: self._push_width("gripper_command", m), STATE_QOS,
            "gripper/command_applied")
        sub(Bool, "teleop/intervening", self._on_intervening, LATCHED_QOS)
        sub(String, "episode/event", self._on_event, 10)
        sub(String, "policy/instruction", self._on_instruction, LATCHED_QOS)
        for cam in p.cameras:
            sub(Image, f"cameras/{cam}/image_raw", lambda m, c=cam: self._on_image(c, m), SENSOR_QOS)

    def start(self) -> None:
        self.recorder.connect()
        self.guarded_timer(1.0 / self.p.control_hz, self._on_tick)
        self.guarded_timer(1.0, self._update_diagnostics)
        self.diag.set(OK, "recording on episode/event start", store=self.p.store)

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.end_episode(None)
            self.recorder.wait_idle()

    def teardown(self) -> None:
        if self.recorder is not None:
            self.recorder.close()  # an open episode is committed unlabelled
            self.recorder = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------ callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_tick(self) -> None:
        self.recorder.tick(self._now())

    def _on_joints(self, m: JointState) -> None:
        pos, vel = joints_to_numpy(m)
        finite("joint_states", pos, vel)
        self.recorder.push("joint_states", _t(m), (pos, vel))

    def _push_pose(self, stream: str, m: PoseStamped) -> None:
        pos, quat = pose_to_numpy(m)
        finite(stream, pos, quat)
        self.recorder.push(stream, _t(m), (pos, quat))

    def _on_wrench(self, m: WrenchStamped) -> None:
        w = wrench_to_numpy(m)
        finite("ee_wrench", w)
        self.recorder.push("ee_wrench", _t(m), w)

    def _push_width(self, stream: str, m: JointState) -> None:
        w = gripper_width(m)
        finite(stream, w)
        self.recorder.push(stream, _t(m), w)

    def _on_intervening(self, m: Bool) -> None:
        # Bool has no header: stamp with the arrival time
        self.recorder.push("intervening", self._now(), bool(m.data))

    def _on_instruction(self, m: String) -> None:
        if len(m.data) > MAX_INSTRUCTION:
            raise ConversionError(f"policy/instruction of {len(m.data)} characters: at most {MAX_INSTRUCTION}")
        self._instruction = m.data

    def _on_image(self, cam: str, m: Image) -> None:
        img = image_to_numpy(m)
        if img.ndim != 3:
            raise ConversionError(f"cameras/{cam}/image_raw encoding {m.encoding!r}: the recorder takes rgb8 "
                                  "(or bgr8, mono8)")
        self.recorder.push(f"images/{cam}", _t(m), img)

    def _on_event(self, m: String) -> None:
        ev = m.data.strip().lower()
        if ev not in EVENTS:
            self.get_logger().warning(f"episode/event {m.data[:40]!r} ignored: expected one of {EVENTS}",
                                      throttle_duration_sec=1.0)
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


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
