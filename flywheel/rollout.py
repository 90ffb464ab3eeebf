"""The one rollout loop: an env, an agent, a seed, an optional intervener, step callbacks, one stop rule.

Evaluation (:mod:`flywheel.evaluate`), collection into the episode store
(:mod:`flywheel.distill.collect`), the RL actor and its demos
(:mod:`flywheel.rl.actor`) and the specialists all roll out through
:class:`Rollout`, so they agree on what a step and an episode are:

* **the executed action**: the agent proposes (or the caller passes) an action,
  clipped to the spec's [-1, 1]; an :class:`Intervener` (a simulated operator,
  ``sim.SimulatedIntervener``) may replace it; on the rig the franka node's
  arbitration reports the operator's command in ``info["intervening"]`` /
  ``info["intervene_action"]`` (the ROS env adapter), which replaces it too.
  Either way the step is labelled ``intervened`` and carries the executed action.
* **success**: ``success_fn(next_obs, info)``, by default the env's
  ``info["is_success"]`` (a learned reward classifier can stand in).
* **the stop rule** (:func:`episode_over`): an episode ends when the env
  terminates or truncates, on the first success, or after ``max_steps`` steps.

It can be driven a step at a time (:meth:`Rollout.step`, as the RL actor
interleaves env steps with learner updates) or an episode at a time
(:meth:`Rollout.run`, :func:`run_episodes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Agent(Protocol):
    """Anything that acts on spec observations: a policy wrapper, a scripted expert, a specialist."""

    def reset(self) -> None: ...
    def act(self, obs: dict[str, Any]) -> np.ndarray: ...


class Intervener(Protocol):
    """An operator who may take over: ``step`` returns the action to apply and whether it is theirs."""

    def reset(self) -> None: ...
    def step(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray) -> tuple[np.ndarray, bool]: ...


SuccessFn = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


def env_success(obs: Mapping[str, Any], info: Mapping[str, Any]) -> bool:
    """The env's own success test (``info["is_success"]``)."""
    return bool(info.get("is_success", False))


def episode_over(terminated: bool, truncated: bool, success: bool, steps: int, max_steps: int | None) -> bool:
    """The one stop rule: terminated, truncated, succeeded, or ``max_steps`` steps taken."""
    return bool(terminated or truncated or success or (max_steps is not None and steps >= max_steps))


def executed(action: Any) -> np.ndarray:
    """An action as executed: float32, clipped to the spec's [-1, 1]."""
    return np.clip(np.asarray(action, np.float32), -1.0, 1.0)


@dataclass
class Step:
    """One env step as the loops see it."""

    t: int  # index of this step in its episode (0-based)
    obs: dict[str, Any]  # the observation the action was chosen on
    action: np.ndarray  # the executed action (the intervener's when ``intervened``)
    proposed: np.ndarray  # what the agent (or caller) proposed
    reward: float  # the env's reward
    next_obs: dict[str, Any]
    terminated: bool  # the env's
    truncated: bool  # the env's
    success: bool  # success_fn on next_obs
    intervened: bool
    info: dict[str, Any]
    done: bool  # the stop rule ended the episode with this step


@dataclass
class Episode:
    """What one episode came to."""

    seed: int | None
    success: bool = False
    steps: int = 0
    ret: float = 0.0  # sum of the env's rewards
    interventions: int = 0  # intervened steps
    final_info: dict[str, Any] = field(default_factory=dict)

    @property
    def intervention_rate(self) -> float:
        return self.interventions / max(self.steps, 1)


StepCallback = Callable[[Step], None]


class Rollout:
    """Rolls an agent out on an env, a step or an episode at a time (see the module docstring).

    ``agent`` may be None when every :meth:`step` gets its action from the caller.
    ``on_step`` callbacks see every :class:`Step` (recording, transitions, progress).
    """

    def __init__(
        self,
        env: Any,
        agent: Agent | None = None,
        *,
        intervener: Intervener | None = None,
        max_steps: int | None = None,
        success_fn: SuccessFn | None = None,
        on_step: StepCallback | Sequence[StepCallback] = (),
    ):
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps={max_steps}: must be >= 1 (or None for the env's own limit)")
        self.env = env
        self.agent = agent
        self.intervener = intervener
        self.max_steps = max_steps
        self.success_fn = success_fn or env_success
        self.on_step: list[StepCallback] = [on_step] if callable(on_step) else list(on_step)
        self._obs: dict[str, Any] | None = None
        self.episode: Episode | None = None
        self.done = True

    @property
    def obs(self) -> dict[str, Any]:
        if self._obs is None:
            raise RuntimeError("Rollout: call reset(seed) before step()")
        return self._obs

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start an episode: reset the env (with ``seed``), then the agent and the intervener."""
        obs, info = self.env.reset(seed=None if seed is None else int(seed))
        if self.agent is not None:
            self.agent.reset()
        if self.intervener is not None:
            self.intervener.reset()
        self._obs = obs
        self.episode = Episode(None if seed is None else int(seed), final_info=dict(info))
        self.done = False
        return obs

    def step(self, action: np.ndarray | None = None) -> Step:
        """One env step with ``action`` (default: the agent's), after the intervener had its say."""
        if self.done or self.episode is None:
            raise RuntimeError("Rollout: the episode is over (or never started); call reset(seed)")
        obs = self.obs
        if action is None:
            if self.agent is None:
                raise ValueError("Rollout.step() without an action needs an agent")
            action = self.agent.act(obs)
        proposed = executed(action)
        act, intervened = proposed, False
        if self.intervener is not None:
            exec_action, intervened = self.intervener.step(obs, proposed)
            if intervened:
                act = executed(exec_action)
        next_obs, reward, terminated, truncated, info = self.env.step(act)
        if not intervened and info.get("intervening") and info.get("intervene_action") is not None:
            # the rig's arbitration applied the operator's command (ROS env adapter): that is what ran
            act, intervened = executed(info["intervene_action"]), True
        ep = self.episode
        success = bool(self.success_fn(next_obs, info))
        ep.steps += 1
        ep.ret += float(reward)
        ep.interventions += int(intervened)
        ep.success = ep.success or success
        ep.final_info = dict(info)
        self.done = episode_over(bool(terminated), bool(truncated), success, ep.steps, self.max_steps)
        s = Step(ep.steps - 1, obs, act, proposed, float(reward), next_obs, bool(terminated), bool(truncated),
                 success, bool(intervened), info, self.done)
        self._obs = next_obs
        for cb in self.on_step:
            cb(s)
        return s

    def run(self, seed: int | None = None) -> Episode:
        """One whole episode from ``reset(seed)`` to the stop rule."""
        self.reset(seed)
        while not self.done:
            self.step()
        assert self.episode is not None
        return self.episode


def run_episodes(
    env: Any,
    agent: Agent,
    seeds: Iterable[int],
    *,
    intervener: Intervener | None = None,
    max_steps: int | None = None,
    success_fn: SuccessFn | None = None,
    on_step: StepCallback | Sequence[StepCallback] = (),
    on_episode: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    """One episode per seed, in order."""
    r = Rollout(env, agent, intervener=intervener, max_steps=max_steps, success_fn=success_fn, on_step=on_step)
    out = []
    for seed in seeds:
        ep = r.run(int(seed))
        out.append(ep)
        if on_episode is not None:
            on_episode(ep)
    return out
