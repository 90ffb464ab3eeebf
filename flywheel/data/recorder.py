"""The recorder's core (no ROS): streams in, control-tick samples out, written off the control path.

The ``recorder-node`` feeds this from ROS topics; benchmarks and tests feed it
directly. Streams (each sample carries the time it was measured):

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
skipped and counted), builds the spec observation, and turns the applied
command into the spec action with :meth:`ActionSpec.from_target` against the
TCP pose at the tick. Steps go to a writer thread through a queue bounded at
``queue_size`` steps (a full queue drops the step and counts it; episode events
are never dropped). The writer thread resizes images to the spec size, appends
to the store and commits episodes.
"""

from __future__ import annotations

import bisect
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

log = logging.getLogger(__name__)

REQUIRED = ("joint_states", "ee_pose", "ee_wrench", "gripper", "command")
OPTIONAL = ("gripper_command", "intervening")


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

    def rig_spec(self):
        from rig.spec import ActionSpec, CameraSpec, RigSpec

        return RigSpec(
            cameras=tuple(CameraSpec(c, self.image_size, self.image_size) for c in self.cameras),
            action=ActionSpec(max_translation=self.max_translation, max_rotation=self.max_rotation,
                              chunk_horizon=self.chunk_horizon, control_hz=self.control_hz),
        )


class Stream:
    """Time-ordered samples of one topic, for latest-at-or-before lookups."""

    def __init__(self, keep_s: float = 2.0, min_keep: int = 8) -> None:
        self.keep_s = keep_s
        self.min_keep = min_keep
        self.t: list[float] = []
        self.v: list[Any] = []

    def push(self, t: float, v: Any) -> None:
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

    def at(self, t: float) -> tuple[float, Any] | None:
        i = bisect.bisect_right(self.t, t) - 1
        return None if i < 0 else (self.t[i], self.v[i])


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    import cv2

    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


class Recorder:
    """Samples streams at control ticks and writes episodes on its own thread (``connect``/``close``)."""

    def __init__(self, store: EpisodeStore, *, queue_size: int = 64, max_age: float = 0.5,
                 success_reward: float = 1.0, episode_meta: Mapping[str, Any] | None = None,
                 commit_retries: int = 3) -> None:
        self.store = store
        self.spec = store.spec
        self.cameras = [f"images/{c}" for c in self.spec.camera_names]
        self.queue_size = int(queue_size)
        self.max_age = float(max_age)
        self.success_reward = float(success_reward)
        self.episode_meta = dict(episode_meta or {})
        self.commit_retries = commit_retries
        self.streams = {k: Stream() for k in (*REQUIRED, *OPTIONAL, *self.cameras)}
        self._lock = threading.Lock()
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
        s = self.streams.get(stream)
        if s is None:
            raise KeyError(f"unknown stream {stream!r}; streams: {list(self.streams)}")
        with self._lock:
            s.push(float(t), value)

    def start_episode(self, **meta: Any) -> None:
        """Begin an episode (an open one is committed unlabelled first)."""
        if self.active:
            self.end_episode(None)
        self._q.put(("begin", {**self.episode_meta, **meta}))
        self.active = True

    def end_episode(self, success: bool | None) -> None:
        if self.active:
            self._q.put(("end", success))
            self.active = False

    def abort_episode(self) -> None:
        if self.active:
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
    def sample(self, t: float) -> tuple[dict[str, np.ndarray], np.ndarray, bool] | str:
        """(observation, action, intervening) at ``t``, or the reason the tick cannot be sampled."""
        got: dict[str, Any] = {}
        with self._lock:
            for k in (*REQUIRED, *self.cameras):
                s = self.streams[k].at(t)
                if s is None:
                    return f"missing:{k}"
                if t - s[0] > self.max_age:
                    return f"stale:{k} ({t - s[0]:.3f} s old)"
                got[k] = s[1]
            for k in OPTIONAL:
                s = self.streams[k].at(t)
                got[k] = None if s is None or t - s[0] > self.max_age else s[1]
        jp, jv = got["joint_states"]
        pos, quat = got["ee_pose"]
        width = float(got["gripper"])
        obs = {
            "state/ee_pos": np.asarray(pos, np.float32).reshape(3),
            "state/ee_quat": np.asarray(quat, np.float32).reshape(4),
            "state/gripper_width": np.array([width], np.float32),
            "state/joint_pos": np.asarray(jp, np.float32).reshape(7),
            "state/joint_vel": np.asarray(jv, np.float32).reshape(7),
            "state/ee_wrench": np.asarray(got["ee_wrench"], np.float32).reshape(6),
        }
        for k in self.cameras:
            obs[k] = got[k]
        cpos, cquat = got["command"]
        gcmd = got["gripper_command"]
        action = self.spec.action.from_target(np.asarray(cpos), np.asarray(cquat),
                                              width if gcmd is None else float(gcmd),
                                              np.asarray(pos), np.asarray(quat))
        return obs, action, bool(got["intervening"]) if got["intervening"] is not None else False

    def tick(self, t: float) -> str:
        """Record the step at control tick ``t``; returns recorded | idle | skipped | dropped."""
        self.counters["ticks"] += 1
        if not self.active:
            return "idle"
        s = self.sample(t)
        if isinstance(s, str):
            self.counters["skipped_stale" if s.startswith("stale") else "skipped_missing"] += 1
            self.last_skip = s
            return "skipped"
        obs, action, intervening = s
        if self._steps_queued >= self.queue_size:
            self.counters["dropped"] += 1
            return "dropped"
        with self._lock:
            self._steps_queued += 1
        self._q.put(("step", (obs, action, intervening, t)))
        return "recorded"

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
                    obs = {k: _resize(v, *sizes[k]) if k in sizes else v for k, v in obs.items()}
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
