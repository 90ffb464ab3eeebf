"""``flywheel-rl``: the hydra app composes, runs role=local, logs, checkpoints and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from flywheel.rl.app import compose, run
from flywheel.rl.buffers import episodes_to_transitions


def _cfg(tmp_path, *overrides: str):
    return compose([f"out_dir={tmp_path}", "progress=false", *overrides])


def test_local_role_on_a_custom_env_logs_checkpoints_and_resumes(tmp_path):
    base = ["rl_task=none", "env.factory=rl_toy_envs:LineEnv", "demos.num=0", "intervention.enabled=false",
            "agent.hidden_dims=[32]", "agent.arm_dims=[0]", "agent.batch_size=32", "learner.warmup_steps=20",
            "learner.eval_every=100", "learner.eval_episodes=3", "role.final_eval_episodes=5",
            "learner.checkpoint_every=100"]
    res = run(_cfg(tmp_path, *base, "total_steps=120"))
    assert res["env_steps"] == 120 and res["update_calls"] == 101 and not res["resumed"]
    assert 0.0 <= res["final_eval"]["success_rate"] <= 1.0
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "results.json").read_text())["env_steps"] == 120
    res2 = run(_cfg(tmp_path, *base, "total_steps=150"))
    assert res2["resumed"] and res2["env_steps"] == 150 and res2["update_calls"] == 131


def test_bad_settings_fail_clearly(tmp_path):
    with pytest.raises(ConfigCompositionException, match="(?s)role/both.*Available options in 'role'"):
        run(_cfg(tmp_path, "role=both", "rl_task=none", "env.factory=rl_toy_envs:LineEnv"))
    toy = ["rl_task=none", "env.factory=rl_toy_envs:LineEnv", "demos.num=0", "agent.arm_dims=[0]"]
    with pytest.raises(ValueError, match=r"algo=bc needs demos \(demos.num > 0"):
        run(_cfg(tmp_path, *toy, "algo=bc", "algo.steps=5"))
    with pytest.raises(ValueError, match=r"algo.bc_warmup needs demos \(demos.num > 0"):
        run(_cfg(tmp_path, *toy, "algo.bc_warmup=5"))
    with pytest.raises(ValueError, match="package.module:function"):
        run(_cfg(tmp_path, "rl_task=none", "env.factory=rl_toy_envs"))
    with pytest.raises(ValueError, match="no transport token"):
        from flywheel.rl.transport import resolve_token

        resolve_token("")


def test_recorded_episodes_become_demo_transitions():
    ep = {"state/x": np.arange(4, dtype=np.float32)[:, None],
          "action": np.array([[0] * 6 + [1], [0] * 6 + [1], [0] * 6 + [-1], [0] * 6 + [-1]], np.float32),
          "reward": np.array([0, 0, 0, 1], np.float32)}
    b = episodes_to_transitions([ep], ["state/x"], initial_gripper=1.0)
    assert len(b["reward"]) == 3
    np.testing.assert_array_equal(b["obs/state/x"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(b["next_obs/state/x"][:, 0], [1, 2, 3])
    np.testing.assert_array_equal(b["reward"], [0, 0, 1])
    np.testing.assert_array_equal(b["terminated"], [False, False, True])
    np.testing.assert_array_equal(b["grip"], [1, 1, 2])  # stay, stay, close
    assert b["intervened"].all()


@pytest.mark.slow
def test_local_role_on_the_sim_insertion_task(tmp_path):
    res = run(_cfg(tmp_path, "rl_task=peg_insert", "total_steps=60", "demos.num=1", "demos.noise=0.0",
                   "learner.eval_every=0", "role.final_eval_episodes=1", "agent.hidden_dims=[32]",
                   "agent.batch_size=32", f"role.record_to={tmp_path / 'store'}", "algo.bc_warmup=40"))
    assert res["demo_episodes"] == 1 and res["env_steps"] == 60
    # the actor was behaviour-cloned on the demo before going online
    assert res["bc_warmup"]["steps"] == 40 and res["bc_warmup"]["loss_last"] < res["bc_warmup"]["loss_first"]
    assert res["demo_buffer"] >= res["demo_transitions"]  # demos plus intervened steps
    assert 0.0 <= res["intervention_rate"] <= 1.0
    from flywheel.data import EpisodeStore

    store = EpisodeStore(tmp_path / "store", mode="r")
    assert res["episodes"] >= 1 and store.num_episodes == res["episodes"]
    rec = store.record(0)
    assert rec.source == "rl" and rec.task == "PandaRig/PegInsert-v0"
