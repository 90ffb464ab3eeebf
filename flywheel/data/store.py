"""The episode store: one crash-safe zarr v3 group holding every trajectory of the rig.

Layout (``PATH`` is a local directory or any fsspec URL zarr supports)::

    PATH/                         root attributes ``flywheel_store``: schema version, rig spec (JSON),
                                  image codec, and the commit record {num_episodes, num_steps}
      data/state/<name>           (T, ...) float32, Blosc-zstd, chunked along time
      data/images/<camera>        (T, H, W, 3) uint8, one JPEG (or JPEG-XL / PNG) image per chunk
      data/depth/<camera>         (T, H, W) uint16, Blosc-zstd, one image per chunk
      data/action                 (T, 7) float32, the spec's normalised action
      data/reward                 (T,) float32      per-step reward
      data/intervention           (T,) bool         True where a human had control
      data/timestamp              (T,) float64      measurement time of the step, s (epoch)
      meta/episode_ends           (E,) int64        cumulative step counts (diffusion_policy's ReplayBuffer)
      meta/episodes               (E,) str          one JSON record per episode (see EpisodeRecord)

Crash safety. Step data of a new episode is written beyond the committed end;
``meta/*`` rows beyond the committed count; then the commit record in the root
attributes is replaced in one small atomic write (zarr's local store writes a
temporary file and renames it). Readers trust only the commit record, so a
writer killed at any point leaves every committed episode readable; the next
writer truncates the uncommitted tail. Chunks shared with committed steps are
rewritten atomically too, so no torn chunk can damage committed data.

One writer at a time (an exclusive ``flock`` on ``PATH.writer.lock`` for local
stores), any number of readers; readers call :meth:`EpisodeStore.refresh` to
see newly committed episodes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rig.spec import ArraySpec, RigSpec, SpecError, check_compatible

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ROOT_ATTR = "flywheel_store"
SOURCES = ("human", "policy", "rl")
STEP_KEYS = ("reward", "intervention", "timestamp")
LOWDIM_CHUNK = 4096  # steps per chunk of low-dimensional arrays
IMAGE_FLUSH = 16  # images buffered per camera before they are written (zarr path: remote stores, depth)
MAX_PENDING_IMAGES = 64  # images being encoded at once (direct path) before add() waits


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

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeRecord:
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


META_FIELDS = tuple(f.name for f in fields(EpisodeRecord) if f.name not in ("index", "start", "end"))


def _check_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
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


def _is_local(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


def _local_path(path: str | os.PathLike) -> Path:
    s = str(path)
    return Path(s[len("file://") :] if s.startswith("file://") else s)


class Episode:
    """One committed episode: its record and lazily read step arrays."""

    def __init__(self, store: EpisodeStore, record: EpisodeRecord) -> None:
        self.store = store
        self.record = record

    @property
    def index(self) -> int:
        return self.record.index

    def __len__(self) -> int:
        return self.record.length

    def keys(self) -> list[str]:
        return self.store.keys

    def __getitem__(self, key: str) -> np.ndarray:
        return self.store.read(key, self.record.start, self.record.end)

    def to_dict(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return {k: self[k] for k in (keys or self.keys())}

    def __repr__(self) -> str:
        r = self.record
        return f"Episode({r.index}, task={r.task!r}, source={r.source}, success={r.success}, steps={len(self)})"


class EpisodeStore:
    """A zarr v3 episode store. See the module docstring for the layout and guarantees.

    ``mode``: ``"r"`` read only; ``"a"`` append (creates the store if missing, which needs
    ``spec``); ``"w"`` create, replacing whatever is at ``path``. A given ``spec`` must agree
    with the store's saved spec (:func:`rig.spec.check_compatible`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str = "r",
        spec: RigSpec | None = None,
        *,
        image_codec: str = "jpeg",
        image_quality: int | None = None,
        lowdim_chunk: int = LOWDIM_CHUNK,
        extra_specs: Mapping[str, ArraySpec] | None = None,
    ) -> None:
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        self.path = str(path)
        self.mode = mode
        self._lock_fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._read_codecs: dict[str, Any] = {}
        self._local_root = str(_local_path(path)) if _is_local(path) else ""
        self._arrays: dict[str, Any] = {}
        self._writer: EpisodeWriter | None = None
        self._records: list[EpisodeRecord] = []
        self._ends = np.zeros(0, np.int64)
        self.num_steps = 0
        self._open(spec, image_codec, image_quality, lowdim_chunk, dict(extra_specs or {}))

    # ------------------------------------------------------------------ open
    def _open(self, spec, image_codec, image_quality, lowdim_chunk, extra_specs) -> None:
        import zarr

        from flywheel.data import codecs

        codecs.register()
        exists = self._exists()
        if self.mode == "r" and not exists:
            raise StoreError(f"no episode store at {self.path} (create one with mode='a' or 'w')")
        if self.mode != "r":
            self._acquire_lock()
        try:
            if self.mode == "w" or not exists:
                if spec is None:
                    raise SpecError(f"creating the store {self.path} needs spec=RigSpec(...)")
                self._create(spec, image_codec, image_quality, lowdim_chunk, extra_specs)
            self.root = zarr.open_group(self.path, mode="r" if self.mode == "r" else "r+")
            info = self.root.attrs.get(ROOT_ATTR)
            if info is None:
                raise StoreError(f"{self.path} is a zarr group but not a flywheel episode store")
            if int(info["schema_version"]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {info['schema_version']}, newer than this code "
                    f"({SCHEMA_VERSION}); update the flywheel package"
                )
            self.info = info
            self.spec = RigSpec.from_dict(info["spec"])
            if spec is not None:
                check_compatible(spec, self.spec, "writer" if self.mode != "r" else "reader",
                                 f"store {self.path}")
            self.extra_specs = {k: ArraySpec(**v) for k, v in info.get("extra_specs", {}).items()}
            self.refresh()
            if self.mode != "r":
                self._truncate_uncommitted()
        except BaseException:
            self._release_lock()
            raise

    def _exists(self) -> bool:
        if _is_local(self.path):
            return (_local_path(self.path) / "zarr.json").exists()
        import zarr

        try:
            zarr.open_group(self.path, mode="r")
            return True
        except Exception:
            return False

    def _create(self, spec, image_codec, image_quality, lowdim_chunk, extra_specs) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        from flywheel.data import codecs

        root = zarr.open_group(self.path, mode="w")
        blosc = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
        img = codecs.image_codec(image_codec, image_quality)
        for key, s in {**self._spec_arrays(spec), **extra_specs}.items():
            shape = (0, *s.shape)
            if key.startswith("images/"):
                root.create_array(f"data/{key}", shape=shape, chunks=(1, *s.shape), dtype=s.dtype,
                                  serializer=img, compressors=None, fill_value=0)
            elif key.startswith("depth/"):
                root.create_array(f"data/{key}", shape=shape, chunks=(1, *s.shape), dtype=s.dtype,
                                  compressors=[blosc], fill_value=0)
            else:
                root.create_array(f"data/{key}", shape=shape, chunks=(lowdim_chunk, *s.shape),
                                  dtype=s.dtype, compressors=[blosc], fill_value=0)
        root.create_array("meta/episode_ends", shape=(0,), chunks=(1024,), dtype="int64",
                          compressors=[blosc], fill_value=0)
        root.create_array("meta/episodes", shape=(0,), chunks=(256,), dtype=str)
        root.attrs[ROOT_ATTR] = {
            "schema_version": SCHEMA_VERSION,
            "spec": spec.to_dict(),
            "image_codec": img.to_dict(),
            "extra_specs": {k: asdict(v) for k, v in extra_specs.items()},
            "created_at": time.time(),
            "commit": {"num_episodes": 0, "num_steps": 0},
        }

    @staticmethod
    def _spec_arrays(spec: RigSpec) -> dict[str, ArraySpec]:
        return {
            **spec.observation_specs(),
            "action": spec.action_spec(),
            "reward": ArraySpec("reward", (), "float32", "1", "per-step reward"),
            "intervention": ArraySpec("intervention", (), "bool", "", "a human had control"),
            "timestamp": ArraySpec("timestamp", (), "float64", "s", "measurement time"),
        }

    def _acquire_lock(self) -> None:
        if not _is_local(self.path):
            log.warning("no writer lock on remote store %s: make sure only one writer appends", self.path)
            return
        p = _local_path(self.path)
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
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _truncate_uncommitted(self) -> None:
        """Drop whatever a crashed writer left beyond the committed end."""
        n, t = self.num_episodes, self.num_steps
        dropped = False
        for key in self.keys:
            a = self._array(key)
            if a.shape[0] != t:
                dropped = dropped or a.shape[0] > t
                a.resize((t, *a.shape[1:]))
        for name, size in (("meta/episode_ends", n), ("meta/episodes", n)):
            a = self.root[name]
            if a.shape[0] != size:
                dropped = True
                a.resize((size,))
        if _is_local(self.path):
            for tmp in _local_path(self.path).rglob("*.partial"):
                tmp.unlink(missing_ok=True)
                dropped = True
            self._delete_chunks_beyond(t)
        if dropped:
            log.warning("%s: dropped the uncommitted tail a previous writer left behind", self.path)
        self._arrays.clear()

    def _direct_codec(self, key: str) -> Any:
        """The image codec of ``key`` when its chunks can be written as plain local files."""
        if not _is_local(self.path) or not key.startswith("images/"):
            return None
        from flywheel.data.codecs import codec_from_metadata

        return codec_from_metadata(self._array(key).metadata.codecs)

    def _chunk_path(self, key: str, step: int) -> Path:
        return _local_path(self.path) / "data" / key / "c" / str(step) / "0" / "0" / "0"

    def _write_chunk(self, key: str, step: int, codec: Any, img: np.ndarray) -> None:
        """Encode one image and write its chunk file atomically (temporary file, then rename)."""
        data = codec.encode_image(img)
        path = self._chunk_path(key, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                                thread_name_prefix="store-encode")
        return self._executor

    def _delete_chunks_beyond(self, t: int) -> None:
        """Remove image chunk files at steps >= t (left by an aborted or crashed writer)."""
        if not _is_local(self.path):
            return
        import shutil

        for key in self.image_keys:
            root = _local_path(self.path) / "data" / key / "c"
            if root.is_dir():
                for d in root.iterdir():
                    if d.name.isdigit() and int(d.name) >= t:
                        shutil.rmtree(d, ignore_errors=True)

    # ---------------------------------------------------------------- access
    @property
    def keys(self) -> list[str]:
        """Every per-step array: observation keys, action, reward, intervention, timestamp, extras."""
        return [*self._spec_arrays(self.spec), *self.extra_specs]

    @property
    def array_specs(self) -> dict[str, ArraySpec]:
        return {**self._spec_arrays(self.spec), **self.extra_specs}

    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.keys if k.startswith(("images/", "depth/"))]

    @property
    def num_episodes(self) -> int:
        return len(self._records)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def records(self) -> list[EpisodeRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return self.num_episodes

    def refresh(self) -> bool:
        """Re-read the commit record; True if new episodes became visible."""
        import zarr

        if self.mode == "r":
            self.root = zarr.open_group(self.path, mode="r")
        commit = self.root.attrs[ROOT_ATTR]["commit"]
        n, t = int(commit["num_episodes"]), int(commit["num_steps"])
        if n == len(self._records) and t == self.num_steps:
            return False
        if n < len(self._records):
            raise StoreError(f"{self.path}: committed episodes went from {len(self._records)} to {n}; "
                             "was the store replaced?")
        ends_arr = zarr.open_array(self.path, path="meta/episode_ends", mode="r")
        recs_arr = zarr.open_array(self.path, path="meta/episodes", mode="r")
        old = len(self._records)
        ends = np.asarray(ends_arr[:n], np.int64)
        texts = recs_arr[old:n] if n > old else []
        if n and int(ends[-1]) != t:
            raise StoreError(f"{self.path}: episode_ends[-1]={int(ends[-1])} disagrees with the commit "
                             f"record ({t} steps); run `flywheel-data check {self.path}`")
        self._ends = ends
        self._records.extend(EpisodeRecord.from_json(str(s)) for s in texts)
        self.num_steps = t
        self._arrays.clear()
        return True

    def _array(self, key: str) -> Any:
        a = self._arrays.get(key)
        if a is None:
            import zarr

            if key not in self.array_specs:
                raise KeyError(f"{key!r} is not an array of this store; keys: {self.keys}")
            a = zarr.open_array(self.path, path=f"data/{key}", mode="r" if self.mode == "r" else "r+")
            self._arrays[key] = a
        return a

    def read(self, key: str, start: int, end: int) -> np.ndarray:
        """Steps [start, end) of one array (committed steps only)."""
        if not 0 <= start <= end <= self.num_steps:
            raise IndexError(f"steps [{start}, {end}) outside the committed range [0, {self.num_steps})")
        if end > start and key.startswith("images/") and self._direct_codec(key) is not None:
            return np.stack([self.read_image(key, i) for i in range(start, end)])  # faster than zarr's pipeline
        return np.asarray(self._array(key)[start:end])

    def read_image(self, key: str, step: int) -> np.ndarray:
        """One image by global step index; decodes the chunk file directly when the store is local."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside the committed range [0, {self.num_steps})")
        codec = self._read_codecs.get(key, False)
        if codec is False:
            codec = self._read_codecs[key] = self._direct_codec(key)
        if codec is not None:
            f = f"{self._local_root}/data/{key}/c/{step}/0/0/0"  # str, not pathlib: this is the hot path
            try:
                with open(f, "rb") as fh:
                    return codec.decode_image(fh.read())
            except FileNotFoundError:
                raise StoreError(f"{self.path}: the image chunk of committed step {step} of {key} is missing "
                                 f"({f}); run `flywheel-data check {self.path}`") from None
        return np.asarray(self._array(key)[step])

    def record(self, i: int) -> EpisodeRecord:
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: the store has {self.num_episodes} committed episodes")
        return self._records[i]

    def episode(self, i: int) -> Episode:
        return Episode(self, self.record(i))

    def __getitem__(self, i: int) -> Episode:
        return self.episode(i)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.episode(i)

    def select(self, **filters: Any) -> list[int]:
        """Indices of committed episodes whose record matches every filter.

        A filter value may be a scalar (equality) or a list/tuple/set (membership);
        e.g. ``select(success=True, source=["human", "rl"], task="pick_cube")``.
        """
        valid = set(META_FIELDS) | {"index"}
        unknown = sorted(set(filters) - valid)
        if unknown:
            raise ValueError(f"unknown filter {unknown}: filter on {sorted(valid)}")
        out = []
        for r in self._records:
            ok = True
            for k, want in filters.items():
                have = getattr(r, k)
                if isinstance(want, (list, tuple, set, frozenset)):
                    ok = have in want
                else:
                    ok = have == want
                if not ok:
                    break
            if ok:
                out.append(r.index)
        return out

    def episodes(self, **filters: Any) -> list[Episode]:
        return [self.episode(i) for i in self.select(**filters)]

    def nbytes_stored(self) -> int:
        """Bytes on disk (local stores) or the sum of stored objects."""
        if _is_local(self.path):
            return sum(f.stat().st_size for f in _local_path(self.path).rglob("*") if f.is_file())
        return int(sum(self._array(k).nbytes_stored() for k in self.keys))

    def nbytes_raw(self) -> int:
        return int(sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize
                       for s in self.array_specs.values()) * self.num_steps)

    # --------------------------------------------------------------- writing
    def begin_episode(self, **meta: Any) -> EpisodeWriter:
        """Start an episode; nothing of it is visible until :meth:`EpisodeWriter.commit`."""
        self._check_writable()
        if self._writer is not None and not self._writer.closed:
            raise StoreError("an episode is already being written: commit() or abort() it first")
        self._writer = EpisodeWriter(self, _check_meta(meta))
        return self._writer

    def add_episode(self, arrays: Mapping[str, Any], **meta: Any) -> int:
        """Write a whole episode at once; ``arrays`` maps keys to (T, ...) arrays.

        Needs every observation key and ``action``; ``reward``, ``intervention`` and
        ``timestamp`` default to 0, False and 0.1 s steps from now. Returns the episode index.
        """
        self._check_writable()
        success = meta.pop("success", None)
        meta = _check_meta(meta)
        specs = self.array_specs
        unknown = sorted(set(arrays) - set(specs))
        if unknown:
            raise SpecError(f"unknown keys {unknown}: this store holds {list(specs)}")
        required = [*self.spec.observation_specs(), "action", *self.extra_specs]
        missing = [k for k in required if k not in arrays]
        if missing:
            raise SpecError(f"episode misses keys {missing} (rig spec {self.spec.name!r})")
        lengths = {k: len(np.asarray(v)) for k, v in arrays.items()}
        n = lengths["action"]
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise SpecError(f"arrays disagree on the episode length: action has {n} steps, {bad}")
        if n == 0:
            raise SpecError("an episode needs at least one step")
        now = time.time()
        defaults = {
            "reward": np.zeros(n, np.float32),
            "intervention": np.zeros(n, bool),
            "timestamp": now + np.arange(n) / float(self.spec.action.control_hz),
        }
        cols = {k: np.asarray(arrays.get(k, defaults.get(k))) for k in specs}
        for k in STEP_KEYS:
            cols[k] = cols[k].astype(specs[k].dtype)
        for k, s in specs.items():
            _check_steps(s, cols[k], self.spec)
        w = self.begin_episode(**meta)
        try:
            w._extend(cols)
            return w.commit(success=success)
        except BaseException:
            if not w.closed:
                w.abort()
            raise

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to write")
        if getattr(self, "root", None) is None:
            raise StoreError(f"{self.path} is closed")

    def _write_commit(self, n: int, t: int) -> None:
        info = dict(self.root.attrs[ROOT_ATTR])
        info["commit"] = {"num_episodes": n, "num_steps": t}
        self.root.attrs[ROOT_ATTR] = info  # one atomic rewrite of the root zarr.json

    # -------------------------------------------------------------- closing
    def close(self) -> None:
        if self._writer is not None and not self._writer.closed:
            log.warning("%s: closing with an uncommitted episode; it is dropped", self.path)
            self._writer.abort()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._release_lock()
        self._arrays.clear()
        self.root = None

    def __reduce__(self) -> tuple:
        """Pickled (e.g. to spawned loader workers), a store reopens read-only at the same path."""
        return (EpisodeStore, (self.path, "r"))

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._release_lock()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"EpisodeStore({self.path!r}, mode={self.mode!r}, episodes={self.num_episodes}, steps={self.num_steps})"


def _check_steps(s: ArraySpec, arr: np.ndarray, spec: RigSpec) -> None:
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


def _done_future() -> Future:
    f: Future = Future()
    f.set_exception(OSError("image write pending a retry"))
    return f


class EpisodeWriter:
    """Appends steps of one episode; images are encoded and written as they come in.

    Low-dimensional steps are buffered in memory and written at :meth:`commit`;
    images are encoded and written beyond the committed end as they come (local stores:
    on a thread pool, at most ``MAX_PENDING_IMAGES`` in flight; otherwise through zarr
    every ``IMAGE_FLUSH`` frames).
    """

    def __init__(self, store: EpisodeStore, meta: dict[str, Any]) -> None:
        self.store = store
        self.meta = meta
        self.start = store.num_steps
        self.started_at = time.time()
        self.closed = False
        specs = store.array_specs
        self._image_keys = [k for k in specs if k.startswith(("images/", "depth/"))]
        self._lowdim_keys = [k for k in specs if k not in self._image_keys]
        self._low: dict[str, list[np.ndarray]] = {k: [] for k in self._lowdim_keys}
        self._img: dict[str, list[np.ndarray]] = {k: [] for k in self._image_keys}
        self._img_written: dict[str, int] = dict.fromkeys(self._image_keys, 0)
        # local stores: JPEG/PNG chunks are encoded on a thread pool and written straight to their
        # chunk files (atomically, as zarr does), ~3x faster than zarr's per-chunk pipeline
        self._direct = {k: c for k in self._image_keys if (c := store._direct_codec(k)) is not None}
        self._jobs: dict[tuple[str, int], tuple[np.ndarray, Future]] = {}
        self.num_steps = 0

    # ------------------------------------------------------------------ add
    def add(
        self,
        obs: Mapping[str, Any],
        action: Any,
        reward: float = 0.0,
        intervention: bool = False,
        timestamp: float | None = None,
        **extras: Any,
    ) -> None:
        """Append one step.

        Bad input raises SpecError and leaves the episode as it was. A failed write (disk
        full, permissions) raises StoreError but keeps the step in memory: fix the cause and
        go on; :meth:`commit` writes whatever is still pending.
        """
        self._check_open()
        store = self.store
        obs_specs = store.spec.observation_specs()
        unknown = sorted(set(obs) - set(obs_specs))
        if unknown:
            raise SpecError(f"observation keys {unknown} are not in the rig spec {store.spec.name!r} "
                            f"(expected {list(obs_specs)})")
        store.spec.check_observation(obs)
        a = np.asarray(action)
        store.spec.action_spec().check(a)
        if np.any(np.abs(a) > 1.0 + 1e-6):
            raise SpecError(f"action: values outside [-1, 1]: {a.tolist()}")
        missing_extra = [k for k in store.extra_specs if k not in extras]
        unknown_extra = sorted(set(extras) - set(store.extra_specs))
        if missing_extra or unknown_extra:
            raise SpecError(f"extra step arrays: missing {missing_extra}, unknown {unknown_extra}")
        for k, v in extras.items():
            store.extra_specs[k].check(v)
        if not np.isfinite(reward):
            raise SpecError(f"reward: must be finite, got {reward}")
        step = {
            **{k: np.array(v, copy=True) for k, v in obs.items()},
            "action": np.array(a, copy=True),
            "reward": np.float32(reward),
            "intervention": np.bool_(intervention),
            "timestamp": np.float64(time.time() if timestamp is None else timestamp),
            **{k: np.array(v, copy=True) for k, v in extras.items()},
        }
        for k in self._lowdim_keys:
            self._low[k].append(step[k])
        for k in self._image_keys:
            self._img[k].append(step[k])
        self.num_steps += 1
        self._flush_images(force=False)

    def set_reward(self, step: int, reward: float) -> None:
        """Change the reward of a step not yet committed (e.g. the success reward of the last step)."""
        self._check_open()
        if not -self.num_steps <= step < self.num_steps:
            raise IndexError(f"step {step} outside this episode's {self.num_steps} steps")
        self._low["reward"][step] = np.float32(reward)

    def _extend(self, cols: Mapping[str, np.ndarray]) -> None:
        """Append checked (T, ...) columns (used by add_episode)."""
        n = len(cols["action"])
        for k in self._lowdim_keys:
            self._low[k].extend(list(cols[k]))
        for k in self._image_keys:
            self._img[k].extend(list(cols[k]))
        self.num_steps += n
        self._flush_images(force=False)

    def _flush_images(self, force: bool = True) -> None:
        """Hand buffered images to the encoders; ``force`` waits until every image is on disk."""
        for k, codec in self._direct.items():
            for img in self._img[k]:
                step = self.start + self._img_written[k]
                fut = self.store._pool().submit(self.store._write_chunk, k, step, codec, img)
                self._jobs[(k, step)] = (img, fut)
                self._img_written[k] += 1
            self._img[k] = []
        self._wait_jobs(0 if force else MAX_PENDING_IMAGES)
        for k in self._image_keys:
            frames = self._img[k]
            if k in self._direct or not frames or (not force and len(frames) < IMAGE_FLUSH):
                continue
            arr = self.store._array(k)
            lo = self.start + self._img_written[k]
            hi = lo + len(frames)
            try:
                if arr.shape[0] < hi:
                    arr.resize((hi, *arr.shape[1:]))
                arr[lo:hi] = np.stack(frames)
            except OSError as e:
                raise StoreError(self._io_message(e)) from e
            self._img_written[k] += len(frames)
            self._img[k] = []

    def _wait_jobs(self, keep: int) -> None:
        """Wait until at most ``keep`` image writes are in flight; failed ones are retried once
        here and otherwise kept (with their image) for the next call, and raise StoreError."""
        error: OSError | None = None
        for key in list(self._jobs):  # oldest first
            img, fut = self._jobs[key]
            if not fut.done() and len(self._jobs) <= keep:
                continue  # still encoding, and within the in-flight budget
            try:
                fut.result()
                del self._jobs[key]
            except OSError:
                try:  # one synchronous retry (the cause may be gone)
                    self.store._write_chunk(key[0], key[1], self._direct[key[0]], img)
                    del self._jobs[key]
                except OSError as e:
                    error = e
                    self._jobs[key] = (img, _done_future())
        if error is not None:
            raise StoreError(self._io_message(error)) from error

    def _io_message(self, e: OSError) -> str:
        return (f"writing episode {self.store.num_episodes} to {self.store.path} failed: {e}. "
                f"Nothing of this episode was committed; the store still holds {self.store.num_episodes} "
                "committed episodes. Free space / fix permissions and call commit() again, or abort().")

    # --------------------------------------------------------------- commit
    def commit(self, success: bool | None = None, **meta: Any) -> int:
        """Write the rest of the episode and make it visible in one atomic step; returns its index."""
        self._check_open()
        if self.num_steps == 0:
            raise StoreError("cannot commit an empty episode (add steps first, or abort())")
        store = self.store
        record_meta = {**self.meta, **_check_meta(meta)}
        if success is not None:
            record_meta["success"] = bool(success)
        n, end = store.num_episodes, self.start + self.num_steps
        rec = EpisodeRecord(index=n, start=self.start, end=end, started_at=self.started_at,
                            committed_at=time.time(), **record_meta)
        try:
            self._flush_images()
            for k in self._direct:  # their chunks are on disk: publish the array's new length
                arr = store._array(k)
                if arr.shape[0] < end:
                    arr.resize((end, *arr.shape[1:]))
            for k in self._lowdim_keys:
                arr = store._array(k)
                if arr.shape[0] < end:
                    arr.resize((end, *arr.shape[1:]))
                arr[self.start:end] = np.stack(self._low[k])
            ends = store.root["meta/episode_ends"]
            recs = store.root["meta/episodes"]
            ends.resize((n + 1,))
            ends[n] = end
            recs.resize((n + 1,))
            recs[n] = rec.to_json()
            store._write_commit(n + 1, end)  # the commit point
        except OSError as e:
            raise StoreError(self._io_message(e)) from e
        self.closed = True
        store._records.append(rec)
        store._ends = np.append(store._ends, np.int64(end))
        store.num_steps = end
        return n

    def abort(self) -> None:
        """Drop the episode; what was written beyond the committed end is truncated."""
        if self.closed:
            return
        self.closed = True
        for _, fut in self._jobs.values():
            try:
                fut.result()
            except OSError:
                pass
        self._jobs.clear()
        try:
            for k in self._image_keys:
                arr = self.store._array(k)
                if arr.shape[0] > self.store.num_steps:
                    arr.resize((self.store.num_steps, *arr.shape[1:]))
            self.store._delete_chunks_beyond(self.store.num_steps)
        except OSError as e:  # the next writer truncates
            log.warning("%s: could not truncate the aborted episode: %s", self.store.path, e)

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("this episode was already committed or aborted; begin_episode() a new one")

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if not self.closed:
            self.abort()
