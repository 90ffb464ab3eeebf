"""The one store-to-training path: torch datasets of observation / action-chunk windows over an episode store.

One sample per committed step ``t`` of the selected episodes (as LeRobot and
diffusion_policy sample; every ``frame_stride``-th step with cached features):

* ``<key>`` for each observation key, under the spec's own name (``images/front``,
  ``state/ee_pos``, ...): with ``n_obs_steps=1`` (the default, what the policies take)
  the step ``t`` itself, (B, *shape); with ``n_obs_steps > 1`` steps
  ``t - n_obs_steps + 1 .. t``, (B, n_obs, *shape), steps before the episode's first
  repeating the first (padding at the start). Images are uint8 channels-last
  (H, W, C), as the store and the rig give them (depth: (H, W, 1));
* ``actions``: steps ``t .. t + horizon - 1``; steps past the episode's end repeat
  the last action and are flagged in ``action_is_pad`` (padding at the end);
* ``reward``, ``intervention``, ``done`` (last step of the episode), ``index``
  (global step), ``episode_index``, ``task_index`` at ``t``; ``instruction`` (a
  list of strings in a batch: the episode's instruction, else its task).

Three ways to get the images, with the same batches:

* streaming (the default): low-dimensional arrays are read into memory once (they
  are small); images are decoded straight from their JPEG chunk files and kept in an
  LRU cache of decoded frames (per process). ``decode_threads`` decodes a batch's
  images on a thread pool (libjpeg-turbo releases the GIL): on few cores,
  ``num_workers=0`` with ``decode_threads=2`` avoids worker processes' copies and split caches;
* ``in_memory=True``: every frame of the selected episodes is decoded once into memory
  (small sim images: a few KB a frame), the distillation's SFT data;
* ``features=`` a frozen-encoder feature cache (:class:`policy.feature_cache.FeatureCache`,
  or anything with ``cameras``, ``stride`` and ``episode(index) -> {camera: (T', ...)}``):
  ``features/<camera>`` (float16, cached) in place of ``images/<camera>``, one sample per
  ``stride``-th step, each with its full action chunk.

Batches are gathered with vectorised indexing in ``__getitems__``; use
:func:`make_loader` (whose collate passes them through), or :func:`random_batches`
for seeded random (optionally episode-weighted) batches. Images come out as uint8
tensors: move them to the device, then ``.float() / 255`` there.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flywheel.data.sampler import RandomBatchSampler, episode_probabilities
from flywheel.data.store import EpisodeStore

log = logging.getLogger(__name__)


class FrameCache:
    """LRU cache of decoded images, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._d: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._d

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        v = self._d.get(key)
        if v is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return v

    def put(self, key: tuple[str, int], value: np.ndarray) -> None:
        if self.max_bytes <= 0 or value.nbytes > self.max_bytes:
            return
        self._d[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._d.popitem(last=False)
            self.bytes -= old.nbytes


def split_episodes(
    episodes: Sequence[int], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """An episode-level train/validation split (no episode is in both), deterministic in ``seed``."""
    eps = np.array(sorted(episodes), dtype=np.int64)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(eps) * val_fraction))
    if val_fraction > 0 and len(eps) > 1:
        n_val = max(1, n_val)
    perm = np.random.default_rng(seed).permutation(len(eps))
    val = sorted(eps[perm[:n_val]].tolist())
    train = sorted(eps[perm[n_val:]].tolist())
    return train, val


