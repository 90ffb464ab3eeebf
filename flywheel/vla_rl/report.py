"""Learning curves (PNG) and the markdown report of one ``flywheel-vla-rl`` run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]], path: str | Path,
                title: str = "") -> Path:
    """Held-out success (deterministic) and training success (sampled) against env steps; the
    group rejection rate on the right axis when there is any."""
    from flywheel.plotting import figure

    with figure(path, (6.0, 3.6)) as ax:
        if history:
            x = [h["env_steps"] for h in history]
            ax.plot(x, [h["success"] for h in history], color="tab:blue", alpha=0.35, label="train (sampled)")
        if evals:
            ax.plot([e["env_steps"] for e in evals], [e["success"] for e in evals], "o-", color="tab:blue",
                    label="held-out (deterministic)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("env steps")
        ax.set_ylabel("success rate")
        rej = [h.get("groups_rejected", 0.0) for h in history]
        if any(rej):
            ax2 = ax.twinx()
            ax2.plot([h["env_steps"] for h in history], rej, color="tab:gray", lw=0.8, label="groups rejected")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("groups rejected", color="tab:gray")
        ax.set_title(title or "success")
        ax.legend(loc="lower right", fontsize=8)
    return Path(path)


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def write_report(path: str | Path, results: dict[str, Any], history: Sequence[dict[str, Any]],
                 evals: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    r = results
    init, fin = r["initial_eval"], r["final_eval"]
    lines = [
        f"# flywheel-vla-rl: {r['algo']} on {', '.join(t.split('/')[-1] for t in r['tasks'])}", "",
        "| | |", "| --- | --- |",
        f"| env steps | {r['env_steps']} ({r['iterations']} iterations) |",
        f"| held-out success | {_f(init['success'])} -> {_f(fin['success'])} "
        f"({init['episodes']} / {fin['episodes']} episodes) |",
        f"| mean successful episode length | {_f(init.get('success_length'), '{:.1f}')} -> "
        f"{_f(fin.get('success_length'), '{:.1f}')} |",
        f"| rollout wall-clock | {r['rollout_seconds']:.0f} s ({_f(r['env_steps_per_s'], '{:.0f}')} env steps/s) |",
        f"| update wall-clock | {r['update_seconds']:.0f} s |",
        f"| groups rejected (mean) | {r['groups_rejected_mean']:.3f} |",
        f"| update compute saved | {r['update_compute_saved']:.1%} (rejection / filtering "
        f"{r['update_compute_saved_by_filtering']:.1%}, the KL early stop "
        f"{r['update_compute_saved_by_early_stop']:.1%}) |",
    ]
    if r.get("kept"):
        k = r["kept"]
        lines.append(f"| policy handed on (`train.keep={k['keep']}`) | the one at {k['env_steps']} env steps, held-out "
                     f"{_f(k['success'])} ({k['episodes']} episodes; chosen on that evaluation) |")
    for k in ("policy", "parent_policy", "candidate_id"):
        if r.get(k):
            lines.append(f"| {k.replace('_', ' ')} | `{r[k]}` |")
    lines += ["", "## Held-out success per task", "", "| task | start | end |", "| --- | --- | --- |"]
    for t, v in fin["per_task"].items():
        lines.append(f"| {t} | {_f(init['per_task'].get(t))} | {_f(v)} |")
    lines += ["", "![curve](curve.png)", "", "## Evaluations", "", "| env steps | success |", "| --- | --- |"]
    lines += [f"| {e['env_steps']} | {_f(e['success'])} |" for e in evals]
    path.write_text("\n".join(lines) + "\n")
    return path
