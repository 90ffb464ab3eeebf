"""The compact VLA family: pretrained encoders from wheels and a CPU-sized head (issue #16).

Shape of RT-1 / iRe-VLA's head on a frozen backbone, sized for a CPU:

* images: EfficientNet-Lite0 (ImageNet) cut after ``feature_block`` (:mod:`policy.encoders`),
  frozen by default (its features are then cacheable, :mod:`policy.feature_cache`), or with its
  last blocks (``partial``) or all of it (``full``) trained;
* the instruction: all-MiniLM-L6-v2's sentence embedding, each distinct instruction once;
* per camera: a 1x1 conv, FiLM on the instruction, a 1x1 (or 3x3) conv, then either spatial-softmax
  keypoints (``head=mlp``: an MLP over keypoints + proprio + instruction predicts the chunk,
  masked L1) or the conv map as tokens for the existing heads (``token_learner``, ``flow``).

Checkpoint directory (nothing pickled)::

    model.safetensors         every weight (encoder trunk and head)
    policy_config.json        {"format", "format_version", "family": "compact", "config": CompactConfig}
    stats.json                normalisation statistics (policy.normalize)
    spec.json                 the rig spec
    instructions.json         the instructions seen in training, and
    instructions.safetensors  their embeddings (no text encoder needed to run them)

``policy.load`` dispatches on ``family``; :class:`CompactVLA` has the VLA's interface
(``prepare``, ``forward``, ``predict``, ``param_groups``, ``save_pretrained``, ``normalizer``,
``encoder``, ``head``), so ``policy.train.train`` and ``policy.inference.Policy`` run it as is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policy.config import CompactConfig
from policy.encoders import SentenceEncoder, image_encoder_id, image_trunk
from policy.heads import FlowMatchingHead, TokenLearnerHead, _mlp
from policy.model import _as_numpy, head_backbone_groups
from policy.normalize import Normalizer
from rig.spec import PROPRIO_KEYS, RigSpec

FORMAT_VERSION = 1
FAMILY = "compact"
INSTRUCTIONS = "instructions"


def masked_l1(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None,
              per_sample: bool = False) -> torch.Tensor:
    """Mean absolute error over the non-padded steps of a chunk; ``per_sample``: one value per batch row
    (e.g. for advantage weights), else the batch's mean."""
    err = (pred.float() - target.float()).abs()
    dims = tuple(range(1, err.ndim)) if per_sample else tuple(range(err.ndim))
    if is_pad is None:
        return err.mean(dims)
    keep = (~is_pad.bool()).unsqueeze(-1).to(err.dtype)
    return (err * keep).sum(dims) / (keep.sum(dims) * err.shape[-1]).clamp_min(1.0)


