"""The episode store's writer: one episode's steps, buffered and written beyond the committed end.

Nothing of an episode is visible until :meth:`EpisodeWriter.commit` replaces the
commit record (see :mod:`flywheel.data.store` for the guarantees).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.data import journal
from flywheel.data.store_layout import (
    IMAGE_FLUSH,
    MAX_PENDING_IMAGES,
    STEP_KEYS,
    EpisodeRecord,
    StoreError,
    check_meta,
    check_steps,
    is_local,
    local_path,
)
from rig.spec import SpecError

if TYPE_CHECKING:
    from flywheel.data.store import EpisodeStore

log = logging.getLogger(__name__)


def write_episode(store: EpisodeStore, arrays: Mapping[str, Any], success: bool | None,
                  meta: dict[str, Any]) -> int:
    """:meth:`EpisodeStore.add_episode`: check whole (T, ...) columns, then write and commit them."""
    meta = check_meta(meta)
    specs = store.array_specs
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise SpecError(f"unknown keys {unknown}: this store holds {list(specs)}")
    required = [*store.spec.observation_specs(), "action", *store.extra_specs]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise SpecError(f"episode misses keys {missing} (rig spec {store.spec.name!r})")
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
        "timestamp": now + np.arange(n) / float(store.spec.action.control_hz),
    }
    cols = {k: np.asarray(arrays.get(k, defaults.get(k))) for k in specs}
    for k in STEP_KEYS:
        cols[k] = cols[k].astype(specs[k].dtype)
    for k, s in specs.items():
        check_steps(s, cols[k], store.spec)
    w = store.begin_episode(**meta)
    try:
        w._extend(cols)
        return w.commit(success=success)
    except BaseException:
        if not w.closed:
            w.abort()
        raise


def truncate_uncommitted(store: EpisodeStore) -> None:
    """Drop whatever a crashed writer left beyond the committed end."""
    n, t = store.num_episodes, store.num_steps
    dropped = False
    for key in store.keys:
        a = store._array(key)
        if a.shape[0] != t:
            dropped = dropped or a.shape[0] > t
            a.resize((t, *a.shape[1:]))
    for name, size in (("meta/episode_ends", n), ("meta/episodes", n)):
        a = store.root[name]
        if a.shape[0] != size:
            dropped = True
            a.resize((size,))
    # a crashed writer's image chunks (and their *.partial temporaries: a chunk is renamed into place before its
    # episode commits) lie at steps >= t only; one listing of each camera's chunk folder finds them, where a walk
    # of the whole store took minutes on a store of a few hundred thousand frames
    dropped = delete_chunks_beyond(store, t) or dropped
    if dropped:
        log.warning("%s: dropped the uncommitted tail a previous writer left behind", store.path)
    store._arrays.clear()


def delete_chunks_beyond(store: EpisodeStore, t: int) -> bool:
    """Remove image chunk files at steps >= t (left by an aborted or crashed writer); True if there were any."""
    if not is_local(store.path):
        return False
    import shutil

    dropped = False
    for key in store.image_keys:
        root = local_path(store.path) / "data" / key / "c"
        if root.is_dir():
            with os.scandir(root) as it:
                for d in it:
                    if d.name.isdigit() and int(d.name) >= t:
                        shutil.rmtree(d.path, ignore_errors=True)
                        dropped = True
    return dropped


def write_image_chunk(store: EpisodeStore, key: str, step: int, codec: Any, img: np.ndarray) -> None:
    """Encode one image and write its chunk file atomically (temporary file, then rename)."""
    data = codec.encode_image(img)
    path = local_path(store.path) / "data" / key / "c" / str(step) / "0" / "0" / "0"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
                fut = self.store._pool().submit(write_image_chunk, self.store, k, step, codec, img)
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
                    write_image_chunk(self.store, key[0], key[1], self._direct[key[0]], img)
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
        record_meta = {**self.meta, **check_meta(meta)}
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
            if store._journal_root:  # the redundant copy, before the commit point (see journal.py)
                journal.append(store._journal_root, journal.commit_entry(rec, n + 1, end))
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
            delete_chunks_beyond(self.store, self.store.num_steps)
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
