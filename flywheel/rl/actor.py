"""The RL actor: runs the policy on an env (sim or the ROS env adapter), with interventions.

Works on any gymnasium env whose observations are spec observation dicts and
whose actions are 7-d spec actions. Each step the agent proposes an action; an
optional intervener (the operator, or ``sim.SimulatedIntervener``) may override
it; the executed action is what is stored, labelled ``intervened``. On the rig the
franka node arbitrates (a human always wins) and the ROS env adapter reports it
in ``info["intervening"]`` / ``info["intervene_action"]``, which the actor stores
the same way. Rewards come
from the env's success test (``reward_source="success"``, sparse, terminal on
success), the env's own reward (``"env"``), or a reward function such as the
learned classifier (``"classifier"``, pass ``reward_fn``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flywheel.rl.sac import GRIP_NAMES, GRIP_STAY, SACAgent, compose_action, gripper_label
from rig.spec import ActionSpec

RewardFn = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], float]


class Intervener(Protocol):
    def reset(self) -> None: ...

    def step(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray) -> tuple[np.ndarray, bool]: ...


@dataclass
class EpisodeStats:
    episode: int
    length: int
    ret: float
    success: bool
    intervention_rate: float
    env_steps: int
    actor: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "episode": self.episode, "length": self.length, "return": self.ret, "success": self.success,
            "intervention_rate": self.intervention_rate, "env_steps": self.env_steps, "actor": self.actor,
        }


class Actor:
    """Steps one env with the agent's policy; yields transitions and per-episode stats."""

    def __init__(
        self,
        env: Any,
        agent: SACAgent,
        *,
        intervener: Intervener | None = None,
        reward_source: str = "success",
        reward_fn: RewardFn | None = None,
        action_spec: ActionSpec | None = None,
        seed: int = 0,
        name: str = "actor0",
        recorder: RolloutRecorder | None = None,
    ):
        if reward_source not in ("success", "env", "classifier"):
            raise ValueError(f"reward_source={reward_source!r}: use success, env or classifier")
        if reward_source == "classifier" and reward_fn is None:
            raise ValueError("reward_source='classifier' needs reward_fn (e.g. RewardClassifier.reward)")
        self.env = env
        self.agent = agent
        self.intervener = intervener
        self.reward_source = reward_source
        self.reward_fn = reward_fn
        self.action_spec = action_spec or ActionSpec()
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.name = name
        self.recorder = recorder
        self.env_steps = 0
        self.episodes = 0
        self._obs: dict[str, np.ndarray] | None = None

    # -------------------------------------------------------------- episode
    def reset(self) -> dict[str, np.ndarray]:
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        if self.intervener is not None:
            self.intervener.reset()
        self._obs = obs
        self._grip = self.action_spec.width_to_gripper(float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0]))
        self._len, self._ret, self._n_int = 0, 0.0, 0
        if self.recorder is not None:
            self.recorder.begin(self)
        return obs

    def step(self, random_action: bool = False) -> tuple[dict[str, np.ndarray], EpisodeStats | None]:
        """One env step -> (transition, stats if the episode ended)."""
        if self._obs is None:
            self.reset()
        obs = self._obs
        assert obs is not None
        if random_action:
            cfg = self.agent.cfg
            grip = int(self.rng.integers(3)) if cfg.gripper else GRIP_STAY
            arm = self.rng.uniform(-1, 1, len(cfg.arm_dims))
            action = compose_action(arm, cfg.arm_dims, grip, self._grip if cfg.gripper else cfg.gripper_fixed)
        else:
            action, grip = self.agent.act(obs, self._grip, deterministic=False, rng=self.rng)
        intervened = False
        if self.intervener is not None:
            exec_action, intervened = self.intervener.step(obs, action)
            if intervened:
                action = np.clip(np.asarray(exec_action, np.float32), -1.0, 1.0)
                grip = gripper_label(action[6], self._grip)
        next_obs, env_reward, terminated, truncated, info = self.env.step(action)
        if not intervened and info.get("intervening") and info.get("intervene_action") is not None:
            # the rig's arbitration applied the operator's command (ROS env adapter): store that
            intervened = True
            action = np.clip(np.asarray(info["intervene_action"], np.float32), -1.0, 1.0)
            grip = gripper_label(action[6], self._grip)
        reward, terminated = self._reward(next_obs, info, float(env_reward), bool(terminated))
        self._grip = float(action[6])
        keys = self.agent.obs_keys
        tr = {f"obs/{k}": np.asarray(obs[k]) for k in keys}
        tr.update({f"next_obs/{k}": np.asarray(next_obs[k]) for k in keys})
        tr.update(
            action=np.asarray(action, np.float32), grip=np.int64(grip), reward=np.float32(reward),
            terminated=np.bool_(terminated), intervened=np.bool_(intervened),
        )
        if self.recorder is not None:
            self.recorder.add(obs, action, reward, intervened)
        self.env_steps += 1
        self._len += 1
        self._ret += reward
        self._n_int += int(intervened)
        self._obs = next_obs
        stats = None
        if terminated or truncated:
            success = bool(info.get("is_success", reward > 0 and terminated))
            stats = EpisodeStats(
                self.episodes, self._len, self._ret, success, self._n_int / max(self._len, 1),
                self.env_steps, self.name,
            )
            self.episodes += 1
            self._obs = None
            if self.recorder is not None:
                self.recorder.end(success)
        return tr, stats

    def _reward(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any], r: float, term: bool) -> tuple[float, bool]:
        if self.reward_source == "env":
            return r, term
        if self.reward_source == "success":
            ok = bool(info.get("is_success", False))
        else:
            assert self.reward_fn is not None
            ok = self.reward_fn(obs, info) > 0.5
        return (1.0 if ok else 0.0), (term or ok)

    # ----------------------------------------------------------- evaluation
    def evaluate(self, episodes: int, seed: int = 10_000, max_steps: int | None = None) -> dict[str, float]:
        """Deterministic policy, no interventions: success rate, mean return and length."""
        succ, rets, lens = [], [], []
        for i in range(episodes):
            obs, _ = self.env.reset(seed=seed + i)
            grip = self.action_spec.width_to_gripper(float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0]))
            ret, n, ok = 0.0, 0, False
            while True:
                action, _ = self.agent.act(obs, grip, deterministic=True)
                obs, r, term, trunc, info = self.env.step(action)
                grip = float(action[6])
                ok = ok or bool(info.get("is_success", False))
                n += 1
                ret += float(r)
                if term or trunc or ok or (max_steps is not None and n >= max_steps):
                    break
            succ.append(ok)
            rets.append(ret)
            lens.append(n)
        return {"success_rate": float(np.mean(succ)), "return": float(np.mean(rets)), "length": float(np.mean(lens))}


