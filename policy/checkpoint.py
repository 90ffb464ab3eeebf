"""The checkpoint directory every model family shares, written and read in one place.

Common to both families (:class:`policy.model.VLA`, :class:`policy.compact.CompactVLA`)::

    model.safetensors     all weights
    policy_config.json    {"format", "format_version", "family" (absent: vlm), "config": the family's config}
    stats.json            normalisation statistics (policy.normalize)
    spec.json             the rig spec the policy was trained for

Each family adds its own files beside these (the VLM's ``backbone/``, the compact family's instruction
embeddings). Reading refuses, with the path in the message: a directory that is not a checkpoint, another
format or family, a newer format version, a rig spec that does not match, weights that do not fit the
model, and NaN/Inf weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from policy.normalize import Normalizer
from rig.spec import RigSpec

__all__ = ["FORMAT", "WEIGHTS", "checkpoint_family", "load_weights", "read_meta", "read_normalizer", "read_spec",
           "write"]

FORMAT = "panda-flywheel-vla"
WEIGHTS = "model.safetensors"
META = "policy_config.json"


def checkpoint_family(path: str | Path) -> str:
    """``compact`` or ``vlm`` (a checkpoint without a family field is a transformers-VLM one)."""
    f = Path(path) / META
    if not f.is_file():
        return "vlm"
    meta = json.loads(f.read_text())
    return str(meta.get("family") or meta.get("config", {}).get("family") or "vlm")


def write(path: str | Path, model: nn.Module, *, family: str, version: int, config: dict[str, Any],
          normalizer: Normalizer, spec: RigSpec) -> Path:
    """Write the shared files of a checkpoint directory (created if missing); returns the path."""
    from safetensors.torch import save_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / WEIGHTS))
    meta = {"format": FORMAT, "format_version": version, "family": family, "config": config}
    (path / META).write_text(json.dumps(meta, indent=2))
    normalizer.save(path / "stats.json")
    (path / "spec.json").write_text(spec.to_json())
    return path


def read_meta(path: str | Path, *, family: str, version: int) -> dict[str, Any]:
    """The checkpoint's ``policy_config.json``, checked to be ``family``'s at a version <= ``version``."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a policy checkpoint: {meta_file.name} is missing")
    meta = json.loads(meta_file.read_text())
    found = checkpoint_family(path)
    if meta.get("format") != FORMAT or found != family or int(meta.get("format_version", 0)) > version:
        raise ValueError(f"{path}: checkpoint {meta.get('format')!r} family {found!r} v{meta.get('format_version')} "
                         f"is not {FORMAT!r} {family!r} <= v{version}")
    return meta


def read_spec(path: str | Path, spec: RigSpec | None = None) -> RigSpec:
    """The rig spec the checkpoint was trained for; ``spec`` (the rig's), when given, must match it."""
    from rig.spec import check_compatible

    saved = RigSpec.from_json((Path(path) / "spec.json").read_text())
    if spec is not None:
        check_compatible(spec, saved, "rig", f"checkpoint {path}")
    return saved


def read_normalizer(path: str | Path) -> Normalizer:
    """The normalisation statistics saved beside the weights."""
    return Normalizer.read(Path(path) / "stats.json")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``model.safetensors`` into ``model``: every key must fit, and no weight may be NaN or Inf."""
    from safetensors.torch import load_model

    from policy.checks import check_finite_weights

    file = Path(path) / WEIGHTS
    missing, unexpected = load_model(model, str(file), strict=False)
    if missing or unexpected:
        raise ValueError(f"{file} does not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    check_finite_weights(model.state_dict(), file)  # NaN/Inf weights: refuse, naming the tensor
