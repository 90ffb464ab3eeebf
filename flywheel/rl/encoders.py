"""Observation encoding for the SAC agent: which keys it reads, and the encoder networks.

* :func:`observation_layout` and :func:`parse_state_deltas` turn an observation's
  shapes and the agent config into the state keys, image keys and extra state
  features (``"key[i:j]-key[k:l]"`` differences) the agent reads, checked.
* :class:`Encoder` turns a (torch) observation dict into a feature vector: the
  normalised state vector, plus per camera either a small conv net trained by
  the critic with random-shift augmentation (``encoder="conv"``, :class:`ConvEncoder`),
  or frozen features of the generalist's backbone (``encoder="latent"``,
  iRe-VLA's latent RL) through a callable hook followed by a trainable
  projection (:class:`LatentEncoder`), or a trainable keypoint head on the frozen
  pretrained feature maps the env wrapper caches in the observation
  (``encoder="pretrained"``, ``features/<camera>``, :mod:`flywheel.rl.pretrained`;
  :class:`KeypointEncoder`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# A frozen image encoder: uint8 images (B, H, W, 3) -> features (B, D), both torch.
LatentEncoderFn = Callable[[torch.Tensor], torch.Tensor]

ENCODERS = ("state", "conv", "latent", "pretrained")

# what a pixel run (env.privileged_state=false) does not have
_PIXEL_HINT = (" (env.privileged_state=false drops state/privileged: a pixel specialist reads proprio only; "
               "use rl_task=lift_cube_pixels / peg_insert_pixels or set agent.state_keys and agent.state_deltas=[])")

if TYPE_CHECKING:
    from flywheel.rl.sac import SACConfig


def obs_shapes_of(space_or_obs: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} from a gymnasium Dict space or one observation dict."""
    items = space_or_obs.spaces.items() if hasattr(space_or_obs, "spaces") else space_or_obs.items()
    return {k: (tuple(v.shape), str(np.dtype(v.dtype))) for k, v in items}


def observation_layout(
    obs_shapes: Mapping[str, tuple[tuple[int, ...], str]], cfg: SACConfig
) -> tuple[list[str], list[str]]:
    """(state keys, image keys) the agent reads, checked against the observation."""
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"encoder={cfg.encoder!r}: use one of {', '.join(ENCODERS)}")
    state_keys = list(cfg.state_keys) if cfg.state_keys is not None else sorted(
        k for k in obs_shapes if k.startswith("state/")
    )
    missing = [k for k in state_keys if k not in obs_shapes]
    if missing:
        hint = _PIXEL_HINT if "state/privileged" in missing else ""
        raise KeyError(f"agent.state_keys {missing} are not in the observation (has {sorted(obs_shapes)}){hint}")
    if cfg.encoder == "state":
        return state_keys, []
    if cfg.encoder == "pretrained":
        return state_keys, _feature_keys(obs_shapes, cfg)
    image_keys = list(cfg.image_keys) if cfg.image_keys is not None else sorted(
        k for k in obs_shapes if k.startswith("images/")
    )
    missing = [k for k in image_keys if k not in obs_shapes]
    if missing or not image_keys:
        raise KeyError(
            f"encoder={cfg.encoder!r} needs images, but image keys {missing or '[]'} are not in the "
            f"observation (has {sorted(obs_shapes)}); make the env with cameras or use encoder=state"
        )
    return state_keys, image_keys


def _feature_keys(obs_shapes: Mapping[str, tuple[tuple[int, ...], str]], cfg: SACConfig) -> list[str]:
    """encoder=pretrained reads ``features/<camera>`` (the frozen trunk's, cached by the env wrapper) for
    the cameras of ``image_keys`` (None: every camera whose features are in the observation)."""
    from flywheel.rl.pretrained import FEATURE_PREFIX, feature_key

    if cfg.image_keys is not None:
        keys = [feature_key(k) for k in cfg.image_keys]
    else:
        keys = sorted(k for k in obs_shapes if k.startswith(FEATURE_PREFIX))
        keys = keys or sorted(feature_key(k) for k in obs_shapes if k.startswith("images/"))
        if not keys:
            raise KeyError(f"encoder='pretrained' needs camera images, but the observation has none (has "
                           f"{sorted(obs_shapes)}); set env.cameras (e.g. [front,wrist]) or use encoder=state")
    missing = [k for k in keys if k not in obs_shapes]
    if missing:
        raise KeyError(f"encoder='pretrained' reads {missing}, the frozen trunk's features, "
                       f"which are not in the observation (has {sorted(obs_shapes)}): build the env with "
                       f"flywheel.rl.build.make_env (it adds them) or wrap it in flywheel.rl.pretrained.FeatureEnv")
    return keys