class RolloutRecorder:
    """Writes the actor's episodes to an episode store, tagged ``source="rl"`` (interventions included).

    Only the keys of the store's rig spec are written (e.g. ``state/privileged`` is not).
    """

    def __init__(self, store: Any, task: str = "", instruction: str = "", policy_version: str = ""):
        self.store = store
        self.meta = {"task": task, "instruction": instruction, "policy_version": policy_version, "source": "rl"}
        self._keys = list(store.spec.observation_specs())
        self._writer: Any = None

    def begin(self, actor: Actor) -> None:
        if self._writer is not None:
            self._writer.abort()
        self._writer = self.store.begin_episode(**self.meta, extra={"actor": actor.name})

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float, intervened: bool) -> None:
        self._writer.add({k: obs[k] for k in self._keys}, np.asarray(action, np.float32), reward=float(reward),
                         intervention=bool(intervened))

    def end(self, success: bool) -> None:
        self._writer.commit(success=bool(success))
        self._writer = None


def collect_demos(
    env: Any,
    expert: Any,
    num_episodes: int,
    obs_keys: list[str],
    *,
    seed: int = 0,
    max_attempts: int | None = None,
    action_spec: ActionSpec | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Roll out a scripted (noisy, human-like) expert; keep ``num_episodes`` successful episodes.

    Returns (transition batch, stats). Rewards follow ``reward_source="success"``.
    """
    from flywheel.rl.buffers import stack_transitions

    spec = action_spec or ActionSpec()
    max_attempts = max_attempts or 3 * num_episodes
    kept: list[dict[str, np.ndarray]] = []
    attempts = n_ok = 0
    t0 = time.time()
    rng = np.random.default_rng(seed)
    while n_ok < num_episodes and attempts < max_attempts:
        attempts += 1
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        expert.reset()
        grip = spec.width_to_gripper(float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0]))
        ep: list[dict[str, np.ndarray]] = []
        ok = False
        while True:
            action = np.clip(np.asarray(expert.act(obs), np.float32), -1.0, 1.0)
            nobs, _, term, trunc, info = env.step(action)
            ok = bool(info.get("is_success", False))
            tr = {f"obs/{k}": np.asarray(obs[k]) for k in obs_keys}
            tr.update({f"next_obs/{k}": np.asarray(nobs[k]) for k in obs_keys})
            tr.update(
                action=action, grip=np.int64(gripper_label(action[6], grip)), reward=np.float32(ok),
                terminated=np.bool_(term or ok), intervened=np.bool_(True),
            )
            ep.append(tr)
            grip = float(action[6])
            obs = nobs
            if term or trunc or ok:
                break
        if ok:
            kept.extend(ep)
            n_ok += 1
        if progress:
            print(f"demos: {n_ok}/{num_episodes} after {attempts} attempts", flush=True)
    if n_ok < num_episodes:
        raise RuntimeError(
            f"the expert succeeded in only {n_ok} of {attempts} attempts (wanted {num_episodes}); "
            "lower the expert noise or raise max_attempts"
        )
    stats = {"demo_episodes": float(n_ok), "demo_attempts": float(attempts),
             "demo_success_rate": n_ok / attempts, "demo_transitions": float(len(kept)),
             "demo_seconds": time.time() - t0}
    return stack_transitions(kept), stats


def grip_name(i: int) -> str:
    return GRIP_NAMES[i]
