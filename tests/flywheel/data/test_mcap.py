"""MCAP both ways: exported bags carry the rig's ROS 2 schemas, import them back, and import a rig-recorded bag."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml
from flywheel_data_helpers import small_spec, write_store

from flywheel.data import EpisodeStore
from flywheel.data.cli import main
from flywheel.data.mcap import JOINT_NAMES, msgdef, ros_type

LENGTHS = [5, 9, 3]


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "s.zarr", small_spec(size=32, depth=True), LENGTHS, lambda i: dict(
        task=f"task{i}", instruction=f"do {i}", source=["human", "rl", "policy"][i], success=[True, False, None][i],
        rig_id="panda-1"))


def test_export_writes_rosbag2_mcap_with_the_rigs_schemas(store_path, tmp_path):
    from mcap.reader import make_reader

    assert main(["export-mcap", str(store_path), str(tmp_path / "bags")]) == 0
    bag = tmp_path / "bags/episode_000001"
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == "mcap" and info["relative_file_paths"] == ["episode_000001_0.mcap"]
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]}
    assert counts["joint_states"] == 9 and counts["cameras/front/depth/image_raw"] == 9
    assert counts["episode/event"] == 2 and info["message_count"] == sum(counts.values())
    with open(bag / "episode_000001_0.mcap", "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert reader.get_header().profile == "ros2"
        types = {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()}
        assert types["joint_states"] == "sensor_msgs/msg/JointState"
        assert types["ee_pose"] == types["command_applied"] == "geometry_msgs/msg/PoseStamped"
        assert types["ee_wrench"] == "geometry_msgs/msg/WrenchStamped"
        assert types["cameras/wrist/image_raw"] == "sensor_msgs/msg/Image"
        assert types["teleop/intervening"] == "std_msgs/msg/Bool" and types["episode/event"] == "std_msgs/msg/String"
        assert all(c.message_encoding == "cdr" for c in summary.channels.values())
        assert all(s.encoding == "ros2msg" for s in summary.schemas.values())
        meta = {m.name: m.metadata for m in reader.iter_metadata()}
        assert json.loads(meta["flywheel"]["record"])["success"] is False
    from mcap_ros2.decoder import DecoderFactory

    with open(bag / "episode_000001_0.mcap", "rb") as f:
        msgs = {}
        for _, ch, _, m in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            msgs.setdefault(ch.topic, []).append(m)
    ep = EpisodeStore(store_path).episode(1)
    js = msgs["joint_states"][4]
    assert list(js.name) == list(JOINT_NAMES)
    np.testing.assert_allclose(js.position, ep["state/joint_pos"][4], rtol=1e-6)
    img = msgs["cameras/front/image_raw"][2]
    assert img.encoding == "rgb8" and (img.height, img.width, img.step) == (32, 40, 120)
    assert np.array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(32, 40, 3), ep["images/front"][2])
    assert [m.data for m in msgs["episode/event"]] == ["start", "failure"]
    assert msgs["ee_pose"][0].header.frame_id == "panda_link0"


def test_export_then_import_round_trips_every_key(store_path, tmp_path):
    assert main(["export-mcap", str(store_path), str(tmp_path / "bags")]) == 0
    assert main(["import-mcap", str(tmp_path / "bags"), str(tmp_path / "back.zarr")]) == 0
    src, back = EpisodeStore(store_path), EpisodeStore(tmp_path / "back.zarr")
    assert back.spec == src.spec and back.num_episodes == 3
    for i in range(3):
        a, b = src.episode(i), back.episode(i)
        assert len(a) == len(b) == LENGTHS[i]
        for k in [*src.spec.state_specs(), "reward", "intervention", "depth/front"]:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_allclose(a["action"], b["action"], atol=1e-4)  # via the absolute target and back
        np.testing.assert_allclose(a["timestamp"], b["timestamp"], atol=1e-6)
        for cam in ("front", "wrist"):  # raw rgb8 in the bag; the store's JPEG on each side
            assert np.abs(a[f"images/{cam}"].astype(int) - b[f"images/{cam}"].astype(int)).mean() < 3
        ra, rb = src.record(i), back.record(i)
        for f in ("task", "instruction", "success", "source", "rig_id"):
            assert getattr(ra, f) == getattr(rb, f), f


def _rig_bag(paths, spec, t0=1000.0):
    """A bag as `ros2 bag record` writes it on a namespaced rig: streams at their own rates, no ticks;
    with two paths, split at t0 + 0.8 s as `ros2 bag record --max-bag-duration` splits."""
    from mcap_ros2.writer import Writer

    ns = 1_000_000_000
    t0n = int(t0 * ns)
    files = [open(p, "wb") for p in paths]
    writers = [Writer(f) for f in files]
    schemas: list[dict] = [{} for _ in paths]

    def put(topic, typ, msg, t):
        i = 1 if len(paths) > 1 and t >= t0n + 800_000_000 else 0
        if typ not in schemas[i]:
            schemas[i][typ] = writers[i].register_msgdef(ros_type(typ), msgdef(typ))
        writers[i].write_message(f"/rig1/{topic}", schemas[i][typ], msg, log_time=t, publish_time=t)

    def header(t):
        return {"stamp": {"sec": t // ns, "nanosec": t % ns}, "frame_id": "panda_link0"}

    def pose(t, x):  # the TCP moves along x at 0.1 m/s; the applied target leads it by 1 cm
        return {"header": header(t), "pose": {"position": {"x": 0.1 * x, "y": 0.0, "z": 0.3},
                                              "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}}

    put("policy/instruction", "std_msgs/String", {"data": "stack the cubes"}, t0n - 400_000_000)
    events = [(t0n, "start"), (t0n + 1_550_000_000, "success")]
    stream = []
    for j in range(250):  # 100 Hz state, from t0 - 0.5 s
        t = t0n - 500_000_000 + j * 10_000_000
        x = (t - t0n) / ns
        stream += [(t, "joint_states", "sensor_msgs/JointState",
                    {"header": header(t), "name": list(JOINT_NAMES), "position": [x] * 7, "velocity": [0.0] * 7,
                     "effort": []}),
                   (t, "ee_pose", "geometry_msgs/PoseStamped", pose(t, x)),
                   (t, "command_applied", "geometry_msgs/PoseStamped", pose(t, x + 0.1)),
                   (t, "ee_wrench", "geometry_msgs/WrenchStamped",
                    {"header": header(t), "wrench": {"force": {"x": 1.0, "y": 0.0, "z": 0.0},
                                                     "torque": {"x": 0.0, "y": 0.0, "z": 0.0}}}),
                   (t, "gripper/state", "sensor_msgs/JointState",
                    {"header": header(t), "name": ["width"], "position": [0.04], "velocity": [], "effort": []})]
    for j in range(76):  # 30 Hz cameras, with a gap from t0 + 0.55 s to t0 + 1.35 s
        t = t0n - 500_000_000 + j * 33_333_333
        if t0n + 550_000_000 < t < t0n + 1_350_000_000:
            continue
        for cam in spec.cameras:
            img = np.full((cam.height, cam.width, 3), j % 256, np.uint8)
            stream.append((t, f"cameras/{cam.name}/image_raw", "sensor_msgs/Image",
                           {"header": header(t), "height": cam.height, "width": cam.width, "encoding": "rgb8",
                            "is_bigendian": 0, "step": cam.width * 3, "data": img.tobytes()}))
    stream += [(t, "episode/event", "std_msgs/String", {"data": e}) for t, e in events]
    for t, topic, typ, msg in sorted(stream, key=lambda s: s[0]):
        put(topic, typ, msg, t)
    for w, f in zip(writers, files, strict=True):
        w.finish()
        f.close()
    return t0n


@pytest.mark.parametrize("split", [False, True])
def test_a_rig_recorded_bag_imports_through_the_recorders_sampling_rule(tmp_path, split):
    spec = small_spec(size=32, depth=False)
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "rig").mkdir()
    paths = [tmp_path / "rig/rig_0.mcap", tmp_path / "rig/rig_1.mcap"] if split else [tmp_path / "rig/rig_0.mcap"]
    t0n = _rig_bag(paths, spec)
    bag = str(tmp_path / "rig") if split else str(paths[0])
    assert main(["import-mcap", bag, str(tmp_path / "s.zarr")]) == 2  # not an export: needs --spec
    assert main(["import-mcap", bag, str(tmp_path / "s.zarr"), "--spec", str(tmp_path / "spec.json")]) == 0
    s = EpisodeStore(tmp_path / "s.zarr")
    assert s.num_episodes == 1
    ep, rec = s.episode(0), s.record(0)
    # ticks every 0.1 s from the start event to the success event (t0 .. t0 + 1.5 s); the ticks at
    # 1.1, 1.2 and 1.3 s find the cameras' last frame older than max_age (0.5 s) and are skipped
    want = [k / 10 for k in range(16) if k not in (11, 12, 13)]
    np.testing.assert_allclose(ep["timestamp"] - t0n / 1e9, want, atol=1e-6)
    np.testing.assert_allclose(ep["state/joint_pos"][:, 0], want, atol=1e-6)  # the sample at the tick
    # 0.01 m per period, 0.02 m per unit of action. The recorder's default action origin is the measured pose
    # (as in sim): the command at the end of a window relative to the pose at its start, i.e. the 1 cm lead
    # plus the 1 cm step = 1.0 per tick
    np.testing.assert_allclose(ep["action"][:, 0], 1.0, atol=1e-4)
    sent = [j for j in range(76) if not 550_000_000 < -500_000_000 + j * 33_333_333 < 1_350_000_000]
    frame = [max(j for j in sent if -500_000_000 + j * 33_333_333 <= round(w * 1e9)) for w in want]
    assert np.abs(ep["images/front"][:, 0, 0, 0].astype(int) - frame).max() <= 2  # the latest frame at or before the tick (JPEG)
    assert rec.success is True and rec.instruction == "stack the cubes" and rec.source == "human"
    assert ep["reward"][-1] == 1.0 and not ep["reward"][:-1].any()  # the recorder's success reward


@pytest.mark.ros
def test_exported_messages_are_what_rclpy_reads_and_writes(store_path, tmp_path):
    """`ros2 bag play` publishes each message's bytes: rclpy must read them as the rig's values; and what
    rclpy writes (as `ros2 bag record` stores it) must decode with the bag's schemas, as import-mcap reads it."""
    from pathlib import Path

    from geometry_msgs.msg import PoseStamped, WrenchStamped
    from mcap.reader import make_reader
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float32, Header, String

    import flywheel.data.mcap as fm
    import flywheel.data.mcap_msgs as msgs

    types = {"sensor_msgs/msg/JointState": JointState, "geometry_msgs/msg/PoseStamped": PoseStamped,
             "geometry_msgs/msg/WrenchStamped": WrenchStamped, "sensor_msgs/msg/Image": Image,
             "std_msgs/msg/Bool": Bool, "std_msgs/msg/String": String, "std_msgs/msg/Float32": Float32,
             "std_msgs/msg/Header": Header}
    fm.export_mcap(store_path, tmp_path / "bags", episodes=[0], progress=False)
    from mcap_ros2._dynamic import generate_dynamic

    seen: dict[str, list] = {}
    with open(tmp_path / "bags/episode_000000/episode_000000_0.mcap", "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            msg = deserialize_message(message.data, types[schema.name])
            seen.setdefault(channel.topic, []).append(msg)
            ours = generate_dynamic(schema.name, schema.data.decode())[schema.name]
            back = ours(serialize_message(msg))  # rclpy's bytes, read with the bag's schema
            assert getattr(back, "header", back).__class__.__name__ != "", schema.name
            if schema.name == "sensor_msgs/msg/JointState":
                assert list(back.position) == list(msg.position) and list(back.name) == list(msg.name)
            if schema.name == "sensor_msgs/msg/Image":
                assert bytes(back.data) == bytes(msg.data) and back.encoding == msg.encoding
    assert {type(m[0]) for m in seen.values()} == set(types.values())
    ep = EpisodeStore(store_path).episode(0)
    js = seen["joint_states"][3]
    np.testing.assert_allclose(js.position, ep["state/joint_pos"][3], rtol=1e-7)
    np.testing.assert_allclose(js.velocity, ep["state/joint_vel"][3], rtol=1e-7)
    assert js.header.stamp.sec + js.header.stamp.nanosec * 1e-9 == pytest.approx(ep["timestamp"][3], abs=1e-6)
    pose = seen["ee_pose"][2].pose
    np.testing.assert_allclose([pose.position.x, pose.position.y, pose.position.z], ep["state/ee_pos"][2], rtol=1e-7)
    img = seen["cameras/front/image_raw"][1]
    assert (img.encoding, img.height, img.width) == ("rgb8", 32, 40)
    assert np.array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(32, 40, 3), ep["images/front"][1])
    depth = seen["cameras/front/depth/image_raw"][1]
    assert depth.encoding == "16UC1"
    assert np.array_equal(np.frombuffer(bytes(depth.data), "<u2").reshape(32, 40), ep["depth/front"][1])
    wrench = seen["ee_wrench"][0].wrench
    np.testing.assert_allclose([wrench.force.x, wrench.torque.z], ep["state/ee_wrench"][0][[0, 5]], rtol=1e-7)
    assert [m.data for m in seen["teleop/intervening"]] == ep["intervention"].tolist()
    # the definitions in the bag are the installed ROS packages' .msg files (comments and blank lines aside)
    for name in msgs._DEFS:  # the ROS packages from PyPI install their .msg files under <prefix>/share
        pkg, msg = name.split("/")
        path = Path(sys.prefix) / "share" / pkg / "msg" / f"{msg}.msg"
        fields = [line.split("#")[0].split() for line in path.read_text().splitlines()]
        want = [(t.split("/")[-1], n) for t, n, *_ in (f for f in fields if len(f) >= 2)]
        got = [(t.split("/")[-1], n) for t, n, *_ in (line.split() for line in msgs._DEFS[name].splitlines())]
        assert got == want, name


def test_export_skips_quarantined_episodes(store_path, tmp_path):
    """As export-lerobot: a quarantined episode is not exported by default; naming it is a clear error."""
    from flywheel.data.mcap import export_mcap
    from flywheel.data.store_layout import StoreError

    with EpisodeStore(store_path, "a") as w:
        w.quarantine(1, "damaged chunk")
    bags = export_mcap(store_path, tmp_path / "bags", progress=False)
    assert sorted(p.name for p in bags) == ["episode_000000", "episode_000002"]
    with pytest.raises(StoreError, match="episode 1 is quarantined"):
        export_mcap(store_path, tmp_path / "named", episodes=[1], progress=False)
