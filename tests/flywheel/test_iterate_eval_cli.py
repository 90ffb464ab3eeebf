"""`flywheel-eval` and the job configs: success with intervals over seeded episodes, clear errors, budgets."""

import json

import pytest
from omegaconf import OmegaConf

from flywheel.evaluate import EvalConfig, run_eval


def test_eval_expert_writes_results_with_ci(tmp_path, capsys):
    cfg = OmegaConf.structured(EvalConfig(policy="expert", tasks=["PandaRig/PegInsert-v0"], episodes=2, cameras=[],
                                          out=str(tmp_path / "r.json"), progress=False))
    res = run_eval(cfg)
    r = res["PandaRig/PegInsert-v0"]
    assert r.episodes == 2 and r.seeds == [1_000_000, 1_000_001] and r.successes == 2
    saved = json.loads((tmp_path / "r.json").read_text())["PandaRig/PegInsert-v0"]
    assert saved["ci95"][1] == pytest.approx(1.0) and saved["ci95"][0] < 1.0
    assert "| PandaRig/PegInsert-v0 | 1.00 [" in capsys.readouterr().out


def test_eval_rejects_a_path_that_is_no_checkpoint(tmp_path):
    cfg = OmegaConf.structured(EvalConfig(policy=str(tmp_path), episodes=1))
    with pytest.raises(FileNotFoundError, match="policy_config.json"):
        run_eval(cfg)
    with pytest.raises(ValueError, match="episodes"):
        run_eval(OmegaConf.structured(EvalConfig(episodes=0)))


def test_budget_groups_compose_with_overrides():
    from hydra import compose, initialize_config_dir

    from flywheel.iterate import register

    register()
    with initialize_config_dir(config_dir=str(__import__("pathlib").Path(__file__).parent), version_base=None):
        cfg = compose("flywheel_iterate", ["budget=tiny", "budget.rollouts=7", "specialist.algo=sac"])
    assert cfg.budget.name == "tiny" and cfg.budget.pretrain_steps == 4 and cfg.budget.rollouts == 7
    assert cfg.specialist.algo == "sac"
    with initialize_config_dir(config_dir=str(__import__("pathlib").Path(__file__).parent), version_base=None):
        assert compose("flywheel_iterate").budget.name == "demo"


def test_flywheel_eval_writes_its_results_in_the_run_directory(tmp_path):
    """Without ``out=``, ``flywheel-eval`` writes ``eval_results.json`` in hydra's run directory, not in the directory
    it was started from (hydra does not change it; before 2026-12-01 the file landed there)."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("flywheel-eval")
    here, run_dir = tmp_path / "here", tmp_path / "run"
    here.mkdir()
    subprocess.run([str(exe), "policy=expert", "episodes=1", "cameras=[]", "max_steps=3", "progress=false",
                    f"hydra.run.dir={run_dir}"], cwd=here, check=True, capture_output=True, timeout=300)
    assert json.loads((run_dir / "eval_results.json").read_text())["PandaRig/PegInsert-v0"]["episodes"] == 1
    assert not (here / "eval_results.json").exists()
