"""LeRobot both ways: export statistics as LeRobot computes them, import back and from LeRobot's own layout."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flywheel_data_helpers import make_episode, small_spec, write_store

from flywheel.data import EpisodeStore
from flywheel.data.cli import main
from flywheel.data.lerobot import aggregate_stats, export_lerobot, feature_stats
from flywheel.data.lerobot_import import MappingError, import_lerobot
from rig.spec import CameraSpec, RigSpec

LENGTHS = [6, 11, 4]
FEATURES = {"observation.state", "action", "next.reward", "next.done", "complementary_info.is_intervention",
            "timestamp", "frame_index", "episode_index", "index", "task_index",
            "observation.images.front", "observation.images.wrist"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    write_store(root / "s.zarr", small_spec(size=32, depth=False), LENGTHS, lambda i: dict(
        task=f"task{i % 2}", instruction=f"do task {i % 2}", source=["human", "rl", "policy"][i], success=i != 1,
        rig_id="panda-1"))
    out = export_lerobot(root / "s.zarr", root / "lerobot", vcodec="libx264", progress=False)
    return root / "s.zarr", out


def _check_like_lerobot(stats: dict, feature: str) -> None:
    """LeRobot's _assert_type_and_shape on one feature's stats."""
    for k, v in stats.items():
        v = np.asarray(v)
        assert v.ndim >= 1, (feature, k)
        if k == "count":
            assert v.shape == (1,), (feature, k)
        if "image" in feature and k != "count":
            assert v.shape == (3, 1, 1), (feature, k)
    assert {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"} <= set(stats)


def test_export_writes_stats_for_every_feature_per_episode_and_overall(exported):
    store_path, out = exported
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats) == FEATURES
    for e in eps:
        assert {c.split("/")[1] for c in e if c.startswith("stats/")} == FEATURES
        for f in FEATURES:
            _check_like_lerobot({k.split("/")[2]: e[k] for k in e if k.startswith(f"stats/{f}/")}, f)
    for f in FEATURES:
        _check_like_lerobot(stats[f], f)
    # episode 1 (11 frames): the bookkeeping features' stats are what they must be
    e1 = eps[1]
    assert e1["stats/frame_index/min"] == [0] and e1["stats/frame_index/max"] == [10]
    assert e1["stats/frame_index/mean"] == [5.0] and e1["stats/frame_index/count"] == [11]
    assert e1["stats/index/min"] == [6] and e1["stats/episode_index/mean"] == [1.0]
    assert e1["stats/next.done/max"] == [True] and e1["stats/next.done/mean"] == pytest.approx([1 / 11])
    assert e1["stats/timestamp/max"] == pytest.approx([1.0])
    store = EpisodeStore(store_path)
    iv = store.episode(1)["intervention"]
    assert e1["stats/complementary_info.is_intervention/mean"] == pytest.approx([iv.mean()])
    # stats.json aggregates the episodes' stats: counts add up, moments are those of all frames
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    act = np.array(data["action"], np.float64)
    assert stats["action"]["count"] == [21] and stats["next.done"]["count"] == [21]
    np.testing.assert_allclose(stats["action"]["mean"], act.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], act.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["min"], act.min(0))
    assert stats["task_index"]["max"] == [1] and stats["index"]["max"] == [20]
    # provenance lives in a sidecar that LeRobot does not rewrite; info.json holds only LeRobot's fields
    info = json.loads((out / "meta/info.json").read_text())
    assert "flywheel" not in info
    prov = json.loads((out / "meta/flywheel.json").read_text())
    assert [e["store_episode"] for e in prov["episodes"]] == [0, 1, 2]
    assert RigSpec.from_dict(prov["rig_spec"]) == store.spec


def test_an_appended_episode_row_has_the_exports_schema(exported):
    """What LeRobot does on resume + save_episode: stats of every feature for the new row, concatenated."""
    _, out = exported
    old = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet")
    n = 5
    frame = {"observation.state": np.zeros((n, 28), np.float32), "action": np.ones((n, 7), np.float32),
             "next.reward": np.zeros((n, 1), np.float32), "next.done": (np.arange(n) == n - 1)[:, None],
             "complementary_info.is_intervention": np.zeros((n, 1), bool), "timestamp": np.arange(n) / 10,
             "frame_index": np.arange(n), "episode_index": np.full(n, 3), "index": np.arange(21, 21 + n),
             "task_index": np.zeros(n, np.int64)}
    st = {k: feature_stats(v) for k, v in frame.items()}
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    from flywheel.data.lerobot import _stats_columns, image_feature_stats

    st["observation.images.front"] = st["observation.images.wrist"] = image_feature_stats(frames)
    cols = _stats_columns(st)
    stat_names = [c for c in old.column_names if c.startswith("stats/")]
    assert sorted(cols) == sorted(stat_names)
    for name in stat_names:
        assert pa.array([cols[name][0]], type=cols[name][1]).type == old.schema.field(name).type, name


def test_feature_stats_follow_lerobot():
    x = np.arange(100, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], np.float32)
    s = feature_stats(x)
    assert s["min"].dtype == np.float32 and s["count"].tolist() == [100]
    # histogram quantiles (5000 bins): the frame where the cumulative count reaches q * N, within a bin
    np.testing.assert_allclose(s["q50"], [49.0, -100.0], atol=0.05)
    np.testing.assert_allclose(s["q01"], [0.0, -198.0], atol=0.05)
    one = feature_stats(np.array([3.0]))  # fewer than 2 frames: quantiles are the mean
    assert one["q99"].tolist() == [3.0] and one["std"].tolist() == [0.0]
    imgs = np.random.default_rng(1).integers(0, 200, (6, 3, 8, 10), dtype=np.uint8)
    fast, slow = feature_stats(imgs, image=True), feature_stats(imgs.astype(np.float64), image=True)
    for k in slow:  # uint8 images go through 256-value counts: the same numbers as per pixel
        np.testing.assert_allclose(np.asarray(fast[k], float), np.asarray(slow[k], float), atol=1e-12, err_msg=k)
    assert fast["mean"].shape == (3, 1, 1) and fast["count"].tolist() == [6]
    a, b = feature_stats(np.arange(10.0)), feature_stats(np.arange(10.0, 30.0))
    agg = aggregate_stats([a, b])
    assert agg["count"].tolist() == [30]
    np.testing.assert_allclose(agg["mean"], [14.5])
    np.testing.assert_allclose(agg["std"], [np.arange(30.0).std()])


@pytest.mark.slow
def test_export_then_import_round_trips_every_key(exported, tmp_path):
    store_path, out = exported
    assert main(["import-lerobot", str(out), str(tmp_path / "back.zarr")]) == 0
    src, back = EpisodeStore(store_path), EpisodeStore(tmp_path / "back.zarr")
    assert back.spec == src.spec and back.num_episodes == 3
    for i in range(3):
        a, b = src.episode(i), back.episode(i)
        assert len(a) == len(b)
        for k in [*src.spec.state_specs(), "action", "reward", "intervention"]:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_allclose(a["timestamp"], b["timestamp"], atol=1e-4)
        for cam in src.spec.camera_names:
            diff = np.abs(a[f"images/{cam}"].astype(np.int16) - b[f"images/{cam}"].astype(np.int16))
            assert diff.mean() < 8, cam  # two lossy codecs: the store's JPEG, then H.264
        ra, rb = src.record(i), back.record(i)
        for f in ("task", "instruction", "success", "source", "rig_id", "camera_ids", "notes", "extra"):
            assert getattr(ra, f) == getattr(rb, f), f


# ------------------------------------------------------------- a dataset in LeRobot's own layout
SO100_NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def _native_meta(root, fps, size, images: str, reward: bool, **info) -> None:
    """The folders and meta/info.json of an SO-100 dataset in LeRobot v3.0's layout (one camera, ``images``:
    "image" or "video"; ``next.reward`` when ``reward``); ``info`` adds or overrides keys of info.json."""
    h, w = size
    feats = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": SO100_NAMES},
        "action": {"dtype": "float32", "shape": [6], "names": SO100_NAMES},
        "observation.images.top": {"dtype": images, "shape": [h, w, 3], "names": ["height", "width", "channels"]},
        **({"next.reward": {"dtype": "float32", "shape": [1], "names": None}} if reward else {}),
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "fps": fps, "features": feats,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", **info}))


def _lerobot_native(root, fps=10, tasks_per_episode=1, size=(24, 32)):
    """Two episodes as LeRobot writes them: list<float> vectors, PNG images in the parquet, two data files."""
    h, w = size
    _native_meta(root, fps, size, "image", reward=True, robot_type="so100", video_path=None)
    pq.write_table(pa.table({"task_index": [0, 1], "__index_level_0__": ["pick the cube", "place it"]}),
                   root / "meta/tasks.parquet")
    rng = np.random.default_rng(0)
    rows, episodes, offset = [], [], 0
    for e, n in enumerate([5, 7]):
        state = rng.uniform(-0.9, 0.9, size=(n, 6)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        base = (xx * 4 + yy * 3 + np.arange(n)[:, None, None] * 5 + e * 40) % 200 + 20  # JPEG-friendly
        imgs = np.stack([base, base // 2 + 30, 255 - base], axis=-1).astype(np.uint8)
        frames = {
            "observation.state": pa.array(state.tolist(), pa.list_(pa.float32())),
            "action": pa.array((state + 1).tolist(), pa.list_(pa.float32())),
            "observation.images.top": pa.array(
                [{"bytes": cv2.imencode(".png", im[..., ::-1])[1].tobytes(), "path": None} for im in imgs],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "next.reward": pa.array(np.linspace(0, 1, n).astype(np.float32)),
            "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
            "index": pa.array(np.arange(offset, offset + n)), "task_index": pa.array(np.full(n, e)),
        }
        pq.write_table(pa.table(frames), root / f"data/chunk-000/file-{e:03d}.parquet")
        rows.append((state, imgs))
        tasks = ["pick the cube", "place it"][: tasks_per_episode] if tasks_per_episode > 1 else \
            [["pick the cube", "place it"][e]]
        episodes.append({"episode_index": e, "tasks": tasks, "length": n, "data/chunk_index": 0,
                         "data/file_index": e, "dataset_from_index": offset, "dataset_to_index": offset + n})
        offset += n
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    return rows


MAPPING = """
observation:
  state/joint_pos: {feature: observation.state, columns: [shoulder_pan, shoulder_lift, elbow_flex, wrist_flex,
                                                          wrist_roll, wrist_roll, wrist_roll]}
  state/gripper_width: {feature: observation.state, columns: [gripper], scale: 0.01}
  images/front: observation.images.top
