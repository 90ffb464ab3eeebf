"""The VLA: a transformers VLM backbone plus an action head, and its checkpoint directory.

The backbone is any ``AutoModelForImageTextToText`` (SmolVLM/Idefics3,
PaliGemma, Qwen2-VL, ...) with its ``AutoProcessor``; the head reads the
backbone's last hidden states (see :mod:`policy.heads`).

Checkpoint directory (everything needed to reload offline, nothing pickled)::

    model.safetensors     all weights (backbone, adapters, head)
    policy_config.json    PolicyConfig + format version (family "vlm")
    stats.json            normalisation statistics (policy.normalize)
    spec.json             the rig spec the policy was trained for
    backbone/             backbone config.json + processor / tokenizer files
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policy.config import PolicyConfig
from policy.heads import FlowMatchingHead, TokenLearnerHead
from policy.normalize import Normalizer
from rig.spec import PROPRIO_KEYS, RigSpec

FORMAT_VERSION = 1
FAMILY = "vlm"


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)



def head_backbone_groups(head: nn.Module, backbone: nn.Module, lr: float, backbone_lr: float,
                         weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups of a VLA of either family: the head's trainable parameters at ``lr``, the backbone's
    (or image encoder's) at ``backbone_lr`` when any train."""
    groups = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay,
               "name": "head"}]
    bb = [p for p in backbone.parameters() if p.requires_grad]
    if bb:
        groups.append({"params": bb, "lr": backbone_lr, "weight_decay": weight_decay, "name": "backbone"})
    return groups

