"""Frozen-encoder feature cache: each stored frame is encoded once, then reused by every training job.

With the image encoder frozen its features are a pure function of (frame, encoder), so SFT,
RLDG, iRe-VLA and the reward classifier can all train on cached features instead of pixels.
Layout, one float16 ``.npy`` per episode and camera (plain arrays, nothing pickled)::

    ROOT/<encoder_id>/encoder.json                         what the features are
    ROOT/<encoder_id>/episodes/ep<index>-<stamp>.<camera>.npy   (T, C, h, w) float16
    ROOT/<encoder_id>/episodes/ep<index>-<stamp>.<camera>.s<k>.npy  every k-th frame only

``frame_stride`` k > 1 encodes every k-th frame of an episode (k times cheaper; neighbouring
frames at 10 Hz are near duplicates): the samples are then those steps, each with its full
action chunk. An entry of a stride that divides k serves k too (subsampled).

``encoder_id`` names the weights file digest, the cut block, the input size and the
normalisation (:func:`policy.encoders.image_encoder_id`), so another encoder never reads these
features. Entries are keyed by content, not by where the store lies: ``stamp`` is a digest of the
episode's commit time (``time.time()`` at commit), start and end, which no other store's episode
shares, while a *copy* of the store (a benchmark's private store for one run) shares every stamp
and so every entry. A store rebuilt in place (``mode="w"``) misses the old entries. Writes go to a
temporary file and are renamed: a killed job leaves no torn entry. The default ``ROOT`` is a
``features/`` directory next to the store (``<store's parent>/features``: the layout
``benchmarks/generalist_g0.py`` writes, so fine-tuning jobs re-use its features); a copy elsewhere
re-uses them when given the same root (``sft.feature_root``).

Caches written before entries were keyed by content lie under ``ROOT/<encoder_id>/<digest of the
store's path>/``: an entry found there is moved into ``episodes/`` on first use.

Training batches over these features come from the store loader's feature-cache mode
(``flywheel.data.loader.EpisodeDataset(store, features=cache)``): ``features/<camera>`` in place of
``images/<camera>``, with the same keys, action chunks and padding as the image batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_root(store: Any) -> Path:
    """``features/`` next to the store (entries are keyed by content, so stores sharing it never clash)."""
    return Path(str(store.path).rstrip("/")).parent / "features"


class FeatureCache:
    """Cached encoder features of an episode store's frames.

    ``encode`` maps a (N, H, W, 3) uint8 batch to (N, C, h, w) features (a frozen
    :class:`policy.encoders.EfficientNetTrunk`, or any callable); ``encoder_id`` must change
    whenever its output would."""

    def __init__(self, store: Any, encode: Callable[[torch.Tensor], torch.Tensor], encoder_id: str,
                 root: str | os.PathLike | None = None, *, cameras: Sequence[str] | None = None,
                 batch_size: int = 64, encoder_meta: Mapping[str, Any] | None = None,
                 frame_stride: int = 1) -> None:
        if not encoder_id or "/" in encoder_id:
            raise ValueError(f"encoder_id={encoder_id!r}: give a non-empty name without '/'")
        self.store, self.encode, self.encoder_id = store, encode, encoder_id
        self.root = Path(root) if root is not None else default_root(store)
        self.cameras = list(cameras) if cameras is not None else list(store.spec.camera_names)
        missing = [c for c in self.cameras if f"images/{c}" not in store.keys]
        if missing:
            raise KeyError(f"cameras {missing} are not in the store {store.path} (it has {store.image_keys})")
        self.batch_size = int(batch_size)
        if int(frame_stride) < 1:
            raise ValueError(f"frame_stride={frame_stride}: must be >= 1")
        self.stride = int(frame_stride)
        self.dir = self.root / encoder_id / "episodes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.legacy_dir = self.root / encoder_id / _digest(str(Path(str(store.path)).resolve()))
        meta = self.root / encoder_id / "encoder.json"
        if not meta.is_file():
            meta.write_text(json.dumps({"encoder_id": encoder_id, **dict(encoder_meta or {})}, indent=1))
        self.hits = self.misses = 0
        self.encode_seconds = 0.0

    def _path(self, index: int, camera: str, stride: int | None = None) -> Path:
        r = self.store.record(index)
        stamp = _digest(f"{r.committed_at!r}:{r.start}:{r.end}")
        stride = self.stride if stride is None else stride
        return self.dir / f"ep{index:06d}-{stamp}.{camera}{'' if stride == 1 else f'.s{stride}'}.npy"

    def _source(self, index: int, camera: str) -> tuple[Path, int] | None:
        """The cached file to read and its subsampling: this stride's, else a divisor's (a superset).

        An entry of the old path-keyed layout is moved into the content-keyed one first."""
        for d in [k for k in range(self.stride, 0, -1) if self.stride % k == 0]:
            path = self._path(index, camera, d)
            if path.is_file():
                return path, self.stride // d
            old = self.legacy_dir / path.name
            if old.is_file():
                try:
                    os.replace(old, path)
                except FileNotFoundError:  # another job moved it first
                    pass
                if path.is_file():
                    return path, self.stride // d
        return None

    def cached(self, index: int) -> bool:
        return all(self._source(index, c) is not None for c in self.cameras)

    def _load(self, index: int, camera: str) -> np.ndarray:
        path, sub = self._source(index, camera)
        return np.load(path, allow_pickle=False)[::sub]

    @torch.no_grad()
    def _encode_episode(self, index: int) -> dict[str, np.ndarray]:
        r = self.store.record(index)
        out = {}
        t0 = time.perf_counter()
        for cam in self.cameras:
            frames = np.stack([self.store.read_image(f"images/{cam}", t) for t in range(r.start, r.end, self.stride)])
            parts = [self.encode(torch.from_numpy(np.ascontiguousarray(frames[i: i + self.batch_size])))
                     for i in range(0, len(frames), self.batch_size)]
            feats = torch.cat(parts).float().cpu().numpy().astype(np.float16)
            path = self._path(index, cam)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial.npy")
            np.save(tmp, feats, allow_pickle=False)
            os.replace(tmp, path)
            out[cam] = feats
        self.encode_seconds += time.perf_counter() - t0
        return out

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """{camera: (ceil(T / stride), C, h, w) float16} of one episode, encoded now if not cached."""
        if self.cached(index):
            self.hits += 1
            return {c: self._load(index, c) for c in self.cameras}
        self.misses += 1
        return self._encode_episode(index)

    def build(self, indices: Iterable[int], progress: bool = True) -> dict[str, Any]:
        """Encode every listed episode that is not cached yet; returns hit/miss counts and seconds."""
        from tqdm.auto import tqdm

        indices = list(indices)
        todo = [i for i in indices if not self.cached(i)]
        t0 = time.perf_counter()
        for i in tqdm(todo, desc=f"features {self.encoder_id}", disable=not progress, leave=False):
            self._encode_episode(i)
            self.misses += 1
        self.hits += len(indices) - len(todo)
        return {"episodes": len(indices), "encoded": len(todo), "cached": len(indices) - len(todo),
                "seconds": time.perf_counter() - t0}
