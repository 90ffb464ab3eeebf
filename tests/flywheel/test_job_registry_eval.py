import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flywheel.evaluate import ChunkedPolicy, TaskResult, results_table, run_episodes, wilson_interval
from flywheel.job import ResumableJob, Stage
from flywheel.registry import ModelRecord, ModelRegistry


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_registry_lineage_and_promotion(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.register(ModelRecord("g0", "/ckpt/g0"))
    reg.register(ModelRecord("g1", "/ckpt/g1", parent="g0", metrics={"success": 0.8}))
    with pytest.raises(KeyError, match="parent"):
        reg.register(ModelRecord("gx", "/x", parent="nope"))
    assert reg.current is None
    reg.promote("g1", "better")
    assert reg.current.id == "g1"
    assert [r.id for r in reg.lineage("g1")] == ["g1", "g0"]
    assert ModelRegistry(tmp_path).history()[-1]["to"] == "g1"


def test_job_skips_finished_stages_and_resumes(tmp_path):
    calls = []

    def a(ctx):
        calls.append("a")
        return {"x": 1}

    def b(ctx):
        calls.append("b")
        return ctx.output("a")["x"] + 1

    job = ResumableJob(tmp_path, [Stage("a", a), Stage("b", b)], config={"k": 1})
    job.run(stop_after="a")
    assert calls == ["a"] and not job.finished
    state = ResumableJob(tmp_path, [Stage("a", a), Stage("b", b)], config={"k": 1}).run()
    assert calls == ["a", "b"] and state["stages"]["b"]["output"] == 2
    with pytest.raises(ValueError, match=r"(?s)different config.*\n  k: 1 -> 2"):  # naming what differs
        ResumableJob(tmp_path, [Stage("a", a)], config={"k": 2}).run()


def test_job_killed_mid_stage_resumes(tmp_path):
    """SIGKILL inside stage b: a rerun skips a, re-enters b and finishes."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from flywheel.job import ResumableJob, Stage
        marker = {str(tmp_path / "a_runs")!r}
        def a(ctx):
            with open(marker, "a") as f: f.write("x")
            return 1
        def b(ctx):
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            return ctx.output("a") + 1
        print(ResumableJob({str(tmp_path / "w")!r}, [Stage("a", a), Stage("b", b)]).run()["stages"]["b"]["output"])
    """))
    r = subprocess.run([sys.executable, str(script), "kill"], capture_output=True, text=True)
    assert r.returncode == -9
    state = json.loads((tmp_path / "w" / "job_state.json").read_text())
    assert state["running"] == "b" and "a" in state["stages"]
    r = subprocess.run([sys.executable, str(script), "ok"], capture_output=True, text=True, env=os.environ)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"
    assert (tmp_path / "a_runs").read_text() == "x"  # a ran once


class _CountEnv:
    """A 1-d env: success when the agent reaches +3 within 10 steps."""

    def reset(self, seed=None):
        self.x, self.t = 0, 0
        return {"x": np.array([0.0], np.float32)}, {}

    def step(self, a):
        self.x += int(np.sign(a[0]))
        self.t += 1
        ok = self.x >= 3
        return {"x": np.array([self.x], np.float32)}, float(ok), ok, self.t >= 10, {"is_success": ok}

    def close(self):
        pass


class _ChunkPolicy:
    def __init__(self, sign):
        self.sign, self.calls = sign, 0

    def infer(self, obs):
        assert obs["instruction"] == "go right"
        self.calls += 1
        return {"actions": np.full((4, 7), self.sign, np.float32)}


def test_chunked_policy_rollouts_count_success():
    pol = _ChunkPolicy(+1)
    ok, steps, rets = run_episodes(_CountEnv(), ChunkedPolicy(pol, "go right", execute=2), seeds=[0, 1])
    assert ok == [True, True] and steps == [3, 3]
    assert pol.calls == 4  # re-infers every 2 steps: steps 1 and 3 of each episode
    ok, _, _ = run_episodes(_CountEnv(), ChunkedPolicy(_ChunkPolicy(-1), "go right"), seeds=[0])
    assert ok == [False]


class _RampPolicy:
    """Chunk j (the j-th call) predicts j*10 + i for its i-th step; the gripper (dim 6) is -j."""

    def __init__(self):
        self.calls = 0

    def infer(self, obs):
        j, self.calls = self.calls, self.calls + 1
        a = np.repeat((j * 10 + np.arange(3, dtype=np.float32))[:, None], 7, 1)
        a[:, 6] = -j
        return {"actions": a}


def test_temporal_ensembling_averages_every_chunk_covering_the_step():
    agent = ChunkedPolicy(_RampPolicy(), "x", ensemble=0.5)
    out = [agent.act({}) for _ in range(4)]
    assert agent.policy.calls == 4  # a chunk at every step
    w = np.exp(-0.5 * np.arange(3))
    # step 2 is covered by chunk 0 (its 3rd action: 2), chunk 1 (11) and chunk 2 (20), oldest weighted most
    assert out[2][0] == pytest.approx((w * [2, 11, 20]).sum() / w.sum())
    assert out[3][0] == pytest.approx((w[:3] * [12, 21, 30]).sum() / w[:3].sum())  # chunk 0 has run out
    assert [a[6] for a in out] == [0, -1, -2, -3]  # the gripper from the newest chunk, never averaged
    agent.reset()
    assert agent.act({})[0] == 40  # a new episode forgets the old chunks
    with pytest.raises(ValueError, match="ensemble"):
        ChunkedPolicy(_RampPolicy(), "x", ensemble=-1)


def test_results_table_has_ci():
    table = results_table({"before": {"t": TaskResult("t", 10, 5, 3.0, 0.5)}, "after": {"t": TaskResult("t", 10, 9, 3.0, 0.9)}})
    assert "| t | 0.50 [0.24, 0.76] (n=10) | 0.90 [0.60, 0.98] (n=10) |" in table


def test_report_writes_markdown_and_png(tmp_path):
    from flywheel.report import write_report

    res = {"before": {"a": TaskResult("a", 10, 2, 5.0, 0.2)}, "after": {"a": TaskResult("a", 10, 8, 5.0, 0.8)}}
    md = write_report(tmp_path / "r.md", "iteration 1", res, sections=[("notes", "hello")], facts={"parent": "g0"})
    text = md.read_text()
    assert "| a | 0.20" in text and "![success](r.png)" in text and "| parent | g0 |" in text
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
