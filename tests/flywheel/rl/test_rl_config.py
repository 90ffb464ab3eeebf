"""``flywheel-rl``'s config: the ``role`` and ``algo`` groups, the old (union) keys, and runs saved before them."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from flywheel.rl import cli
from flywheel.rl.app import MOVED, _plain, compose, run, upgrade_config
from flywheel.rl.reward_refine import RefineConfig

OLD = Path(__file__).parent / "fixtures" / "results_config_before_groups.json"
TOY = ["rl_task=none", "env.factory=rl_toy_envs:LineEnv", "agent.hidden_dims=[32]", "agent.arm_dims=[0]",
       "agent.batch_size=32", "demos.num=0", "intervention.enabled=false", "progress=false"]


def test_each_role_and_algo_option_holds_its_own_fields_only():
    a = compose(["role=actor", "role.actor_name=rig0", "role.rate_hz=10", "role.record_to=/s", "transport.send_every=7"])
    assert a.role.name == "actor" and a.role.actor_name == "rig0" and a.role.rate_hz == 10.0
    assert "final_eval_episodes" not in a.role and "resume" not in a.role and a.transport.send_every == 7
    learner = compose(["role=learner", "role.final_eval_episodes=3", "role.resume=false"]).role
    assert learner.final_eval_episodes == 3 and not learner.resume and "actor_name" not in learner
    local = compose([])
    assert local.role.name == "local" and local.algo.name == "hil_serl" and local.env.task == "PegInsert"
    assert {"actor_name", "record_to", "resume", "final_eval_episodes"} <= set(local.role)
    bc = compose(["algo=bc", "algo.steps=12"]).algo
    assert bc.name == "bc" and bc.steps == 12 and "reward" not in bc
    assert compose(["algo.reward=classifier", "algo.classifier=c.safetensors"]).algo.classifier == "c.safetensors"


def test_a_field_of_another_role_or_algo_fails_naming_its_owner():
    with pytest.raises(ValueError, match=r"role.final_eval_episodes= is not a field of role=actor "
                                         r"\(a field of role=local and role=learner\)"):
        compose(["role=actor", "role.final_eval_episodes=5"])
    with pytest.raises(ValueError, match=r"role.rate_hz= is not a field of role=local \(a field of role=actor\)"):
        compose(["role.rate_hz=5"])
    with pytest.raises(ValueError, match=r"algo.reward= is not a field of algo=bc \(a field of algo=hil_serl\)"):
        compose(["algo=bc", "algo.reward=env"])
    with pytest.raises(ValueError, match="role.name= cannot be set"):
        compose(["role.name=actor"])
    from robot.config import compose as hydra_compose

    with pytest.raises(ConfigCompositionException, match="algo.steps"):  # hydra's typing, past the check
        hydra_compose("flywheel_rl", ["algo=hil_serl", "algo.steps=3"])


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_union_keys_fail_naming_the_new_key(old):
    with pytest.raises(ValueError, match=f"{old}= is no longer a key of this app: write {MOVED[old]}="):
        compose([f"{old}=1"])


def test_the_app_exits_with_the_new_key_on_an_old_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["flywheel-rl", "rl_task=peg_insert", "total_steps=100", "final_eval_episodes=5"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert "write role.final_eval_episodes= (a field of role=local and role=learner)" in str(e.value.code)


def test_an_actor_runs_hil_serl_only(tmp_path):
    with pytest.raises(ValueError, match="role=actor runs algo=hil_serl only"):
        run(compose([f"out_dir={tmp_path}", "role=actor", "algo=bc", *TOY]))


def test_a_results_config_from_before_the_groups_upgrades_to_the_composed_one():
    old = json.loads(OLD.read_text())  # written by flywheel-rl before the groups
    up = upgrade_config(old)
    assert up["role"] == {"name": "local", "actor_name": "rig7", "record_to": "", "resume": False,
                          "final_eval_episodes": 3}
    # bc_steps: not this run's algo; bc_warmup, review, review_timeout, refine: added since, their defaults
    assert up["algo"] == {"name": "hil_serl", "reward": "env", "classifier": "", "bc_warmup": 0, "review": "none",
                          "review_timeout": 120.0,
                          "refine": asdict(RefineConfig())}
    assert up["transport"]["send_every"] == 20 and up["transport"]["weights_port"] == old["transport"]["weights_port"]
    assert not set(MOVED) & set(up)
    now = _plain(compose(["out_dir=/tmp/x", *TOY, "role.actor_name=rig7", "role.final_eval_episodes=3",
                          "role.resume=false", "algo.reward=env", "transport.send_every=20"]))
    assert set(up) == set(now) and all(up[k] == now[k] for k in ("role", "algo", "transport", "env", "total_steps"))
    assert upgrade_config(now) == now  # the current form is left as it is


def test_a_run_saved_before_the_groups_loads_as_a_specialist(tmp_path):
    """An old run dir (its results.json config in the old form) still loads: the sac specialist's agent and record."""
    from flywheel.distill.specialist import SpecialistConfig
    from flywheel.distill.specialist.rl import RLSpecialistAgent, train_rl

    run_dir = tmp_path / "old_run"
    res = run(compose([f"out_dir={run_dir}", *TOY, "total_steps=40", "learner.warmup_steps=20",
                       "learner.eval_every=0", "learner.checkpoint_every=20", "role.final_eval_episodes=3"]))
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["role"]["final_eval_episodes"] == 3 and res["env_steps"] == 40
    old = {**saved, "config": json.loads(OLD.read_text())}  # the same settings, in the old form
    (run_dir / "results.json").write_text(json.dumps(old))
    agent = RLSpecialistAgent(run_dir)
    from rl_toy_envs import LineEnv

    obs, _ = LineEnv().reset(seed=0)
    a = agent.act(obs)
    assert a.shape == (7,) and np.isfinite(a).all()
    info = train_rl("Line", SpecialistConfig(algo="sac", rl_run=str(run_dir)), tmp_path / "spec")
    assert info["eval_episodes"] == 3 and info["env_steps"] == 40


def test_a_classifier_rewarded_run_trains_without_the_sims_success_signal():
    """algo.reward=classifier: the training env runs on past the sim's success test (only the classifier
    ends an episode, as on the rig); the evaluation env keeps that test as the truth."""
    from flywheel.rl.build import make_env

    for reward, blind in (("classifier", True), ("success", False)):
        cfg = compose(["rl_task=lift_cube", f"algo.reward={reward}", "algo.classifier=c.safetensors"])
        train_env, eval_env = make_env(cfg, training=True), make_env(cfg)
        try:
            assert train_env.unwrapped.terminate_on_success is not blind
            assert eval_env.unwrapped.terminate_on_success
        finally:
            train_env.close()
            eval_env.close()
