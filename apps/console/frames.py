"""The latest image of each camera, JPEG-encoded on demand and once per frame, whoever asks.

The ROS callback only keeps a reference to the newest message (:meth:`FrameCache.put`, cheap,
on the executor thread); the web server's worker threads decode, resize to the policy's
resolution (or keep the full one) and encode when a page asks (:meth:`FrameCache.jpeg`). Two
pages asking for the same frame share one encoding, so open consoles cost the rig at most one
encoding per camera per view size and per frame period of the pages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def encode_jpeg(img: np.ndarray, quality: int = 80) -> bytes:
    """RGB (H, W, 3) uint8 (or a grey (H, W) image) -> JPEG bytes."""
    import cv2

    if img.ndim == 3:
        img = img[..., ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


def fit(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` resized so its longer side is ``size`` (the policy's square input keeps the aspect)."""
    import cv2

    h, w = img.shape[:2]
    scale = size / max(h, w)
    if scale >= 1.0:
        return img
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class FrameCache:
    """Newest message per camera; JPEGs by (camera, full) for the newest sequence number."""

    def __init__(self, cameras: list[str], size: int, quality: int = 80,
                 decode: Callable[[Any], np.ndarray] | None = None) -> None:
        if size <= 0:
            raise ValueError(f"image_size {size}: must be > 0")
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg_quality {quality}: must be in [1, 100]")
        self.cameras = list(cameras)
        self.size, self.quality = int(size), int(quality)
        self._decode = decode or _decode_image
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[int, float, Any]] = {}  # camera -> (seq, stamp, message)
        self._jpeg: dict[tuple[str, bool], tuple[int, float, bytes]] = {}
        self._encode_locks = {(c, f): threading.Lock() for c in self.cameras for f in (False, True)}
        self.encoded = 0  # JPEGs made (for the benchmark)
        self.errors = 0
        self.last_error = ""

    def put(self, camera: str, msg: Any, stamp: float) -> None:
        with self._lock:
            seq = self._latest[camera][0] + 1 if camera in self._latest else 1
            self._latest[camera] = (seq, stamp, msg)

    def latest(self, camera: str) -> tuple[int, float, Any] | None:
        with self._lock:
            return self._latest.get(camera)

    def jpeg(self, camera: str, full: bool = False) -> tuple[int, float, bytes] | None:
        """(seq, stamp, JPEG) of the newest frame of ``camera``, or None before the first one."""
        key = (camera, bool(full))
        if key not in self._encode_locks:
            raise KeyError(f"no camera {camera!r}: {self.cameras}")
        with self._encode_locks[key]:
            got = self.latest(camera)
            if got is None:
                return None
            cached = self._jpeg.get(key)
            if cached is not None and cached[0] == got[0]:
                return cached
            try:
                img = self._decode(got[2])
                out = (got[0], got[1], encode_jpeg(img if full else fit(img, self.size), self.quality))
            except Exception as e:  # a malformed image: keep serving the last good one
                self.errors += 1
                self.last_error = f"camera {camera}: {type(e).__name__}: {e}"[:300]
                return cached
            self._jpeg[key] = out
            self.encoded += 1
            return out

    def age(self, camera: str, now: float | None = None) -> float | None:
        got = self.latest(camera)
        return None if got is None else (now if now is not None else time.time()) - got[1]


def _decode_image(msg: Any) -> np.ndarray:
    from robot.ros.convert import image_to_numpy

    return image_to_numpy(msg)
