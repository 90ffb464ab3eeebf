"""Learner checkpoints restore buffers, weights, optimisers and counters exactly (no pickle)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from rl_toy_envs import AlwaysIntervener, LineEnv, LineExpert

from flywheel.rl.actor import Actor
from flywheel.rl.learner import Learner, LearnerConfig
from flywheel.rl.loops import train_local
from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of


def _make(seed: int = 0) -> tuple[Learner, Actor]:
    torch.manual_seed(seed)
    env = LineEnv(horizon=10)
    agent = SACAgent(SACConfig(hidden_dims=[32], arm_dims=[0], batch_size=16, utd_ratio=2),
                     obs_shapes_of(env.observation_space))
    learner = Learner(agent, LearnerConfig(demo_capacity=500, online_capacity=500, warmup_steps=10), seed=seed)
    return learner, Actor(env, agent, intervener=AlwaysIntervener(LineExpert()), seed=seed)


def test_checkpoint_resume_is_exact(tmp_path):
    learner, actor = _make()
    train_local(learner, actor, 60, progress=False)
    ckpt = learner.save(tmp_path / "ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "agent.safetensors", "demo_buffer.npz", "online_buffer.npz", "state.json"]

    # the uninterrupted learner goes on; the resumed one must make the very same update
    info_a = learner.train_step()
    after_a = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    learner_state = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    resumed, _ = _make(seed=123)  # different init: everything must come from the checkpoint
    resumed.load(ckpt)  # also restores the torch RNG to its state at save time
    saved = safetensors.torch.load_file(str(ckpt / "agent.safetensors"))
    for k, v in resumed.agent.state_dict().items():
        assert torch.equal(v, saved[f"agent/{k}"]), k
    assert any(not torch.equal(v, learner_state[k]) for k, v in resumed.agent.state_dict().items())
    for name in ("demo", "online"):
        a, b = getattr(learner, name), getattr(resumed, name)
        assert (len(a), a.ptr, a.total_added) == (len(b), b.ptr, b.total_added)
        for k in a.layout:
            np.testing.assert_array_equal(a.data[k][: len(a)], b.data[k][: len(b)])
    assert (resumed.env_steps, resumed.update_calls + 1, resumed.critic_updates + 2) == (
        learner.env_steps, learner.update_calls, learner.critic_updates)
    assert len(learner.demo) > 0 and len(learner.online) == 60
    # the next update is identical (same batches from the RNGs, same optimiser moments)
    info_b = resumed.train_step()
    assert info_a == info_b
    for k, v in after_a.items():
        assert torch.equal(v, resumed.agent.state_dict()[k]), k


def test_checkpoint_overwrite_and_bad_dir(tmp_path):
    learner, actor = _make()
    train_local(learner, actor, 20, progress=False)
    learner.save(tmp_path / "c")
    train_local(learner, actor, 30, progress=False)
    learner.save(tmp_path / "c")  # replaces the older one
    other, _ = _make()
    other.load(tmp_path / "c")
    assert other.env_steps == 30
    with pytest.raises(FileNotFoundError, match="not a learner checkpoint"):
        other.load(tmp_path)
    # a checkpoint from a differently-shaped agent is refused with the field names
    env = LineEnv()
    wrong = Learner(SACAgent(SACConfig(hidden_dims=[32], arm_dims=[0], state_keys=["state/ee_pos"]),
                             obs_shapes_of(env.observation_space)), LearnerConfig(500, 500))
    with pytest.raises(Exception, match="size mismatch|do not match"):
        wrong.load(tmp_path / "c")
