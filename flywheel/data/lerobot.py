"""Export an episode store to the LeRobotDataset v3.0 layout, so the lab's data opens in LeRobot.

Layout written (``codebase_version = "v3.0"``)::

    OUT/meta/info.json                                 features, fps, counts, path templates
    OUT/meta/stats.json                                feature statistics (mean/std/min/max/q01..q99/count)
    OUT/meta/flywheel.json                             provenance: source store, episodes, rig spec, records
    OUT/meta/tasks.parquet                             task (the language instruction, the index) -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet       one row per episode: length, tasks, data and
                                                       video locations, per-episode stats/<feature>/<stat>
    OUT/data/chunk-000/file-000.parquet                one row per frame
    OUT/videos/observation.images.<camera>/chunk-000/file-000.mp4   all episodes back to back

Features: ``observation.state`` (every ``state/*`` key concatenated, named per
component), ``observation.images.<camera>`` (video), ``action``, ``next.reward``,
``next.done``, ``complementary_info.is_intervention`` and LeRobot's
``timestamp``/``frame_index``/``episode_index``/``index``/``task_index``.
Statistics are computed as LeRobot computes them (:func:`feature_stats`, a port of
``lerobot.datasets.compute_stats``): per episode for every feature (videos from a
subsample of frames, per channel, scaled to [0, 1]) and, in ``stats.json``, their
aggregate (:func:`aggregate_stats`), so LeRobot can append episodes (``resume``)
to an export. Provenance goes to the sidecar ``meta/flywheel.json``, which
LeRobot leaves alone (it rewrites ``info.json`` and would drop anything extra).
Videos are encoded with ffmpeg from imageio-ffmpeg (LeRobot's default:
SVT-AV1, yuv420p, GOP 2, CRF 30). Depth images are not exported. Everything
goes into file 000 of chunk 000 (LeRobot rotates files past 100 MB of data /
500 MB of video; a reader follows the per-episode indices either way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.export import start_export
from flywheel.data.store import EpisodeStore

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
PROVENANCE_PATH = "meta/flywheel.json"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_BINS = 5000
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


# ---------------------------------------------------------------- statistics (as LeRobot computes them)
def _sample_indices(n: int) -> np.ndarray:
    """LeRobot's ``sample_indices``: 100 frames up to ~500, then n ** 0.75, at most 10 000."""
    k = max(min(100, n), min(int(n ** 0.75), 10_000))
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def _downsample(img: np.ndarray) -> np.ndarray:
    """LeRobot's ``auto_downsample_height_width`` for (C, H, W) images of 300 px or more."""
    _, h, w = img.shape
    if max(h, w) < 300:
        return img
    f = int(w / 150) if w > h else int(h / 150)
    return img[:, ::f, ::f]


def _hist_quantiles(col: np.ndarray, quantiles: Sequence[float], weights: np.ndarray | None = None) -> list[float]:
    """LeRobot's histogram quantiles of one dimension: 5000 equal bins over [min - 1e-10, max + 1e-10].

    ``weights``: counts of each value of ``col`` (the 256 values of a uint8 channel: the same histogram).
    """
    present = col if weights is None else col[weights > 0]
    lo, hi = float(present.min()) - 1e-10, float(present.max()) + 1e-10
    try:
        hist, edges = np.histogram(col, bins=QUANTILE_BINS, range=(lo, hi), weights=weights)
    except ValueError:  # a (near) constant column: LeRobot's explicit edges, some of them equal
        edges = np.linspace(lo, hi, QUANTILE_BINS + 1)
        hist, _ = np.histogram(col, bins=edges, weights=weights)
    cum = np.cumsum(hist)
    n = len(col) if weights is None else float(weights.sum())
    out = []
    for q in quantiles:
        target = q * n
        i = int(np.searchsorted(cum, target))
        if i == 0:
            out.append(float(edges[0]))
        elif i >= len(cum):
            out.append(float(edges[-1]))
        elif cum[i] == cum[i - 1]:
            out.append(float(edges[i]))
        else:
            out.append(float(edges[i] + (target - cum[i - 1]) / (cum[i] - cum[i - 1]) * (edges[i + 1] - edges[i])))
    return out


