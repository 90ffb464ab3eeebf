"""Generalist checkpoints as encoders of the stochastic heads (:mod:`flywheel.vla_rl.policies`).

:class:`CompactEncoder` wraps the compact VLA (:mod:`policy.compact`): its frozen features (each
camera's EfficientNet map, the MiniLM instruction embedding, the normalised proprioception) are
flattened into one (B, D) vector - computed once per rollout step and cached by the engine - and
split again for the VLA's own head, which becomes the trainable part:

* regression heads (``mlp``, ``token_learner``): ``policy_mean`` - the Gaussian's mean is the
  behaviour-cloned head, so RL starts exactly at G0 (plus exploration noise);
* the flow head: ``flow_velocity(feats)`` - the head's velocity network over its prefix, sampled
  with the flow SDE (:class:`~flywheel.vla_rl.policies.FlowChunkPolicy` uses it).

Transformers-VLM checkpoints are not wrapped yet (their features are variable-length token
sequences); ``encoder_from_checkpoint`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policy.encoders import as_trained


class _CompactMean(nn.Module):
    def __init__(self, enc: CompactEncoder) -> None:
        super().__init__()
        self.head = enc.model.head
        self._split = enc.split

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        maps, text, proprio = self._split(feats)
        return self.head(maps, text, proprio)


class _CompactFlow(nn.Module):
    def __init__(self, enc: CompactEncoder) -> None:
        super().__init__()
        self.head = enc.model.head
        self._split = enc.split

    def velocity(self, feats: torch.Tensor):
        from flywheel.vla_rl.flow_sde import head_velocity

        maps, text, proprio = self._split(feats)
        hidden, mask = self.head.tokens(maps, text)
        return head_velocity(self.head.action, hidden, mask, proprio)


class CompactEncoder(nn.Module):
    """``policy_features`` over a :class:`policy.compact.CompactVLA` (frozen encoder)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        model.freeze_backbone()
        self.model = model.eval()
        spec = model.spec
        self.spec, self.cams = spec, list(spec.camera_names)
        self.horizon, self.action_dim = spec.action.chunk_horizon, spec.action.dim
        self.map_shape = tuple(model.encoder.out_shape)
        n_map = int(torch.tensor(self.map_shape).prod())
        self.sizes = [n_map] * len(self.cams) + [int(model.text.dim), int(spec.proprio_dim)]
        self.feature_dim = int(sum(self.sizes))
        if model.cfg.head == "flow":
            self.flow_module = _CompactFlow(self)
        else:
            self.policy_mean = _CompactMean(self)

    def set_trainable(self, part: str) -> None:
        """Which of the generalist's head RL trains (call after the policy is built): ``all`` (its camera branches,
        keypoints, instruction projection and MLP) or ``mlp`` (the ``mlp`` head's final MLP over frozen keypoints:
        a small step in its weights stays a small step in the policy, where the keypoints' spatial softmax is
        sensitive)."""
        if part == "all":
            return
        if part != "mlp":
            raise ValueError(f"head.train={part!r}: use all | mlp")
        if self.model.cfg.head != "mlp":
            raise ValueError(f"head.train=mlp needs a compact checkpoint with head=mlp (this one has head="
                             f"{self.model.cfg.head!r}); use head.train=all")
        self.model.head.requires_grad_(False)
        self.model.head.mlp.requires_grad_(True)

    def shared_with_reference(self) -> list[Any]:
        """Besides the frozen modules, what a frozen reference copy of the policy may share
        (:func:`flywheel.vla_rl.common.frozen_copy`): the text encoder, which is not a module."""
        return [self.model.text]

    def split(self, flat: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        parts = torch.split(flat, self.sizes, dim=-1)
        maps = {c: p.reshape(-1, *self.map_shape) for c, p in zip(self.cams, parts, strict=False)}
        return maps, parts[-2], parts[-1]

    @torch.no_grad()
    def policy_features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        device = next(self.model.head.parameters()).device
        obs = as_trained(dict(obs), self.cams, getattr(self.model.cfg, "image_codec", ""))  # live frames, as trained
        f = self.model.features(obs, device=device)
        return torch.cat([f[f"features/{c}"].flatten(1) for c in self.cams] + [f["text"], f["proprio"]], -1).float()

    def flow_velocity(self, feats: torch.Tensor):
        return self.flow_module.velocity(feats)

    def normalize_actions(self, actions):
        return self.model.normalizer.normalize("actions", actions)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.model.normalizer.unnormalize("actions", actions)


def encoder_from_checkpoint(path: str | Path, device: str = "cpu") -> Any:
    """The encoder adapter of a generalist checkpoint directory."""
    from policy.checkpoint import checkpoint_family
    from policy.compact import CompactVLA

    family = checkpoint_family(path)
    if family != "compact":
        raise ValueError(f"{path}: a {family!r} checkpoint; flywheel-vla-rl wraps compact VLA checkpoints "
                         "(policy/compact.py) or its own RL policy directories")
    return CompactEncoder(CompactVLA.from_checkpoint(path)).to(device)
