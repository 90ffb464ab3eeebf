"""Episodes as MCAP bags (``flywheel-data export-mcap`` / ``import-mcap``), for Foxglove and ``ros2 bag``.

Export writes one rosbag2 bag per episode (``OUT/episode_NNNNNN/episode_NNNNNN_0.mcap``
and its ``metadata.yaml``, as ``ros2 bag record -s mcap`` lays them out), with the
rig's topics and standard ROS 2 message types (docs/interfaces.md), serialised
as CDR by ``mcap-ros2-support``:

=================================  ==========================  ====================================
topic                              type                        from the store
=================================  ==========================  ====================================
``joint_states``                   sensor_msgs/JointState      ``state/joint_pos``, ``state/joint_vel``
``ee_pose``                        geometry_msgs/PoseStamped   ``state/ee_pos``, ``state/ee_quat``
``ee_wrench``                      geometry_msgs/WrenchStamped ``state/ee_wrench``
``gripper/state``                  sensor_msgs/JointState      ``state/gripper_width``
``command_applied``                geometry_msgs/PoseStamped   ``action`` as the absolute TCP target
``gripper/command_applied``        sensor_msgs/JointState      ``action[6]`` as a width
``cameras/<cam>/image_raw``        sensor_msgs/Image (rgb8)    ``images/<cam>``
``cameras/<cam>/depth/image_raw``  sensor_msgs/Image (16UC1)   ``depth/<cam>``
``teleop/intervening``             std_msgs/Bool               ``intervention``
``policy/instruction``             std_msgs/String             the episode's instruction
``episode/event``                  std_msgs/String             ``start``, then ``success``/``failure``/``reset``
``recorder/tick``                  std_msgs/Header             the recorder's control ticks (the steps)
``recorder/reward``                std_msgs/Float32            ``reward`` (not a rig topic)
=================================  ==========================  ====================================

Every message of step ``k`` is stamped (header and log time) with the step's
timestamp (the tick 1 us later in log time, so it follows the samples it takes);
MCAP metadata ``flywheel`` holds the rig spec and the episode record.

Import reads a bag (a rosbag2 directory, an ``.mcap`` file, or a directory of
bags) in log-time order and feeds it to :class:`flywheel.data.recorder.Recorder`,
the recorder node's core, so a bag recorded on the rig with ``ros2 bag record``
becomes the episodes the recorder node would have written: ``episode/event``
starts and ends episodes, ticks come every ``1 / control_hz`` from each
``start`` (as the node's timer) and go through ``Recorder.tick`` and its writer
(each stream's latest sample at or before the tick; stale or missing streams
skip it; the applied command becomes the spec action), with nothing dropped. A
bag that ``export-mcap`` wrote carries its ticks (``recorder/tick``) and
rewards: those episodes come back through ``Recorder.sample`` at those ticks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.export import start_export
from flywheel.data.mcap_msgs import header as _header
from flywheel.data.mcap_msgs import image as _image
from flywheel.data.mcap_msgs import joints as _joints
from flywheel.data.mcap_msgs import msgdef, ros_type
from flywheel.data.mcap_msgs import pose as _pose
from flywheel.data.store import EpisodeStore
from rig.spec import BASE_FRAME, JOINT_NAMES, RigSpec


# ------------------------------------------------------------------------- export
class _Bag:
    """One rosbag2 MCAP bag being written (a directory with one .mcap and metadata.yaml)."""

    def __init__(self, path: Path) -> None:
        from mcap_ros2.writer import Writer

        path.mkdir(parents=True, exist_ok=False)
        self.dir = path
        self.file = path / f"{path.name}_0.mcap"
        self._f = open(self.file, "wb")  # noqa: SIM115 - closed in close()
        self.w = Writer(self._f)
        self.schemas: dict[str, Any] = {}
        self.topics: dict[str, list] = {}  # topic -> [type, count]
        self.t_min, self.t_max = None, None

    def write(self, topic: str, typ: str, msg: dict, t_ns: int) -> None:
        if typ not in self.schemas:
            self.schemas[typ] = self.w.register_msgdef(ros_type(typ), msgdef(typ))
        self.w.write_message(topic, self.schemas[typ], msg, log_time=t_ns, publish_time=t_ns)
        self.topics.setdefault(topic, [ros_type(typ), 0])[1] += 1
        self.t_min = t_ns if self.t_min is None else min(self.t_min, t_ns)
        self.t_max = t_ns if self.t_max is None else max(self.t_max, t_ns)

    def close(self) -> None:
        import yaml

        self.w.finish()
        self._f.close()
        n = sum(c for _, c in self.topics.values())
        start, dur = self.t_min or 0, (self.t_max or 0) - (self.t_min or 0)
        topics = [{"topic_metadata": {"name": t, "type": typ, "serialization_format": "cdr",
                                      "offered_qos_profiles": ""}, "message_count": c}
                  for t, (typ, c) in self.topics.items()]
        meta = {"rosbag2_bagfile_information": {
            "version": 5, "storage_identifier": "mcap", "duration": {"nanoseconds": dur},
            "starting_time": {"nanoseconds_since_epoch": start}, "message_count": n,
            "topics_with_message_count": topics, "compression_format": "", "compression_mode": "",
            "relative_file_paths": [self.file.name],
            "files": [{"path": self.file.name, "starting_time": {"nanoseconds_since_epoch": start},
                       "duration": {"nanoseconds": dur}, "message_count": n}]}}
        (self.dir / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def export_mcap(store: EpisodeStore | str, out: str | Path, *, episodes: Sequence[int] | None = None,
                overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write ``episodes`` (default: all but the quarantined) of ``store`` as one rosbag2 MCAP bag each under ``out``."""
    from tqdm import tqdm

    store, out = start_export(store, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    eps = store.select() if episodes is None else [int(e) for e in episodes]  # not the quarantined
    if not eps:
        raise ValueError(f"{store.path}: no episodes to export")
    spec = store.spec
    written = []
    for e in tqdm(eps, desc="export-mcap", disable=not progress):
        rec, ep = store.record(e), store.episode(e)
        bag = _Bag(out / f"episode_{e:06d}")
        try:
            _write_episode(bag, spec, rec, ep)
        finally:
            bag.close()
        written.append(bag.dir)
    return written


def _write_episode(bag: _Bag, spec: RigSpec, rec: Any, ep: Any) -> None:
    bag.w.add_metadata("flywheel", {"rig_spec": spec.to_json(), "record": json.dumps(rec.to_dict()),
                                    "exporter": "panda-flywheel flywheel-data export-mcap"})
    n = len(ep)
    ts = (np.asarray(ep["timestamp"], np.float64) * 1e9).round().astype(np.int64)
    cams = [c for c in spec.cameras]
    instruction = rec.instruction or rec.task
    bag.write("policy/instruction", "std_msgs/String", {"data": instruction}, int(ts[0]) - 1_000_000)
    bag.write("episode/event", "std_msgs/String", {"data": "start"}, int(ts[0]))
    state = {k: ep[k] for k in spec.state_specs()}
    action, reward, inter = ep["action"], ep["reward"], ep["intervention"]
    imgs = {c.name: ep[f"images/{c.name}"] for c in cams}
    depths = {c.name: ep[f"depth/{c.name}"] for c in cams if c.depth}
    for k in range(n):
        t = int(ts[k])
        pos, quat = state["state/ee_pos"][k], state["state/ee_quat"][k]
        width = float(state["state/gripper_width"][k][0])
        bag.write("joint_states", "sensor_msgs/JointState",
                  _joints(t, list(JOINT_NAMES), state["state/joint_pos"][k], state["state/joint_vel"][k]), t)
        bag.write("ee_pose", "geometry_msgs/PoseStamped", _pose(t, pos, quat), t)
        w = np.asarray(state["state/ee_wrench"][k], float).tolist()
        bag.write("ee_wrench", "geometry_msgs/WrenchStamped",
                  {"header": _header(t, BASE_FRAME), "wrench": {"force": dict(zip("xyz", w[:3], strict=True)),
                                                               "torque": dict(zip("xyz", w[3:], strict=True))}}, t)
        bag.write("gripper/state", "sensor_msgs/JointState", _joints(t, ["width"], [width]), t)
        tpos, tquat, twidth = spec.action.to_target(action[k], pos, quat)
        bag.write("command_applied", "geometry_msgs/PoseStamped", _pose(t, tpos, tquat), t)
        bag.write("gripper/command_applied", "sensor_msgs/JointState", _joints(t, ["width"], [twidth]), t)
        for c in cams:
            bag.write(f"cameras/{c.name}/image_raw", "sensor_msgs/Image",
                      _image(t, imgs[c.name][k], f"{c.name}_optical_frame"), t)
            if c.name in depths:
                bag.write(f"cameras/{c.name}/depth/image_raw", "sensor_msgs/Image",
                          _image(t, depths[c.name][k], f"{c.name}_optical_frame"), t)
        bag.write("teleop/intervening", "std_msgs/Bool", {"data": bool(inter[k])}, t)
        bag.write("recorder/reward", "std_msgs/Float32", {"data": float(reward[k])}, t)
        bag.write("recorder/tick", "std_msgs/Header", _header(t), t + 1000)  # logged after the step's samples
    end = {True: "success", False: "failure"}.get(rec.success, "reset")
    bag.write("episode/event", "std_msgs/String", {"data": end}, int(ts[-1]) + 1_000_000)


# ------------------------------------------------------------------------- import
def bags(path: str | Path) -> list[list[Path]]:
    """The bags under ``path`` (a bag directory, an .mcap file, or a directory of bags), each as its files
    in order: a bag that ``ros2 bag record`` split (``NAME_0.mcap``, ``NAME_1.mcap``, ...) is one stream."""
    import re

    p = Path(path)
    if p.is_file():
        return [[p]]
    files = sorted(p.rglob("*.mcap"))
    if not files:
        raise FileNotFoundError(f"{p}: no .mcap files")
    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)

    def order(f: Path) -> tuple:
        m = re.search(r"_(\d+)$", f.stem)
        return (f.stem[: m.start()] if m else f.stem, int(m.group(1)) if m else 0)

    return [sorted(fs, key=order) for _, fs in sorted(by_dir.items())]


