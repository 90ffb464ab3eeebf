"""One way to draw a PNG plot: a headless (Agg) figure, laid out, saved (parent folders made) and closed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: str | Path, figsize: tuple[float, float], dpi: int = 110) -> Iterator[Any]:
    """``with figure(path, (6, 3.5)) as ax: ax.plot(...)`` writes ``path`` when the block ends without error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