class VLA(nn.Module):
    """Backbone + head. ``prepare`` turns a batch dict into tensors; ``forward`` gives the loss."""

    def __init__(
        self, cfg: PolicyConfig, spec: RigSpec, backbone: nn.Module, processor: Any,
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.spec, self.processor = cfg, spec, processor
        self.backbone = backbone
        self.normalizer = Normalizer(stats, {"proprio": spec.proprio_dim, "actions": spec.action.dim})
        dim = int(backbone.config.get_text_config().hidden_size)
        h, a, p = spec.action.chunk_horizon, spec.action.dim, spec.proprio_dim
        if cfg.head == "token_learner":
            self.head: nn.Module = TokenLearnerHead(
                dim, p, h, a, num_tokens=cfg.num_tokens, hidden_dim=cfg.hidden_dim, layers=cfg.head_layers
            )
        else:
            self.head = FlowMatchingHead(
                dim, p, h, a, hidden_dim=cfg.hidden_dim, layers=cfg.expert_layers, heads=cfg.expert_heads,
                steps=cfg.flow_steps,
            )
        self._prompts: dict[tuple[str, int], str] = {}
        self._apply_finetune()

    # ------------------------------------------------------------ building
    @classmethod
    def from_backbone(
        cls, cfg: PolicyConfig, spec: RigSpec, stats: Mapping[str, Any] | None = None
    ) -> VLA:
        """A new VLA on the pretrained backbone ``cfg.backbone`` (local path or the HF cache)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        cfg.validate()
        backbone = AutoModelForImageTextToText.from_pretrained(cfg.backbone, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(cfg.backbone)
        return cls(cfg, spec, backbone, processor, stats)

    @property
    def encoder(self) -> nn.Module:
        """The backbone without its language-model head (returns ``last_hidden_state``)."""
        return getattr(self.backbone, "model", self.backbone)

    def _apply_finetune(self) -> None:
        cfg = self.cfg
        if cfg.finetune == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_targets),
            )
            inject_adapter_in_model(lora, self.backbone)
            for name, p in self.backbone.named_parameters():
                p.requires_grad_("lora_" in name)
        elif cfg.finetune == "frozen":
            self.freeze_backbone()
        # the language-model head is never used: freeze it unless tied to the input embeddings
        out, inp = self.backbone.get_output_embeddings(), self.backbone.get_input_embeddings()
        if out is not None and (inp is None or out.weight is not inp.weight):
            out.weight.requires_grad_(False)

    def freeze_backbone(self) -> None:
        """Freeze every backbone parameter (iRe-VLA's RL stage); the head stays trainable."""
        self.cfg.finetune = "frozen"
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def unfreeze_backbone(self) -> None:
        """Make the whole backbone trainable again (iRe-VLA's supervised stage)."""
        self.cfg.finetune = "full"
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self._apply_finetune()

    def train(self, mode: bool = True) -> VLA:
        super().train(mode)
        if self.cfg.finetune == "frozen":
            self.backbone.eval()
        return self

    def param_groups(self, lr: float, backbone_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: the head at ``lr``, trainable backbone/adapter parameters at ``backbone_lr``."""
        return head_backbone_groups(self.head, self.backbone, lr, backbone_lr, weight_decay)

    # ---------------------------------------------------------------- input
    def prompt(self, instruction: str, num_images: int) -> str:
        key = (instruction, num_images)
        if key not in self._prompts:
            mtype = self.backbone.config.model_type
            if mtype == "paligemma" or not getattr(self.processor, "chat_template", None):
                image_token = getattr(self.processor, "image_token", "<image>")
                text = image_token * num_images + instruction + "\n"
            else:
                content = [{"type": "image"}] * num_images + [{"type": "text", "text": instruction}]
                text = self.processor.apply_chat_template(
                    [{"role": "user", "content": content}], add_generation_prompt=True
                )
            self._prompts[key] = text
        return self._prompts[key]

    def prepare(self, batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
        """Batch dict (spec keys with a leading batch dim, ``instruction`` list, optional ``actions``
        (B, H, A) and ``action_is_pad`` (B, H)) -> tensors on ``device``, normalised: what the episode
        store's loader (``flywheel.data.loader``) yields, numpy arrays or torch tensors alike."""
        cams = self.spec.camera_names
        missing = [k for k in [f"images/{c}" for c in cams] + list(PROPRIO_KEYS) + ["instruction"] if k not in batch]
        if missing:
            raise KeyError(f"policy batch misses keys {missing}; it needs the spec's images, proprio and instruction")
        instr = batch["instruction"]
        images = {c: _as_numpy(batch[f"images/{c}"]) for c in cams}
        b = next(iter(images.values())).shape[0] if cams else len(_as_numpy(batch[PROPRIO_KEYS[0]]))
        if isinstance(instr, str):
            instr = [instr] * b
        if len(instr) != b:
            raise ValueError(f"policy batch: {len(instr)} instructions for a batch of {b}")
        texts = [self.prompt(str(s), len(cams)) for s in instr]
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if self.cfg.max_text_tokens > 0:
            kwargs.update(padding="max_length", max_length=self.cfg.max_text_tokens)
        else:
            kwargs.update(padding=True)
        if cams:
            kwargs["images"] = [[images[c][i] for c in cams] for i in range(b)]
        inputs = dict(self.processor(text=texts, **kwargs))
        inputs.pop("labels", None)
        if self.cfg.max_text_tokens > 0 and inputs["input_ids"].shape[1] > self.cfg.max_text_tokens:
            raise ValueError(
                f"prompt of {inputs['input_ids'].shape[1]} tokens exceeds policy.max_text_tokens="
                f"{self.cfg.max_text_tokens}; raise it or shorten the instruction"
            )
        proprio = np.concatenate([_as_numpy(batch[k]).reshape(b, -1) for k in PROPRIO_KEYS], -1)
        out: dict[str, Any] = {
            "inputs": {k: v.to(device) for k, v in inputs.items()},
            "proprio": torch.as_tensor(self.normalizer.normalize("proprio", proprio.astype(np.float32)), device=device),
        }
        if "actions" in batch:
            act = _as_numpy(batch["actions"]).astype(np.float32)
            out["actions"] = torch.as_tensor(self.normalizer.normalize("actions", act), device=device)
            pad = batch.get("action_is_pad")
            out["action_is_pad"] = None if pad is None else torch.as_tensor(_as_numpy(pad), device=device).bool()
        return out

    # -------------------------------------------------------------- compute
    def encode(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features: last hidden states (B, T, D) and their mask (B, T)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.finetune != "frozen"):
            hidden = self.encoder(**inputs).last_hidden_state
        return hidden, inputs["attention_mask"].bool()

    @torch.no_grad()
    def features(self, batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Backbone latents for RL on a frozen backbone: hidden states, mask and normalised proprio."""
        prep = self.prepare(batch, device)
        hidden, mask = self.encode(prep["inputs"])
        return {"hidden": hidden, "mask": mask, "proprio": prep["proprio"]}

    def forward(self, prep: Mapping[str, Any]) -> torch.Tensor:
        """Behaviour-cloning loss on a prepared batch (normalised action chunks)."""
        hidden, mask = self.encode(prep["inputs"])
        return self.head.loss(hidden, mask, prep["proprio"], prep["actions"], prep.get("action_is_pad"))

    def head_loss(self, hidden, mask, proprio, actions, is_pad=None) -> torch.Tensor:
        """Loss from cached features (``features``) and normalised actions."""
        return self.head.loss(hidden, mask, proprio, actions, is_pad)

    @torch.no_grad()
    def predict(self, prep: Mapping[str, Any], generator: torch.Generator | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunks (B, H, A); ``prefix`` (B, P, A): committed first actions (normalised)."""
        hidden, mask = self.encode(prep["inputs"])
        return self.head.sample(hidden, mask, prep["proprio"], generator=generator, prefix=prefix)

    # ---------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | Path) -> Path:
        """Write the checkpoint directory (see the module docstring)."""
        from policy import checkpoint

        path = checkpoint.write(path, self, family=FAMILY, version=FORMAT_VERSION,
                                config=dataclasses.asdict(self.cfg), normalizer=self.normalizer, spec=self.spec)
        (path / "backbone").mkdir(exist_ok=True)
        self.backbone.config.save_pretrained(path / "backbone")
        self.processor.save_pretrained(path / "backbone")
        return path

    @classmethod
    def from_checkpoint(cls, path: str | Path, spec: RigSpec | None = None) -> VLA:
        """Rebuild from a checkpoint directory; ``spec`` (the rig's) must match the saved one."""
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        from policy import checkpoint

        path = Path(path)
        meta = checkpoint.read_meta(path, family=FAMILY, version=FORMAT_VERSION)
        saved_spec = checkpoint.read_spec(path, spec)
        cfg = PolicyConfig(**meta["config"])
        bcfg = AutoConfig.from_pretrained(path / "backbone")
        backbone = AutoModelForImageTextToText.from_config(bcfg, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(path / "backbone")
        model = cls(cfg, saved_spec, backbone, processor, checkpoint.read_normalizer(path))
        checkpoint.load_weights(model, path)
        return model
