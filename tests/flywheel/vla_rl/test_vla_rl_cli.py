"""``flywheel-vla-rl`` end to end on the toy task: outputs, resume, the registry candidate."""

from __future__ import annotations

import json

import pytest
import torch


def _compose(tmp_path, *over):
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    from flywheel.vla_rl.cli import register

    register()
    GlobalHydra.instance().clear()

    with initialize(version_base=None, config_path=None):
        return compose("flywheel_vla_rl", overrides=[
            "env.factory=vla_rl_toy:make_vec", "env.state_keys=[state/pos,state/goal]", "head.action_dim=2",
            "head.hidden=[32,32]", "head.value_hidden=[32]", "tasks=[reach]", "num_envs=16",
            f"out_dir={tmp_path / 'run'}", "train.eval_episodes=16", "train.final_eval_episodes=16",
            "train.progress=false", *over])


def test_config_groups_per_algorithm(tmp_path):
    from flywheel.vla_rl import ALGORITHMS

    for name in ALGORITHMS:
        cfg = _compose(tmp_path, f"algo={name}")
        assert cfg.algo.name == name
    cfg = _compose(tmp_path, "algo=gfpo", "algo.adaptive=true", "algo.group_size=12")
    assert cfg.algo.adaptive and cfg.algo.group_size == 12 and cfg.algo.keep == 8
    with pytest.raises(Exception, match="nope"):
        _compose(tmp_path, "algo=nope")


def test_head_train_mlp_needs_a_generalist(tmp_path):
    from flywheel.vla_rl.cli import build

    with pytest.raises(ValueError, match="needs a generalist checkpoint"):
        build(_compose(tmp_path, "head.train=mlp"))


def test_sample_executed_sets_the_heads_sampled_steps(tmp_path):
    from flywheel.vla_rl.cli import build

    with pytest.raises(ValueError, match="exec_horizon"):
        build(_compose(tmp_path, "head.sample_executed=true"))
    pol, _ = build(_compose(tmp_path, "head.sample_executed=true", "head.horizon=4", "exec_horizon=2"))
    assert pol.sampled.shape == (4, 2) and pol.sampled[:2].all() and not pol.sampled[2:].any()
    assert pol.desc["head"]["sampled_steps"] == 2  # saved with the policy, so a resumed run rebuilds it


def test_run_resume_and_register(tmp_path):
    from flywheel.registry import ModelRegistry
    from flywheel.vla_rl.checkpoint import load_policy
    from flywheel.vla_rl.cli import run

    over = ["algo=grpo", "algo.groups_per_iter=4", "algo.group_size=4", f"registry={tmp_path / 'reg'}",
            "train.eval_every=200"]
    res = run(_compose(tmp_path, "env_steps=300", *over))
    out = tmp_path / "run"
    for f in ("report.md", "curve.png", "results.json", "policy/vla_rl_policy.json", "checkpoint/state.json"):
        assert (out / f).is_file(), f
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert res["env_steps"] >= 300 and not res["resumed"]
    assert [e["env_steps"] for e in res["evals"]][0] == 0 and len(res["evals"]) >= 2
    assert res["config"]["algo"]["name"] == "grpo" and res["algo"] == "grpo"
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    it = state["iteration"]
    assert "train/success" in _tb_tags(out) and "eval/success" in _tb_tags(out)
    reg = ModelRegistry(tmp_path / "reg")
    rec = reg.get(res["candidate_id"])
    assert rec.path == str(out / "policy") and reg.current is None  # a candidate, not promoted
    load_policy(out / "policy")
    # a larger budget resumes from the checkpoint: iterations continue, the first evaluation is kept
    res2 = run(_compose(tmp_path, "env_steps=600", *over))
    assert res2["resumed"] and res2["iterations"] > it and res2["env_steps"] >= 600
    assert res2["evals"][0] == res["evals"][0]
    assert "## Held-out success per task" in (out / "report.md").read_text()
    # grpo without rejection: whatever update compute was saved, the KL early stop saved it
    assert res2["update_compute_saved_by_filtering"] == 0.0
    assert res2["update_compute_saved_by_early_stop"] == pytest.approx(res2["update_compute_saved"])
    assert "(rejection / filtering 0.0%, the KL early stop" in (out / "report.md").read_text()
    # resuming with another setting would mix two experiments: refused, naming it, and the run is untouched
    before = (out / "checkpoint" / "state.json").read_bytes()
    with pytest.raises(ValueError, match=r"algo.clip: 0.2 -> 0.3"):
        run(_compose(tmp_path, "env_steps=900", *over, "algo.clip=0.3"))
    assert (out / "checkpoint" / "state.json").read_bytes() == before
    assert json.loads((out / "config.json").read_text())["algo"]["clip"] == 0.2


