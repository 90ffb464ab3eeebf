"""The one rollout loop: the stop rule, the executed action, interventions (intervener or the rig's info)."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.rollout import Rollout, episode_over, run_episodes


class _Env:
    """Counts steps; success at ``succeed_at`` (None: never); never terminates by itself unless ``terminate``."""

    def __init__(self, succeed_at=3, terminate=False, horizon=50, rig_takes_over_at=None):
        self.succeed_at, self.terminate, self.horizon = succeed_at, terminate, horizon
        self.rig_takes_over_at = rig_takes_over_at
        self.actions, self.seeds = [], []

    def reset(self, *, seed=None):
        self.t = 0
        self.seeds.append(seed)
        return {"state/t": np.array([0.0], np.float32)}, {}

    def step(self, action):
        self.actions.append(np.asarray(action).copy())
        self.t += 1
        ok = self.succeed_at is not None and self.t >= self.succeed_at
        info = {"is_success": ok}
        if self.rig_takes_over_at == self.t:
            info.update(intervening=True, intervene_action=np.full(7, 0.25, np.float32))
        return {"state/t": np.array([self.t], np.float32)}, float(ok), bool(ok and self.terminate), \
            self.t >= self.horizon, info


class _Agent:
    def __init__(self, value=2.0):
        self.value, self.resets = value, 0

    def reset(self):
        self.resets += 1

    def act(self, obs):
        return np.full(7, self.value, np.float32)


class _EveryOther:
    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1
        self.n = 0

    def step(self, obs, policy_action):
        self.n += 1
        return (np.full(7, -0.5, np.float32), True) if self.n % 2 == 0 else (policy_action, False)


def test_stop_rule():
    assert episode_over(False, False, False, 3, None) is False
    assert episode_over(True, False, False, 3, None) and episode_over(False, True, False, 3, None)
    assert episode_over(False, False, True, 3, None)  # success ends an episode even when the env runs on
    assert episode_over(False, False, False, 3, 3) and not episode_over(False, False, False, 2, 3)


def test_episode_stops_on_first_success_and_actions_are_clipped():
    env, agent = _Env(succeed_at=3), _Agent(2.0)
    eps = run_episodes(env, agent, [7, 8])
    assert [e.success for e in eps] == [True, True] and [e.steps for e in eps] == [3, 3]
    assert [e.seed for e in eps] == [7, 8] and env.seeds == [7, 8] and agent.resets == 2
    assert eps[0].ret == 1.0
    assert all(np.all(a == 1.0) for a in env.actions)  # 2.0 clipped to the spec's [-1, 1]


def test_max_steps_and_truncation_end_failures():
    ep = Rollout(_Env(succeed_at=None), _Agent(), max_steps=4).run(0)
    assert not ep.success and ep.steps == 4
    ep = Rollout(_Env(succeed_at=None, horizon=6), _Agent()).run(0)
    assert not ep.success and ep.steps == 6
    with pytest.raises(ValueError, match="max_steps"):
        Rollout(_Env(), _Agent(), max_steps=0)


def test_intervener_replaces_the_action_and_labels_the_step():
    env, iv = _Env(succeed_at=5), _EveryOther()
    steps = []
    ep = Rollout(env, _Agent(0.5), intervener=iv, on_step=steps.append).run(1)
    assert iv.resets == 1 and ep.steps == 5 and ep.interventions == 2
    assert [s.intervened for s in steps] == [False, True, False, True, False]
    assert np.all(steps[1].action == -0.5) and np.all(steps[1].proposed == 0.5)
    np.testing.assert_array_equal(env.actions[1], steps[1].action)  # what ran is what is reported
    assert steps[-1].done and not steps[0].done and steps[0].t == 0


def test_the_rigs_arbitration_reported_in_info_counts_as_an_intervention():
    steps = []
    ep = Rollout(_Env(succeed_at=4, rig_takes_over_at=2), _Agent(0.1), on_step=steps.append).run(0)
    assert [s.intervened for s in steps] == [False, True, False, False] and ep.interventions == 1
    assert np.all(steps[1].action == 0.25)  # the operator's applied command, not the policy's


def test_caller_actions_and_a_custom_success_test():
    r = Rollout(_Env(succeed_at=None), None, success_fn=lambda obs, info: obs["state/t"][0] >= 2)
    r.reset(3)
    s = r.step(np.zeros(7, np.float32))
    assert not s.done
    s = r.step(np.zeros(7, np.float32))
    assert s.done and s.success and r.episode.success
    with pytest.raises(RuntimeError, match="over"):
        r.step(np.zeros(7, np.float32))
    r.reset(4)
    with pytest.raises(ValueError, match="needs an agent"):
        r.step()
