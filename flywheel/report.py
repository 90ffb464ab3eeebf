"""Markdown reports with PNG plots for flywheel iterations and comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flywheel.evaluate import TaskResult, results_table
from flywheel.plotting import figure


def plot_success(results: dict[str, dict[str, TaskResult]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: success rate per task for each column, with 95% Wilson intervals."""
    cols = list(results)
    tasks = sorted({t for c in cols for t in results[c]})
    width = 0.8 / max(1, len(cols))
    x = np.arange(len(tasks))
    with figure(path, (max(5.0, 1.3 * len(tasks) + 2), 3.6)) as ax:
        for i, c in enumerate(cols):
            rates, lo_err, hi_err = [], [], []
            for t in tasks:
                r = results[c].get(t)
                rate = r.rate if r else np.nan
                lo, hi = r.ci if r else (np.nan, np.nan)
                rates.append(rate)
                lo_err.append(rate - lo)
                hi_err.append(hi - rate)
            ax.bar(x + (i - (len(cols) - 1) / 2) * width, rates, width, yerr=[lo_err, hi_err], capsize=3, label=c)
        ax.set_xticks(x, [t.split("/")[-1] for t in tasks], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate")
        ax.set_title(title or "success rate (95% Wilson interval)")
        ax.legend(fontsize=8)
    return Path(path)


def write_report(
    path: str | Path,
    title: str,
    results: dict[str, dict[str, TaskResult]],
    sections: list[tuple[str, str]] | None = None,
    facts: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (markdown) with a facts table, the results table and its plot."""
    path = Path(path)
    png = plot_success(results, path.with_suffix(".png"), title)
    lines = [f"# {title}", ""]
    if facts:
        lines += ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    lines += ["## Success rate", "", results_table(results), "", f"![success]({png.name})", ""]
    for head, body in sections or []:
        lines += [f"## {head}", "", body, ""]
    path.write_text("\n".join(lines))
    return path
