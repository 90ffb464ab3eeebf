"""One place that turns a configured device name into a torch device, and what goes with it.

Every training and evaluation entry point takes ``device`` (``auto`` | ``cpu`` |
``cuda`` | ``cuda:N``; ``""`` means ``auto``): ``auto`` picks CUDA when torch
sees a GPU, else the CPU. On CUDA, training autocasts to bf16
(:func:`autocast`) and DataLoaders pin host memory (:func:`pin_memory`).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(name: Any, field: str = "device") -> str:
    """``name`` normalised (``""``/None -> ``auto``); ValueError naming ``field`` when it is not a device."""
    s = "auto" if name in (None, "") else str(name).strip().lower()
    if not _NAME.match(s):
        raise ValueError(f"{field}={name!r}: use one of {DEVICES}")
    return s


def resolve_device(name: Any = "auto", field: str = "device") -> Any:
    """The torch device for ``name``; ``auto`` is CUDA when available, else the CPU.

    ``cuda`` on a machine without CUDA is an error (naming ``field``), never a silent CPU run.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    s = check_device(name, field)
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{field}={name!r}: torch sees no CUDA device here (use auto or cpu)")
    return torch.device(s)


def autocast(device: Any, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay float32)."""
    import torch

    dev = resolve_device(device)
    if not enabled or dev.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def pin_memory(device: Any) -> bool:
    """Whether a DataLoader feeding ``device`` should pin host memory (CUDA only)."""
    return resolve_device(device).type == "cuda"