_DELTA = re.compile(r"^\s*([\w/]+)\[(\d+):(\d+)\]\s*-\s*([\w/]+)\[(\d+):(\d+)\]\s*$")


def parse_state_deltas(
    deltas: list[str], state_keys: list[str], obs_shapes: Mapping[str, tuple[tuple[int, ...], str]]
) -> list[tuple[slice, slice]]:
    """``"a[i:j]-b[k:l]"`` -> (slice, slice) into the concatenated state vector, checked."""
    offsets, o = {}, 0
    for k in state_keys:
        n = int(np.prod(obs_shapes[k][0]))
        offsets[k] = (o, n)
        o += n
    out = []
    for d in deltas:
        m = _DELTA.match(d)
        if not m:
            raise ValueError(f"state_deltas entry {d!r}: write it as 'key[i:j]-key[k:l]'")
        sl = []
        for key, i, j in (m.group(1, 2, 3), m.group(4, 5, 6)):
            if key not in offsets:
                hint = _PIXEL_HINT if key not in obs_shapes and key == "state/privileged" else ""
                raise KeyError(f"agent.state_deltas entry {d!r}: {key} is not one of the state keys {state_keys}{hint}")
            i, j = int(i), int(j)
            if not 0 <= i < j <= offsets[key][1]:
                raise ValueError(f"state_deltas entry {d!r}: [{i}:{j}] is outside {key} (size {offsets[key][1]})")
            sl.append(slice(offsets[key][0] + i, offsets[key][0] + j))
        if sl[0].stop - sl[0].start != sl[1].stop - sl[1].start:
            raise ValueError(f"state_deltas entry {d!r}: the two slices differ in length")
        out.append((sl[0], sl[1]))
    return out


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ random-shift augmentation of (B, C, H, W) float images (replicate padding)."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    ox = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    oy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None]).view(b, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None]).view(b, 1, 1, w)
    bidx = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    cidx = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[bidx, cidx, rows, cols]


def random_map_shift(x: torch.Tensor, cells: float) -> torch.Tensor:
    """DrQ-v2-style random translation of (B, C, h, w) feature maps by up to ``cells`` cells in x and y
    (uniform, sub-cell: bilinear resampling, border padding); 0 returns ``x`` unchanged."""
    if cells <= 0:
        return x
    b, _, h, w = x.shape
    t = (torch.rand(b, 2, device=x.device) * 2 - 1) * float(cells)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = t[:, 0] * 2 / w, t[:, 1] * 2 / h  # cells -> normalised [-1, 1] units
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ConvEncoder(nn.Module):
    """Small conv net for one camera: uint8 (B, H, W, 3) -> (B, feature_dim)."""

    def __init__(self, image_shape: tuple[int, ...], channels: int, feature_dim: int):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1), nn.ReLU(),
        )
        h, w = int(image_shape[0]), int(image_shape[1])
        with torch.no_grad():
            n = self.conv(torch.zeros(1, 3, h, w)).numel()
        self.head = nn.Sequential(nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, img: torch.Tensor, shift_pad: int = 0) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).float() / 255.0
        x = random_shift(x, shift_pad)
        return self.head(self.conv(x - 0.5).flatten(1))


