"""The VLA generalist: a transformers VLM backbone plus an action head.

Public API (see docs/interfaces.md): ``policy.load(path, spec=None, device=None)
-> Policy`` and ``Policy.infer(obs) -> {"actions": (H, 7) float32}``. Heavy
modules (torch, transformers) load on first use, not at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policy.inference import Policy

__all__ = ["Policy", "load"]


def load(path: Any, spec: Any = None, device: Any = None, **kwargs: Any) -> Policy:
    """Load a policy checkpoint directory (see :func:`policy.inference.load`)."""
    from policy.inference import load as _load

    return _load(path, spec=spec, device=device, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from policy.inference import Policy

        return Policy
    raise AttributeError(f"module 'policy' has no attribute {name!r}")
