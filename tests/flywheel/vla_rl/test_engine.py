"""The rollout engine: groups share their start, steps are bookkept per episode, the store gets episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vla_rl_toy import GoalOperator, PointReach, make_vec

from flywheel.vla_rl.engine import RolloutEngine, StoreRecorder
from flywheel.vla_rl.policies import GaussianChunkPolicy, StateFeatures


def _policy(horizon=1, seed=0):
    torch.manual_seed(seed)
    enc = StateFeatures(["state/pos", "state/goal"], [2, 2])
    return GaussianChunkPolicy(enc, horizon, 2, hidden=(16,), value_hidden=(16,), init_log_std=0.0)


def test_groups_share_seeds_and_steps_add_up():
    pol = _policy()
    eng = RolloutEngine(pol, make_vec, ["reach"], group_size=4, num_envs=8, seed=3)
    b = eng.collect(3)
    assert b.num_episodes == 12 and len(torch.unique(b.group)) == 3
    for g in torch.unique(b.group):
        members = torch.nonzero(b.group == g).flatten().tolist()
        assert len(members) == 4 and len({b.seeds[i] for i in members}) == 1
    assert len(set(b.seeds)) == 3
    # decisions are contiguous per episode, one per env step at exec_horizon 1
    assert torch.equal(b.decisions(), b.length)
    assert bool((b.episode[1:] >= b.episode[:-1]).all())
    assert int(b.length.sum()) == b.env_steps == eng.env_steps
    assert torch.allclose(b.episode_sum(b.rewards), b.ret)
    assert torch.equal(b.success, b.ret > 0)
    assert bool((b.length <= PointReach.max_steps).all())
    # successes end for real (no bootstrap); time-outs are truncations
    assert torch.equal(b.terminal, b.success)
    # the stored log-probs are the sampling policy's
    with torch.no_grad():
        assert torch.allclose(pol.log_prob(b.feats, b.actions), b.logp, atol=1e-4)
    # next call: fresh seeds
    b2 = eng.collect(1)
    assert not set(b2.seeds) & set(b.seeds)
    with pytest.raises(ValueError, match="group_size=9"):
        eng.collect(1, group_size=9)


def test_same_seed_same_start_and_held_out_eval_is_repeatable():
    pol = _policy()
    eng = RolloutEngine(pol, make_vec, ["reach"], group_size=2, num_envs=4)
    a = eng.collect(4, group_size=1, deterministic=True, seeds=[10, 11, 12, 13], count=False)
    b = eng.collect(4, group_size=1, deterministic=True, seeds=[10, 11, 12, 13], count=False)
    assert torch.equal(a.feats, b.feats) and torch.equal(a.length, b.length)
    assert eng.env_steps == 0
    assert a.feats[0, 2:].tolist() != a.feats[a.length[0]:][0, 2:].tolist()  # different goals per seed


def test_chunks_execute_exec_horizon_actions():
    pol = _policy(horizon=4)
    eng = RolloutEngine(pol, make_vec, ["reach"], group_size=1, num_envs=4, exec_horizon=3)
    b = eng.collect(4)
    assert b.actions.shape[1:] == (4, 2)
    assert torch.equal(b.decisions(), (b.length + 2) // 3)
    with pytest.raises(ValueError, match="exec_horizon"):
        RolloutEngine(pol, make_vec, ["reach"], exec_horizon=5)


def test_multi_task_sampling_and_selection():
    pol = _policy()
    eng = RolloutEngine(pol, make_vec, ["a", "b"], group_size=2, num_envs=4, task_weights=[1, 3], seed=0)
    b = eng.collect(40)
    frac_b = np.mean([t == "b" for t in b.tasks])
    assert 0.6 < frac_b < 0.9
    keep = torch.tensor([t == "a" for t in b.tasks])
    s = b.select(keep)
    assert s.num_episodes == int(keep.sum()) and set(s.tasks) == {"a"}
    assert s.num_steps == int(b.length[keep].sum())
    assert torch.equal(s.decisions(), s.length)


def test_episodes_are_recorded_to_the_store(tmp_path):
    """Sim episodes go to a real episode store, source=rl, with the algorithm and iteration."""
    import sim
    from flywheel.data import EpisodeStore
    from flywheel.vla_rl.engine import make_sim_vec

    torch.manual_seed(0)
    pol = GaussianChunkPolicy(StateFeatures(["state/ee_pos", "state/privileged"], [3, 6]), 1, 7, hidden=(16,),
                              value_hidden=(16,))
    make = make_sim_vec({"cameras": (), "privileged_state": True})
    spec = sim.make("PegInsert", cameras=()).unwrapped.rig_spec
    store = EpisodeStore(tmp_path / "store", mode="w", spec=spec)
    rec = StoreRecorder(store, "grpo", policy_version="v1")
    rec.iteration = 5
    eng = RolloutEngine(pol, make, ["PegInsert"], group_size=2, num_envs=2, max_steps=3, recorder=rec)
    b = eng.collect(1)
    eng.close()
    assert b.length.tolist() == [3, 3]
    back = EpisodeStore(tmp_path / "store", mode="r")
    eps = back.episodes(source="rl")
    assert len(eps) == 2
    for e in eps:
        r = e.record
        assert r.extra["algo"] == "grpo" and r.extra["iteration"] == 5 and r.extra["seed"] == b.seeds[0]
        assert r.task == "PandaRig/PegInsert-v0" and r.instruction == "insert the peg into the hole"
        assert r.length == 3


def test_an_operator_takes_over_in_training_rollouts_never_in_evaluation():
    """Where the operator takes over, its action is executed and kept beside the policy's sampled chunk."""
    pol = _policy(horizon=3)
    eng = RolloutEngine(pol, make_vec, ["reach"], group_size=4, num_envs=8, exec_horizon=2, seed=1,
                        make_operator=GoalOperator)
    b = eng.collect(2)
    assert b.intervened is not None and b.operator_actions is not None
    assert 0 < int(b.intervened.sum()) < b.num_steps
    m = b.intervened
    # the operator's steps differ from the sampled ones; the steps it did not execute are the policy's
    assert not torch.allclose(b.operator_actions[m][:, :2], b.actions[m][:, :2])
    torch.testing.assert_close(b.operator_actions[~m], b.actions[~m])
    torch.testing.assert_close(b.operator_actions[:, 2:], b.actions[:, 2:])  # never executed (exec_horizon 2)
    torch.testing.assert_close(b.executed_actions()[m], b.operator_actions[m])
    # an operator's step is the straight line to the goal (clipped to [-1, 1]); the policy's samples are not
    changed = (b.operator_actions != b.actions).any(-1)  # (S, H): the steps the operator executed
    assert bool(changed[m].any(1).all()) and float(b.operator_actions[changed].abs().max()) <= 1.0
    sub = b.select(b.success | ~b.success)
    assert sub.intervened is not None and sub.intervened.shape == b.intervened.shape
    ev = eng.collect(4, group_size=1, deterministic=True, seeds=[10, 11, 12, 13], tasks=["reach"] * 4, count=False,
                     assisted=False)
    assert ev.intervened is None and ev.operator_actions is None


