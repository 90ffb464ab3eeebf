"""Scripted experts (noise levels) and the simulated intervener."""

from __future__ import annotations

import numpy as np
import pytest

import sim


@pytest.fixture(scope="module")
def lift_env():
    env = sim.make("PandaRig/LiftCube-Red-v0", cameras=())
    yield env
    env.close()


def test_noisy_expert_is_slower_and_different_but_valid(lift_env):
    env = lift_env
    lens = {}
    for noise in (0.0, 1.0):
        ex = sim.expert(env, noise=noise, seed=1)
        obs, _ = env.reset(seed=5)
        ex.reset()
        n = 0
        while n < 60:
            n += 1
            a = ex.act(obs)
            assert a.shape == (7,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
            obs, r, term, trunc, info = env.step(a)
            if term or trunc:
                break
        lens[noise] = n
    assert lens[1.0] > lens[0.0]
    with pytest.raises(ValueError, match="noise"):
        sim.expert(env, noise=-1.0)


def test_intervener_takes_over_from_a_bad_policy_and_hands_back(lift_env):
    env = lift_env
    iv = sim.SimulatedIntervener(env, sim.expert(env, noise=0.0), takeover_steps=5)
    good = sim.expert(env, noise=0.0)
    obs, _ = env.reset(seed=2)
    iv.reset()
    good.reset()
    flags = []
    bad = np.array([0, 1, 1, 0, 0, 0, 1], np.float32)  # sideways and up: away from the cube
    for t in range(80):
        a, on = iv.step(obs, bad if t < 15 else good.act(obs))
        flags.append(on)
        obs, r, term, trunc, info = env.step(a)
        if term:
            break
    assert any(flags[:15]) and not all(flags)
    assert any(a and not b for a, b in zip(flags, flags[1:], strict=False))  # handed back
    assert info["is_success"]


def test_intervener_leaves_a_good_policy_alone(lift_env):
    env = lift_env
    good = sim.expert(env, noise=0.0)
    iv = sim.SimulatedIntervener(env, sim.expert(env, noise=0.0))
    obs, _ = env.reset(seed=3)
    iv.reset()
    good.reset()
    for _ in range(60):
        a, on = iv.step(obs, good.act(obs))
        assert not on
        obs, r, term, trunc, info = env.step(a)
        if term:
            break
    assert info["is_success"]


def test_direction_criterion_leaves_a_faster_valid_policy_alone_but_not_a_wrong_way_one(lift_env):
    env = lift_env
    obs, _ = env.reset(seed=4)
    probe = sim.expert(env, noise=0.0)
    e = probe.act(obs)[:3]  # where the operator would go first
    e_hat = e / np.linalg.norm(e)
    u = np.cross(e_hat, [0.0, 0.0, 1.0] if abs(e_hat[2]) < 0.9 else [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    fast = np.zeros(7, np.float32)
    fast[:3] = 0.5 * e_hat + 0.866 * u  # full speed, 60 degrees off the operator's heading: another path
    away = np.zeros(7, np.float32)
    away[:3] = -e
    assert np.linalg.norm(fast[:3] - e) > 0.9  # the distance criterion would call this straying
    for criterion, action, expect in (("distance", fast, True), ("direction", fast, False),
                                      ("direction", away, True), ("stall", away, False)):
        iv = sim.SimulatedIntervener(env, sim.expert(env, noise=0.0), patience=2, criterion=criterion)
        env.reset(seed=4)
        iv.reset()
        took = [iv.step(obs, action)[1] for _ in range(3)]  # the same observation: the same judgement
        assert any(took) == expect, (criterion, took)
    with pytest.raises(ValueError, match="criterion"):
        sim.SimulatedIntervener(env, sim.expert(env, noise=0.0), criterion="mood")
