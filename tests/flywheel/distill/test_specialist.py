"""The ``sac`` specialist is a ``flywheel-rl`` run: trained (and resumed) through the app, then acting on camera envs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flywheel.distill import collect
from flywheel.distill.specialist import SpecialistConfig, load_agent, rl_overrides, rl_preset_for, train

TINY = ["agent.hidden_dims=[16]", "agent.batch_size=16", "learner.warmup_steps=5"]


def test_task_kinds_map_to_their_flywheel_rl_presets(tmp_path):
    assert rl_preset_for("PandaRig/PegInsert-v0") == "peg_insert"
    assert rl_preset_for("PandaRig/LiftCube-Yellow-v0") == "lift_cube"
    assert rl_preset_for("PandaRig/PlaceCubeTarget-Green-v0") == "place_cube"
    assert rl_preset_for("PandaRig/PushCube-Blue-v0") == "none"
    o = rl_overrides("PandaRig/LiftCube-Red-v0", SpecialistConfig(algo="sac", env_steps=7, demos=3,
                                                                  rl_overrides=["agent.utd_ratio=1"]), tmp_path)
    assert "rl_task=lift_cube" in o and "env.task=PandaRig/LiftCube-Red-v0" in o and "total_steps=7" in o
    assert o[-1] == "agent.utd_ratio=1"  # the caller's overrides win


@pytest.mark.slow
def test_sac_specialist_trains_through_flywheel_rl_resumes_and_acts_on_a_camera_env(tmp_path):
    task = "PandaRig/PegInsert-v0"
    cfg = SpecialistConfig(algo="sac", env_steps=40, demos=1, eval_episodes=1, checkpoint_every=20,
                           rl_overrides=TINY)
    info = train(task, cfg, tmp_path / "spec")
    assert info["algo"] == "sac" and info["env_steps"] == 40 and 0.0 <= info["eval_success_rate"] <= 1.0
    res = json.loads((tmp_path / "spec" / "rl" / "results.json").read_text())
    assert res["config"]["agent"]["state_deltas"] and res["config"]["env"]["task"] == task  # the preset applied
    # a longer budget resumes the same run from its checkpoint instead of starting over
    (tmp_path / "spec" / "rl" / "results.json").unlink()
    info2 = train(task, SpecialistConfig(**{**cfg.__dict__, "env_steps": 60}), tmp_path / "spec")
    assert info2["env_steps"] == 60
    assert json.loads((tmp_path / "spec" / "rl" / "results.json").read_text())["resumed"]

    agent = load_agent(task, info2)
    env = collect.make_env(task, cameras=("wrist",), image_size=16, privileged_state=True, max_episode_steps=4)
    try:
        obs, _ = env.reset(seed=3)
        agent.reset()
        a1 = agent.act(obs)
        agent.reset()
        assert a1.shape == (7,) and np.isfinite(a1).all() and a1[6] == -1.0  # insertion holds the peg
        np.testing.assert_array_equal(a1, agent.act(obs))  # deterministic
    finally:
        env.close()

    with pytest.raises(FileNotFoundError, match="not a finished flywheel-rl run"):
        train(task, SpecialistConfig(algo="sac", rl_run=str(tmp_path / "nothing")), tmp_path / "other")


def test_sil_specialist_fits_demos_refits_on_its_successes_resumes_and_acts(tmp_path):
    task = "PandaRig/PegInsert-v0"
    cfg = SpecialistConfig(algo="sil", demos=2, demo_noise=0.0, generations=1, rollouts_per_generation=2,
                           bc_steps=20, hidden_dims=[16], eval_episodes=1)
    info = train(task, cfg, tmp_path / "sil", progress=False)
    assert info["algo"] == "sil" and info["generations"] == 1 and info["env_steps"] > 0
    assert info["history"][0] == {"generation": 0, "demos": 2} and 0.0 <= info["eval_success_rate"] <= 1.0
    assert (tmp_path / "sil" / "policy.safetensors").is_file()
    assert train(task, cfg, tmp_path / "sil", progress=False) == json.loads(
        (tmp_path / "sil" / "specialist.json").read_text())  # finished: the record, not a second run

    agent = load_agent(task, info)
    env = collect.make_env(task, cameras=("wrist",), image_size=16, privileged_state=True)
    try:
        obs, _ = env.reset(seed=3)
        agent.reset()
        a = agent.act(obs)
        assert a.shape == (7,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
        np.testing.assert_array_equal(a, agent.act(obs))
    finally:
        env.close()


def test_scripted_stand_in_and_unknown_algos(tmp_path):
    info = train("PandaRig/PegInsert-v0", SpecialistConfig(algo="scripted"), tmp_path)
    assert info["algo"] == "scripted" and info["eval_episodes"] == 0 and np.isnan(info["eval_success_rate"])
    agent = load_agent("PandaRig/PegInsert-v0", info)
    with pytest.raises(RuntimeError, match="bind"):
        agent.act({})
    with pytest.raises(ValueError, match="specialist.algo='nope'"):
        train("PandaRig/PegInsert-v0", SpecialistConfig(algo="nope"), tmp_path)
