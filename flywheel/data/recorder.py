"""The recorder's core (no ROS): streams in, control-tick samples out, written off the control path.

The ``recorder-node`` feeds this from ROS topics; benchmarks and tests feed it
directly. Streams (each sample carries the time it was measured) are the buffers
of a :class:`robot.ros.observer.Observer` (the project's one observation assembly):

==================  ===============================  =========
stream              value                            required
==================  ===============================  =========
``joint_states``    (position (7,), velocity (7,))   yes
``ee_pose``         (position (3,), quat (4,))       yes
``ee_wrench``       (6,)                             yes
``gripper``         width, m                         yes
``command``         applied TCP target (pos, quat)   yes
``gripper_command`` applied gripper width, m         no (current width)
``intervening``     bool                             no (False)
``images/<cam>``    (H, W, 3) uint8, any size        yes
==================  ===============================  =========

At every control tick :meth:`Recorder.tick` takes each stream's latest sample at
or before the tick (a tick with a missing or older-than-``max_age`` stream is
skipped and counted) and builds the spec observation. The step's action is the
command the arm was given for that tick, in the meaning of ``action_origin`` (the
same value as the policy node's and the env adapter's; ``rig-up`` passes one
value to all): with ``"measured"`` (default, the sim's meaning) the applied TCP
target in force at the end of the window ``(t, t + 1 / control_hz]`` relative
to the *measured* TCP pose at its start (the pose a measured-origin policy
stepped from), so a policy's action is recorded exactly once the safety filter
has reached its target within the window, and an operator's motion is the
command relative to where the arm was; with ``"commanded"`` the applied
target's step over the window, from the target in force at its start
(:meth:`robot.ros.observer.Observer.commanded_action`). Plus the applied gripper
command; a late or early timer does not change it. Unless the operator
intervenes, each window end moves to just before the policy's next
``target_pose`` (the safety filter ramps a target in over part of a tick), so
each step counts whole for the tick in which it was commanded, at any phase of
the recorder's timer (:meth:`~robot.ros.observer.Observer.boundary`). So a step
is complete up to two periods later; it is queued at the first tick ``ARRIVAL_MARGIN`` after that
(every command sample has arrived). At the end of an episode the last step's
motion is the command's rate since its tick, scaled to one period (measured: plus
the command's lead over the measured pose at the tick). Steps go to a writer thread through a queue bounded at
``queue_size`` steps (a full queue drops the step and counts it; episode events
are never dropped). The writer thread resizes images to the spec size, appends
to the store and commits episodes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.data.store import EpisodeStore, StoreError
from rig.spec import SpecError
from robot.ros.convert import resize
from robot.ros.observer import ObservationUnavailable, Observer, TimeBuffer

log = logging.getLogger(__name__)

REQUIRED = ("joint_states", "ee_pose", "ee_wrench", "gripper", "command")
OPTIONAL = ("gripper_command", "intervening")
#: time-ordered samples of one stream (the observer's buffer; the bag importer uses it too)
Stream = TimeBuffer
#: the last step of an episode: its motion is scaled from at least this fraction of a period of commands
MIN_FINAL_COVERAGE = 0.2
#: s after a step's command window before its action is computed (command samples still in flight)
ARRIVAL_MARGIN = 0.02


@dataclass
class RecorderConfig:
    store: str = "outputs/episodes.zarr"  # episode store: a local path or an fsspec URL
    control_hz: float = 10.0  # sampling tick, Hz (the policy's control rate)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])  # cameras to record
    image_size: int = 128  # images are resized to image_size x image_size (the spec's resolution)
    max_translation: float = 0.02  # action scale, m per tick (rig spec)
    max_rotation: float = 0.1  # action scale, rad per tick (rig spec)
    chunk_horizon: int = 8  # policy chunk length (rig spec)
    image_codec: str = "jpeg"  # jpeg | jpegxl | png
    image_quality: int = 95  # codec level (JPEG quality)
    task: str = ""  # task name stored with every episode
    source: str = "policy"  # human | policy | rl
    policy_version: str = ""  # policy checkpoint id stored with every episode
    rig_id: str = ""  # rig name / serial stored with every episode
    calibration_id: str = ""  # hand-eye calibration id stored with every episode
    camera_ids: list[str] = field(default_factory=list)  # name=serial pairs stored with every episode
    max_age: float = 0.5  # s: a stream older than this at a tick skips the tick
    queue_size: int = 64  # steps buffered for the writer thread before steps are dropped
    success_reward: float = 1.0  # reward of the last step of a successful episode
    autostart: bool = True  # configure and activate at start (false: wait for a lifecycle manager)
    # the pose a recorded action steps from: measured (as in sim) | commanded; must equal the policy node's
    action_origin: str = "measured"

    def rig_spec(self):
        from rig.spec import ActionSpec, CameraSpec, RigSpec

        return RigSpec(
            cameras=tuple(CameraSpec(c, self.image_size, self.image_size) for c in self.cameras),
            action=ActionSpec(max_translation=self.max_translation, max_rotation=self.max_rotation,
                              chunk_horizon=self.chunk_horizon, control_hz=self.control_hz),
        )


class Recorder:
    """Samples streams at control ticks and writes episodes on its own thread (``connect``/``close``)."""

    def __init__(self, store: EpisodeStore, *, queue_size: int = 64, max_age: float = 0.5,
                 success_reward: float = 1.0, episode_meta: Mapping[str, Any] | None = None,
                 commit_retries: int = 3, action_origin: str = "measured") -> None:
        if action_origin not in ("measured", "commanded"):
            raise ValueError(f"Recorder action_origin {action_origin!r}: measured or commanded")
        self.action_origin = action_origin
        self.store = store
        self.spec = store.spec
        self.cameras = [f"images/{c}" for c in self.spec.camera_names]
        self.queue_size = int(queue_size)
        self.max_age = float(max_age)
        self.success_reward = float(success_reward)
        self.episode_meta = dict(episode_meta or {})
        self.commit_retries = commit_retries
        self.observer = Observer(self.spec, max_age=self.max_age, resize_images=False, commands=True)
        self.streams = self.observer.streams
        self.period = 1.0 / self.spec.action.control_hz
        self._lock = threading.Lock()
        # observed steps waiting for their action: [obs, tick, intervening]
        self._pending: list[list[Any]] = []
        self._last_action: np.ndarray | None = None
        self._q: queue.Queue = queue.Queue()
        self._steps_queued = 0
        self._thread: threading.Thread | None = None
        self.active = False  # an episode is being recorded (control-thread view)
        self.counters = dict(ticks=0, recorded=0, dropped=0, skipped_missing=0, skipped_stale=0,
                             rejected=0, episodes=0, aborted=0, write_errors=0)
        self.last_error = ""
        self.last_skip = ""

    # ------------------------------------------------------------ life cycle
    def connect(self) -> Recorder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued work (an open episode is committed unlabelled) and stop the thread."""
        if self.active:
            self.end_episode(None)
        if self._thread is not None:
            self._q.put(("stop", None))
            self._thread.join(timeout)
            self._thread = None

    # ---------------------------------------------------------------- input
    def push(self, stream: str, t: float, value: Any) -> None:
        self.observer.push(stream, t, value)

    def start_episode(self, **meta: Any) -> None:
        """Begin an episode (an open one is committed unlabelled first)."""
        if self.active:
            self.end_episode(None)
        self._q.put(("begin", {**self.episode_meta, **meta}))
        self.active = True

    def end_episode(self, success: bool | None) -> None:
        """End the episode: its pending steps are completed (the last one from the commands so far)."""
        if self.active:
            self._flush()
            self._q.put(("end", success))
            self.active = False

    def abort_episode(self) -> None:
        if self.active:
            with self._lock:
                self._steps_queued -= len(self._pending)
                self._pending.clear()
            self._q.put(("abort", None))
            self.active = False

    def on_event(self, event: str, **meta: Any) -> None:
        """``episode/event`` semantics: start | success | failure | reset | abort."""
        if event == "start":
            self.start_episode(**meta)
        elif event == "success":
            self.end_episode(True)
        elif event == "failure":
            self.end_episode(False)
        elif event == "reset":
            self.end_episode(None)  # an open episode is kept, unlabelled
        elif event == "abort":
            self.abort_episode()
        else:
            raise ValueError(f"unknown episode event {event!r}: start, success, failure, reset or abort")

    # ----------------------------------------------------------------- tick
    @staticmethod
    def _reason(e: ObservationUnavailable) -> str:
        return f"missing:{e.key}" if e.kind == "missing" else f"stale:{e.key} ({e.age:.3f} s old)"

    def sample(self, t: float) -> tuple[dict[str, np.ndarray], np.ndarray, bool] | str:
        """(observation, action, intervening) at ``t``, or the reason the tick cannot be sampled.

        The action here is the applied target at ``t`` relative to the *measured* pose at ``t`` (what a
        bag exported by ``flywheel-data export-mcap`` encodes); live recording uses :meth:`tick`, whose
        action is the command at the end of the step's window (see ``action_origin``).
        """
        ob = self.observer
        try:
            o = ob.observe(t)
            cpos, cquat = ob.sample("command", t)[1]
        except ObservationUnavailable as e:
            return self._reason(e)
        obs = o.obs
        gcmd = ob.fresh("gripper_command", t)
        width = float(obs["state/gripper_width"][0]) if gcmd is None else float(gcmd)
        action = self.spec.action.from_target(np.asarray(cpos), np.asarray(cquat), width,
                                              obs["state/ee_pos"].astype(np.float64),
                                              obs["state/ee_quat"].astype(np.float64))
        return obs, action, bool(ob.fresh("intervening", t))

    def tick(self, t: float) -> str:
        """Observe the step at control tick ``t``; returns recorded | idle | skipped | dropped.

        "recorded": the step holds a queue slot and is written once its action is known (one tick later).
        """
        self.counters["ticks"] += 1
        if not self.active:
            return "idle"
        with self._lock:  # steps whose command window ended well before this tick: every sample is in
            self._complete(lambda p: p[1] + 2 * self.period + ARRIVAL_MARGIN <= t)
        ob = self.observer
        try:
            obs = ob.observe(t).obs
            ob.sample("command", t)
        except ObservationUnavailable as e:
            s = self._reason(e)
            self.counters["skipped_stale" if s.startswith("stale") else "skipped_missing"] += 1
            self.last_skip = s
            return "skipped"
        if self._steps_queued >= self.queue_size:
            self.counters["dropped"] += 1
            return "dropped"
        with self._lock:
            self._steps_queued += 1
            self._pending.append([obs, t, bool(ob.fresh("intervening", t))])
        return "recorded"

    def _complete(self, ready: Any) -> None:
        """Queue the pending steps (oldest first) for which ``ready(step)``; the caller holds the lock."""
        while self._pending and ready(self._pending[0]):
            obs, t, intervening = self._pending.pop(0)
            try:
                action = self._action(t)
            except ObservationUnavailable as e:
                self._steps_queued -= 1
                self.counters["skipped_missing"] += 1
                self.last_skip = f"command for the step at {t:.3f}: {self._reason(e)}"
                continue
            self._last_action = action
            self._q.put(("step", (obs, action, intervening, t)))

    def _action(self, t: float) -> np.ndarray:
        """The action commanded over (t, t + period]; at an episode's end, from the commands so far."""
        ob = self.observer
        end = t + self.period
        latest = ob.latest("command")
        if latest is not None and latest[0] >= end:
            return ob.commanded_action(t, end, snap=self.period, origin=self.action_origin)
        start = ob.streams["command"].at(t)
        covered = 0.0 if latest is None or start is None else latest[0] - start[0]
        if covered >= MIN_FINAL_COVERAGE * self.period:
            a = ob.commanded_action(t, latest[0])
            a[:6] = a[:6] * (self.period / covered)
            if self.action_origin == "measured":  # the command's lead over the arm at the tick
                a[:6] += ob.commanded_action(t, t, origin="measured")[:6]
            a[:6] = np.clip(a[:6], -1.0, 1.0)
            return a
        a = ob.commanded_action(t, t)  # the gripper command at t; the motion of the step before
        if self._last_action is not None:
            a[:6] = self._last_action[:6]
        return a

    def _flush(self) -> None:
        with self._lock:
            self._complete(lambda p: True)
            self._last_action = None

    @property
    def queue_depth(self) -> int:
        return self._steps_queued

    # --------------------------------------------------------------- writer
    def _run(self) -> None:
        writer = None
        sizes = {f"images/{c.name}": (c.height, c.width) for c in self.spec.cameras}
        while True:
            kind, payload = self._q.get()
            try:
                if kind == "noop":
                    payload.set()
                elif kind == "stop":
                    if writer is not None and not writer.closed:
                        self._commit(writer, None)
                    return
                if kind == "begin":
                    if writer is not None and not writer.closed:
                        self._commit(writer, None)
                    writer = self.store.begin_episode(**payload)
                elif kind == "step":
                    with self._lock:
                        self._steps_queued -= 1
                    if writer is None or writer.closed:
                        continue
                    obs, action, intervening, t = payload
                    obs = {k: resize(v, sizes[k]) if k in sizes else v for k, v in obs.items()}
                    try:
                        writer.add(obs, action, intervention=intervening, timestamp=t)
                        self.counters["recorded"] += 1
                    except SpecError as e:
                        self.counters["rejected"] += 1
                        self.last_error = f"step rejected: {e}"
                        log.error(self.last_error)
                elif kind == "end":
                    if writer is not None and not writer.closed:
                        self._commit(writer, payload)
                elif kind == "abort":
                    if writer is not None and not writer.closed:
                        writer.abort()
                        self.counters["aborted"] += 1
            except (StoreError, ValueError, OSError) as e:
                self.counters["write_errors"] += 1
                self.last_error = f"{kind}: {e}"
                log.error("recorder: %s", self.last_error)

    def _commit(self, writer: Any, success: bool | None) -> None:
        if writer.num_steps == 0:
            writer.abort()
            self.counters["aborted"] += 1
            return
        if success:
            writer.set_reward(writer.num_steps - 1, self.success_reward)
        for attempt in range(self.commit_retries + 1):
            try:
                writer.commit(success=success)
                self.counters["episodes"] += 1
                return
            except StoreError as e:
                self.counters["write_errors"] += 1
                self.last_error = f"commit: {e}"
                log.error("recorder: %s (attempt %d)", e, attempt + 1)
                time.sleep(1.0)
        writer.abort()
        self.counters["aborted"] += 1

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the writer thread has handled everything queued so far (tests, benchmarks)."""
        done = threading.Event()
        self._q.put(("noop", done))
        return done.wait(timeout)


def register() -> None:
    """Register ``RecorderConfig`` as hydra config group ``recorder`` (option ``default``); idempotent."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="recorder", name="default", node=RecorderConfig)