class EpisodeDataset(Dataset):
    """Windows over an :class:`EpisodeStore` (see the module docstring).

    ``episodes`` picks episodes by index, in that order; ``filters`` (e.g. ``success=True``,
    ``source=["human", "rl"]``, ``task="pick_cube"``) select by record, as
    :meth:`EpisodeStore.select` (which also leaves out quarantined episodes).
    """

    def __init__(
        self,
        store: EpisodeStore | str,
        *,
        n_obs_steps: int = 1,
        horizon: int | None = None,
        obs_keys: Sequence[str] | None = None,
        episodes: Sequence[int] | None = None,
        image_cache_mb: float = 1024.0,
        decode_threads: int = 0,
        in_memory: bool = False,
        features: Any = None,
        **filters: Any,
    ) -> None:
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore(store, "r")
        self.n_obs_steps = int(n_obs_steps)
        self.horizon = int(horizon if horizon is not None else self.store.spec.action.chunk_horizon)
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise ValueError(f"n_obs_steps and horizon must be >= 1, got {n_obs_steps}, {horizon}")
        obs_specs = self.store.spec.observation_specs()
        self.obs_keys = list(obs_keys) if obs_keys is not None else list(obs_specs)
        unknown = [k for k in self.obs_keys if k not in obs_specs]
        if unknown:
            raise KeyError(f"observation keys {unknown} are not in the store's spec: {list(obs_specs)}")
        self.image_keys = [k for k in self.obs_keys if k.startswith(("images/", "depth/"))]
        self.lowdim_obs_keys = [k for k in self.obs_keys if k not in self.image_keys]
        self.features = features
        self.in_memory = bool(in_memory)
        self.stride = 1
        self.feature_keys: dict[str, str] = {}  # images/<camera> -> features/<camera>
        if features is not None:
            if self.n_obs_steps != 1:
                raise ValueError(f"n_obs_steps={n_obs_steps}: cached features give the step itself only (use 1)")
            self.stride = int(features.stride)
            self.feature_keys = {f"images/{c}": f"features/{c}" for c in features.cameras
                                 if f"images/{c}" in self.image_keys}
        self.filters = dict(filters)
        self._episode_choice = None if episodes is None else [int(e) for e in episodes]
        self.cache = FrameCache(int(image_cache_mb * 2**20))
        self.decode_threads = int(decode_threads)
        self._decoder: Any = None  # a thread pool, made lazily (after a worker fork)
        self._build()

    # ------------------------------------------------------------- indexing
    def _build(self) -> None:
        s = self.store
        chosen = set(s.select(**self.filters))
        if self._episode_choice is not None:
            bad = [e for e in self._episode_choice if not 0 <= e < s.num_episodes]
            if bad:
                raise IndexError(f"episodes {bad} are not committed in {s.path} ({s.num_episodes} episodes)")
            self._kept = [i for i, e in enumerate(self._episode_choice) if e in chosen]
            self.episodes = [self._episode_choice[i] for i in self._kept]
        else:
            self.episodes = sorted(chosen)
            self._kept = list(range(len(self.episodes)))
        recs = [s.record(e) for e in self.episodes]
        self.tasks = sorted({r.task for r in recs})
        task_id = {t: i for i, t in enumerate(self.tasks)}
        steps = [np.arange(r.start, r.end, self.stride) for r in recs]
        lengths = np.array([len(x) for x in steps], dtype=np.int64)
        self._step = np.concatenate(steps) if recs else np.zeros(0, np.int64)
        self._ep_start = np.repeat([r.start for r in recs], lengths).astype(np.int64)
        self._ep_end = np.repeat([r.end for r in recs], lengths).astype(np.int64)
        self._ep_index = np.repeat(self.episodes, lengths).astype(np.int64)
        self._ep_pos = np.repeat(np.arange(len(recs)), lengths).astype(np.int64)  # position in self.episodes
        self._task = np.repeat([task_id[r.task] for r in recs], lengths).astype(np.int64)
        self._instruction = {r.index: r.instruction or r.task for r in recs}
        self._source = np.repeat([r.source for r in recs], lengths)
        # low-dimensional arrays of the whole committed store, in memory
        keys = [*self.lowdim_obs_keys, "action", "reward", "intervention"]
        self._low = {k: s.read(k, 0, s.num_steps) for k in keys}
        self._load_frames(recs, lengths)

    def _load_frames(self, recs: list[Any], lengths: np.ndarray) -> None:
        """In memory / feature mode: every selected episode's frames (or features), each episode once."""
        self._mem: dict[str, np.ndarray] = {}
        keys = [k for k in self.image_keys if self.in_memory or k in self.feature_keys]
        first: dict[int, int] = {}  # episode -> row of its first frame
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        rows = 0
        for r in recs:
            if r.index in first or not keys:
                continue
            first[r.index] = rows
            feats = self.features.episode(r.index) if self.feature_keys else {}
            for k in keys:
                if k in self.feature_keys:
                    arr = feats[k[len("images/"):]]
                else:
                    arr = self.store.read(k, r.start, r.end)[:: self.stride]
                    arr = arr[..., None] if arr.ndim == 3 else arr
                parts[k].append(arr)
            rows += len(parts[keys[0]][-1])
        self._mem = {k: np.concatenate(v) for k, v in parts.items() if v}
        self._row0 = np.repeat([first.get(r.index, 0) for r in recs], lengths).astype(np.int64)

    def refresh(self) -> bool:
        """Pick up episodes committed since (online training while a writer appends)."""
        if self.store.refresh():
            self._build()
            return True
        return False

    def __len__(self) -> int:
        return len(self._step)

    @property
    def sources(self) -> np.ndarray:
        """The source (human / policy / rl) of every sample, for :class:`MixedBatchSampler`."""
        return self._source

    def record(self, episode_index: int):
        return self.store.record(episode_index)

    def sample_probabilities(self, weights: Sequence[float] | None = None,
                             intervened_only: Sequence[int] = ()) -> np.ndarray:
        """Per-sample probabilities from per-episode ``weights``, one per episode as given to the
        constructor (``episodes``, else :attr:`episodes`; ``None``: every sample equally likely), each spread
        evenly over the episode's samples. ``intervened_only``: episodes (store indices) whose samples are
        their operator's steps only (``intervention``, as HG-DAgger labels); one without any drops out."""
        n = len(self._episode_choice) if self._episode_choice is not None else len(self.episodes)
        if weights is not None and len(weights) != n:
            raise ValueError(f"weights: {len(weights)} for {n} episodes (give one per episode)")
        keep = None
        if len(intervened_only):
            only = np.isin(self._ep_index, np.asarray(list(intervened_only), np.int64))
            keep = ~only | self._low["intervention"][self._step].astype(bool)
        if weights is None:  # every (kept) sample equally likely: each episode weighs its kept samples' count
            pos = self._ep_pos if keep is None else self._ep_pos[keep]
            w = np.bincount(pos, minlength=len(self.episodes)).astype(np.float64)
        else:
            w = np.asarray(weights, np.float64)[self._kept]
        return episode_probabilities(self._ep_pos, w, keep)

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[EpisodeDataset, EpisodeDataset]:
        """Train and validation datasets over disjoint episodes."""
        train, val = split_episodes(self.episodes, val_fraction, seed)
        kw = dict(n_obs_steps=self.n_obs_steps, horizon=self.horizon, obs_keys=self.obs_keys,
                  image_cache_mb=self.cache.max_bytes / 2**20, decode_threads=self.decode_threads,
                  in_memory=self.in_memory, features=self.features, **self.filters)
        return EpisodeDataset(self.store, episodes=train, **kw), EpisodeDataset(self.store, episodes=val, **kw)

    # -------------------------------------------------------------- reading
    def _prefetch(self, key: str, steps: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode the uncached ``steps`` on the decode threads (JPEG decoding releases the GIL)."""
        missing = sorted({s for s in steps if (key, s) not in self.cache})
        if len(missing) < 8:
            return {}
        if self._decoder is None:
            from concurrent.futures import ThreadPoolExecutor

            self._decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        out = {}
        for s, img in zip(missing, self._decoder.map(lambda s: self.store.read_image(key, s), missing),
                          strict=True):
            out[s] = img[..., None] if img.ndim == 2 else img
            self.cache.put((key, s), out[s])
        return out

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_decoder"] = None  # thread pools do not cross process boundaries
        return d

    def _image(self, key: str, step: int) -> np.ndarray:
        ck = (key, step)
        img = self.cache.get(ck)
        if img is None:
            img = self.store.read_image(key, step)
            if img.ndim == 2:
                img = img[..., None]
            self.cache.put(ck, img)
        return img

    def _frames(self, key: str, idx: np.ndarray, obs_idx: np.ndarray) -> np.ndarray:
        """(B, n_obs, ...) frames (or features) of ``key`` at the global steps ``obs_idx``."""
        if key in self._mem:
            rows = self._row0[idx][:, None] + (obs_idx - self._ep_start[idx][:, None]) // self.stride
            return self._mem[key][rows]
        steps = obs_idx.reshape(-1).tolist()
        pre = self._prefetch(key, steps) if self.decode_threads > 1 else {}
        frames = [pre[s] if s in pre else self._image(key, s) for s in steps]
        return np.stack(frames).reshape(*obs_idx.shape, *frames[0].shape)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)})")
        idx = idx % max(len(self), 1)
        g = self._step[idx]
        lo, hi = self._ep_start[idx], self._ep_end[idx]
        obs_idx = np.clip(g[:, None] + np.arange(1 - self.n_obs_steps, 1)[None], lo[:, None], None)

        def obs(arr: np.ndarray) -> torch.Tensor:  # (B, n_obs, ...) -> (B, ...) when n_obs_steps is 1
            return torch.from_numpy(arr[:, 0] if self.n_obs_steps == 1 else arr)

        act_raw = g[:, None] + np.arange(self.horizon)[None]
        act_pad = act_raw >= hi[:, None]
        act_idx = np.minimum(act_raw, hi[:, None] - 1)
        out: dict[str, Any] = {}
        for k in self.obs_keys:
            if k in self.image_keys:
                out[self.feature_keys.get(k, k)] = obs(self._frames(k, idx, obs_idx))
            else:
                out[k] = obs(self._low[k][obs_idx])
        out["actions"] = torch.from_numpy(self._low["action"][act_idx])
        out["action_is_pad"] = torch.from_numpy(act_pad)
        out["reward"] = torch.from_numpy(self._low["reward"][g])
        out["intervention"] = torch.from_numpy(self._low["intervention"][g])
        out["done"] = torch.from_numpy(g == hi - 1)
        out["index"] = torch.from_numpy(g)
        ep = self._ep_index[idx]
        out["episode_index"] = torch.from_numpy(ep)
        out["task_index"] = torch.from_numpy(self._task[idx])
        out["instruction"] = [self._instruction[int(e)] for e in ep]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        b = self.__getitems__([i])
        return {k: v[0] for k, v in b.items()}


def _passthrough(batch: Any) -> Any:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(
    dataset: EpisodeDataset,
    batch_size: int = 256,
    *,
    shuffle: bool = True,
    num_workers: int = 2,
    drop_last: bool = True,
    batch_sampler: Any = None,
    seed: int = 0,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader that fetches whole batches through ``dataset.__getitems__``."""
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["persistent_workers"] = True if persistent_workers is None else persistent_workers
        kw["worker_init_fn"] = _worker_init
        if prefetch_factor is not None:
            kw["prefetch_factor"] = prefetch_factor
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                          collate_fn=_passthrough, **kw)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, collate_fn=_passthrough, generator=gen, **kw)


def batch_to_device(batch: Mapping[str, Any], device: str | torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def random_batches(dataset: EpisodeDataset, batch_size: int, *, seed: int = 0,
                   weights: Sequence[float] | None = None, replace: bool = True,
                   intervened_only: Sequence[int] = ()) -> DataLoader:
    """Seeded random batches of ``dataset`` (in-process), optionally with per-episode sampling ``weights``
    (one per episode given to the dataset, e.g. to replay older data at a set fraction) and episodes trained on
    their operator's steps only (``intervened_only``, :meth:`EpisodeDataset.sample_probabilities`): see
    :class:`flywheel.data.sampler.RandomBatchSampler` for ``replace``. One pass is ``len // batch_size``
    batches; iterating again continues the random stream."""
    if len(dataset) == 0:
        raise ValueError("no samples to train on: the episode list is empty")
    p = None if weights is None and not len(intervened_only) else \
        dataset.sample_probabilities(weights, intervened_only)
    sampler = RandomBatchSampler(len(dataset), batch_size, seed=seed, p=p, replace=replace)
    return make_loader(dataset, batch_sampler=sampler, num_workers=0)
