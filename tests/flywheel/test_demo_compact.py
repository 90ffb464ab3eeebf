"""`flywheel-demo` on the compact G0 (issue #16): its defaults, the tiny-VLA fallback, the RL task's report line,
the specialist trained in a child process, and the whole path end to end at budget=tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flywheel.demo import VLA_DEMO, DemoConfig, apply_kind_defaults
from flywheel.evaluate import TaskResult
from flywheel.iterate import BUDGETS, Iteration, resolve_budget
from flywheel.iterate_report import rl_task_lines

PEG, LIFT = "PandaRig/PegInsert-v0", "PandaRig/LiftCube-Red-v0"


def _cfg(*overrides: str):
    from flywheel.demo import register
    from robot.config import compose

    register()
    return compose("flywheel_demo", list(overrides))


def test_demo_defaults_are_the_compact_g0_and_a_sac_specialist():
    cfg = _cfg()
    assert cfg.generalist.kind == "compact" and cfg.generalist.image_size == 128 and cfg.generalist.head == "mlp"
    assert cfg.specialist.algo == "sac" and cfg.budget.name == "demo" and cfg.budget.early_specialists
    assert cfg.sft.finetune == "frozen" and cfg.sft.frame_stride == 2 and cfg.sft.batch_size == 128
    resolve_budget(cfg)  # compact: the demo budget as composed
    assert cfg.budget.pretrain_steps == BUDGETS["demo"].pretrain_steps


def test_kind_vla_takes_the_tiny_vla_demo_settings_but_keeps_explicit_ones():
    cfg = _cfg("generalist.kind=vla", "sft.lr=0.01", "budget.eval_episodes=7")
    apply_kind_defaults(cfg)
    resolve_budget(cfg)
    assert cfg.generalist.image_size == 32 and cfg.specialist.algo == "scripted" and cfg.sft.finetune == "full"
    assert cfg.sft.lr == 0.01  # given on the command line: kept
    assert cfg.budget.name == "demo_vla" and cfg.budget.pretrain_steps == BUDGETS["demo_vla"].pretrain_steps
    assert cfg.budget.eval_episodes == 7 and not cfg.budget.early_specialists
    for group, values in VLA_DEMO.items():
        for key, value in values.items():
            if (group, key) != ("sft", "lr"):
                assert getattr(getattr(cfg, group), key) == value, (group, key)


def test_budget_tiny_is_left_alone_for_either_kind():
    for kind in ("vla", "compact"):
        cfg = _cfg("budget=tiny", f"generalist.kind={kind}")
        resolve_budget(cfg)
        assert cfg.budget.name == "tiny" and cfg.budget.pretrain_steps == 4


def _result(task: str, k: int, n: int) -> TaskResult:
    return TaskResult(task, n, k, 10.0, 0.0, list(range(1_000_000, 1_000_000 + n)), [i < k for i in range(n)])


def test_rl_task_line_states_before_after_with_intervals():
    results = {"before (g0)": {PEG: _result(PEG, 3, 30), LIFT: _result(LIFT, 20, 30)},
               "after (iter_001-rldg)": {PEG: _result(PEG, 21, 30), LIFT: _result(LIFT, 19, 30)}}
    lines = rl_task_lines(results, [PEG])
    assert list(lines) == [PEG]
    line = lines[PEG]
    assert line.startswith("0.10 [") and "-> 0.70 [" in line and "(n=30/30)" in line
    assert "+60 points" in line and "intervals apart" in line
    close = {"b": {PEG: _result(PEG, 10, 30)}, "a": {PEG: _result(PEG, 13, 30)}}
    assert "+10 points, intervals overlapping" in rl_task_lines(close, [PEG])[PEG]
    assert rl_task_lines({"b": {PEG: _result(PEG, 1, 2)}}, [PEG]) == {}  # no candidate evaluated: no line


def test_stores_are_jpeg_for_the_compact_g0_and_png_for_the_tiny_vla(tmp_path):
    from flywheel.data.codecs import frames_codec

    for kind, expect in (("compact", "jpeg:"), ("vla", "")):
        cfg = OmegaConf.structured(DemoConfig(workdir=str(tmp_path / kind)))
        cfg.generalist.kind = kind
        cfg.generalist.image_size = 16
        with Iteration(cfg).store() as store:
            assert frames_codec(store).startswith(expect) and (expect or frames_codec(store) == "")


def test_early_specialists_start_only_for_sac_and_only_before_their_stage(tmp_path, monkeypatch):
    from flywheel.distill.specialist import background

    started = []
    monkeypatch.setattr(background.SpecialistProcess, "start", lambda self: started.append(self.task) or self)
    cfg = OmegaConf.structured(DemoConfig(workdir=str(tmp_path), budget=BUDGETS["demo"]))
    it_dir = tmp_path / "iterations" / "iter_001"
    Iteration(cfg).start_early_specialists(it_dir)
    assert started == [PEG]
    cfg.specialist.algo = "scripted"
    Iteration(cfg).start_early_specialists(it_dir)
    cfg.specialist.algo, cfg.budget.early_specialists = "sac", False
    Iteration(cfg).start_early_specialists(it_dir)
    assert started == [PEG]
    cfg.budget.early_specialists = True
    it_dir.mkdir(parents=True)
    (it_dir / "job_state.json").write_text(json.dumps({"stages": {"specialists": {}}}))
    Iteration(cfg).start_early_specialists(it_dir)
    assert started == [PEG]


def test_specialist_process_returns_the_child_record_and_reports_a_failure(tmp_path):
    from flywheel.distill.specialist import SpecialistConfig
    from flywheel.distill.specialist.background import SpecialistProcess

    p = SpecialistProcess(PEG, asdict(SpecialistConfig(algo="scripted")), tmp_path / "ok").start()
    rec = p.wait()
    assert rec["task"] == PEG and rec["algo"] == "scripted" and not p.running()
    assert json.loads((tmp_path / "ok" / "record.json").read_text()) == rec
    bad = SpecialistProcess(PEG, asdict(SpecialistConfig(algo="nope")), tmp_path / "bad")
    with pytest.raises(RuntimeError, match="exited with 1") as e:
        bad.wait()
    assert "specialist.algo='nope'" in str(e.value) and (tmp_path / "bad" / "train.log").exists()


@pytest.mark.slow
def test_compact_demo_at_budget_tiny_distils_and_reports_the_rl_task(tmp_path):
    """The demo's own path (compact G0 from scratch on cached features, RLDG, gate, report) in about a minute;
    the scripted stand-in specialist so that the tiny budget has successes to distil."""
    wd = tmp_path / "demo"
    cmd = [sys.executable, "-c", "from flywheel.demo import main; main()", f"workdir={wd}", f"hydra.run.dir={wd}/h",
           "budget=tiny", "budget.pretrain_steps=20", "specialist.algo=scripted", "progress=false",
           "generalist.image_size=64", "pretrain_tasks=[PandaRig/PegInsert-v0]", "fail_below=1.01"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    it = wd / "iterations" / "iter_001"
    report = (it / "report.md").read_text()
    assert "| RL task PegInsert-v0 | " in report and " points, intervals " in report
    assert "bootstrap:" in report and "features" in report and "load average" in report
    state = json.loads((it / "job_state.json").read_text())
    boot = state["stages"]["bootstrap"]["output"]
    assert set(boot["seconds"]) == {"collect", "features", "train"}
    cfg = json.loads((Path(boot["path"]) / "policy_config.json").read_text())["config"]
    assert cfg["family"] == "compact" and cfg["image_codec"].startswith("jpeg:")
    assert any((wd / "features").rglob("*.s2.npy"))  # the G0 recipe's every-2nd-frame cache
    assert state["stages"]["distill"]["output"]["checkpoint"]