def _messages(path: Path) -> Iterator[tuple[str, int, Any]]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, decoded in reader.iter_decoded_messages(log_time_order=True):
            yield _relative(channel.topic), message.log_time, decoded


def _relative(topic: str) -> str:
    """``/ns/joint_states`` -> ``joint_states``: the rig's names are relative to its namespace."""
    t = topic.lstrip("/")
    for name in ("joint_states", "ee_pose", "ee_wrench", "gripper/", "command_applied", "cameras/", "teleop/",
                 "episode/event", "policy/instruction", "recorder/"):
        i = t.find(name)
        if i >= 0 and (i == 0 or t[i - 1] == "/"):
            return t[i:]
    return t


def _metadata(path: Path) -> dict[str, str]:
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        for m in make_reader(f).iter_metadata():
            if m.name == "flywheel":
                return dict(m.metadata)
    return {}


def _topics(path: Path) -> set[str]:
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    return {_relative(c.topic) for c in summary.channels.values()} if summary else set()


def _stamp_ns(msg: Any, fallback_ns: int) -> int:
    h = getattr(msg, "header", msg)
    t = int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)
    return t if t > 0 else fallback_ns


def _stamp(msg: Any, fallback_ns: int) -> float:
    h = getattr(msg, "header", None)
    if h is None:
        return fallback_ns * 1e-9
    t = h.stamp.sec + h.stamp.nanosec * 1e-9
    return t if t > 0 else fallback_ns * 1e-9


