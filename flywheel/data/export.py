"""What every export of an episode store starts with: the store opened, and an empty output folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from flywheel.data.store import EpisodeStore


def start_export(store: EpisodeStore | str, out: str | Path, overwrite: bool) -> tuple[EpisodeStore, Path]:
    """``store`` (opened read-only when given a path) and ``out``, which must be absent or empty unless
    ``overwrite`` (then it is removed). ``out`` itself is not created."""
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store, "r")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    return store, out