class LatentEncoder(nn.Module):
    """Frozen features from a callable (the generalist's backbone) + a trainable projection."""

    def __init__(self, fn: LatentEncoderFn, image_shape: tuple[int, ...], feature_dim: int):
        super().__init__()
        self._fn = [fn]  # a list keeps the callable out of state_dict / parameters
        with torch.no_grad():
            d = int(fn(torch.zeros(1, *image_shape, dtype=torch.uint8)).reshape(1, -1).shape[1])
        self.head = nn.Sequential(nn.Linear(d, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, img: torch.Tensor, shift_pad: int = 0) -> torch.Tensor:
        with torch.no_grad():
            z = self._fn[0](img).reshape(img.shape[0], -1).float()
        return self.head(z)


class SpatialEmbedding(nn.Module):
    """HIL-SERL's learned spatial embeddings: (B, C, h, w) -> (B, C * k), each channel's map weighted by k learned
    (h, w) kernels and summed, so *where* a feature fires (a cube's edges, its orientation) survives pooling."""

    def __init__(self, channels: int, h: int, w: int, k: int):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(channels, h * w, k) / math.sqrt(h * w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bcn,cnk->bck", x.flatten(2), self.kernel).flatten(1)


class KeypointEncoder(nn.Module):
    """Trainable head on one camera's frozen feature maps: float16 (B, C, h, w) -> (B, feature_dim).

    As the compact VLA's head does: a 1x1 conv and ReLU, then spatial-softmax keypoints (where) with
    the mean-pooled map (what), and with ``spatial`` > 0 learned spatial embeddings (:class:`SpatialEmbedding`),
    projected, LayerNorm, Tanh. Augmentation (``SACConfig.feature_shift``) shifts the cached maps by a random
    sub-cell translation (:func:`random_map_shift`).
    """

    def __init__(self, feat_shape: tuple[int, ...], channels: int, num_keypoints: int, feature_dim: int,
                 spatial: int = 0):
        super().__init__()
        from policy.compact import SpatialSoftmax

        if len(feat_shape) != 3:
            raise ValueError(f"encoder='pretrained' needs (C, h, w) feature maps, got shape {tuple(feat_shape)}")
        c, h, w = (int(x) for x in feat_shape)
        self.proj = nn.Sequential(nn.Conv2d(c, channels, 1), nn.ReLU())
        self.keypoints = nn.Conv2d(channels, num_keypoints, 1)
        self.softmax = SpatialSoftmax(h, w)
        self.spatial = SpatialEmbedding(channels, h, w, int(spatial)) if spatial > 0 else None
        n = 2 * num_keypoints + channels + channels * int(spatial)
        self.head = nn.Sequential(nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, feats: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        x = self.proj(random_map_shift(feats.float(), shift))
        kp = self.softmax(self.keypoints(x)).flatten(1)
        parts = [kp, x.mean((2, 3))] + ([self.spatial(x)] if self.spatial is not None else [])
        return self.head(torch.cat(parts, -1))


class Encoder(nn.Module):
    """Observation dict (torch) -> feature vector: image features ++ state vector."""

    def __init__(
        self,
        cfg: SACConfig,
        state_keys: list[str],
        state_dim: int,
        image_shapes: Mapping[str, tuple[int, ...]],
        latent_fn: LatentEncoderFn | None,
        deltas: list[tuple[slice, slice]] = (),  # type: ignore[assignment]
    ):
        super().__init__()
        self.state_keys = list(state_keys)
        self.deltas = list(deltas)
        state_dim += sum(a.stop - a.start for a, _ in self.deltas)
        self.image_keys = list(image_shapes)
        # the augmentation's size: pixels for the conv net, cells of the cached maps for the pretrained head
        self.shift: float = {"conv": cfg.shift_pad, "pretrained": cfg.feature_shift}.get(cfg.encoder, 0)
        self.cams = nn.ModuleDict()
        for k, shape in image_shapes.items():
            name = k.replace("/", "__")
            if cfg.encoder == "conv":
                self.cams[name] = ConvEncoder(shape, cfg.conv_channels, cfg.feature_dim)
            elif cfg.encoder == "latent":
                if latent_fn is None:
                    raise ValueError("encoder='latent' needs latent_encoder=<callable images -> features>")
                self.cams[name] = LatentEncoder(latent_fn, shape, cfg.feature_dim)
            elif cfg.encoder == "pretrained":
                self.cams[name] = KeypointEncoder(shape, cfg.conv_channels, cfg.pretrained_keypoints, cfg.feature_dim,
                                                  cfg.pretrained_spatial)
        self.out_dim = state_dim + cfg.feature_dim * len(self.cams)
        # state normalisation (identity until set_state_stats; saved with the weights)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set_state_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def state_vector(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The state keys concatenated, then the configured deltas (not normalised)."""
        x = torch.cat([obs[k].reshape(obs[k].shape[0], -1).float() for k in self.state_keys], -1)
        return torch.cat([x, *(x[:, a] - x[:, b] for a, b in self.deltas)], -1)

    def forward(self, obs: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        parts = [enc(obs[k.replace("__", "/")], self.shift if augment else 0) for k, enc in self.cams.items()]
        if self.state_keys:
            parts.append((self.state_vector(obs) - self.state_mean) / self.state_std)
        return torch.cat(parts, -1)