def test_the_sim_operator_corrects_a_sim_policy(tmp_path):
    """flywheel-vla-rl's operator (sim.SimulatedIntervener with the scripted expert) on real sim envs (any algorithm;
    a Gaussian head, whose density the operator's chunks have).
    The store's copy of each assisted episode marks the operator's steps (``intervention``)."""
    from omegaconf import OmegaConf

    import sim
    from flywheel.data import EpisodeStore
    from flywheel.vla_rl.cli import VlaRLConfig, make_operator_factory
    from flywheel.vla_rl.engine import make_sim_vec

    cfg = OmegaConf.structured(VlaRLConfig)
    assert make_operator_factory(cfg, "gaussian") is None  # off by default
    cfg.intervention.enabled = True
    cfg.intervention.stall_steps = 2
    with pytest.raises(ValueError, match="gaussian"):
        make_operator_factory(cfg, "flow")
    torch.manual_seed(0)
    pol = GaussianChunkPolicy(StateFeatures(["state/ee_pos", "state/privileged"], [3, 4]), 1, 7, hidden=(16,),
                              value_hidden=(16,), init_log_std=-4.0)
    with torch.no_grad():  # a policy whose mean stays put: the operator steps in when progress stalls
        for p in pol.parameters():
            p.zero_()
    store = EpisodeStore(tmp_path / "store", mode="w", spec=sim.make("LiftCube-Red", cameras=()).unwrapped.rig_spec)
    eng = RolloutEngine(pol, make_sim_vec({"cameras": (), "privileged_state": True}), ["LiftCube-Red"], group_size=2,
                        num_envs=2, max_steps=12, make_operator=make_operator_factory(cfg, "gaussian"),
                        recorder=StoreRecorder(store, "dpo"))
    b = eng.collect(1)
    eng.close()
    assert b.intervened is not None and bool(b.intervened.any())
    assert float((b.operator_actions[b.intervened] - b.actions[b.intervened]).abs().max()) > 0.1
    back = EpisodeStore(tmp_path / "store", mode="r")
    stored = np.concatenate([e["intervention"] for e in back.episodes(source="rl")])
    # one step per decision at exec_horizon 1: the stored marks are the batch's corrected decisions
    assert sorted(stored.tolist()) == sorted(b.intervened.tolist()) and 0 < stored.sum() < len(stored)
