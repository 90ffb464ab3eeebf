"""The episode store's layout: names on disk, episode records, creating a store, the writer lock.

See :mod:`flywheel.data.store` for the layout itself and its guarantees. This module
holds what the reader (:mod:`flywheel.data.store`), the writer
(:mod:`flywheel.data.store_writer`), the journal (:mod:`flywheel.data.journal`) and
the checker (:mod:`flywheel.data.integrity`) share; it imports zarr lazily.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rig.spec import ArraySpec, RigSpec, SpecError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ROOT_ATTR = "flywheel_store"
SOURCES = ("human", "policy", "rl")
STEP_KEYS = ("reward", "intervention", "timestamp")
# steps per chunk of low-dimensional arrays: a damaged chunk costs at most the episodes that overlap
# these steps (25.6 s at 10 Hz); see benchmarks/data_damage.py for the read/write cost of the size
LOWDIM_CHUNK = 256
IMAGE_FLUSH = 16  # images buffered per camera before they are written (zarr path: remote stores, depth)
MAX_PENDING_IMAGES = 64  # images being encoded at once (direct path) before add() waits
# zarr does not write a chunk that holds only the fill value; a store that says "every_chunk_written"
# was created with write_empty_chunks, so a missing low-dimensional chunk file is damage, not zeros
ARRAY_CONFIG = {"write_empty_chunks": True}
JOURNAL = "journal.jsonl"  # the redundant copy of the commit metadata (flywheel.data.journal)


class StoreError(RuntimeError):
    """The store cannot do what was asked (missing, locked, corrupt, disk full...)."""


class StoreLocked(StoreError):
    """Another writer holds the store."""


@dataclass
class EpisodeRecord:
    """What the store knows about one episode besides its step arrays."""

    index: int = -1
    start: int = 0  # first step (global index into data/*)
    end: int = 0  # one past the last step
    task: str = ""
    instruction: str = ""
    success: bool | None = None
    source: str = "human"  # human | policy | rl
    policy_version: str = ""
    rig_id: str = ""
    camera_ids: dict[str, str] = field(default_factory=dict)  # camera name -> serial / id
    calibration_id: str = ""
    notes: str = ""
    started_at: float = 0.0  # wall time, s since the epoch
    committed_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    quarantined: str = ""  # why `flywheel-data repair` set the episode aside ("" = healthy)

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> EpisodeRecord:
        return cls.from_dict(json.loads(text))


META_FIELDS = tuple(f.name for f in fields(EpisodeRecord) if f.name not in ("index", "start", "end", "quarantined"))


def check_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(meta) - set(META_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown episode metadata {unknown}: valid fields are {list(META_FIELDS)}; "
            "put anything else in extra={...}"
        )
    if "source" in meta and meta["source"] not in SOURCES:
        raise ValueError(f"episode source {meta['source']!r} must be one of {SOURCES}")
    if "success" in meta and meta["success"] is not None:
        meta = {**meta, "success": bool(meta["success"])}
    try:
        json.dumps({k: v for k, v in meta.items()})
    except TypeError as e:
        raise ValueError(f"episode metadata must be JSON-serialisable: {e}") from None
    return dict(meta)


def is_local(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


def local_path(path: str | os.PathLike) -> Path:
    s = str(path)
    return Path(s[len("file://") :] if s.startswith("file://") else s)


def store_exists(path: str) -> bool:
    """Whether a store is at ``path``; a local store whose root zarr.json is gone but whose journal is
    there raises (creating a store there would wipe what the journal can restore)."""
    if is_local(path):
        root = local_path(path)
        if not (root / "zarr.json").exists() and (root / JOURNAL).exists():
            raise StoreError(f"{path}: the store's root metadata {root}/zarr.json is missing but its journal is "
                             f"there; run `flywheel-data repair {path}`")
        return (root / "zarr.json").exists()
    import zarr

    try:
        zarr.open_group(path, mode="r")
        return True
    except Exception:  # noqa: BLE001
        return False


def chunk_file(root: str | os.PathLike, key: str, extra_dims: int, index: int) -> str:
    """The file of chunk ``index`` (along time) of array ``key`` (zarr v3 default chunk key encoding)."""
    return "/".join([str(root), key, "c", str(index), *["0"] * extra_dims])


def spec_arrays(spec: RigSpec) -> dict[str, ArraySpec]:
    return {
        **spec.observation_specs(),
        "action": spec.action_spec(),
        "reward": ArraySpec("reward", (), "float32", "1", "per-step reward"),
        "intervention": ArraySpec("intervention", (), "bool", "", "a human had control"),
        "timestamp": ArraySpec("timestamp", (), "float64", "s", "measurement time"),
    }


def create_store(path: str, spec: RigSpec, image_codec: str, image_quality: int | None, lowdim_chunk: int,
                 extra_specs: Mapping[str, ArraySpec]) -> None:
    """Create an empty store at ``path`` (replacing whatever is there)."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    from flywheel.data import codecs

    if lowdim_chunk < 1:
        raise ValueError(f"lowdim_chunk={lowdim_chunk}: give a positive number of steps per chunk")
    root = zarr.open_group(path, mode="w")
    # a CRC-32C per chunk: blosc stores small chunks uncompressed and reads a truncated one without error
    blosc = [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec()]
    img = codecs.image_codec(image_codec, image_quality)
    for key, s in {**spec_arrays(spec), **extra_specs}.items():
        shape = (0, *s.shape)
        if key.startswith("images/"):
            root.create_array(f"data/{key}", shape=shape, chunks=(1, *s.shape), dtype=s.dtype,
                              serializer=img, compressors=None, fill_value=0, config=ARRAY_CONFIG)
        elif key.startswith("depth/"):
            root.create_array(f"data/{key}", shape=shape, chunks=(1, *s.shape), dtype=s.dtype,
                              compressors=blosc, fill_value=0, config=ARRAY_CONFIG)
        else:
            root.create_array(f"data/{key}", shape=shape, chunks=(lowdim_chunk, *s.shape),
                              dtype=s.dtype, compressors=blosc, fill_value=0, config=ARRAY_CONFIG)
    root.create_array("meta/episode_ends", shape=(0,), chunks=(1024,), dtype="int64",
                      compressors=blosc, fill_value=0, config=ARRAY_CONFIG)
    root.create_array("meta/episodes", shape=(0,), chunks=(256,), dtype=str, compressors=[Crc32cCodec()],
                      config=ARRAY_CONFIG)
    root.attrs[ROOT_ATTR] = {
        "schema_version": SCHEMA_VERSION,
        "spec": spec.to_dict(),
        "image_codec": img.to_dict(),
        "extra_specs": {k: asdict(v) for k, v in extra_specs.items()},
        "created_at": time.time(),
        "every_chunk_written": True,
        "commit": {"num_episodes": 0, "num_steps": 0},
    }


