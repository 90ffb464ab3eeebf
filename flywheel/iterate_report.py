"""The iteration's report (``report.md`` + ``report.png``): before/after with 95% intervals, the RL tasks'
change in points, the promotion gate, the specialists, the distillation data, stage times and load."""

from __future__ import annotations

import json
import os
from typing import Any

from flywheel.evaluate import HELDOUT_SEED, TaskResult, load_results


def write_iteration_report(ctx: Any, registry: Any, budget: Any) -> dict[str, Any]:
    """The ``report`` stage of :class:`flywheel.iterate.Iteration` (its job context, registry and budget)."""
    from flywheel.report import write_report

    before, after, prom = ctx.output("evaluate_current"), ctx.output("evaluate_candidate"), ctx.output("promote")
    results: dict[str, dict[str, TaskResult]] = {f"before ({before['model']})": load_results(before["results"])}
    if "results" in after:
        results[f"after ({prom['candidate']})"] = load_results(after["results"])
    spec = ctx.output("specialists")
    coll = ctx.output("collect_specialists")
    lines = ["| task | algorithm | specialist eval success (state-only) | training env steps | rollouts recorded "
             "| successes |", "| --- | --- | --- | --- | --- | --- |"]
    for t, s in spec["specialists"].items():
        c = coll.get(t, {})
        lines.append(f"| {t} | {s['config']['algo']} | {_rate(s)} | "
                     f"{s['env_steps']} | {c.get('episodes', 0)} | {c.get('successes', 0)} |")
    if not spec["specialists"]:
        lines.append("| (none: the generalist did not fail any target task) | | | | | |")
    stages = json.loads((ctx.workdir / "job_state.json").read_text())["stages"]
    timing = "\n".join(f"- {k}: {v['seconds']:.0f} s" + _parts(v["output"]) for k, v in stages.items())
    timing += f"\n- load average (1/5/15 min) at the report: {load_average()}"
    lineage = " <- ".join(r.id for r in registry.lineage(registry.current.id))
    facts = {"iteration": ctx.workdir.name, "parent": before["model"], "candidate": prom.get("candidate", "-"),
             "promoted": prom["promoted"], "decision": prom["reason"], "current model": registry.current.id,
             "lineage": lineage, "budget": budget.name,
             "eval": f"{budget.eval_episodes} held-out episodes per task (seeds from {HELDOUT_SEED})"}
    rl = rl_task_lines(results, list(spec["specialists"]))
    facts.update({f"RL task {t.split('/')[-1]}": line for t, line in rl.items()})
    sections = [("Promotion gate (paired held-out seeds)", prom.get("gate_table", prom["reason"])),
                ("Specialists", "\n".join(lines)),
                ("Distillation data", "```json\n" + json.dumps(ctx.output("distill"), indent=1)[:3000] + "\n```"),
                ("Stage times", timing or "-")]
    md = write_report(ctx.workdir / "report.md", f"Flywheel iteration {ctx.workdir.name}", results, sections, facts)
    return {"report": str(md)}


def rl_task_lines(results: dict[str, dict[str, TaskResult]], tasks: list[str]) -> dict[str, str]:
    """Per RL task (one with a specialist): before -> after with 95% intervals, the change in points, and
    whether the intervals are apart."""
    runs = list(results.values())
    out = {}
    for t in tasks:
        if len(runs) < 2 or t not in runs[0] or t not in runs[1]:
            continue
        b, a = runs[0][t], runs[1][t]
        apart = "apart" if a.ci[0] > b.ci[1] or b.ci[0] > a.ci[1] else "overlapping"
        out[t] = (f"{b.rate:.2f} [{b.ci[0]:.2f}, {b.ci[1]:.2f}] -> {a.rate:.2f} [{a.ci[0]:.2f}, {a.ci[1]:.2f}] "
                  f"(n={b.episodes}/{a.episodes}): {100 * (a.rate - b.rate):+.0f} points, intervals {apart}")
    return out


def _parts(out: Any) -> str:
    secs = out.get("seconds") if isinstance(out, dict) else None
    return f" ({', '.join(f'{k} {v:.0f} s' for k, v in secs.items())})" if isinstance(secs, dict) and secs else ""


def _rate(s: dict[str, Any]) -> str:
    if not s.get("eval_episodes"):
        return "- (not evaluated)"
    return f"{s['eval_success_rate']:.2f} (n={s['eval_episodes']})"


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())
