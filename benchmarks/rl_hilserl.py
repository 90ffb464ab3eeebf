"""HIL-SERL on the sim tasks and its ablation (HIL-SERL paper): full, demos without
interventions, neither demos nor interventions, and BC on the same demos (plus ``full_distance`` and
``full_patient``: full with the simulated operator's ``criterion=distance`` or ``direction``).

    .venv/bin/python benchmarks/rl_hilserl.py --task peg_insert --steps 6000
    .venv/bin/python benchmarks/rl_hilserl.py --task lift_cube --steps 8000 --jobs 2
    .venv/bin/python benchmarks/rl_hilserl.py --quick          # a few hundred steps, smoke only
    .venv/bin/python benchmarks/rl_hilserl.py --summarize outputs/bench/rl   # table from finished runs

Each variant is one ``flywheel-rl`` run (state-only observations) in
``--out/<task>/<variant>``; finished runs (``results.json``) are not rerun. The
table (final success over ``--eval`` evaluation episodes at the same env-step
budget) is printed and written to ``--out/<task>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "full": [],  # the simulated operator steps in only when the policy is stuck (criterion=stall)
    "full_distance": ["intervention.criterion=distance"],  # ... also whenever its motion differs from the operator's
    "full_patient": ["intervention.criterion=direction"],  # ... also whenever the policy heads away
    "demos_no_interventions": ["intervention.enabled=false"],
    "no_demos_no_interventions": ["demos.num=0", "intervention.enabled=false"],
    "bc": ["algo=bc"],
}


def _cmd(task: str, variant: str, steps: int, evals: int, out: Path, extra: list[str]) -> list[str]:
    exe = str(Path(sys.executable).with_name("flywheel-rl"))
    return [exe, f"rl_task={task}", f"total_steps={steps}", f"out_dir={out}", f"role.final_eval_episodes={evals}",
            "learner.eval_every=1000", "learner.eval_episodes=20", "progress=false",
            f"hydra.run.dir={out}/hydra", *VARIANTS[variant], *extra]


def summarize(root: Path, task: str) -> str:
    rows = []
    for v in VARIANTS:
        f = root / task / v / "results.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        rows.append(
            f"| {task} | {v} | {r['final_eval']['success_rate'] * 100:.0f}% | "
            f"{r['final_eval']['length']:.1f} | {r['env_steps']} | {r.get('demo_episodes', 0):.0f} | "
            f"{r['intervention_rate'] * 100:.1f}% | {r['train_seconds'] / 60:.1f} |"
        )
    head = ("| task | variant | eval success | eval ep. length | env steps | demos | intervened steps | "
            "train min |\n|---|---|---:|---:|---:|---:|---:|---:|")
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="peg_insert", help="rl_task preset: peg_insert | lift_cube")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if not v.startswith("full_")))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="outputs/bench/rl")
    ap.add_argument("--quick", action="store_true", help="300 steps, 5 eval episodes, 3 demos")
    ap.add_argument("--summarize", default="", help="only print the table of runs under this folder")
    ap.add_argument("extra", nargs="*", help="more hydra overrides for every run")
    a = ap.parse_args()
    if a.summarize:
        for t in ("peg_insert", "lift_cube"):
            print(summarize(Path(a.summarize), t))
        return
    extra = list(a.extra)
    if a.quick:
        a.steps, a.eval = 300, 5
        extra += ["demos.num=3", "algo.steps=200"]
    root = Path(a.out)
    pending = []
    for v in a.variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; use {list(VARIANTS)}")
        out = root / a.task / v
        if (out / "results.json").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        pending.append((v, _cmd(a.task, v, a.steps, a.eval, out, extra), out))
    running: list[tuple[str, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < a.jobs:
            v, cmd, out = pending.pop(0)
            print("run:", " ".join(cmd), flush=True)
            log = open(out / "log.txt", "w")  # noqa: SIM115 - closed with the process
            running.append((v, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ), time.time()))
        for item in list(running):
            v, p, t0 = item
            if p.poll() is not None:
                running.remove(item)
                print(f"{v}: exit {p.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
        time.sleep(2)
    table = summarize(root, a.task)
    print(table)
    (root / a.task / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
