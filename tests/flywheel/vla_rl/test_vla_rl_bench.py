"""``benchmarks/vla_rl.py``: methods, per-method overrides and ablation variants side by side in one report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "benchmarks" / "vla_rl.py"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_variant_runs_beside_the_plain_method_with_its_overrides(tmp_path):
    work = tmp_path / "work"
    p = bench("--toy", "--methods", "rloo", "--variant", "norej", "algo.reject_uniform=false",
              "--set-for", "rloo", "algo.group_size=4", "--set", "algo.group_size=8",
              "--env-steps", "400", "--eval-every", "400", "--eval-episodes", "4", "--final-eval-episodes", "4",
              "--num-envs", "8", "--workdir", str(work), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    plain = json.loads((work / "rloo" / "seed0" / "results.json").read_text())
    ablated = json.loads((work / "rloo-norej" / "seed0" / "results.json").read_text())
    assert plain["config"]["algo"]["reject_uniform"] is True  # LOOP's default
    assert ablated["config"]["algo"]["reject_uniform"] is False  # the variant's override
    assert plain["config"]["algo"]["group_size"] == ablated["config"]["algo"]["group_size"] == 4  # --set-for wins
    assert ablated["groups_rejected_mean"] == 0.0
    rows = [r.split("|")[1].strip() for r in (work / "report.md").read_text().splitlines() if r.startswith("| rloo")]
    assert rows == ["rloo", "rloo-norej"]
    assert (work / "report_curves.png").stat().st_size > 0
    # the same workdir with other settings: refused before any run, naming the setting (not read as done)
    p = bench("--toy", "--methods", "rloo", "--set-for", "rloo", "algo.group_size=8", "--env-steps", "400",
              "--eval-every", "400", "--eval-episodes", "4", "--final-eval-episodes", "4", "--num-envs", "8",
              "--workdir", str(work), cwd=tmp_path)
    assert p.returncode != 0 and "algo.group_size: 4 -> 8" in p.stderr, p.stderr[-2000:]


def test_bad_variants_and_method_overrides_are_refused_before_any_run(tmp_path):
    for args, msg in [(["--variant", "no rej", "algo.reject_uniform=false"], "label"),
                      (["--variant", "norej"], "overrides"),
                      (["--variant", "a", "x=1", "--variant", "a", "y=2"], "label"),
                      (["--set-for", "sac", "algo.lr=1"], "not a method"),
                      (["--jobs", "0"], "1 or more")]:
        p = bench("--toy", "--methods", "rloo", "--workdir", str(tmp_path / "w"), *args, cwd=tmp_path)
        assert p.returncode != 0 and msg in p.stderr, (args, p.stderr[-500:])
    assert not (tmp_path / "w" / "rloo").exists()


def test_jobs_run_in_parallel_processes_with_the_serial_results(tmp_path):
    """``--jobs 2``: the runs go to two processes; each run's results are the serial run's (its own seeds)."""
    common = ["--toy", "--methods", "grpo", "--env-steps", "300", "--eval-every", "300", "--eval-episodes", "4",
              "--final-eval-episodes", "8", "--num-envs", "8", "--set", "algo.group_size=4"]
    p = bench(*common, "--seeds", "0", "1", "--jobs", "2", "--workdir", str(tmp_path / "par"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    q = bench(*common, "--seeds", "1", "--workdir", str(tmp_path / "ser"), cwd=tmp_path)
    assert q.returncode == 0, q.stderr[-3000:]
    par = [json.loads((tmp_path / "par" / "grpo" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    ser = json.loads((tmp_path / "ser" / "grpo" / "seed1" / "results.json").read_text())
    assert par[0]["bench_pid"] != par[1]["bench_pid"] != ser["bench_pid"]  # each run in a process of its own
    assert [e["success"] for e in par[1]["evals"]] == [e["success"] for e in ser["evals"]]
    hist = [json.loads((d / "grpo" / "seed1" / "checkpoint" / "state.json").read_text())["history"]
            for d in (tmp_path / "par", tmp_path / "ser")]
    assert [h["loss"] for h in hist[0]] == [h["loss"] for h in hist[1]]  # the same updates, to the bit
