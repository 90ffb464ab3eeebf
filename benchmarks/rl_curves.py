"""Several `flywheel-rl` runs' learning curves on one plot (a side-by-side for the docs).

Reads each run directory's TensorBoard log (`tb/`): the periodic held-out evaluation (`eval/success_rate`,
solid, dots) and the training episodes' success over the last 20 (`episode/success_rate_last20`, dashed,
with the operator's help); a finished run's final evaluation (`results.json`) is drawn as a point with its
95% Wilson interval. Prints the periodic evaluations as a markdown table (one row per run).

    .venv/bin/python benchmarks/rl_curves.py outputs/bench/rl_pix_peg outputs/bench/rl_pix_cls_shift \\
        --labels "PegInsert pixels" "LiftCube-Blue pixels, classifier reward" --out docs/bench/rl_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL, TRAIN = "eval/success_rate", "episode/success_rate_last20"


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from every event file under ``run/tb`` (a resumed run has several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run / "tb").glob("**/events.out.tfevents*"))
    if not files:
        raise SystemExit(f"{run}/tb has no TensorBoard events: pass a flywheel-rl out_dir")
    out: dict[str, dict[int, float]] = {}
    for f in files:
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            got = out.setdefault(tag, {})
            for e in ea.Scalars(tag):  # the first value per step: the final evaluation repeats the last step
                got.setdefault(e.step, e.value)
    return {tag: sorted(v.items()) for tag, v in out.items()}


def final_eval(run: Path) -> tuple[int, float, int] | None:
    """(env steps, success rate, episodes) of a finished run's final evaluation, else None."""
    f = run / "results.json"
    if not f.is_file():
        return None
    r = json.loads(f.read_text())
    n = int(r["config"]["role"].get("final_eval_episodes", 0) or 0)
    return (int(r["env_steps"]), float(r["final_eval"]["success_rate"]), n) if n else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="flywheel-rl out_dirs")
    ap.add_argument("--labels", nargs="*", default=None, help="one per run (default: the directory names)")
    ap.add_argument("--out", type=Path, default=Path("rl_curves.png"))
    ap.add_argument("--title", default="held-out success (solid) and training success, last 20 (dashed)")
    args = ap.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"{len(labels)} labels for {len(args.runs)} runs")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flywheel.evaluate import wilson_interval

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = []
    for run, label, color in zip(args.runs, labels, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        s = scalars(run)
        ev, tr = s.get(EVAL, []), s.get(TRAIN, [])
        if ev:
            ax.plot([x for x, _ in ev], [y for _, y in ev], "-o", ms=3, color=color, label=label)
        if tr:
            ax.plot([x for x, _ in tr], [y for _, y in tr], "--", lw=1, alpha=0.6, color=color)
        fin = final_eval(run)
        if fin:
            step, rate, n = fin
            lo, hi = wilson_interval(round(rate * n), n)
            ax.errorbar([step], [rate], yerr=[[rate - lo], [hi - rate]], fmt="s", color=color, capsize=4)
        rows.append((label, ev, fin))
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(args.title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")
    for label, ev, fin in rows:
        cells = " ".join(f"{x / 1000:g}k:{y:.2f}" for x, y in ev)
        end = "" if not fin else f"; final {fin[1]:.2f} (n={fin[2]}) at {fin[0]}"
        print(f"- {label}: {cells}{end}")


if __name__ == "__main__":
    main()
