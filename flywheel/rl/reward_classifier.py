"""Binary success classifier on camera images: the learned reward on the rig.

Frames are labelled from teleop sessions: the episode store marks success and
failure events, and :func:`frames_from_store` turns them into (image, label)
pairs (a frame is positive when its step's reward is positive, i.e. at or after
the operator's success event). :func:`train_classifier` fits a small conv net
(random-shift augmentation) and reports precision and recall on a held-out
split, grouped by episode so frames of one episode never sit on both sides.
On the rig the reward is ``p(success) > threshold``; in sim the task's success
test stands in and the classifier is evaluated against it.

Weights are saved as safetensors with the config as JSON metadata (no pickle).
"""

from __future__ import annotations

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


@dataclass
class ClassifierConfig:
    image_keys: list[str] = field(default_factory=lambda: ["images/front"])
    channels: int = 32
    feature_dim: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [128])
    lr: float = 3e-4
    epochs: int = 10
    batch_size: int = 64
    shift_pad: int = 4
    val_fraction: float = 0.2
    threshold: float = 0.5  # reward = 1 when p(success) > threshold


class RewardClassifier(nn.Module):
    """Images of one or more cameras -> success logit."""

    def __init__(self, cfg: ClassifierConfig, image_shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        missing = [k for k in cfg.image_keys if k not in image_shapes]
        if missing:
            raise KeyError(f"classifier image_keys {missing} not among the images {sorted(image_shapes)}")
        self.cfg = cfg
        self.image_shapes = {k: tuple(int(x) for x in image_shapes[k]) for k in cfg.image_keys}
        self.encoders = nn.ModuleDict(
            {k.replace("/", "__"): ConvEncoder(s, cfg.channels, cfg.feature_dim) for k, s in self.image_shapes.items()}
        )
        self.head = mlp(cfg.feature_dim * len(self.encoders), cfg.hidden_dims, 1)

    def forward(self, images: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        pad = self.cfg.shift_pad if augment else 0
        feats = [enc(images[k.replace("__", "/")], pad) for k, enc in self.encoders.items()]
        return self.head(torch.cat(feats, -1)).squeeze(-1)

    @torch.no_grad()
    def predict_proba(self, images: Mapping[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Batched uint8 images {key: (N, H, W, 3)} -> p(success) (N,)."""
        self.eval()
        n = len(next(iter(images.values())))
        out = []
        for i in range(0, n, batch_size):
            t = {k: torch.as_tensor(np.asarray(images[k][i:i + batch_size])) for k in self.cfg.image_keys}
            out.append(torch.sigmoid(self(t)).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def reward(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> float:
        """The thresholded reward for one observation (the actor's ``reward_fn``)."""
        p = self.predict_proba({k: np.asarray(obs[k])[None] for k in self.cfg.image_keys})[0]
        return 1.0 if p > self.cfg.threshold else 0.0

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


def precision_recall(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0,
        "positives": float(labels.sum()), "n": float(len(labels)),
    }


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
    """Fit the classifier; returns it with precision/recall/accuracy on the held-out split."""
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
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    pos = max(labels[tr].mean(), 1e-3)
    pos_weight = torch.tensor((1 - pos) / pos)  # balance rare success frames
    from tqdm import trange

    for _ in trange(cfg.epochs, disable=not progress, desc="classifier epochs"):
        model.train()
        order = rng.permutation(tr)
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i:i + cfg.batch_size])
            x = {k: torch.as_tensor(images[k][idx]) for k in cfg.image_keys}
            y = torch.as_tensor(labels[idx])
            loss = F.binary_cross_entropy_with_logits(model(x, augment=True), y, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    metrics: dict[str, float] = {"n_train": float(len(tr)), "n_val": float(len(va))}
    if len(va):
        p = model.predict_proba({k: images[k][va] for k in cfg.image_keys})
        metrics.update(precision_recall(p > cfg.threshold, labels[va] > 0.5))
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