zeros: [state/ee_pos, state/ee_quat, state/joint_vel, state/ee_wrench]
action: {feature: action, columns: [0, 1, 2, 3, 4, 5, 5], offset: -1.0}
reward: next.reward
source: human
"""


def _so100_spec(h=24, w=32, hz=10.0):
    from rig.spec import ActionSpec

    return RigSpec(name="so100", cameras=(CameraSpec("front", h, w),), action=ActionSpec(control_hz=hz))


def test_a_dataset_in_lerobots_own_layout_imports_under_a_declared_mapping(tmp_path):
    rows = _lerobot_native(tmp_path / "ds")
    (tmp_path / "map.yaml").write_text(MAPPING)
    (tmp_path / "spec.json").write_text(_so100_spec().to_json())
    assert main(["import-lerobot", str(tmp_path / "ds"), str(tmp_path / "s.zarr"), "--spec",
                 str(tmp_path / "spec.json"), "--map", str(tmp_path / "map.yaml")]) == 0
    s = EpisodeStore(tmp_path / "s.zarr")
    assert s.num_episodes == 2 and [len(s.episode(i)) for i in range(2)] == [5, 7]
    for i, (state, imgs) in enumerate(rows):
        ep = s.episode(i)
        np.testing.assert_array_equal(ep["state/joint_pos"][:, :5], state[:, :5])
        np.testing.assert_array_equal(ep["state/joint_pos"][:, 6], state[:, 4])
        np.testing.assert_allclose(ep["state/gripper_width"][:, 0], state[:, 5] * 0.01, rtol=1e-6)
        np.testing.assert_allclose(ep["action"][:, :6], state, atol=1e-6)
        assert not ep["state/ee_wrench"].any()
        assert np.abs(ep["images/front"].astype(int) - imgs.astype(int)).mean() < 6  # the store's JPEG
        np.testing.assert_allclose(ep["reward"], np.linspace(0, 1, len(state)), atol=1e-6)
    assert s.record(1).instruction == "place it" and s.record(0).source == "human"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(spec=_so100_spec(hz=15.0)), "fps 10 != the rig spec's control_hz 15"),
        (dict(spec=_so100_spec(h=48, w=64)), "images/front: 'observation.images.top' is 24x32"),
        (dict(mapping=MAPPING.replace("zeros: [state/ee_pos, ", "zeros: [")), r"\['state/ee_pos'\]"),
        (dict(mapping=MAPPING.replace("columns: [gripper]", "columns: [claw]")), "no column named 'claw'"),
        (dict(mapping=MAPPING.replace("[0, 1, 2, 3, 4, 5, 5]", "[0, 1, 2, 3, 4, 5]")), "maps 6 columns"),
        (dict(mapping=MAPPING.replace("reward: next.reward", "reward: next.rewards")), "no feature 'next.rewards'"),
        (dict(tasks=2), "has 2 tasks"),
        (dict(mapping=MAPPING.replace("offset: -1.0", "offset: 0.0")), r"action: mapped values reach 1\.8"),
        (dict(mapping=None), "not written by export-lerobot"),
    ],
)
def test_what_cannot_be_mapped_is_refused_before_writing(tmp_path, change, message):
    _lerobot_native(tmp_path / "ds", tasks_per_episode=change.get("tasks", 1))
    mapping = change.get("mapping", MAPPING)
    if mapping is not None:
        (tmp_path / "map.yaml").write_text(mapping)
    with pytest.raises(MappingError, match=message):
        import_lerobot(tmp_path / "ds", tmp_path / "s.zarr", spec=change.get("spec", _so100_spec()),
                       mapping=tmp_path / "map.yaml" if mapping is not None else None, progress=False)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.slow
def test_an_export_of_a_store_with_depth_imports_without_it(tmp_path):
    spec = small_spec(size=32, depth=True)
    with EpisodeStore(tmp_path / "s.zarr", "w", spec) as s:
        s.add_episode(make_episode(spec, 5), task="t", instruction="do t", success=True)
    export_lerobot(tmp_path / "s.zarr", tmp_path / "lr", vcodec="libx264", progress=False)
    import_lerobot(tmp_path / "lr", tmp_path / "back.zarr", progress=False)
    back = EpisodeStore(tmp_path / "back.zarr")
    assert not any(c.depth for c in back.spec.cameras) and back.spec.camera_names == spec.camera_names
    np.testing.assert_array_equal(back.episode(0)["action"], EpisodeStore(tmp_path / "s.zarr").episode(0)["action"])


@pytest.mark.slow
def test_video_episodes_spread_over_files_import_frame_exact(tmp_path):
    """LeRobot rotates video files: episodes 0 and 2 in file-000 (2 after 0), episode 1 alone in file-001."""
    from flywheel.data.lerobot import _VideoWriter

    root, fps, (h, w) = tmp_path / "ds", 10, (24, 32)
    _native_meta(root, fps, (h, w), "video", reward=False,
                 video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    pq.write_table(pa.table({"task_index": [0], "task": ["pick the cube"]}), root / "meta/tasks.parquet")
    lengths, where = [4, 6, 5], [(0, 0.0), (1, 0.0), (0, 0.4)]  # (video file, from_timestamp)
    frames = [np.full((n, h, w, 3), 40 + 60 * e, np.uint8) for e, n in enumerate(lengths)]
    vdir = root / "videos/observation.images.top/chunk-000"
    writers = {i: _VideoWriter(vdir / f"file-{i:03d}.mp4", w, h, fps, "libx264") for i in (0, 1)}
    for e in (0, 2, 1):  # file-000 holds episode 0 then episode 2
        writers[where[e][0]].write(frames[e])
    for wr in writers.values():
        wr.close()
    cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                             "episode_index", "index", "task_index")}
    episodes, offset = [], 0
    for e, n in enumerate(lengths):
        state = np.full((n, 6), 0.1 * e, np.float32)
        cols["observation.state"] += state.tolist()
        cols["action"] += state.tolist()
        cols["timestamp"] += (np.arange(n) / fps).tolist()
        cols["frame_index"] += list(range(n))
        cols["episode_index"] += [e] * n
        cols["index"] += list(range(offset, offset + n))
        cols["task_index"] += [0] * n
        vf, t0 = where[e]
        episodes.append({"episode_index": e, "tasks": ["pick the cube"], "length": n, "data/chunk_index": 0,
                         "data/file_index": 0, "dataset_from_index": offset, "dataset_to_index": offset + n,
                         "videos/observation.images.top/chunk_index": 0,
                         "videos/observation.images.top/file_index": vf,
                         "videos/observation.images.top/from_timestamp": t0,
                         "videos/observation.images.top/to_timestamp": t0 + n / fps})
        offset += n
    pq.write_table(pa.table({k: (pa.array(v, pa.list_(pa.float32())) if k in ("observation.state", "action")
                                 else pa.array(v, pa.float32() if k == "timestamp" else pa.int64()))
                             for k, v in cols.items()}), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    (tmp_path / "map.yaml").write_text(MAPPING.replace("reward: next.reward\n", ""))
    import_lerobot(root, tmp_path / "s.zarr", spec=_so100_spec(), mapping=tmp_path / "map.yaml", progress=False)
    s = EpisodeStore(tmp_path / "s.zarr")
    assert [len(s.episode(i)) for i in range(3)] == lengths
    for e in range(3):
        img = s.episode(e)["images/front"].astype(int)
        assert np.abs(img - (40 + 60 * e)).max() <= 6, e  # every frame from its own episode (H.264 + JPEG)
        np.testing.assert_allclose(s.episode(e)["state/joint_pos"][:, 0], 0.1 * e, atol=1e-6)
