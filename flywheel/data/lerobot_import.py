"""``flywheel-data import-lerobot DIR STORE``: a LeRobotDataset v3.0 into the episode store.

What is read: ``meta/info.json`` (fps, features), ``meta/tasks.parquet``,
``meta/episodes/*/*.parquet`` (lengths, data and video locations), the frames
in ``data/*/*.parquet`` and the video frames of each episode (decoded with
imageio-ffmpeg's ffmpeg, from the episode's ``from_timestamp`` in its file), or
``image`` features stored in the parquet files.

How it maps onto the store is a :class:`LeRobotMapping`:

* a dataset written by ``export-lerobot`` carries ``meta/flywheel.json`` (the rig
  spec, how ``observation.state`` splits into ``state/*`` keys, the episode
  records and first timestamps): it maps back without being told anything;
* any other dataset needs the rig spec it is to be read as (``--spec``) and a
  mapping file (``--map``, YAML or JSON)::

      observation:                      # store key -> feature (+ columns by index or name, scale, offset)
        state/joint_pos: {feature: observation.state, columns: [0, 1, 2, 3, 4, 5, 6]}
        state/gripper_width: {feature: observation.state, columns: [gripper], scale: 0.08}
        images/front: {feature: observation.images.top}
      zeros: [state/ee_pos, state/ee_quat, state/joint_vel, state/ee_wrench]   # keys the dataset lacks
      action: {feature: action, columns: [0, 1, 2, 3, 4, 5, 6]}
      reward: next.reward                 # optional (else 0)
      intervention: complementary_info.is_intervention   # optional (else False)
      source: human                       # the episodes' source in the store

Everything that cannot be mapped is refused before anything is written, with
a message naming it: an fps other than the spec's ``control_hz``, a missing
feature or column, a store key neither mapped nor declared zero, images whose
size differs from the spec's camera, an action of the wrong width, an episode
with several tasks (the store holds one instruction per episode).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.lerobot import PROVENANCE_PATH, VIDEO_PATH
from flywheel.data.store import EpisodeStore
from rig.spec import RigSpec

log = logging.getLogger(__name__)


class MappingError(ValueError):
    """Something in the LeRobot dataset cannot be mapped onto the store."""


@dataclass
class Column:
    feature: str
    columns: list[int | str] | None = None
    scale: float | list[float] = 1.0
    offset: float | list[float] = 0.0

    @classmethod
    def parse(cls, v: Any, what: str) -> Column:
        if isinstance(v, str):
            return cls(v)
        if isinstance(v, Mapping) and "feature" in v:
            unknown = sorted(set(v) - {"feature", "columns", "scale", "offset"})
            if unknown:
                raise MappingError(f"{what}: unknown fields {unknown}")
            return cls(**dict(v))
        raise MappingError(f"{what}: expected a feature name or {{feature: ..., columns: [...]}}, got {v!r}")


@dataclass
class LeRobotMapping:
    spec: RigSpec
    observation: dict[str, Column]
    action: Column
    zeros: list[str] = field(default_factory=list)
    reward: str | None = None
    intervention: str | None = None
    source: str = "human"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], spec: RigSpec) -> LeRobotMapping:
        known = {"observation", "zeros", "action", "reward", "intervention", "source"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MappingError(f"mapping: unknown fields {unknown} (known: {sorted(known)})")
        if "action" not in d:
            raise MappingError("mapping: no 'action' (which feature holds the rig's action?)")
        obs = {k: Column.parse(v, f"observation.{k}") for k, v in dict(d.get("observation", {})).items()}
        return cls(spec, obs, Column.parse(d["action"], "action"), list(d.get("zeros", [])),
                   d.get("reward"), d.get("intervention"), d.get("source", "human"))

    @classmethod
    def load(cls, path: str | Path, spec: RigSpec) -> LeRobotMapping:
        p = Path(path)
        if p.suffix == ".json":
            return cls.from_dict(json.loads(p.read_text()), spec)
        import yaml

        return cls.from_dict(yaml.safe_load(p.read_text()) or {}, spec)

    @classmethod
    def from_provenance(cls, prov: Mapping[str, Any]) -> LeRobotMapping:
        """The mapping back of a dataset that ``export-lerobot`` wrote (depth is not exported: the spec
        comes back without it)."""
        import dataclasses

        spec = RigSpec.from_dict(prov["rig_spec"])
        if any(c.depth for c in spec.cameras):
            log.warning("the LeRobot export holds no depth images: importing with a spec without depth")
            spec = dataclasses.replace(spec, cameras=tuple(dataclasses.replace(c, depth=False) for c in spec.cameras))
        obs: dict[str, Column] = {}
        start = 0
        for key, shape in prov["state_keys"].items():
            n = int(np.prod(shape))
            obs[key] = Column("observation.state", list(range(start, start + n)))
            start += n
        for c in spec.camera_names:
            obs[f"images/{c}"] = Column(f"observation.images.{c}")
        return cls(spec, obs, Column("action"), [], "next.reward", "complementary_info.is_intervention")


# ----------------------------------------------------------------- reading a dataset
class LeRobotDataset:
    """The files of a LeRobotDataset v3.0 directory (no LeRobot needed)."""

    def __init__(self, root: str | Path) -> None:
        import pyarrow.parquet as pq

        self.root = Path(root)
        info_path = self.root / "meta/info.json"
        if not info_path.exists():
            raise MappingError(f"{self.root}: no meta/info.json (not a LeRobot dataset)")
        self.info = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise MappingError(f"{self.root}: codebase_version {version!r}; only LeRobotDataset v3.x is read "
                               "(convert older ones with LeRobot's convert_dataset_v21_to_v30)")
        self.features: dict[str, Any] = self.info["features"]
        self.fps = float(self.info["fps"])
        tasks = pq.read_table(self.root / "meta/tasks.parquet").to_pydict()
        names = tasks.get("task", tasks.get("__index_level_0__"))
        if names is None:
            raise MappingError(f"{self.root}/meta/tasks.parquet: no 'task' column")
        self.tasks = dict(zip(tasks["task_index"], names, strict=True))
        files = sorted((self.root / "meta/episodes").glob("*/*.parquet"))
        rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        self.episodes = sorted(rows, key=lambda r: r["episode_index"])
        data_files = sorted((self.root / "data").glob("*/*.parquet"))
        if not data_files:
            raise MappingError(f"{self.root}: no data/*/*.parquet")
        import pyarrow as pa

        self.data = pa.concat_tables([pq.read_table(f) for f in data_files]).sort_by("index")
        self._index = np.asarray(self.data.column("index"))
        prov = self.root / PROVENANCE_PATH
        self.provenance = json.loads(prov.read_text()) if prov.exists() else None

    def frames(self, ep: Mapping[str, Any]) -> Any:
        lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        i = int(np.searchsorted(self._index, lo))
        return self.data.slice(i, hi - lo)

    def video_path(self, key: str, ep: Mapping[str, Any]) -> Path:
        tmpl = self.info.get("video_path") or VIDEO_PATH
        return self.root / tmpl.format(video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                                       file_index=int(ep[f"videos/{key}/file_index"]))


def column(table: Any, feature: str) -> np.ndarray:
    """A parquet column as (N, D) or (N,) numpy."""
    col = table.column(feature).combine_chunks()
    import pyarrow as pa

    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        flat = np.asarray(col.flatten())
        return flat.reshape(len(col), -1)
    return np.asarray(col)


class _VideoReader:
    """Sequential frames of one video file, reopened if asked to go back."""

    def __init__(self, path: Path, height: int, width: int) -> None:
        self.path, self.h, self.w = path, height, width
        self._open()

    def _open(self) -> None:
        import imageio_ffmpeg

        self.gen: Iterator[bytes] = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
        meta = next(self.gen)
        if tuple(meta["size"]) != (self.w, self.h):
            raise MappingError(f"{self.path}: frames are {meta['size'][0]}x{meta['size'][1]}, "
                               f"the spec's camera is {self.w}x{self.h}")
        self.pos = 0

    def read(self, start: int, n: int) -> np.ndarray:
        if start < self.pos:
            self.gen.close()
            self._open()
        out = np.empty((n, self.h, self.w, 3), np.uint8)
        got = 0
        for buf in self.gen:
            self.pos += 1
            if self.pos - 1 < start:
                continue
            out[got] = np.frombuffer(buf, np.uint8).reshape(self.h, self.w, 3)
            got += 1
            if got == n:
                break
        if got < n:
            raise MappingError(f"{self.path}: {got} frames from frame {start}, the episode needs {n}")
        return out

    def close(self) -> None:
        self.gen.close()


# ---------------------------------------------------------------------- checking
def check_mapping(ds: LeRobotDataset, m: LeRobotMapping) -> None:
    """Refuse, naming it, whatever of ``ds`` cannot become an episode of a store with ``m.spec``."""
    spec = m.spec
    if abs(ds.fps - spec.action.control_hz) > 1e-6:
        raise MappingError(f"fps {ds.fps:g} != the rig spec's control_hz {spec.action.control_hz:g}: "
                           "declare a spec with control_hz equal to the dataset's fps")
    need = list(spec.observation_specs())
    unmapped = [k for k in need if k not in m.observation and k not in m.zeros]
    if unmapped:
        raise MappingError(f"store keys {unmapped} are neither mapped (observation:) nor declared zero (zeros:)")
    extra = sorted(set(m.observation) - set(need))
    if extra:
        raise MappingError(f"mapping names keys the rig spec lacks: {extra} (spec keys: {need})")
    zero_images = [k for k in m.zeros if not k.startswith("state/")]
    if zero_images:
        raise MappingError(f"only state keys can be zero-filled, not {zero_images}")
    specs = spec.observation_specs()
    for key, col in [*m.observation.items(), ("action", m.action)]:
        ft = ds.features.get(col.feature)
        if ft is None:
            raise MappingError(f"{key}: the dataset has no feature {col.feature!r} (it has {sorted(ds.features)})")
        if key.startswith(("images/", "depth/")):
            if ft["dtype"] not in ("video", "image"):
                raise MappingError(f"{key}: feature {col.feature!r} is {ft['dtype']}, not an image or video")
            h, w = specs[key].shape[:2]
            fh, fw = _image_hw(ft)
            if (fh, fw) != (h, w):
                raise MappingError(f"{key}: {col.feature!r} is {fh}x{fw}, the rig spec's camera is {h}x{w}")
            continue
        width = int(np.prod(specs[key].shape)) if key != "action" else spec.action.dim
        cols = _columns(col, ft, key)
        if len(cols) != width:
            raise MappingError(f"{key}: maps {len(cols)} columns of {col.feature!r}, the store key has {width}")
    for opt, name in ((m.reward, "reward"), (m.intervention, "intervention")):
        if opt is not None and opt not in ds.features:
            raise MappingError(f"{name}: the dataset has no feature {opt!r}")
    act = _affine(column(ds.data, m.action.feature).reshape(ds.data.num_rows, -1)[
        :, _columns(m.action, ds.features[m.action.feature], "action")], m.action)
    if act.size and (not np.all(np.isfinite(act)) or np.abs(act).max() > 1.0 + 1e-6):
        raise MappingError(f"action: mapped values reach {np.nanmax(np.abs(act)):.3g}; the rig's action is "
                           "normalised to [-1, 1]: give the action mapping a scale/offset")
    for ep in ds.episodes:
        if len(ep.get("tasks") or []) > 1:
            raise MappingError(f"episode {ep['episode_index']} has {len(ep['tasks'])} tasks {ep['tasks']}; "
                               "the store holds one instruction per episode")


def _image_hw(ft: Mapping[str, Any]) -> tuple[int, int]:
    names = ft.get("names") or ["height", "width", "channels"]
    shape = list(ft["shape"])
    if "channels" in names and names.index("channels") == 0:
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _columns(col: Column, ft: Mapping[str, Any], key: str) -> list[int]:
    width = int(np.prod(ft["shape"]))
    if col.columns is None:
        return list(range(width))
    names = ft.get("names")
    if isinstance(names, Mapping):  # LeRobot's older {"motors": [...]} form
        names = next(iter(names.values()), None)
    out = []
    for c in col.columns:
        if isinstance(c, str):
            if not names or c not in names:
                raise MappingError(f"{key}: {col.feature!r} has no column named {c!r} (names: {names})")
            c = list(names).index(c)
        if not 0 <= int(c) < width:
            raise MappingError(f"{key}: column {c} is past {col.feature!r}'s {width} columns")
        out.append(int(c))
    return out


# ---------------------------------------------------------------------- importing
def import_lerobot(
    src: str | Path, store: str | Path, *, spec: RigSpec | None = None, mapping: str | Path | None = None,
    progress: bool = True,
) -> list[int]:
    """Append every episode of the LeRobot dataset ``src`` to ``store``; returns the new episode indices."""
    from tqdm import tqdm

    ds = LeRobotDataset(src)
    if mapping is not None:
        if spec is None:
            raise MappingError("a mapping needs the rig spec it maps onto (--spec spec.json)")
        m = LeRobotMapping.load(mapping, spec)
    elif ds.provenance is not None:
        m = LeRobotMapping.from_provenance(ds.provenance)
        if spec is not None and spec != m.spec:
            from rig.spec import check_compatible

            check_compatible(spec, m.spec)
    else:
        raise MappingError(f"{src} was not written by export-lerobot (no {PROVENANCE_PATH}): give --spec and "
                           "--map (see flywheel/data/lerobot_import.py for the mapping format)")
    check_mapping(ds, m)
    prov_eps = {e["lerobot_episode"]: e for e in (ds.provenance or {}).get("episodes", [])}
    out = EpisodeStore(store, "a", m.spec)
    readers: dict[str, _VideoReader] = {}
    added = []
    try:
        for ep in tqdm(ds.episodes, desc="import-lerobot", disable=not progress):
            arrays = _episode_arrays(ds, m, ep, readers)
            p = prov_eps.get(int(ep["episode_index"]))
            if p is not None:
                arrays["timestamp"] = p["first_timestamp"] + arrays["timestamp"]
                meta = {k: v for k, v in p["record"].items()
                        if k not in ("quarantined", "started_at", "committed_at")}  # the store sets the times
            else:
                task = (ep.get("tasks") or [""])[0]
                meta = {"task": task, "instruction": task, "source": m.source,
                        "notes": f"imported from LeRobot dataset {Path(src).name}, episode {ep['episode_index']}"}
            success = meta.pop("success", None)
            added.append(out.add_episode(arrays, success=success, **meta))
    finally:
        for r in readers.values():
            r.close()
        out.close()
    return added


def _episode_arrays(ds: LeRobotDataset, m: LeRobotMapping, ep: Mapping[str, Any],
                    readers: dict[str, _VideoReader]) -> dict[str, np.ndarray]:
    spec = m.spec
    table = ds.frames(ep)
    n = int(ep["length"])
    if table.num_rows != n:
        raise MappingError(f"episode {ep['episode_index']}: {table.num_rows} frames in data/, length says {n}")
    specs = spec.observation_specs()
    arrays: dict[str, np.ndarray] = {}
    for key, col in m.observation.items():
        ft = ds.features[col.feature]
        if ft["dtype"] == "video":
            h, w = specs[key].shape[:2]
            path = ds.video_path(col.feature, ep)
            r = readers.get(col.feature)
            if r is None or r.path != path:
                if r is not None:
                    r.close()
                r = readers[col.feature] = _VideoReader(path, h, w)
            start = int(round(float(ep[f"videos/{col.feature}/from_timestamp"]) * ds.fps))
            arrays[key] = r.read(start, n)
        elif ft["dtype"] == "image":
            arrays[key] = np.stack([_decode_image(x) for x in table.column(col.feature).to_pylist()])
        else:
            arrays[key] = _affine(column(table, col.feature).reshape(n, -1)[:, _columns(col, ft, key)], col) \
                .reshape(n, *specs[key].shape).astype(np.float32)
    for key in m.zeros:
        arrays[key] = np.zeros((n, *specs[key].shape), np.float32)
    act_ft = ds.features[m.action.feature]
    arrays["action"] = _affine(column(table, m.action.feature).reshape(n, -1)[:, _columns(m.action, act_ft, "action")],
                               m.action).astype(np.float32)
    if m.reward:
        arrays["reward"] = column(table, m.reward).reshape(n).astype(np.float32)
    if m.intervention:
        arrays["intervention"] = column(table, m.intervention).reshape(n).astype(bool)
    arrays["timestamp"] = column(table, "timestamp").reshape(n).astype(np.float64) if "timestamp" in \
        table.column_names else np.arange(n) / ds.fps
    return arrays


def _affine(x: np.ndarray, col: Column) -> np.ndarray:
    return x.astype(np.float64) * np.asarray(col.scale, np.float64) + np.asarray(col.offset, np.float64)


def _decode_image(x: Any) -> np.ndarray:
    import cv2

    data = x["bytes"] if isinstance(x, Mapping) else x
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise MappingError("an image feature's bytes do not decode")
    return img[..., ::-1].copy()
