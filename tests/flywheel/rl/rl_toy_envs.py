"""Tiny gymnasium envs with spec-style observation dicts, for the RL tests.

They stand in for ``sim`` where a test needs a fast, fully-understood env:
state-only observations with ``state/gripper_width`` (the actor reads it) and the
7-d spec action.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def _box(shape, low=-1.0, high=1.0):
    return gym.spaces.Box(low, high, shape, np.float32)


class TargetEnv(gym.Env):
    """One step: observe a target x in [-1, 1]^2, reward = 1 - |a[:2] - x|^2; grip must match sign(x0).

    The gripper part: reward +1 more when the gripper action is close (-1) for x0 > 0 and open (+1) else.
    """

    def __init__(self, gripper_task: bool = False, image_size: int = 0):
        self.gripper_task = gripper_task
        spaces = {"state/target": _box((2,)), "state/gripper_width": _box((1,), 0.0, 0.08)}
        if image_size:
            spaces["images/front"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = _box((7,))
        self.image_size = image_size
        self._rng = np.random.default_rng(0)

    def _obs(self):
        o = {"state/target": self.x.copy(), "state/gripper_width": np.array([0.04], np.float32)}
        if self.image_size:
            img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            img[..., 0] = int(255 * (self.x[0] + 1) / 2)
            o["images/front"] = img
        return o

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.x = self._rng.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        a = np.asarray(action, np.float32)
        r = 1.0 - float(np.sum((a[:2] - self.x) ** 2))
        ok = r > 0.9
        if self.gripper_task:
            want = -1.0 if self.x[0] > 0 else 1.0
            g_ok = abs(a[6] - want) < 0.5
            r += 1.0 if g_ok else 0.0
            ok = ok and g_ok
        return self._obs(), r, True, False, {"is_success": bool(ok)}


class LineEnv(gym.Env):
    """Move a point along x to a goal at +0.5 in up to ``horizon`` steps (success within 0.05)."""

    def __init__(self, horizon: int = 10):
        self.horizon = horizon
        self.observation_space = gym.spaces.Dict(
            {"state/ee_pos": _box((3,), -2, 2), "state/gripper_width": _box((1,), 0.0, 0.08)}
        )
        self.action_space = _box((7,))
        self._rng = np.random.default_rng(0)

    def _obs(self):
        return {"state/ee_pos": self.p.copy(), "state/gripper_width": np.array([self.w], np.float32)}

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.p = np.array([self._rng.uniform(-0.5, 0.5), 0, 0], np.float32)
        self.w = 0.08
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        a = np.asarray(action, np.float32)
        self.p[0] += 0.2 * a[0]
        self.w = (a[6] + 1) * 0.04
        self.t += 1
        ok = abs(self.p[0] - 0.5) < 0.05
        return self._obs(), float(ok), bool(ok), self.t >= self.horizon, {"is_success": bool(ok)}


class LineExpert:
    """A scripted operator for LineEnv: proportional control towards the goal."""

    def reset(self):
        pass

    def act(self, obs):
        a = np.zeros(7, np.float32)
        a[0] = np.clip((0.5 - obs["state/ee_pos"][0]) / 0.2, -1, 1)
        a[6] = 1.0
        return a


class AlwaysIntervener:
    """Intervenes on every other step with the expert's action."""

    def __init__(self, expert):
        self.expert = expert
        self.t = 0

    def reset(self):
        self.t = 0

    def step(self, obs, policy_action):
        self.t += 1
        if self.t % 2 == 0:
            return self.expert.act(obs), True
        return policy_action, False
