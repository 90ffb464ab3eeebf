"""Build docs/benchmarks.md: the summary (docs/bench/SUMMARY.md) followed by every part's results.

Each part keeps its measured results, with the commands that produced them, in docs/bench/<part>.md;
this stitches them into the one page the issues point to (headings shifted down one level).

    python scripts/assemble_benchmarks.py
"""

from __future__ import annotations

import re
from pathlib import Path

ORDER = ["foundation", "safety", "faults", "robot_franka", "robot_graph", "sim", "data", "policy", "generalist", "rl",
         "distill", "demo", "vla_rl", "interop", "console", "scaling", "calibration"]


def shift_headings(text: str) -> str:
    """One level deeper for every markdown heading outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def main() -> None:
    bench = Path(__file__).resolve().parent.parent / "docs" / "bench"
    parts = [bench / f"{name}.md" for name in ORDER if (bench / f"{name}.md").exists()]
    parts += sorted(p for p in bench.glob("*.md") if p not in parts and p.name != "SUMMARY.md")
    out = [(bench / "SUMMARY.md").read_text().rstrip(), ""]
    for p in parts:
        text = shift_headings(p.read_text())
        text = re.sub(r"\]\((?!https?:|/)([^)]+)\)", r"](bench/\1)", text)  # keep relative links working
        out += [f"<!-- from docs/bench/{p.name} -->", text.rstrip(), ""]
    (bench.parent / "benchmarks.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