def _img(msg: Any) -> np.ndarray:
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if msg.encoding == "16UC1":
        return data.view("<u2").reshape(msg.height, msg.step // 2)[:, : msg.width].copy()
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {msg.encoding!r}: import takes rgb8 or bgr8")
    img = data.reshape(msg.height, msg.step)[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return img[..., ::-1].copy() if msg.encoding == "bgr8" else img.copy()


class _Feeder:
    """One bag's messages into a :class:`flywheel.data.recorder.Recorder`'s streams; subclasses tick."""

    def __init__(self, store: EpisodeStore, spec: RigSpec, meta: dict[str, Any], max_age: float) -> None:
        from flywheel.data.recorder import Recorder

        self.store, self.spec, self.meta = store, spec, meta
        self.r = Recorder(store, max_age=max_age, queue_size=1 << 30, episode_meta=meta)
        self.instruction = ""
        self.rewards: dict[int, float] = {}
        self.sizes = {f"images/{c.name}": (c.height, c.width) for c in spec.cameras}
        self.depth = {c.name for c in spec.cameras if c.depth}
        self.depth_streams: dict[str, Any] = {}
        self.added: list[int] = []

    def before(self, t_ns: int) -> None:
        """Called before each message (log time ``t_ns``)."""

    def feed(self, topic: str, t_ns: int, m: Any) -> None:
        self.before(t_ns)
        push = self.r.push
        if topic == "joint_states":
            pos, vel = np.zeros(7), np.zeros(7)
            pos[: min(7, len(m.position))] = list(m.position)[:7]
            vel[: min(7, len(m.velocity))] = list(m.velocity)[:7]
            push("joint_states", _stamp(m, t_ns), (pos, vel))
        elif topic in ("ee_pose", "command_applied"):
            p, q = m.pose.position, m.pose.orientation
            push("ee_pose" if topic == "ee_pose" else "command",
                 _stamp(m, t_ns), (np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])))
        elif topic == "ee_wrench":
            f, tq = m.wrench.force, m.wrench.torque
            push("ee_wrench", _stamp(m, t_ns), np.array([f.x, f.y, f.z, tq.x, tq.y, tq.z]))
        elif topic in ("gripper/state", "gripper/command_applied") and len(m.position):
            push("gripper" if topic == "gripper/state" else "gripper_command", _stamp(m, t_ns), float(m.position[0]))
        elif topic == "teleop/intervening":
            push("intervening", t_ns * 1e-9, bool(m.data))  # Bool has no header: the log time
        elif topic == "policy/instruction":
            self.instruction = m.data
        elif topic == "recorder/reward":
            self.rewards[t_ns] = float(m.data)
        elif topic.startswith("cameras/") and topic.endswith("/image_raw"):
            cam = topic.split("/")[1]
            if topic == f"cameras/{cam}/image_raw" and f"images/{cam}" in self.sizes:
                push(f"images/{cam}", _stamp(m, t_ns), _img(m))
            elif topic == f"cameras/{cam}/depth/image_raw" and cam in self.depth:
                if f"depth/{cam}" in self.r.streams:  # a recorder that samples depth itself
                    push(f"depth/{cam}", _stamp(m, t_ns), _img(m))
                else:
                    from flywheel.data.recorder import Stream

                    self.depth_streams.setdefault(cam, Stream()).push(_stamp(m, t_ns), _img(m))
        elif topic == "recorder/tick":
            self.tick(_stamp_ns(m, t_ns))
        elif topic == "episode/event":
            self.event(m.data.strip().lower(), t_ns)

    def tick(self, t_ns: int) -> None:
        raise NotImplementedError

    def event(self, ev: str, t_ns: int) -> None:
        raise NotImplementedError

    def finish(self, t_ns: int) -> None:
        self.event("reset", t_ns)  # a bag that ends mid-episode: keep it, unlabelled


