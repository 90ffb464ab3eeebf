"""A point-reach toy task for the on-policy methods: seconds per training run.

A point starts at the origin; a goal lies 0.25-0.45 away in a direction set by the seed. An
action moves the point by 0.1 * a[:2] (clipped to [-1, 1]); success (reward 1, the episode ends)
within 0.08 of the goal; at most 12 steps. Observations are spec-like ``state/...`` arrays.
``info`` carries ``is_success`` and ``dense_reward`` (minus the distance: the stage measure).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PointReach(gym.Env):
    instruction = "reach the goal"
    max_steps = 12

    def __init__(self, action_dim: int = 2) -> None:
        self.observation_space = spaces.Dict({
            "state/pos": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "state/goal": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)

    def _obs(self):
        return {"state/pos": self.pos.astype(np.float32), "state/goal": self.goal.astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        ang = self.np_random.uniform(0, 2 * np.pi)
        r = self.np_random.uniform(0.25, 0.45)
        self.goal = r * np.array([np.cos(ang), np.sin(ang)])
        self.pos = np.zeros(2)
        self.t = 0
        return self._obs(), {"is_success": False, "dense_reward": -float(np.linalg.norm(self.goal))}

    def step(self, action):
        a = np.clip(np.asarray(action, float)[:2], -1, 1)
        self.pos = self.pos + 0.1 * a
        self.t += 1
        d = float(np.linalg.norm(self.pos - self.goal))
        ok = d < 0.08
        return self._obs(), float(ok), ok, self.t >= self.max_steps, {"is_success": ok, "dense_reward": -d}


def make_vec(task: str = "reach", n: int = 8):
    return gym.vector.SyncVectorEnv([PointReach for _ in range(n)])


def expert_action(obs) -> np.ndarray:
    """The straight line to the goal at full speed (batched)."""
    d = (np.asarray(obs["state/goal"]) - np.asarray(obs["state/pos"])) / 0.1
    return np.clip(d, -1, 1).astype(np.float32)


class GoalOperator:
    """A toy operator (``flywheel.rollout.Intervener``): takes over with :func:`expert_action` whenever the
    policy's step heads away from the goal; ``took`` counts its steps since :meth:`reset`."""

    def __init__(self, env=None) -> None:
        self.took = 0

    def reset(self) -> None:
        self.took = 0

    def step(self, obs, policy_action):
        best = expert_action(obs)
        if float(np.dot(policy_action[:2], best[:2])) < 0.0:
            self.took += 1
            return best, True
        return policy_action, False
