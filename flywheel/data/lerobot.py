"""Export an episode store to the LeRobotDataset v3.0 layout, so the lab's data opens in LeRobot.

Layout written (``codebase_version = "v3.0"``)::

    OUT/meta/info.json                                 features, fps, counts, path templates
    OUT/meta/stats.json                                feature statistics (mean/std/min/max/q01..q99/count)
    OUT/meta/tasks.parquet                             task (the language instruction, the index) -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet       one row per episode: length, tasks, data and
                                                       video locations, per-episode stats/<feature>/<stat>
    OUT/data/chunk-000/file-000.parquet                one row per frame
    OUT/videos/observation.images.<camera>/chunk-000/file-000.mp4   all episodes back to back

Features: ``observation.state`` (every ``state/*`` key concatenated, named per
component), ``observation.images.<camera>`` (video), ``action``, ``next.reward``,
``next.done``, ``complementary_info.is_intervention`` and LeRobot's
``timestamp``/``frame_index``/``episode_index``/``index``/``task_index``.
Videos are encoded with ffmpeg from imageio-ffmpeg (LeRobot's default:
SVT-AV1, yuv420p, GOP 2, CRF 30). Depth images are not exported. Everything
goes into file 000 of chunk 000 (LeRobot rotates files past 100 MB of data /
500 MB of video; a reader follows the per-episode indices either way).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.stats import array_stats, image_stats
from flywheel.data.store import EpisodeStore

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
VCODEC_OPTIONS = {
    "libsvtav1": (["-g", "2", "-crf", "30", "-preset", "12"], "av1"),
    "libx264": (["-g", "2", "-crf", "23", "-preset", "veryfast"], "h264"),
}


def _state_names(store: EpisodeStore) -> list[str]:
    names = []
    for k, s in store.spec.state_specs().items():
        short = k.split("/", 1)[1]
        n = int(np.prod(s.shape))
        names.extend([short] if n == 1 else [f"{short}.{i}" for i in range(n)])
    return names


def video_key(camera_key: str) -> str:
    """``images/front`` -> ``observation.images.front``."""
    return "observation." + camera_key.replace("/", ".")


def _features(store: EpisodeStore, fps: int, vcodec: str) -> dict[str, Any]:
    spec = store.spec
    feats: dict[str, Any] = {
        "observation.state": {"dtype": "float32", "shape": [len(_state_names(store))],
                              "names": _state_names(store)},
    }
    for k, s in spec.image_specs().items():
        if not k.startswith("images/"):
            continue
        h, w, c = s.shape
        feats[video_key(k)] = {
            "dtype": "video",
            "shape": [h, w, c],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h, "video.width": w, "video.codec": VCODEC_OPTIONS[vcodec][1],
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                "video.channels": c, "has_audio": False,
            },
        }
    feats["action"] = {"dtype": "float32", "shape": [spec.action.dim], "names": list(spec.action.names)}
    feats["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    feats["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    feats["complementary_info.is_intervention"] = {"dtype": "bool", "shape": [1], "names": None}
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": dt, "shape": [1], "names": None}
    return feats


def _fixed_list(x: np.ndarray) -> Any:
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _tasks_table(tasks: list[str]) -> Any:
    """tasks.parquet as pandas writes it: the task string is the index, ``task_index`` a column."""
    import pyarrow as pa

    meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())],
                       metadata={b"pandas": json.dumps(meta).encode()})
    return pa.table({"task_index": np.arange(len(tasks), dtype=np.int64), "task": tasks}, schema=schema)


class _VideoWriter:
    def __init__(self, path: Path, width: int, height: int, fps: int, vcodec: str) -> None:
        import imageio_ffmpeg

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
        path.parent.mkdir(parents=True, exist_ok=True)
        self.gen = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps, codec=vcodec, pix_fmt_out="yuv420p",
            macro_block_size=2, output_params=VCODEC_OPTIONS[vcodec][0], ffmpeg_log_level="error",
        )
        self.gen.send(None)
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        for f in frames:
            self.gen.send(np.ascontiguousarray(f))
            self.frames += 1

    def close(self) -> None:
        self.gen.close()


def export_lerobot(
    store: EpisodeStore | str,
    out: str | Path,
    *,
    episodes: Sequence[int] | None = None,
    vcodec: str = "libsvtav1",
    robot_type: str = "franka_panda",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the committed ``episodes`` (default: all) of ``store`` as a LeRobot v3.0 dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if vcodec not in VCODEC_OPTIONS:
        raise ValueError(f"unknown video codec {vcodec!r}: choose one of {list(VCODEC_OPTIONS)}")
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store, "r")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    eps = list(range(store.num_episodes)) if episodes is None else [int(e) for e in episodes]
    if not eps:
        raise ValueError(f"{store.path}: no episodes to export")
    spec = store.spec
    fps = int(round(spec.action.control_hz))
    if abs(fps - spec.action.control_hz) > 1e-6:
        raise ValueError(f"LeRobot needs an integer fps; the store's control_hz is {spec.action.control_hz}")
    cams = [k for k in spec.image_specs() if k.startswith("images/")]
    feats = _features(store, fps, vcodec)
    recs = [store.record(e) for e in eps]
    tasks = sorted({r.instruction or r.task or "default" for r in recs})
    task_index = {t: i for i, t in enumerate(tasks)}
    writers = {k: _VideoWriter(out / VIDEO_PATH.format(video_key=video_key(k), chunk_index=0, file_index=0),
                               spec.image_specs()[k].shape[1], spec.image_specs()[k].shape[0], fps, vcodec)
               for k in cams}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in feats if feats[k]["dtype"] != "video"}
    ep_rows: list[dict[str, Any]] = []
    img_samples: dict[str, list[np.ndarray]] = {k: [] for k in cams}
    offset = 0
    try:
        for new_i, rec in enumerate(tqdm(recs, desc="export-lerobot", disable=not progress)):
            ep = store.episode(rec.index)
            n = len(ep)
            state = np.concatenate([ep[k].reshape(n, -1) for k in spec.state_specs()], axis=1)
            frame = {
                "observation.state": state.astype(np.float32),
                "action": ep["action"],
                "next.reward": ep["reward"].astype(np.float32),
                "next.done": np.arange(n) == n - 1,
                "complementary_info.is_intervention": ep["intervention"].astype(bool),
                "timestamp": (np.arange(n) / fps).astype(np.float32),
                "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, new_i, np.int64),
                "index": np.arange(offset, offset + n, dtype=np.int64),
                "task_index": np.full(n, task_index[rec.instruction or rec.task or "default"], np.int64),
            }
            for k, v in frame.items():
                cols[k].append(v)
            row: dict[str, Any] = {
                "episode_index": new_i,
                "tasks": [rec.instruction or rec.task or "default"],
                "length": n,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": offset,
                "dataset_to_index": offset + n,
            }
            for k in cams:
                vk = video_key(k)
                t0 = writers[k].frames / fps
                frames = ep[k]
                writers[k].write(frames)
                img_samples[k].append(frames[:: max(1, n // 8)])
                row.update({f"videos/{vk}/chunk_index": 0, f"videos/{vk}/file_index": 0,
                            f"videos/{vk}/from_timestamp": t0, f"videos/{vk}/to_timestamp": t0 + n / fps})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            for k in ("observation.state", "action", "next.reward"):
                for s, v in array_stats(frame[k].reshape(n, -1)).items():
                    row[f"stats/{k}/{s}"] = np.asarray(v, np.float64).reshape(-1).tolist()
            for k in cams:
                for s, v in image_stats(img_samples[k][-1]).items():
                    row[f"stats/{video_key(k)}/{s}"] = np.asarray(v, np.float64).tolist()
            ep_rows.append(row)
            offset += n
    finally:
        for w in writers.values():
            w.close()

    # data
    table = {}
    for k, parts in cols.items():
        v = np.concatenate(parts)
        table[k] = _fixed_list(v) if v.ndim == 2 else pa.array(v)
    data_path = out / DATA_PATH.format(chunk_index=0, file_index=0)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), data_path)
    # episodes
    epath = out / EPISODES_PATH
    epath.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), epath)
    pq.write_table(_tasks_table(tasks), out / "meta/tasks.parquet")
    # stats over the whole export
    stats: dict[str, Any] = {}
    for k in ("observation.state", "action", "next.reward"):
        v = np.concatenate(cols[k]).reshape(offset, -1)
        stats[k] = {s: np.asarray(x).tolist() for s, x in array_stats(v).items()}
    for k in cams:
        stats[video_key(k)] = {s: np.asarray(x).tolist() for s, x in image_stats(np.concatenate(img_samples[k])).items()}
    (out / "meta/stats.json").write_text(json.dumps(stats, indent=2))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(recs),
        "total_frames": offset,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(recs)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cams else None,
        "features": feats,
        "flywheel": {"source_store": store.path, "source_episodes": [r.index for r in recs],
                     "rig_spec": spec.to_dict()},
    }
    (out / "meta/info.json").write_text(json.dumps(info, indent=4))
    return out
