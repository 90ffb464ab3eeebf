"""``recorder-node``: records the rig's topics into the episode store.

Subscribes (relative names) to ``joint_states``, ``ee_pose``, ``ee_wrench``,
``gripper/state``, ``command_applied``, ``gripper/command_applied``,
``teleop/intervening``, ``episode/event``, ``policy/instruction`` and
``cameras/<name>/image_raw`` through the recorder's
:class:`robot.ros.observer.Observer`; samples them at ``control_hz`` by the
latest-at-or-before rule on the messages' header stamps, records each step's
action as commanded, in the meaning of ``action_origin`` (``measured``, default:
the applied target at the end of the tick's window relative to the measured
pose at its start, as in sim; ``commanded``: the applied target's step over the
tick; it must be the policy node's value, which ``rig-up`` passes to both) and writes episodes
through :class:`flywheel.data.recorder.Recorder` (a writer thread with a bounded
queue, so the store never blocks the executor). ``episode/event`` starts
(``start``), labels and ends (``success``/``failure``), ends unlabelled
(``reset``) or discards (``abort``) episodes. Health (recorded steps, drops,
skips, queue depth, errors) goes to ``/diagnostics``.

Parameters: the fields of :class:`flywheel.data.recorder.RecorderConfig`
(``store``, ``control_hz``, ``cameras``, ``image_size``, ``task``, ``source``, ``action_origin``...).
"""

from __future__ import annotations

from typing import Any

from std_msgs.msg import String

from flywheel.data.recorder import Recorder, RecorderConfig
from flywheel.data.store import SOURCES, EpisodeStore
from robot.ros.convert import ConversionError
from robot.ros.diagnostics import ERROR, OK, WARN
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import declare_dataclass, read_dataclass, require
from robot.ros.qos import LATCHED_QOS

EVENTS = ("start", "success", "failure", "reset", "abort")
MAX_INSTRUCTION = 10_000  # characters of policy/instruction kept


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
        require(p.action_origin in ("measured", "commanded"), "action_origin", p.action_origin,
                "must be measured or commanded (the policy node's value)")
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
                                 success_reward=p.success_reward, episode_meta=meta,
                                 action_origin=p.action_origin)
        self.diag = self.make_diagnostics("recorder", hardware_id=p.store)
        self.recorder.observer.subscribe(self)
        self.guarded_subscription(String, "episode/event", self._on_event, 10)
        self.guarded_subscription(String, "policy/instruction", self._on_instruction, LATCHED_QOS)

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

    def _on_instruction(self, m: String) -> None:
        if len(m.data) > MAX_INSTRUCTION:
            raise ConversionError(f"policy/instruction of {len(m.data)} characters: at most {MAX_INSTRUCTION}")
        self._instruction = m.data

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