def test_config_changes_leave_out_what_a_resumption_may_change():
    from flywheel.job import config_changes
    from flywheel.vla_rl.cli import RESUMABLE

    saved = {"env_steps": 100, "algo": {"lr": 1e-4, "clip": 0.2}, "train": {"eval_every": 10, "keep": "best"},
             "cluster": {"kind": "local"}, "old_setting": 1}
    new = {"env_steps": 900, "algo": {"lr": 3e-4, "clip": 0.2}, "train": {"eval_every": 50, "keep": "last"},
           "cluster": {"kind": "ray"}, "new_setting": 2}
    assert config_changes(saved, new, RESUMABLE, both_sides_only=True) == [
        "algo.lr: 0.0001 -> 0.0003", "train.keep: 'best' -> 'last'"]
    assert config_changes(saved, saved, RESUMABLE, both_sides_only=True) == []
    # without the exemptions (as a ResumableJob compares): every difference, a missing side as (unset)
    assert config_changes({"a": {"b": 1}, "x": 1}, {"a": {"b": 2}, "y": None}) == [
        "a.b: 1 -> 2", "x: 1 -> '(unset)'", "y: '(unset)' -> None"]


def test_retained_tasks_are_the_references_and_cost_no_budget(tmp_path, monkeypatch):
    """train.retain_tasks: the reference's deterministic decisions, collected once per run (again on resume, the
    same states), no env steps counted, nothing recorded; the run logs their drift."""
    from flywheel.vla_rl.cli import run
    from flywheel.vla_rl.trainer import Trainer

    with pytest.raises(ValueError, match="give both"):
        run(_compose(tmp_path, "env_steps=100", "train.retain_tasks=[reach]"))
    got = []
    orig = Trainer.collect_retained

    def spy(self):
        steps = self.engine.env_steps
        orig(self)
        assert self.engine.env_steps == steps and self.engine.policy is self.policy
        got.append(self.algo.retain_feats.clone())

    monkeypatch.setattr(Trainer, "collect_retained", spy)
    over = ["algo=ppo", "algo.retain_coef=1.0", "train.retain_tasks=[reach]", "train.retain_episodes=4"]
    res = run(_compose(tmp_path, "env_steps=200", *over))
    assert len(got) == 1 and len(got[0]) > 0
    assert all("retain" in h for h in json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["history"])
    run(_compose(tmp_path, "env_steps=400", *over))  # resumed: the policy moved, the retained states did not
    assert len(got) == 2 and torch.equal(got[0], got[1]) and res["env_steps"] >= 200


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_run_hands_on_the_best_evaluated_policy(tmp_path, monkeypatch, keep):
    """train.keep=best: policy/, generalist/ and the registry get the policy of the best held-out evaluation (the
    earliest of ties), not the last; checkpoint/ keeps the last for a longer budget. keep=last: the last."""
    import safetensors.torch
    import torch

    from flywheel.registry import ModelRegistry
    from flywheel.vla_rl.cli import run
    from flywheel.vla_rl.trainer import Trainer

    script = iter([0.1, 0.5, 0.2, 0.5, 0.5, 0.5])  # the start, the evaluations, the final: the 2nd the first best

    def scripted(self, task, episodes):
        return next(script), None

    monkeypatch.setattr(Trainer, "task_success", scripted)
    res = run(_compose(tmp_path, "algo=grpo", "algo.groups_per_iter=4", "algo.group_size=4", "algo.lr=3e-3",
                       "env_steps=400", "train.eval_every=100", f"train.keep={keep}", f"registry={tmp_path / 'reg'}"))
    out = tmp_path / "run"
    assert [e["success"] for e in res["evals"]][:4] == [0.1, 0.5, 0.2, 0.5]  # the final ties the best
    handed = safetensors.torch.load_file(str(out / "policy" / "policy.safetensors"))
    state = safetensors.torch.load_file(str(out / "checkpoint" / "state.safetensors"))
    last = {k[7:]: v for k, v in state.items() if k.startswith("policy/")}
    same_as_last = all(torch.equal(handed[k], last[k]) for k in handed)
    rec = ModelRegistry(tmp_path / "reg").get(res["candidate_id"])
    if keep == "best":
        best = safetensors.torch.load_file(str(out / "best" / "policy.safetensors"))
        assert res["kept"] == {**res["kept"], "keep": "best", "success": 0.5, "env_steps": res["evals"][1]["env_steps"]}
        assert all(torch.equal(handed[k], best[k]) for k in handed) and not same_as_last
        assert rec.metrics["success"] == 0.5 and rec.metrics["env_steps"] == res["evals"][1]["env_steps"]
        assert "handed on (`train.keep=best`)" in (out / "report.md").read_text()
    else:
        assert not (out / "best").exists() and same_as_last
        assert res["kept"]["keep"] == "last" and rec.metrics["env_steps"] == res["env_steps"]
    with pytest.raises(ValueError, match="train.keep"):
        run(_compose(tmp_path, "train.keep=first"))