class SpatialSoftmax(nn.Module):
    """(B, K, h, w) logits -> (B, K, 2) expected (x, y) in [-1, 1], with a learned temperature."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], -1), persistent=False)
        self.log_temp = nn.Parameter(torch.zeros(()))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        att = (logits.flatten(2) / self.log_temp.exp()).softmax(-1)  # (B, K, hw)
        return att @ self.grid.to(att.dtype)


class CameraBranch(nn.Module):
    """One camera: 1x1 conv, FiLM on the instruction, a 1x1 or 3x3 conv -> a (B, D, h, w) map."""

    def __init__(self, in_dim: int, dim: int, text_in: int, film: bool, kernel: int = 1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 1)
        self.film = nn.Linear(text_in, 2 * dim) if film else None
        if self.film is not None:  # starts as the identity
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2)

    def forward(self, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = self.proj(feats)
        if self.film is not None:
            gamma, beta = self.film(text.to(x.dtype)).chunk(2, -1)
            x = x * (1 + gamma[..., None, None]) + beta[..., None, None]
        return F.relu(self.conv(F.relu(x)))


class CompactHead(nn.Module):
    """Everything trained on top of the encoders: camera branches, instruction projection, action head."""

    def __init__(self, cfg: CompactConfig, cameras: tuple[str, ...], feat_shape: tuple[int, int, int],
                 text_in: int, proprio_dim: int, horizon: int, action_dim: int) -> None:
        super().__init__()
        c, h, w = feat_shape
        self.kind, self.horizon, self.action_dim = cfg.head, horizon, action_dim
        d = cfg.conv_dim
        self.cameras = nn.ModuleDict({cam: CameraBranch(c, d, text_in, cfg.film, cfg.conv_kernel) for cam in cameras})
        self.text_proj = nn.Linear(text_in, cfg.text_dim)
        if cfg.head == "mlp":
            self.keypoints = nn.ModuleDict({cam: nn.Conv2d(d, cfg.num_keypoints, 1) for cam in cameras})
            self.softmax = SpatialSoftmax(h, w)
            n_in = len(cameras) * cfg.num_keypoints * 2 + proprio_dim + cfg.text_dim
            self.mlp = _mlp([n_in] + [cfg.hidden_dim] * cfg.head_layers + [horizon * action_dim])
        else:
            self.pos = nn.Parameter(torch.randn(1, len(cameras) * h * w + 1, d) * 0.02)
            self.text_token = nn.Linear(cfg.text_dim, d)
            if cfg.head == "token_learner":
                self.action = TokenLearnerHead(d, proprio_dim, horizon, action_dim, num_tokens=cfg.num_tokens,
                                               hidden_dim=cfg.hidden_dim, layers=cfg.head_layers)
            else:
                self.action = FlowMatchingHead(d, proprio_dim, horizon, action_dim, hidden_dim=cfg.hidden_dim,
                                               layers=cfg.expert_layers, heads=cfg.expert_heads,
                                               steps=cfg.flow_steps)

    def maps(self, feats: Mapping[str, torch.Tensor], text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {cam: branch(feats[cam], text) for cam, branch in self.cameras.items()}

    def tokens(self, feats, text) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) tokens (every camera's map cells + an instruction token) and their mask."""
        maps = self.maps(feats, text)
        toks = [m.flatten(2).transpose(1, 2) for m in maps.values()]
        toks.append(self.text_token(self.text_proj(text))[:, None])
        hidden = torch.cat(toks, 1) + self.pos
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def forward(self, feats: Mapping[str, torch.Tensor], text: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """The regression heads' chunk (B, H, A), normalised."""
        if self.kind == "mlp":
            maps = self.maps(feats, text)
            kps = [self.softmax(self.keypoints[cam](m)).flatten(1) for cam, m in maps.items()]
            z = torch.cat([*kps, proprio.to(kps[0].dtype), self.text_proj(text)], -1)
            return self.mlp(z).view(-1, self.horizon, self.action_dim)
        hidden, mask = self.tokens(feats, text)
        return self.action(hidden, mask, proprio)

    def loss(self, feats, text, proprio, actions, is_pad=None) -> torch.Tensor:
        if self.kind == "mlp":
            return masked_l1(self(feats, text, proprio), actions, is_pad)
        hidden, mask = self.tokens(feats, text)
        return self.action.loss(hidden, mask, proprio, actions, is_pad)

    def sample(self, feats, text, proprio, generator=None, prefix=None) -> torch.Tensor:
        if self.kind == "flow":
            hidden, mask = self.tokens(feats, text)
            return self.action.sample(hidden, mask, proprio, generator=generator, prefix=prefix)
        out = self(feats, text, proprio)
        if prefix is not None and prefix.shape[1]:  # regression cannot condition on it: overwrite only
            out = out.clone()
            out[:, : prefix.shape[1]] = prefix.to(out.dtype)
        return out


class CompactVLA(nn.Module):
    """Pretrained EfficientNet-Lite trunk + MiniLM instruction embedding + :class:`CompactHead`."""

    family = FAMILY

    def __init__(self, cfg: CompactConfig, spec: RigSpec, stats: Mapping[str, Any] | None = None, *,
                 pretrained: bool = True, text: SentenceEncoder | None = None) -> None:
        super().__init__()
        cfg.validate()
        if not spec.camera_names:
            raise ValueError("the compact VLA needs at least one camera in the rig spec")
        self.cfg, self.spec = cfg, spec
        self.normalizer = Normalizer(stats, {"proprio": spec.proprio_dim, "actions": spec.action.dim})
        self.encoder = image_trunk(cfg.encoder, cfg.feature_block, cfg.image_size, pretrained=pretrained)
        self.text = text or SentenceEncoder(cfg.text_encoder)
        self.head = CompactHead(cfg, spec.camera_names, self.encoder.out_shape, self.text.dim, spec.proprio_dim,
                                spec.action.chunk_horizon, spec.action.dim)
        self._apply_finetune()

    # ------------------------------------------------------------ encoder
    @property
    def encoder_id(self) -> str:
        """Names the frozen encoder's features (the feature cache's key)."""
        return image_encoder_id(self.cfg.encoder, self.cfg.feature_block, self.cfg.image_size)

    def _apply_finetune(self) -> None:
        ft = self.cfg.finetune
        for p in self.encoder.parameters():
            p.requires_grad_(ft == "full")
        if ft == "partial":
            for blk in list(self.encoder.blocks)[-max(1, self.cfg.finetune_blocks):]:
                for p in blk.parameters():
                    p.requires_grad_(True)
        if ft == "frozen":
            self.encoder.eval()

    def freeze_backbone(self) -> None:
        """Freeze the image encoder (iRe-VLA's RL stage; cached features apply)."""
        self.cfg.finetune = "frozen"
        self._apply_finetune()

    def unfreeze_backbone(self, finetune: str = "full") -> None:
        self.cfg.finetune = finetune
        self._apply_finetune()

    def train(self, mode: bool = True) -> CompactVLA:
        super().train(mode)
        if self.cfg.finetune == "frozen":
            self.encoder.eval()
        return self

    def param_groups(self, lr: float, backbone_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return head_backbone_groups(self.head, self.encoder, lr, backbone_lr, weight_decay)

    # --------------------------------------------------------------- input
    def prepare(self, batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
        """Batch dict (spec keys with a batch dim, or ``features/<camera>`` cached features in place of
        ``images/<camera>``; ``instruction``; optional ``actions``/``action_is_pad``) -> tensors."""
        cams = self.spec.camera_names
        need = [k for k in [*PROPRIO_KEYS, "instruction"] if k not in batch]
        need += [f"images/{c}" for c in cams if f"images/{c}" not in batch and f"features/{c}" not in batch]
        if need:
            raise KeyError(f"compact policy batch misses keys {need}; it needs images/<camera> (or "
                           "features/<camera>), the proprio keys and instruction")
        b = len(_as_numpy(batch[PROPRIO_KEYS[0]]))
        instr = batch["instruction"]
        if isinstance(instr, str):
            instr = [instr] * b
        if len(instr) != b:
            raise ValueError(f"policy batch: {len(instr)} instructions for a batch of {b}")
        inputs: dict[str, torch.Tensor] = {}
        for c in cams:
            if f"features/{c}" in batch:
                inputs[f"features/{c}"] = torch.as_tensor(_as_numpy(batch[f"features/{c}"]), device=device).float()
            else:
                inputs[f"images/{c}"] = torch.as_tensor(_as_numpy(batch[f"images/{c}"]), device=device)
        inputs["text"] = torch.as_tensor(self.text.embed([str(s) for s in instr]), device=device)
        proprio = np.concatenate([_as_numpy(batch[k]).reshape(b, -1) for k in PROPRIO_KEYS], -1).astype(np.float32)
        out: dict[str, Any] = {
            "inputs": inputs,
            "proprio": torch.as_tensor(self.normalizer.normalize("proprio", proprio), device=device),
        }
        if "actions" in batch:
            act = _as_numpy(batch["actions"]).astype(np.float32)
            out["actions"] = torch.as_tensor(self.normalizer.normalize("actions", act), device=device)
            pad = batch.get("action_is_pad")
            out["action_is_pad"] = None if pad is None else torch.as_tensor(_as_numpy(pad), device=device).bool()
        return out

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-camera encoder features (cached ones pass through: only with a frozen encoder)."""
        feats = {}
        grad = torch.is_grad_enabled() and self.cfg.finetune != "frozen"
        for c in self.spec.camera_names:
            if f"features/{c}" in inputs:
                if grad:
                    raise ValueError(f"cached features/{c} cannot train the encoder (finetune="
                                     f"{self.cfg.finetune!r}); give images, or finetune=frozen")
                feats[c] = inputs[f"features/{c}"]
            else:
                with torch.set_grad_enabled(grad):
                    feats[c] = self.encoder(inputs[f"images/{c}"])
        return feats

    @torch.no_grad()
    def features(self, batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Frozen latents for RL/caching: ``features/<camera>``, ``text`` and normalised ``proprio``."""
        prep = self.prepare(batch, device)
        out = {f"features/{c}": f for c, f in self.encode(prep["inputs"]).items()}
        return {**out, "text": prep["inputs"]["text"], "proprio": prep["proprio"]}

    # ------------------------------------------------------------- compute
    def forward(self, prep: Mapping[str, Any]) -> torch.Tensor:
        """Behaviour-cloning loss on a prepared batch."""
        feats = self.encode(prep["inputs"])
        return self.head.loss(feats, prep["inputs"]["text"], prep["proprio"], prep["actions"],
                              prep.get("action_is_pad"))

    @torch.no_grad()
    def predict(self, prep: Mapping[str, Any], generator: torch.Generator | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.encode(prep["inputs"])
        return self.head.sample(feats, prep["inputs"]["text"], prep["proprio"], generator=generator, prefix=prefix)

    def num_parameters(self, part: str = "head") -> int:
        mod = {"head": self.head, "encoder": self.encoder}[part]
        return sum(p.numel() for p in mod.parameters())

    # --------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from policy import checkpoint

        path = checkpoint.write(path, self, family=FAMILY, version=FORMAT_VERSION,
                                config=dataclasses.asdict(self.cfg), normalizer=self.normalizer, spec=self.spec)
        texts = sorted(self.text.cache)
        (path / f"{INSTRUCTIONS}.json").write_text(json.dumps(texts, indent=1))
        emb = np.stack([self.text.cache[t] for t in texts]) if texts else np.zeros((0, self.text.dim), np.float32)
        save_file({"embeddings": torch.as_tensor(emb).contiguous()}, str(path / f"{INSTRUCTIONS}.safetensors"))
        return path

    @classmethod
    def from_checkpoint(cls, path: str | Path, spec: RigSpec | None = None) -> CompactVLA:
        """Rebuild from a checkpoint directory (its weights include the encoder's: no image wheel needed)."""
        from safetensors.torch import load_file

        from policy import checkpoint

        path = Path(path)
        meta = checkpoint.read_meta(path, family=FAMILY, version=FORMAT_VERSION)
        saved_spec = checkpoint.read_spec(path, spec)
        cfg = CompactConfig(**meta["config"])
        model = cls(cfg, saved_spec, checkpoint.read_normalizer(path), pretrained=False)
        checkpoint.load_weights(model, path)
        names = path / f"{INSTRUCTIONS}.json"
        if names.is_file():
            texts = json.loads(names.read_text())
            emb = load_file(str(path / f"{INSTRUCTIONS}.safetensors"))["embeddings"].numpy()
            model.text.preload(dict(zip(texts, emb, strict=True)))
        return model