def _uint8_channel_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """(N, C, H, W) uint8 -> per-channel stats from 256-value counts (exactly the per-pixel ones)."""
    vals = np.arange(256, dtype=np.float64)
    counts = np.stack([np.bincount(x[:, c].ravel(), minlength=256) for c in range(x.shape[1])]).astype(np.float64)
    n = counts.sum(1)
    mean = counts @ vals / n
    var = counts @ (vals ** 2) / n - mean ** 2
    out = {"min": np.array([vals[c > 0][0] for c in counts]), "max": np.array([vals[c > 0][-1] for c in counts]),
           "mean": mean, "std": np.sqrt(np.maximum(0, var)), "count": np.array([len(x)])}
    qs = np.array([_hist_quantiles(vals, QUANTILES, weights=c) for c in counts])
    for j, q in enumerate(QUANTILES):
        out[f"q{int(q * 100):02d}"] = qs[:, j]
    return out


def feature_stats(x: np.ndarray, *, image: bool = False) -> dict[str, np.ndarray]:
    """LeRobot's ``get_feature_stats``: min, max, mean, std, count and q01/q10/q50/q90/q99.

    ``x``: (N,) or (N, D) per-frame values (stats of shape (1,) or (D,), in the data's dtype for
    min/max), or (N, C, H, W) uint8 images (per channel, scaled to [0, 1], shape (C, 1, 1)).
    Quantiles come from a 5000-bin histogram, as LeRobot's ``RunningQuantileStats``. One
    difference: LeRobot squares uint8 pixels in uint8 (which wraps); here they are squared as floats.
    """
    x = np.asarray(x)
    if image and x.dtype == np.uint8:
        return {k: (v if k == "count" else v.reshape(-1, 1, 1) / 255.0) for k, v in _uint8_channel_stats(x).items()}
    if image:
        flat = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)
    else:
        flat = x.reshape(len(x), -1)
    count = np.array([len(x)])
    num = flat.astype(np.float64) if flat.dtype == bool else flat
    mean = np.mean(flat, axis=0)
    if len(flat) < 2:
        out = {"min": flat.min(0), "max": flat.max(0), "mean": mean, "std": np.std(flat, axis=0), "count": count}
        out.update({f"q{int(q * 100):02d}": mean.copy() for q in QUANTILES})
    else:
        mn, mx = flat.min(0), flat.max(0)
        var = np.mean(num ** 2, axis=0) - mean ** 2
        out = {"min": mn, "max": mx, "mean": mean, "std": np.sqrt(np.maximum(0, var)), "count": count}
        qs = np.array([_hist_quantiles(num[:, d], QUANTILES) for d in range(flat.shape[1])])  # (D, Q)
        for j, q in enumerate(QUANTILES):
            out[f"q{int(q * 100):02d}"] = qs[:, j]
    if image:
        return {k: (v if k == "count" else v.reshape(-1, 1, 1) / 255.0) for k, v in out.items()}
    return out


def image_feature_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of (N, H, W, C) uint8 frames from LeRobot's subsample of them."""
    idx = _sample_indices(len(frames))
    sample = np.stack([_downsample(np.ascontiguousarray(frames[i].transpose(2, 0, 1))) for i in idx])
    return feature_stats(sample, image=True)