def _tb_tags(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (out / "tb").glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f))
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
    return tags


@pytest.mark.slow
def test_behaviour_cloning_warm_start_on_sim_demos(tmp_path):
    """bc_init: the scripted expert's successful PegInsert episodes (through the one rollout loop)
    fit a fresh state policy's mean."""
    import torch
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    from flywheel.vla_rl.cli import bc_init, build, expert_demos, register

    register()
    GlobalHydra.instance().clear()
    with initialize(version_base=None, config_path=None):
        cfg = compose("flywheel_vla_rl", overrides=["tasks=[PegInsert]", "head.hidden=[32]", "head.value_hidden=[8]"])
    pol, _ = build(cfg)
    demos = expert_demos(cfg, pol, 1, 1)
    (feats, chunks), = demos
    assert feats.shape == (len(chunks), pol.feature_dim) and chunks.shape[1:] == (1, 7)
    assert float(chunks.abs().max()) <= 1.0
    with torch.no_grad():
        before = float(((pol.dist(feats)[0] - chunks) ** 2).mean())
    after = bc_init(pol, demos, steps=200, lr=3e-3)
    assert after < 0.5 * before


def test_make_config_composes_without_hydras_global_state():
    """The config iRe-VLA's on-policy stage 1 builds inside another app: defaults, the algorithm's group, overrides."""
    from omegaconf.errors import ConfigKeyError

    from flywheel.vla_rl.cli import make_config

    cfg = make_config("gfpo", ["algo.group_size=12", "head.fixed_dims=[6]", "record_collection=ire/r1/peg/gfpo"])
    assert cfg.algo.name == "gfpo" and cfg.algo.group_size == 12 and cfg.algo.keep == 8
    assert list(cfg.head.fixed_dims) == [6] and cfg.record_collection == "ire/r1/peg/gfpo" and cfg.num_envs == 16
    with pytest.raises(ConfigKeyError, match="nope"):
        make_config("ppo", ["nope=1"])
    with pytest.raises(ValueError, match="use one of"):
        make_config("sac")