def check_steps(s: ArraySpec, arr: np.ndarray, spec: RigSpec) -> None:
    """Check a (T, ...) column against its per-step spec."""
    if arr.shape[1:] != tuple(s.shape):
        raise SpecError(f"{s.key}: expected per-step shape {tuple(s.shape)}, got {arr.shape[1:]} "
                        f"(array of shape {arr.shape})")
    if arr.dtype != np.dtype(s.dtype):
        raise SpecError(f"{s.key}: expected dtype {s.dtype}, got {arr.dtype}")
    if arr.dtype.kind == "f" and s.key != "timestamp" and not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.all(np.isfinite(arr.reshape(len(arr), -1)), axis=1))
        raise SpecError(f"{s.key}: contains NaN or Inf at steps {bad[:10].tolist()}")
    if s.key == "action" and np.any(np.abs(arr) > 1.0 + 1e-6):
        raise SpecError(f"action: values outside [-1, 1] (max |a| = {float(np.abs(arr).max()):.3g}); "
                        "the spec's action is normalised, see ActionSpec.from_target")


class WriterLock:
    """The one-writer lock: an exclusive ``flock`` on ``PATH.writer.lock`` (local stores only)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        if not is_local(self.path):
            log.warning("no writer lock on remote store %s: make sure only one writer appends", self.path)
            return self
        p = local_path(self.path)
        lock = p.parent / (p.name + ".writer.lock")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
        except OSError as e:
            raise StoreError(f"cannot open the writer lock {lock}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise StoreLocked(
                f"episode store {self.path} is being written by another process ({holder or 'unknown'}); "
                "open it with mode='r' to read, or stop the other writer"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