class _LiveFeeder(_Feeder):
    """A bag recorded on the rig: the recorder node's own path (``Recorder.on_event``/``tick`` and its
    writer thread, nothing dropped), ticking every ``1 / control_hz`` from each ``start`` as its timer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.r.connect()
        self.period_ns = int(round(1e9 / self.spec.action.control_hz))
        self.next_tick: int | None = None
        self.first = self.store.num_episodes

    def before(self, t_ns: int) -> None:
        while self.next_tick is not None and self.next_tick < t_ns:
            self.tick(self.next_tick)
            self.next_tick += self.period_ns

    def tick(self, t_ns: int) -> None:
        self.r.tick(t_ns * 1e-9)
        if self.r.queue_depth > 32:
            self.r.wait_idle()

    def event(self, ev: str, t_ns: int) -> None:
        if ev not in ("start", "success", "failure", "reset", "abort"):
            return
        self.before(t_ns + 1)
        self.r.on_event(ev, **({"instruction": self.instruction} if ev == "start" else {}))
        self.next_tick = t_ns if ev == "start" else None

    def finish(self, t_ns: int) -> None:
        self.before(t_ns)
        self.r.close()  # an open episode is committed unlabelled; the writer thread finishes
        self.added = list(range(self.first, self.store.num_episodes))


class _ExportFeeder(_Feeder):
    """A bag that ``export-mcap`` wrote: at its recorded ticks, :meth:`Recorder.sample` (the observation
    the recorder takes, the action as the applied target against the measured pose, which is what the
    export encodes) and the recorded reward, written synchronously."""

    def __init__(self, *args: Any, has_rewards: bool, success_reward: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.has_rewards, self.success_reward = has_rewards, success_reward
        self.writer: Any = None

    def tick(self, t_ns: int) -> None:
        from robot.ros.convert import resize

        if self.writer is None:
            return
        t = t_ns * 1e-9
        s = self.r.sample(t)
        if isinstance(s, str):
            return
        obs, action, intervening = s
        obs = {k: resize(v, self.sizes[k]) if k in self.sizes else v for k, v in obs.items()}
        for cam in (c for c in self.depth if f"depth/{c}" not in obs):
            d = self.depth_streams.get(cam)
            got = d.at(t) if d is not None else None
            if got is None:
                return
            obs[f"depth/{cam}"] = got[1]
        self.writer.add(obs, action, reward=self.rewards.get(t_ns, 0.0), intervention=intervening, timestamp=t)

    def event(self, ev: str, t_ns: int) -> None:
        """``episode/event`` as the recorder takes it: start | success | failure | reset | abort."""
        if ev == "start":
            self.event("reset", t_ns)  # an open episode is kept, unlabelled
            self.writer = self.store.begin_episode(**{**self.meta, "instruction": self.instruction})
        elif ev in ("success", "failure", "reset", "abort") and self.writer is not None:
            w, self.writer = self.writer, None
            if ev == "abort" or w.num_steps == 0:
                w.abort()
                return
            success = {"success": True, "failure": False}.get(ev)
            if success and not self.has_rewards:
                w.set_reward(w.num_steps - 1, self.success_reward)
            self.added.append(w.commit(success=success))

    def abort(self) -> None:
        if self.writer is not None and not self.writer.closed:
            self.writer.abort()


def import_mcap(bag: str | Path, store: str | Path, *, spec: RigSpec | None = None, max_age: float = 0.5,
                source: str = "human", progress: bool = True) -> list[int]:
    """Record the episodes of ``bag`` into ``store`` with the recorder's sampling rule; returns their indices."""
    from tqdm import tqdm

    groups = bags(bag)
    meta0 = _metadata(groups[0][0])
    if spec is None:
        if "rig_spec" not in meta0:
            raise ValueError(f"{bag} has no flywheel metadata (not an export): give the rig spec (--spec)")
        spec = RigSpec.from_json(meta0["rig_spec"])
    out = EpisodeStore(store, "a", spec)
    added: list[int] = []
    try:
        for files in tqdm(groups, desc="import-mcap", disable=not progress):
            meta = _metadata(files[0])
            rec_meta: dict[str, Any] = {"source": source, "notes": f"imported from {files[0].parent.name}"}
            if "record" in meta:
                rec = json.loads(meta["record"])
                rec_meta = {k: rec[k] for k in ("task", "source", "policy_version", "rig_id", "camera_ids",
                                                "calibration_id", "notes", "extra") if k in rec}
            topics = set().union(*(_topics(f) for f in files))
            if "recorder/tick" in topics:
                feeder: _Feeder = _ExportFeeder(out, spec, rec_meta, max_age,
                                                has_rewards="recorder/reward" in topics)
            else:
                feeder = _LiveFeeder(out, spec, rec_meta, max_age)
            last = 0
            try:
                for f in files:  # a split bag's files continue one another
                    for topic, t_ns, msg in _messages(f):
                        feeder.feed(topic, t_ns, msg)
                        last = t_ns
                feeder.finish(last + 1)
            except BaseException:
                if isinstance(feeder, _ExportFeeder):
                    feeder.abort()
                else:
                    feeder.r.abort_episode()
                    feeder.r.close()
                raise
            added += feeder.added
    finally:
        out.close()
    return added
