"""The flywheel's memory: the episode store, the recorder and the training loaders.

``import flywheel.data`` stays light (numpy and the rig spec); zarr is imported
when a store is opened, torch only by :mod:`flywheel.data.loader`.
"""

from __future__ import annotations

from typing import Any

from flywheel.data.store import (
    SOURCES,
    Episode,
    EpisodeRecord,
    EpisodeStore,
    EpisodeWriter,
    StoreError,
    StoreLocked,
)

__all__ = [
    "SOURCES",
    "Episode",
    "EpisodeRecord",
    "EpisodeStore",
    "EpisodeWriter",
    "StoreError",
    "StoreLocked",
    "EpisodeDataset",
    "MixedBatchSampler",
    "compute_stats",
    "save_stats",
    "load_stats",
]

_LAZY = {
    "EpisodeDataset": "flywheel.data.loader",
    "MixedBatchSampler": "flywheel.data.sampler",
    "compute_stats": "flywheel.data.stats",
    "save_stats": "flywheel.data.stats",
    "load_stats": "flywheel.data.stats",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'flywheel.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