def aggregate_stats(per_episode: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """LeRobot's ``aggregate_feature_stats``: count-weighted means, variances and quantiles."""
    means = np.stack([s["mean"] for s in per_episode])
    variances = np.stack([s["std"] ** 2 for s in per_episode])
    counts = np.stack([s["count"] for s in per_episode])
    total = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = np.expand_dims(counts, axis=-1)
    mean = (means * counts).sum(axis=0) / total
    var = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
    out = {"min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
           "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
           "mean": mean, "std": np.sqrt(var), "count": total}
    for q in (k for k in per_episode[0] if k.startswith("q") and k[1:].isdigit()):
        out[q] = (np.stack([s[q] for s in per_episode]) * counts).sum(axis=0) / total
    return out


def _stats_columns(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per-episode stats as the episodes parquet holds them: ``stats/<feature>/<stat>``, typed lists."""
    import pyarrow as pa

    cols = {}
    for feat, st in stats.items():
        for name, v in st.items():
            v = np.asarray(v)
            t = pa.from_numpy_dtype(v.dtype)
            for _ in range(v.ndim):
                t = pa.list_(t)
            cols[f"stats/{feat}/{name}"] = (v.tolist(), t)
    return cols


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
    store, out = start_export(store, out, overwrite)
    eps = store.select() if episodes is None else [int(e) for e in episodes]  # not the quarantined
    if not eps:
        raise ValueError(f"{store.path}: no episodes to export")
    spec = store.spec
    fps = int(round(spec.action.control_hz))
    if abs(fps - spec.action.control_hz) > 1e-6:
        raise ValueError(f"LeRobot needs an integer fps; the store's control_hz is {spec.action.control_hz}")
    cams = [k for k in spec.image_specs() if k.startswith("images/")]
    feats = _features(store, fps, vcodec)
    recs = [store.record(e) for e in eps]
    tasks = sorted({_task(r) for r in recs})
    task_index = {t: i for i, t in enumerate(tasks)}
    writers = {k: _VideoWriter(out / VIDEO_PATH.format(video_key=video_key(k), chunk_index=0, file_index=0),
                               spec.image_specs()[k].shape[1], spec.image_specs()[k].shape[0], fps, vcodec)
               for k in cams}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in feats if feats[k]["dtype"] != "video"}
    ep_rows: list[dict[str, Any]] = []
    ep_stats: list[dict[str, dict[str, np.ndarray]]] = []
    t0s: list[float] = []
    offset = 0
    try:
        for new_i, rec in enumerate(tqdm(recs, desc="export-lerobot", disable=not progress)):
            ep = store.episode(rec.index)
            n = len(ep)
            state = np.concatenate([ep[k].reshape(n, -1) for k in spec.state_specs()], axis=1)
            frame = {
                "observation.state": state.astype(np.float32),
                "action": ep["action"].astype(np.float32),
                "next.reward": ep["reward"].astype(np.float32).reshape(n, 1),
                "next.done": (np.arange(n) == n - 1).reshape(n, 1),
                "complementary_info.is_intervention": ep["intervention"].astype(bool).reshape(n, 1),
                "timestamp": np.arange(n) / fps,  # float64 in LeRobot's episode buffer, float32 in the data
                "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, new_i, np.int64),
                "index": np.arange(offset, offset + n, dtype=np.int64),
                "task_index": np.full(n, task_index[_task(rec)], np.int64),
            }
            t0s.append(float(ep["timestamp"][0]))
            stats = {k: feature_stats(v) for k, v in frame.items()}
            for k, v in frame.items():
                cols[k].append(v.astype(np.float32) if k == "timestamp" else v)
            row: dict[str, Any] = {
                "episode_index": new_i,
                "tasks": [_task(rec)],
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
                stats[vk] = image_feature_stats(frames)
                row.update({f"videos/{vk}/chunk_index": 0, f"videos/{vk}/file_index": 0,
                            f"videos/{vk}/from_timestamp": t0, f"videos/{vk}/to_timestamp": t0 + n / fps})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            ep_rows.append(row)
            ep_stats.append(stats)
            offset += n
    finally:
        for w in writers.values():
            w.close()

    # data
    table = {}
    for k, parts in cols.items():
        v = np.concatenate(parts)
        if v.ndim == 2 and feats[k]["shape"] == [1]:
            v = v[:, 0]
        table[k] = _fixed_list(v) if v.ndim == 2 else pa.array(v)
    data_path = out / DATA_PATH.format(chunk_index=0, file_index=0)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), data_path)
    # episodes: the rows plus every feature's per-episode stats as typed lists
    epath = out / EPISODES_PATH
    epath.parent.mkdir(parents=True, exist_ok=True)
    ep_table = pa.Table.from_pylist(ep_rows)
    stat_cols = [_stats_columns(st) for st in ep_stats]
    for name in stat_cols[0]:
        ep_table = ep_table.append_column(name, pa.array([c[name][0] for c in stat_cols], type=stat_cols[0][name][1]))
    pq.write_table(ep_table, epath)
    pq.write_table(_tasks_table(tasks), out / "meta/tasks.parquet")
    # stats.json: the aggregate of the episodes' stats, as LeRobot keeps it
    stats_all = {k: {s: np.asarray(v).tolist() for s, v in aggregate_stats([st[k] for st in ep_stats]).items()}
                 for k in ep_stats[0]}
    (out / "meta/stats.json").write_text(json.dumps(stats_all, indent=4))
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
    }
    (out / "meta/info.json").write_text(json.dumps(info, indent=4))
    provenance = {
        "exporter": "panda-flywheel flywheel-data export-lerobot",
        "source_store": store.path,
        "rig_spec": spec.to_dict(),
        "state_keys": {k: list(s.shape) for k, s in spec.state_specs().items()},
        "episodes": [{"lerobot_episode": i, "store_episode": r.index, "first_timestamp": t0s[i],
                      "record": {k: v for k, v in r.to_dict().items() if k not in ("index", "start", "end")}}
                     for i, r in enumerate(recs)],
    }
    (out / PROVENANCE_PATH).write_text(json.dumps(provenance, indent=2))
    return out


def _task(rec: Any) -> str:
    return rec.instruction or rec.task or "default"
