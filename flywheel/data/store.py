"""The episode store: one crash-safe zarr v3 group holding every trajectory of the rig.

Layout (``PATH`` is a local directory or any fsspec URL zarr supports)::

    PATH/                         root attributes ``flywheel_store``: schema version, rig spec (JSON),
                                  image codec, and the commit record {num_episodes, num_steps}
      data/state/<name>           (T, ...) float32, Blosc-zstd, chunked along time (LOWDIM_CHUNK steps)
      data/images/<camera>        (T, H, W, 3) uint8, one JPEG (or JPEG-XL / PNG) image per chunk
      data/depth/<camera>         (T, H, W) uint16, Blosc-zstd, one image per chunk
      data/action                 (T, 7) float32, the spec's normalised action
      data/reward                 (T,) float32      per-step reward
      data/intervention           (T,) bool         True where a human had control
      data/timestamp              (T,) float64      measurement time of the step, s (epoch)
      meta/episode_ends           (E,) int64        cumulative step counts (diffusion_policy's ReplayBuffer)
      meta/episodes               (E,) str          one JSON record per episode (see EpisodeRecord)
      journal.jsonl               a redundant copy of the commit metadata (local stores; see journal.py)

Crash safety. Step data of a new episode is written beyond the committed end, ``meta/*``
rows beyond the committed count, then the journal line, then the commit record in the root
attributes is replaced in one atomic write (temporary file, rename). Readers trust only the
commit record, so a writer killed at any point leaves every committed episode readable; the
next writer truncates the uncommitted tail. Chunks shared with committed steps are
rewritten atomically too, so no torn chunk can damage committed data.

Damage is contained and named: a low-dimensional chunk spans ``LOWDIM_CHUNK`` steps (an image
chunk one step), so a damaged one costs only the episodes overlapping it; every read error names
the array, the episodes and the chunk file; ``flywheel-data check`` lists damaged episodes, and
``flywheel-data repair`` rebuilds damaged metadata from the journal and quarantines damaged
episodes (``EpisodeRecord.quarantined``: ``select()`` and iteration skip them).

One writer at a time (an exclusive ``flock`` on ``PATH.writer.lock`` for local
stores), any number of readers; readers call :meth:`EpisodeStore.refresh` to
see newly committed episodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from flywheel.data import journal
from flywheel.data.labels import apply_labels
from flywheel.data.store_layout import (
    ARRAY_CONFIG,
    IMAGE_FLUSH,
    LOWDIM_CHUNK,
    MAX_PENDING_IMAGES,
    META_FIELDS,
    ROOT_ATTR,
    SCHEMA_VERSION,
    SOURCES,
    STEP_KEYS,
    EpisodeRecord,
    StoreError,
    StoreLocked,
    WriterLock,
    check_meta,
    chunk_file,
    create_store,
    is_local,
    local_path,
    spec_arrays,
    store_exists,
)
from flywheel.data.store_writer import EpisodeWriter, truncate_uncommitted, write_episode
from rig.spec import ArraySpec, RigSpec, SpecError, check_compatible

log = logging.getLogger(__name__)

# names other modules import from here
_is_local, _local_path = is_local, local_path
__all__ = ["IMAGE_FLUSH", "LOWDIM_CHUNK", "MAX_PENDING_IMAGES", "SCHEMA_VERSION", "SOURCES", "STEP_KEYS",
           "Episode", "EpisodeRecord", "EpisodeStore", "EpisodeWriter", "StoreError", "StoreLocked"]


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
        if self.record.quarantined:  # its damaged chunks were overwritten with zeros: never train on them
            raise StoreError(f"{self.store.path}: episode {self.index} is quarantined ({self.record.quarantined})")
        return self.store.read(key, self.record.start, self.record.end)

    def to_dict(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return {k: self[k] for k in (keys or self.keys())}

    def __repr__(self) -> str:
        r = self.record
        return f"Episode({r.index}, task={r.task!r}, source={r.source}, success={r.success}, steps={len(self)})"


def _repair_hint(path: str) -> str:
    return f"run `flywheel-data check {path}` (and `flywheel-data repair {path}`)"


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
        self._lock = WriterLock(self.path)
        self._executor: ThreadPoolExecutor | None = None
        self._read_codecs: dict[str, Any] = {}
        self._local_root = str(local_path(path)) if is_local(path) else ""
        self._journal_root = self._local_root if mode != "r" else ""
        self._arrays: dict[str, Any] = {}
        self._writer: EpisodeWriter | None = None
        self._records: list[EpisodeRecord] = []
        self._ends = np.zeros(0, np.int64)
        self.num_steps = 0
        self._open(spec, image_codec, image_quality, lowdim_chunk, dict(extra_specs or {}))

    # ------------------------------------------------------------------ open
    def _open(self, spec, image_codec, image_quality, lowdim_chunk, extra_specs) -> None:
        from flywheel.data import codecs

        codecs.register()
        exists = self.mode != "w" and store_exists(self.path)
        if self.mode == "r" and not exists:
            raise StoreError(f"no episode store at {self.path} (create one with mode='a' or 'w')")
        if self.mode != "r":
            self._lock.acquire()
        try:
            if self.mode == "w" or not exists:
                if spec is None:
                    raise SpecError(f"creating the store {self.path} needs spec=RigSpec(...)")
                create_store(self.path, spec, image_codec, image_quality, lowdim_chunk, extra_specs)
            self.root = self._open_root()
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
                truncate_uncommitted(self)
                if self._journal_root:
                    journal.sync(self._journal_root, dict(info), self.array_names, self._records, self._raw_records)
        except BaseException:
            self._lock.release()
            raise

    def _open_root(self) -> Any:
        import zarr

        try:
            return zarr.open_group(self.path, mode="r" if self.mode == "r" else "r+")
        except Exception as e:  # noqa: BLE001 - a damaged zarr.json raises whatever its parser raises
            raise StoreError(f"{self.path}: the store's root metadata ({self.path}/zarr.json) does not read "
                             f"({type(e).__name__}: {e}); {_repair_hint(self.path)}") from e

    def _direct_codec(self, key: str) -> Any:
        """The image codec of ``key`` when its chunks can be written as plain local files."""
        if not is_local(self.path) or not key.startswith("images/"):
            return None
        from flywheel.data.codecs import codec_from_metadata

        return codec_from_metadata(self._array(key).metadata.codecs)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                                thread_name_prefix="store-encode")
        return self._executor

    # ---------------------------------------------------------------- access
    @property
    def keys(self) -> list[str]:
        """Every per-step array: observation keys, action, reward, intervention, timestamp, extras."""
        return [*spec_arrays(self.spec), *self.extra_specs]

    @property
    def array_specs(self) -> dict[str, ArraySpec]:
        return {**spec_arrays(self.spec), **self.extra_specs}

    @property
    def array_names(self) -> list[str]:
        """Every zarr array of the store, by its path under the root."""
        return [*(f"data/{k}" for k in self.keys), "meta/episode_ends", "meta/episodes"]

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
            self.root = self._open_root()
        commit = self.root.attrs[ROOT_ATTR]["commit"]
        n, t = int(commit["num_episodes"]), int(commit["num_steps"])
        if n == len(self._records) and t == self.num_steps:
            apply_labels(self.path, self._records)  # operators' reviews (flywheel.data.labels)
            return False
        if n < len(self._records):
            raise StoreError(f"{self.path}: committed episodes went from {len(self._records)} to {n}; "
                             "was the store replaced?")
        old = len(self._records)
        name = "meta/episode_ends"
        try:
            ends = np.asarray(zarr.open_array(self.path, path=name, mode="r")[:n], np.int64)
            name = "meta/episodes"
            texts = zarr.open_array(self.path, path=name, mode="r")[old:n] if n > old else []
            records = [EpisodeRecord.from_json(str(s)) for s in texts]
        except Exception as e:  # noqa: BLE001 - name the metadata that does not read
            raise StoreError(f"{self.path}: the episode metadata {name} ({self.path}/{name}) does not read "
                             f"({type(e).__name__}: {e}); {_repair_hint(self.path)}") from e
        if n and int(ends[-1]) != t:
            raise StoreError(f"{self.path}: episode_ends[-1]={int(ends[-1])} disagrees with the commit "
                             f"record ({t} steps); {_repair_hint(self.path)}")
        self._ends = ends
        self._records.extend(records)
        apply_labels(self.path, self._records)
        self.num_steps = t
        self._arrays.clear()
        return True

    def _array(self, key: str) -> Any:
        a = self._arrays.get(key)
        if a is None:
            import zarr

            if key not in self.array_specs:
                raise KeyError(f"{key!r} is not an array of this store; keys: {self.keys}")
            try:
                a = zarr.open_array(self.path, path=f"data/{key}", mode="r" if self.mode == "r" else "r+")
                a = a.with_config(ARRAY_CONFIG)  # open_array ignores a config argument
            except Exception as e:  # noqa: BLE001
                raise StoreError(f"{self.path}: the metadata of array data/{key} ({self.path}/data/{key}/zarr.json)"
                                 f" does not read ({type(e).__name__}: {e}); {_repair_hint(self.path)}") from e
            self._arrays[key] = a
        return a

    def episodes_at(self, start: int, end: int) -> list[int]:
        """Indices of the committed episodes that overlap steps [start, end)."""
        if end <= start:
            return []
        lo = int(np.searchsorted(self._ends, start, side="right"))
        hi = int(np.searchsorted(self._ends, end - 1, side="right"))
        return list(range(lo, min(hi, self.num_episodes - 1) + 1))

    def chunk_steps(self, key: str) -> int:
        """Steps per chunk of array ``key``."""
        return int(self._array(key).chunks[0])

    def chunk_files(self, key: str, start: int, end: int) -> list[tuple[int, str]]:
        """(chunk index, file) of the chunks holding steps [start, end) of ``key`` (local stores)."""
        c = self.chunk_steps(key)
        dims = len(self.array_specs[key].shape)
        return [(i, chunk_file(f"{self._local_root}/data", key, dims, i)) for i in range(start // c, (end - 1) // c + 1)]

    def read(self, key: str, start: int, end: int) -> np.ndarray:
        """Steps [start, end) of one array (committed steps only)."""
        if not 0 <= start <= end <= self.num_steps:
            raise IndexError(f"steps [{start}, {end}) outside the committed range [0, {self.num_steps})")
        if end > start and key.startswith("images/") and self._direct_codec(key) is not None:
            return np.stack([self.read_image(key, i) for i in range(start, end)])  # faster than zarr's pipeline
        arr = self._array(key)
        if end > start and self._local_root and self.info.get("every_chunk_written"):
            for _, f in self.chunk_files(key, start, end):  # zarr would read a missing chunk as zeros
                if not os.path.exists(f):
                    raise self._damage(key, start, end, f"its chunk file {f} is missing")
        try:
            return np.asarray(arr[start:end])
        except Exception as e:  # noqa: BLE001 - codec errors name no file: find it and say so
            raise self._damage(key, start, end, self._locate(key, start, end) or f"{type(e).__name__}: {e}") from e

    def _damage(self, key: str, start: int, end: int, what: str) -> StoreError:
        eps = self.episodes_at(start, end)
        return StoreError(f"{self.path}: data/{key}, steps [{start}, {end}) of episode(s) {eps[:10]}, does not "
                          f"read: {what}; {_repair_hint(self.path)}")

    def _locate(self, key: str, start: int, end: int) -> str:
        """Which chunk file of [start, end) does not decode, and why ('' if none is found)."""
        if not self._local_root:
            return ""
        arr, c = self._array(key), self.chunk_steps(key)
        for i, f in self.chunk_files(key, start, end):
            try:
                np.asarray(arr[i * c:min((i + 1) * c, self.num_steps)])
            except Exception as e:  # noqa: BLE001
                return f"chunk file {f} does not decode ({type(e).__name__}: {e})"
        return ""

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
                    data = fh.read()
            except FileNotFoundError:
                raise self._damage(key, step, step + 1, f"its image chunk {f} is missing") from None
            try:
                if codec.fmt == "jpeg" and not data.endswith(b"\xff\xd9"):  # libjpeg decodes a torn one
                    raise ValueError("a truncated JPEG (no end-of-image marker)")
                return codec.decode_image(data)
            except Exception as e:  # noqa: BLE001
                raise self._damage(key, step, step + 1, f"the image chunk {f} does not decode "
                                   f"({type(e).__name__}: {e})") from e
        return self.read(key, step, step + 1)[0]

    def record(self, i: int) -> EpisodeRecord:
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: the store has {self.num_episodes} committed episodes")
        return self._records[i]

    def episode(self, i: int) -> Episode:
        return Episode(self, self.record(i))

    def __getitem__(self, i: int) -> Episode:
        return self.episode(i)

    def __iter__(self) -> Iterator[Episode]:
        """Every committed episode but the quarantined ones."""
        for i in self.select():
            yield self.episode(i)

    def select(self, **filters: Any) -> list[int]:
        """Indices of committed episodes whose record matches every filter.

        A filter value may be a scalar (equality) or a list/tuple/set (membership);
        e.g. ``select(success=True, source=["human", "rl"], task="pick_cube")``.
        Quarantined episodes are left out unless a ``quarantined`` filter asks for them.
        """
        valid = set(META_FIELDS) | {"index", "quarantined"}
        unknown = sorted(set(filters) - valid)
        if unknown:
            raise ValueError(f"unknown filter {unknown}: filter on {sorted(valid)}")
        out = []
        for r in self._records:
            if r.quarantined and "quarantined" not in filters:
                continue
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
        if is_local(self.path):
            return sum(f.stat().st_size for f in local_path(self.path).rglob("*") if f.is_file())
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
        self._writer = EpisodeWriter(self, check_meta(meta))
        return self._writer

    def add_episode(self, arrays: Mapping[str, Any], **meta: Any) -> int:
        """Write a whole episode at once; ``arrays`` maps keys to (T, ...) arrays.

        Needs every observation key and ``action``; ``reward``, ``intervention`` and
        ``timestamp`` default to 0, False and 0.1 s steps from now. Returns the episode index.
        """
        self._check_writable()
        success = meta.pop("success", None)
        return write_episode(self, arrays, success, meta)

    def _raw_records(self) -> list[EpisodeRecord]:
        """The committed records as stored (without the label sidecar's reviews)."""
        return [EpisodeRecord.from_json(str(x)) for x in self.root["meta/episodes"][: self.num_episodes]]

    def quarantine(self, i: int, reason: str) -> None:
        """Set episode ``i`` aside (``select`` and iteration skip it); recorded in meta/episodes and the journal."""
        self._check_writable()
        i = self.record(i).index
        rec = EpisodeRecord.from_json(str(self.root["meta/episodes"][i]))
        rec.quarantined = self._records[i].quarantined = reason or "damaged"
        self.root["meta/episodes"][i] = rec.to_json()
        if self._journal_root:
            journal.append(self._journal_root, {"update": rec.to_dict()})

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
        self._lock.release()
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
            self._lock.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"EpisodeStore({self.path!r}, mode={self.mode!r}, episodes={self.num_episodes}, steps={self.num_steps})"
