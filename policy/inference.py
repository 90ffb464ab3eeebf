"""``Policy``: numpy in, numpy out inference on a loaded VLA (no ROS).

``Policy.infer(obs)`` takes one spec observation dict plus ``"instruction"``
and returns ``{"actions": (H, 7) float32}``, unnormalised and clipped to
[-1, 1]; NaN or Inf actions raise :class:`policy.checks.NonFiniteError` (as do
non-finite weights at load). On CUDA the model runs in bf16; ``compile=True`` wraps the backbone
and head in ``torch.compile`` (``reduce-overhead`` on CUDA, i.e. CUDA graphs);
give the policy a fixed ``max_text_tokens`` so shapes stay static and nothing
recompiles. The flow head computes the prefix keys/values once per chunk and
reuses them for every denoising step (its KV cache); the TokenLearner head
needs a single backbone pass and no cache at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy.checks import check_finite_output
from policy.encoders import as_trained
from policy.model import VLA
from rig.spec import PROPRIO_KEYS, RigSpec, SpecError


def pick_device(device: str | torch.device | None) -> torch.device:
    if device in (None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Policy:
    """A VLA ready for closed-loop inference."""

    def __init__(
        self, model: VLA, *, device: str | torch.device | None = None, compile: bool = False,
        dtype: torch.dtype | None = None, path: str | Path | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(self.device, self.dtype).eval()
        self.spec: RigSpec = model.spec
        self.path = Path(path) if path is not None else None
        self.generator = torch.Generator(device=self.device).manual_seed(model.cfg.seed)
        self.compiled = compile
        self.last_latency = float("nan")
        if compile:
            self._compile()

    def _compile(self) -> None:
        """torch.compile the backbone encoder and the head's hot functions (in place)."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        enc = self.model.encoder
        enc.forward = torch.compile(enc.forward, mode=mode, dynamic=False)
        head = self.model.head
        for name in ("forward", "velocity"):
            if hasattr(head, name):
                setattr(head, name, torch.compile(getattr(head, name), mode=mode, dynamic=False))

    @property
    def horizon(self) -> int:
        return self.spec.action.chunk_horizon

    def check(self, obs: Mapping[str, Any]) -> None:
        need = [f"images/{c}" for c in self.spec.camera_names] + list(PROPRIO_KEYS)
        missing = [k for k in need if k not in obs]
        if missing:
            raise SpecError(f"policy observation misses keys {missing}")
        if not isinstance(obs.get("instruction"), str):
            raise SpecError("policy observation needs 'instruction': str (the language instruction)")
        specs = self.spec.observation_specs()
        for k in need:
            specs[k].check(obs[k])

    @torch.inference_mode()
    def infer(self, obs: Mapping[str, Any], prefix: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One observation -> ``{"actions": (H, A) float32}`` in [-1, 1].

        ``prefix`` (P, A): actions already committed for the chunk's first P ticks (those executed
        between the observation and the chunk's arrival). The flow-matching head inpaints them so the
        chunk continues what the robot is doing (real-time chunking); other heads only copy them.
        """
        self.check(obs)
        t0 = time.perf_counter()
        batch = {k: np.asarray(v)[None] for k, v in obs.items() if k != "instruction"}
        batch = as_trained(batch, self.spec.camera_names, getattr(self.model.cfg, "image_codec", ""))
        batch["instruction"] = [obs["instruction"]]
        prep = self.model.prepare(batch, self.device)
        prep["inputs"] = {k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in prep["inputs"].items()}
        prep["proprio"] = prep["proprio"].to(self.dtype)
        known = None
        if prefix is not None and len(prefix):
            known = np.asarray(prefix, np.float32).reshape(-1, self.spec.action.dim)[: self.horizon]
            known = torch.as_tensor(self.model.normalizer.normalize("actions", known), device=self.device)[None]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.device.type == "cuda"):
            act = self.model.predict(prep, generator=self.generator, prefix=known)[0].float()
        act = self.model.normalizer.unnormalize("actions", act)
        check_finite_output(act, "actions")  # NaN/Inf: raise, never return them (clamp would hide Inf)
        act = act.clamp(-1.0, 1.0)
        out = act.cpu().numpy().astype(np.float32)
        self.last_latency = time.perf_counter() - t0
        return {"actions": out}

    def warmup(self, obs: Mapping[str, Any], n: int = 2) -> None:
        """Run ``n`` inferences (compilation, CUDA graphs, allocator) before control starts."""
        for _ in range(n):
            self.infer(obs)


def load(
    path: str | Path, spec: RigSpec | None = None, device: str | torch.device | None = None, *,
    compile: bool = False,
) -> Policy:
    """Load a checkpoint directory; ``spec`` (the rig's) must match the one it was trained for.

    The checkpoint's ``family`` picks the model class: ``compact`` (:mod:`policy.compact`) or
    ``vlm`` (:class:`policy.model.VLA`; checkpoints without the field are VLM ones)."""
    from policy.checkpoint import checkpoint_family
    from policy.compact import CompactVLA

    family = checkpoint_family(path)
    if family not in ("vlm", "compact"):
        raise ValueError(f"{path}: unknown policy family {family!r} (expected 'vlm' or 'compact')")
    # each family's from_checkpoint refuses NaN/Inf weights, naming the tensor (policy.checkpoint.load_weights)
    model = CompactVLA.from_checkpoint(path, spec=spec) if family == "compact" else VLA.from_checkpoint(path, spec=spec)
    return Policy(model, device=device, compile=compile, path=path)
