"""One way to draw a PNG plot: a headless (Agg) figure, laid out, saved (parent folders made) and closed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: str | Path, figsize: tuple[float, float], dpi: int = 110, ncols: int = 1) -> Iterator[Any]:
    """``with figure(path, (6, 3.5)) as ax: ax.plot(...)`` writes ``path`` when the block ends without error;
    ``ncols`` > 1 yields that many panels side by side (an array of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
