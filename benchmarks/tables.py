"""The benchmarks' markdown tables: built one way, printed, and written to ``--out`` where asked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``| a | b |`` lines: the header, the ``| --- |`` rule, one line a row (cells as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(table: str, out: str | Path = "", heading: str = "") -> None:
    """Print ``heading`` (if any) and ``table``; with ``out``, also write the table there."""
    print(f"\n{heading}\n\n{table}" if heading else f"\n{table}")
    if out:
        Path(out).write_text(table + "\n")
