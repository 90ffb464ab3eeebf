"""Image codecs for zarr v3 arrays, built on imagecodecs' numcodecs-compatible codecs.

Zarr v3 only knows the codecs registered with it. These wrap
``imagecodecs.numcodecs.Jpeg`` / ``JpegXl`` / ``Png`` as zarr v3 array-to-bytes
codecs under the numcodecs ids (``imagecodecs_jpeg`` ...), so a chunk holding one
image is stored as a standard JPEG / JPEG-XL / PNG file that any image tool can
open. :func:`register` adds them to zarr's registry; the store calls it before it
opens or creates arrays (never at import time).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

IMAGE_FORMATS = ("jpeg", "jpegxl", "png")
_DEFAULT_LEVEL = {"jpeg": 95, "jpegxl": 90, "png": 1}


def _numcodec(fmt: str, level: int | None) -> Any:
    from imagecodecs import numcodecs as icn

    cls = {"jpeg": icn.Jpeg, "jpegxl": icn.Jpegxl, "png": icn.Png}[fmt]
    return cls(level=level)


@dataclass(frozen=True)
class _ImageCodec(ArrayBytesCodec):
    """One (1, H, W, C) or (1, H, W) uint8/uint16 chunk <-> one encoded image."""

    level: int | None = None
    fmt = "jpeg"  # class attribute, set per subclass

    def __init__(self, *, level: int | None = None) -> None:
        object.__setattr__(self, "level", None if level is None else int(level))

    @classmethod
    def codec_id(cls) -> str:
        return f"imagecodecs_{cls.fmt}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _ImageCodec:
        return cls(**dict(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        cfg = {} if self.level is None else {"level": self.level}
        return {"name": self.codec_id(), "configuration": cfg}

    def _codec(self) -> Any:
        c = self.__dict__.get("_cached")
        if c is None:
            c = _numcodec(self.fmt, self.level)
            object.__setattr__(self, "_cached", c)
        return c

    def encode_image(self, img: np.ndarray) -> bytes:
        return bytes(self._codec().encode(np.ascontiguousarray(img)))

    def decode_image(self, data: bytes) -> np.ndarray:
        if self.fmt == "jpeg":  # the hot path of the loaders: skip the numcodecs wrapper
            import imagecodecs

            return imagecodecs.jpeg8_decode(data)
        return np.asarray(self._codec().decode(data))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> NDBuffer:
        out = await asyncio.to_thread(self.decode_image, chunk_bytes.to_bytes())
        out = out.reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: Any) -> Buffer | None:
        arr = chunk_array.as_ndarray_like()
        if arr.shape[0] != 1:
            raise ValueError(f"image codecs store one image per chunk, got a chunk of shape {arr.shape}")
        data = await asyncio.to_thread(self.encode_image, arr[0])
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        raise NotImplementedError


class JpegCodec(_ImageCodec):
    fmt = "jpeg"


class JpegXlCodec(_ImageCodec):
    fmt = "jpegxl"


class PngCodec(_ImageCodec):
    fmt = "png"


_CODECS: dict[str, type[_ImageCodec]] = {"jpeg": JpegCodec, "jpegxl": JpegXlCodec, "png": PngCodec}
_registered = False


def register() -> None:
    """Register the image codecs with zarr (idempotent)."""
    global _registered
    if _registered:
        return
    import warnings

    from zarr.registry import register_codec

    # zarr warns that codecs outside the v3 core spec may not be portable; ours are deliberate
    warnings.filterwarnings("ignore", message=".*not in the Zarr version 3 specification.*")
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
    for cls in _CODECS.values():
        register_codec(cls.codec_id(), cls)
    _registered = True


def image_codec(fmt: str = "jpeg", level: int | None = None) -> _ImageCodec:
    """The zarr codec for ``fmt`` (jpeg, jpegxl or png) at quality/effort ``level``."""
    if fmt not in _CODECS:
        raise ValueError(f"unknown image codec {fmt!r}: choose one of {IMAGE_FORMATS}")
    register()
    return _CODECS[fmt](level=_DEFAULT_LEVEL[fmt] if level is None else level)


def codec_from_metadata(codecs: Any) -> _ImageCodec | None:
    """The image codec an array was written with, if any (for fast direct chunk decoding)."""
    for c in codecs or ():
        if isinstance(c, _ImageCodec):
            return c
    return None


def frames_codec(store: Any) -> str:
    """The round trip a policy's live frames need to look like ``store``'s (``policy.image_codec``):
    ``"jpeg:<quality>"`` for a JPEG store, ``""`` for a lossless one (PNG). JPEG-XL has no policy-side
    round trip yet: an error says so rather than training on frames the rig will not see."""
    from flywheel.data.store_layout import ROOT_ATTR

    cfg = dict(store.root.attrs[ROOT_ATTR].get("image_codec") or {})
    name = str(cfg.get("name", ""))
    level = (cfg.get("configuration") or {}).get("level")
    if name == JpegCodec.codec_id():
        return f"jpeg:{int(level if level is not None else _DEFAULT_LEVEL['jpeg'])}"
    if name in ("", PngCodec.codec_id()):
        return ""
    raise ValueError(f"{store.path}: frames stored with {name!r}; a policy can match only jpeg or png stores")
