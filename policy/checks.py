"""Finiteness checks at the policy's edges: weights at load, actions at inference.

A checkpoint with a NaN or Inf weight must not load (the error names the tensor),
and an inference that yields NaN or Inf must raise instead of returning actions
(the policy node then stays silent and the franka node's watchdog holds the arm).
Every model family's loader and ``infer`` call these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["NonFiniteError", "check_finite_weights", "check_finite_output"]


class NonFiniteError(ValueError):
    """Weights or outputs with NaN or Inf; the message names the tensor."""


def check_finite_weights(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                         source: Any) -> None:
    """Raise :class:`NonFiniteError` naming the first floating-point tensor with a NaN or Inf.

    ``tensors``: a state dict (or ``(name, tensor)`` pairs); ``source``: the file it came from.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, t in items:
        if not (torch.is_floating_point(t) or torch.is_complex(t)):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NonFiniteError(f"{source}: tensor {name!r} {tuple(t.shape)} has {bad} non-finite (NaN or Inf) "
                                 "values: the checkpoint is damaged or training diverged; refusing to load it")


def check_finite_output(x: torch.Tensor, what: str = "actions") -> None:
    """Raise :class:`NonFiniteError` if ``x`` has a NaN or Inf (``what`` names it)."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteError(f"inference produced {bad} non-finite (NaN or Inf) values in {what} "
                             f"{tuple(x.shape)}: refusing to return them")
