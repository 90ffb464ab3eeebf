"""On-policy RL and preference learning side by side at the same env-step budget (issue #18).

Every method starts from the same policy (``--policy``: the compact generalist G0; empty: a
state-only policy from scratch) and gets the same env-step budget on the same tasks; each run is
``flywheel-vla-rl`` (``flywheel.vla_rl.cli.run``) in ``WORKDIR/<method>`` - resumable, so a killed
benchmark continues where it stopped, and a finished method is not run again (a run started with other settings
is refused, naming them: give a new ``--workdir`` or a ``--variant``). Methods: ``ppo``,
``grpo``, ``rloo`` (LOOP), ``gspo``, ``gfpo``, ``dpo`` (GRAPE) and ``ppo_prm`` (PPO with the
process reward model's shaping). The report (``--out``) has one row per method (and variant): held-out
success before and after, mean successful episode length, rollout speed, groups rejected and the update
compute that rejection / filtering saved, and a PNG beside it with each run's held-out success and
successful episode length against env steps.

    .venv/bin/python benchmarks/vla_rl.py --policy outputs/bench/g0/g0 --tasks PegInsert \\
        --env-steps 30000 --workdir outputs/bench/vla_rl      # report: WORKDIR/report.md
    # the toy point-reach task of the tests (seconds per method):
    .venv/bin/python benchmarks/vla_rl.py --toy --env-steps 4000 --out /tmp/vla_rl_toy.md

Extra hydra overrides for every run: ``--set key=value`` (repeatable), e.g. ``--set exec_horizon=4``; for one
method's runs: ``--set-for METHOD key=value ...`` (after ``--set``, so it wins). An ablation beside the plain
runs, in the same report and plot: ``--variant LABEL key=value ...`` (repeatable) runs every method again with
those overrides as ``<method>-<LABEL>`` (its own ``WORKDIR/<method>-<LABEL>``), e.g. LOOP with and without
dynamic rejection: ``--methods rloo --variant norej algo.reject_uniform=false``.
``--jobs N``: N runs at once, each in a process of its own (its results are the serial run's).
``--cluster ray --workers N``: each run's rollout waves on N Ray workers (a local Ray cluster started
per run; ``cluster.*`` of ``flywheel-vla-rl``); the batches, hence the results, are the serial run's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("ppo", "grpo", "rloo", "gspo", "gfpo", "dpo", "ppo_prm")
ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]) -> Any:
    from hydra import compose as _compose
    from hydra import initialize
    from hydra.core.global_hydra import GlobalHydra

    from flywheel.vla_rl.cli import register

    register()
    GlobalHydra.instance().clear()
    with initialize(version_base=None, config_path=None):
        return _compose("flywheel_vla_rl", overrides=overrides)


def method_overrides(method: str) -> list[str]:
    if method == "ppo_prm":
        return ["algo=ppo", "prm.enabled=true"]
    return [f"algo={method}"]


def prepare(method: str, seed: int, args: argparse.Namespace, work: Path, label: str = "",
            extra: list[str] | None = None) -> tuple[Any, Path]:
    """(the config, the run's directory) of one run of ``method`` (``label``: a variant, whose overrides ``extra``
    come last); refused (SystemExit, naming the settings) where that directory holds a run started otherwise."""
    from flywheel.vla_rl.cli import check_resumable

    out = work / run_name(method, label) / f"seed{seed}"
    ov = [*method_overrides(method), f"policy={args.policy}", f"tasks=[{','.join(args.tasks)}]",
          f"env_steps={args.env_steps}", f"out_dir={out}", f"seed={seed}", f"num_envs={args.num_envs}",
          f"train.eval_every={args.eval_every}", f"train.eval_episodes={args.eval_episodes}",
          f"train.final_eval_episodes={args.final_eval_episodes}", f"torch_threads={args.threads}",
          "train.progress=false", f"cluster.kind={args.cluster}", f"cluster.workers={args.workers}"]
    if args.toy:
        ov += ["env.factory=vla_rl_toy:make_vec", "env.state_keys=[state/pos,state/goal]", "head.action_dim=2",
               "head.hidden=[64,64]", "head.value_hidden=[64,64]", "algo.lr=0.001"]
    per_method = [o for m, *sets in args.set_for if m == method for o in sets]
    cfg = compose(ov + list(args.set) + per_method + list(extra or []))
    try:  # a finished or half-done run is reused only if it was started with these settings
        check_resumable(cfg, out)
    except ValueError as e:
        raise SystemExit(f"{run_name(method, label)} seed {seed}: {e}") from None
    return cfg, out


def run_method(cfg: Any, out: Path) -> dict[str, Any]:
    """One run (:func:`prepare`'s config) in its own resumable directory ``out``; a finished one is read, not run
    again."""
    from flywheel.vla_rl.cli import run

    done = out / "results.json"
    if done.is_file():
        res = json.loads(done.read_text())
        if res.get("env_steps", 0) >= int(cfg.env_steps) and "final_eval" in res:
            return res
    t0 = time.time()
    res = run(cfg)
    res["bench_wall_seconds"], res["bench_pid"] = time.time() - t0, os.getpid()
    done.write_text(json.dumps(res, indent=2, default=str))
    return res


def run_all(todo: list[tuple[str, int, str, list[str]]], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every (method, seed, variant label, its overrides) of ``todo``, ``args.jobs`` at a time (each run in its own
    process beyond one; a run is single-threaded unless ``--threads``), results in ``todo``'s order."""

    def done(m: str, seed: int, label: str, r: dict[str, Any]) -> dict[str, Any]:
        print(f"== {run_name(m, label)} seed {seed}: {r['initial_eval']['success']:.2f} -> "
              f"{r['final_eval']['success']:.2f}", flush=True)
        return r

    prepared = [prepare(m, seed, args, work, label, extra) for m, seed, label, extra in todo]  # all checked first
    if args.jobs <= 1 or len(todo) <= 1:
        return [done(m, seed, label, run_method(*p)) for (m, seed, label, _), p in zip(todo, prepared, strict=True)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would share the parent's torch / EGL state
    with ProcessPoolExecutor(min(args.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(run_method, *p) for p in prepared]
        return [done(m, seed, label, f.result()) for (m, seed, label, _), f in zip(todo, futures, strict=True)]


def run_name(method: str, label: str = "") -> str:
    return f"{method}-{label}" if label else method


def variants(specs: list[list[str]]) -> list[tuple[str, list[str]]]:
    """The plain runs, then each ``--variant LABEL override...`` as (label, overrides); labels must be unique
    names a directory can carry, and every override ``key=value``."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for label, *ovs in specs:
        if not label.replace("_", "").replace(".", "").isalnum() or label in {lab for lab, _ in out}:
            raise SystemExit(f"--variant {label!r}: the label must be a new name of letters, digits, _ or .")
        if not ovs or any("=" not in o for o in ovs):
            raise SystemExit(f"--variant {label}: give one or more hydra overrides key=value after the label")
        out.append((label, ovs))
    return out


def plot(results: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Each method's held-out success and mean successful episode length against env steps: the mean over
    seeds (one line per method and panel; GFPO's goal is read off the second)."""
    import numpy as np

    from flywheel.plotting import figure

    with figure(path, (10.0, 3.8), ncols=2) as (ax_s, ax_l):
        for m, runs in results.items():
            n = min(len(r["evals"]) for r in runs)
            x = np.mean([[e["env_steps"] for e in r["evals"][:n]] for r in runs], 0)
            y = np.mean([[e["success"] for e in r["evals"][:n]] for r in runs], 0)
            ax_s.plot(x, y, "o-", ms=3, label=m)
            length = [[np.nan if e.get("success_length") is None else e["success_length"] for e in r["evals"][:n]]
                      for r in runs]
            length = np.asarray(length, dtype=float)
            seen = ~np.all(np.isnan(length), 0)  # an evaluation where no seed succeeded has no length
            if seen.any():
                ax_l.plot(x[seen], np.nanmean(length[:, seen], 0), "o-", ms=3, label=m)
        ax_s.set_xlabel("env steps")
        ax_s.set_ylabel("held-out success (deterministic)")
        ax_s.set_ylim(-0.02, 1.02)
        ax_s.set_title(title)
        ax_s.legend(fontsize=8)
        ax_l.set_xlabel("env steps")
        ax_l.set_ylabel("mean successful episode length (steps)")
        ax_l.set_title("successful episode length")


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mean(runs: list[dict[str, Any]], get: Any) -> float | None:
    import numpy as np

    vals = [v for r in runs if (v := get(r)) is not None]
    return float(np.mean(vals)) if vals else None


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, png: Path) -> str:
    import numpy as np

    lines = [
        "| method | success start | success end (mean +- sd over seeds) | change | successful episode length | "
        "env steps/s | groups rejected | update compute saved (by rejection / filtering) | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, runs in results.items():
        a = _mean(runs, lambda r: r["initial_eval"]["success"])
        ends = [r["final_eval"]["success"] for r in runs]
        b, sd = float(np.mean(ends)), float(np.std(ends))
        length = _mean(runs, lambda r: r["final_eval"].get("success_length"))
        sps = _mean(runs, lambda r: r.get("env_steps_per_s"))
        rej = _mean(runs, lambda r: r.get("groups_rejected_mean", 0.0))
        saved = _mean(runs, lambda r: r.get("update_compute_saved", 0.0))
        filt = _mean(runs, lambda r: r.get("update_compute_saved_by_filtering", 0.0))
        wall = _mean(runs, lambda r: r.get("bench_wall_seconds", r.get("wall_seconds", 0.0)))
        lines.append(f"| {m} | {a:.2f} | {b:.2f} +- {sd:.2f} | {b - a:+.2f} | {_f(length, '{:.1f}')} | "
                     f"{_f(sps, '{:.0f}')} | {rej:.2f} | {saved:.0%} ({filt:.0%}) | {wall:.0f} |")
    cmd = "python benchmarks/vla_rl.py " + " ".join(sys.argv[1:])
    return "\n".join([
        f"Policy: `{args.policy or 'state policy from scratch'}`{' (toy point-reach task)' if args.toy else ''}; "
        f"tasks {', '.join(args.tasks)}; {args.env_steps} env steps per method and seed; seeds {args.seeds}; "
        f"held-out evaluation every {args.eval_every} env steps ({args.eval_episodes} episodes) and at the end "
        f"({args.final_eval_episodes}).", "", *lines, "", f"![curves]({png.name})", "",
        f"Command: `{cmd}`", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="", help="G0 checkpoint (compact VLA); empty: a state policy from scratch")
    p.add_argument("--tasks", nargs="+", default=["PegInsert"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--env-steps", type=int, default=30_000)
    p.add_argument("--eval-every", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--final-eval-episodes", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (about one per core)")
    p.add_argument("--toy", action="store_true", help="the tests' point-reach task instead of the sim")
    p.add_argument("--cluster", default="local", choices=("local", "ray"), help="where rollouts run")
    p.add_argument("--workers", type=int, default=2, help="--cluster ray: Ray workers (one CPU each)")
    p.add_argument("--set", action="append", default=[], help="an extra hydra override for every run")
    p.add_argument("--set-for", nargs="+", action="append", default=[], metavar=("METHOD", "KEY=VALUE"),
                   help="hydra overrides for one method's runs (repeatable), after --set")
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("LABEL", "KEY=VALUE"),
                   help="an ablation: every method again with these overrides, as <method>-LABEL (repeatable)")
    p.add_argument("--workdir", default="outputs/bench/vla_rl")
    p.add_argument("--out", default="", help="also write the report here (default: only WORKDIR/report.md; the "
                   "hand-kept docs/bench/vla_rl.md is never a default target)")
    args = p.parse_args()
    if args.toy:
        toy = str(ROOT / "tests" / "flywheel" / "vla_rl")
        sys.path.insert(0, toy)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [toy, os.environ.get("PYTHONPATH")]))  # Ray workers
        args.methods = [m for m in args.methods if m != "ppo_prm"]  # the PRM's demos come from the sim expert
        args.tasks = ["reach"]
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: give the number of runs at once, 1 or more")
    for m, *_ in args.set_for:
        if m not in METHODS:
            raise SystemExit(f"--set-for {m!r}: not a method ({', '.join(METHODS)})")
    runs = variants(args.variant)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    todo = [(m, seed, label, extra) for label, extra in runs for m in args.methods for seed in args.seeds]
    results: dict[str, list[dict[str, Any]]] = {}
    for (m, _seed, label, _), r in zip(todo, run_all(todo, args, work), strict=True):
        results.setdefault(run_name(m, label), []).append(r)
    out = Path(args.out) if args.out else work / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.stem + "_curves.png")
    plot(results, png, f"{', '.join(args.tasks)}: {args.env_steps} env steps")
    body = report(results, args, png)
    (work / "report.md").write_text(body)
    print(body)
    if args.out:
        out.write_text(f"# On-policy RL and preference learning (issue #18)\n\n{body}")


if __name__ == "__main__":
    main()
