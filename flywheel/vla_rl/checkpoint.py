"""Saving and loading RL policies and training state (safetensors + JSON, nothing pickled).

A trained chunk policy is a directory::

    vla_rl_policy.json    {"format": "panda-flywheel-vla-rl", "head": {...}, "encoder": {...}, ...}
    policy.safetensors    the head's weights (and the state encoder's normalisation buffers)

``encoder`` describes how to rebuild the frozen feature extractor: ``{"type": "state", "keys",
"dims"}`` (:class:`~flywheel.vla_rl.policies.StateFeatures`) or ``{"type": "checkpoint", "path"}``
(a generalist checkpoint, wrapped by :func:`flywheel.vla_rl.adapters.encoder_from_checkpoint`);
a generalist's weights are not copied, the path is the reference. ``head``: ``kind``
(gaussian | flow), horizon, action_dim and the head's constructor arguments.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from flywheel.registry import replace_dir

FORMAT = "panda-flywheel-vla-rl"
META = "vla_rl_policy.json"
WEIGHTS = "policy.safetensors"


def build_encoder(desc: Mapping[str, Any], device: str = "cpu") -> Any:
    kind = desc.get("type")
    if kind == "state":
        from flywheel.vla_rl.policies import StateFeatures

        return StateFeatures(list(desc["keys"]), list(desc["dims"]))
    if kind == "checkpoint":
        from flywheel.vla_rl.adapters import encoder_from_checkpoint

        return encoder_from_checkpoint(desc["path"], device=device)
    raise ValueError(f"encoder type {kind!r}: use 'state' or 'checkpoint'")


def build_policy(head: Mapping[str, Any], encoder_desc: Mapping[str, Any], device: str = "cpu") -> Any:
    """A fresh chunk policy from its description (see the module docstring)."""
    from flywheel.vla_rl.policies import FlowChunkPolicy, GaussianChunkPolicy

    enc = build_encoder(encoder_desc, device)
    h = dict(head)
    kind = h.pop("kind", "gaussian")
    horizon = int(h.pop("horizon", 0)) or int(getattr(enc, "horizon", 1))
    action_dim = int(h.pop("action_dim", 0)) or int(getattr(enc, "action_dim", 7))
    for k in ("hidden", "value_hidden", "log_std_bounds", "fixed_dims"):
        if k in h:
            h[k] = tuple(h[k])
    # a generalist's wide raw features reach the value and scale heads through a LayerNorm (policies.py);
    # written into the description, so a saved policy rebuilds as it was
    h.setdefault("norm_features", encoder_desc.get("type") == "checkpoint")
    if kind == "gaussian":
        h.setdefault("log_std_hidden", 32)
    if kind == "gaussian":
        pol = GaussianChunkPolicy(enc, horizon, action_dim, **h)
    elif kind == "flow":
        pol = FlowChunkPolicy(enc, horizon, action_dim, **h)
    else:
        raise ValueError(f"head kind {kind!r}: use gaussian or flow")
    pol.desc = {"head": {"kind": kind, "horizon": horizon, "action_dim": action_dim, **h},
                "encoder": dict(encoder_desc)}
    return pol.to(device)


def _atomic_dir(path: Path, write: Any) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    return replace_dir(tmp, path)


def policy_tensors(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's state; of a generalist encoder only its trainable parts (its own head, when the
    Gaussian fine-tunes it): the frozen weights stay in the generalist's checkpoint."""
    sd = policy.state_dict()
    if getattr(policy, "desc", {}).get("encoder", {}).get("type") == "checkpoint":
        trainable = {n for n, p in policy.named_parameters(remove_duplicate=False) if p.requires_grad}
        sd = {k: v for k, v in sd.items() if not k.startswith("encoder.") or k in trainable}
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_policy(policy: torch.nn.Module, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    desc = getattr(policy, "desc", None)
    if desc is None:
        raise ValueError("save_policy: the policy was not built by build_policy (no description to save)")

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(policy_tensors(policy), str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps({"format": FORMAT, "format_version": 1, **desc, "meta": dict(meta or {})},
                                           indent=2, default=str))

    return _atomic_dir(Path(path), write)


def is_rl_policy(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def load_policy(path: str | Path, device: str = "cpu") -> Any:
    path = Path(path)
    if not is_rl_policy(path):
        raise FileNotFoundError(f"{path} is not an RL policy directory ({META} is missing)")
    d = json.loads((path / META).read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{path / META}: format {d.get('format')!r} is not {FORMAT!r}")
    head = dict(d["head"])
    # saved before the heads read normalised features through a bottleneck: rebuild them as they were
    head.setdefault("norm_features", False)
    if head.get("kind", "gaussian") == "gaussian":
        head.setdefault("log_std_hidden", 0)
    pol = build_policy(head, d["encoder"], device)
    sd = safetensors.torch.load_file(str(path / WEIGHTS), device=device)
    missing, unexpected = pol.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k in policy_tensors(pol)]
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS} does not fit the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return pol


# ---------------------------------------------------------------- training state
def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state as flat tensors + JSON metadata."""
    sd = opt.state_dict()
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    tensors = {}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = sorted(st)
        for k, v in st.items():
            tensors[f"{prefix}/{pid}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, meta


def optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    state = {int(pid): {k: tensors[f"{prefix}/{pid}/{k}"] for k in keys} for pid, keys in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}
