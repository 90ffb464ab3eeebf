"""The RL actor: runs the policy on an env (sim or the ROS env adapter), with interventions.

Works on any gymnasium env whose observations are spec observation dicts and
whose actions are 7-d spec actions. It steps the one rollout loop
(:class:`flywheel.rollout.Rollout`) a step at a time: the agent proposes an
action; an optional intervener (the operator, or ``sim.SimulatedIntervener``)
may override it, or on the rig the franka node's arbitration (reported by the
ROS env adapter); the executed action is what is stored, labelled
``intervened``. Rewards come from the env's success test
(``reward_source="success"``, sparse, terminal on success), the env's own reward
(``"env"``), or a reward function such as the learned classifier
(``"classifier"``, pass ``reward_fn``); an episode ends by the loop's one stop
rule (terminated, truncated, success, or the step limit). A ``reviewer`` (the
operator) may reject a success the classifier claimed: the transition then
carries no reward and no terminal, and the reward function hears the verdict
(:mod:`flywheel.rl.reward_refine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.rl.actions import GRIP_NAMES, GRIP_STAY, compose_action, gripper_label
from flywheel.rl.sac import SACAgent
from flywheel.rollout import Intervener, Rollout, Step, run_episodes
from rig.spec import ActionSpec

RewardFn = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], float]
Reviewer = Callable[[Step], bool]  # the operator's verdict on a success the classifier claimed at this step


class SACActing:
    """A :class:`SACAgent` as a rollout agent: tracks the gripper command in force between steps."""

    def __init__(self, agent: SACAgent, *, deterministic: bool, rng: np.random.Generator | None = None,
                 action_spec: ActionSpec | None = None):
        self.agent = agent
        self.deterministic = deterministic
        self.rng = rng
        self.spec = action_spec or ActionSpec()
        self.grip: float | None = None  # the gripper command in force (-1 closed .. +1 open)
        self.last_grip = GRIP_STAY  # the discrete gripper choice of the last act()

    def reset(self) -> None:
        self.grip = None

    def start(self, obs: Mapping[str, np.ndarray]) -> None:
        self.grip = self.spec.width_to_gripper(float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0]))

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self.grip is None:
            self.start(obs)
        assert self.grip is not None
        a, self.last_grip = self.agent.act(obs, self.grip, deterministic=self.deterministic, rng=self.rng)
        return a

    def executed(self, s: Step) -> None:
        """Step callback: the executed gripper command stays in force."""
        self.grip = float(s.action[6])


@dataclass
class EpisodeStats:
    episode: int
    length: int
    ret: float
    success: bool
    intervention_rate: float
    env_steps: int
    actor: str = ""
    # diagnostics per episode, e.g. a classifier reward checked against the sim's own test (see Actor.step)
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "episode": self.episode, "length": self.length, "return": self.ret, "success": self.success,
            "intervention_rate": self.intervention_rate, "env_steps": self.env_steps, "actor": self.actor,
            **({"extra": dict(self.extra)} if self.extra else {}),
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
        reviewer: Reviewer | None = None,
    ):
        if reward_source not in ("success", "env", "classifier"):
            raise ValueError(f"reward_source={reward_source!r}: use success, env or classifier")
        if reward_source == "classifier" and reward_fn is None:
            raise ValueError("reward_source='classifier' needs reward_fn (e.g. RewardClassifier.reward)")
        if reviewer is not None and reward_source != "classifier":
            raise ValueError("a reviewer judges a classifier's successes: it needs reward_source='classifier'")
        self.env = env
        self.reviewer = reviewer
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
        self._acting = SACActing(agent, deterministic=False, rng=self.rng, action_spec=self.action_spec)
        success_fn = self._classifier_success if reward_source == "classifier" else None
        self._loop = Rollout(env, None, intervener=intervener, success_fn=success_fn, on_step=self._acting.executed)
        self._ret = 0.0
        self._truth_seen = False  # the env's own success test passed at some step of this episode

    def _review(self, s: Step) -> bool:
        """The reviewer's verdict on the success the classifier claimed at ``s``, told to the reward function."""
        assert self.reviewer is not None
        confirmed = bool(self.reviewer(s))
        verdict = getattr(self.reward_fn, "verdict", None)  # a refining reward (RefiningReward) learns from it
        if verdict is not None:
            verdict(confirmed)
        return confirmed

    def _classifier_success(self, obs: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> bool:
        assert self.reward_fn is not None
        return self.reward_fn(obs, info) > 0.5

    # -------------------------------------------------------------- episode
    def reset(self) -> dict[str, np.ndarray]:
        obs = self._loop.reset(int(self.rng.integers(2**31)))
        reset_reward = getattr(self.reward_fn, "reset", None)  # a stateful reward (ClassifierReward)
        if reset_reward is not None:
            reset_reward()
        self._acting.start(obs)
        self._ret = 0.0
        self._truth_seen = False
        if self.recorder is not None:
            self.recorder.begin(self)
        return obs

    def step(self, random_action: bool = False) -> tuple[dict[str, np.ndarray], EpisodeStats | None]:
        """One env step -> (transition, stats if the episode ended)."""
        if self._loop.done:
            self.reset()
        obs = self._loop.obs
        prev_grip = self._acting.grip
        assert prev_grip is not None
        if random_action:
            cfg = self.agent.cfg
            grip = int(self.rng.integers(3)) if cfg.gripper else GRIP_STAY
            arm = self.rng.uniform(-1, 1, len(cfg.arm_dims))
            action = compose_action(arm, cfg.arm_dims, grip, prev_grip if cfg.gripper else cfg.gripper_fixed)
        else:
            action = self._acting.act(obs)
            grip = self._acting.last_grip
        s = self._loop.step(action)
        if s.intervened:
            grip = gripper_label(s.action[6], prev_grip)
        rejected = False  # the reviewer's verdict on a claimed success (a success ends the episode: one per episode)
        if self.reward_source == "env":
            reward, terminated = s.reward, s.terminated
        else:  # success / classifier: sparse, terminal on success (unless the operator rejects it)
            rejected = s.success and self.reviewer is not None and not self._review(s)
            succeeded = s.success and not rejected
            reward, terminated = (1.0 if succeeded else 0.0), (s.terminated or succeeded)
        keys = self.agent.obs_keys
        tr = {f"obs/{k}": np.asarray(obs[k]) for k in keys}
        tr.update({f"next_obs/{k}": np.asarray(s.next_obs[k]) for k in keys})
        tr.update(
            action=s.action, grip=np.int64(grip), reward=np.float32(reward),
            terminated=np.bool_(terminated), intervened=np.bool_(s.intervened),
        )
        if self.recorder is not None:
            self.recorder.add(obs, s.action, reward, s.intervened)
        self.env_steps += 1
        self._ret += reward
        self._truth_seen = self._truth_seen or bool(s.info.get("is_success", False))
        stats = None
        if s.done:
            ep = self._loop.episode
            assert ep is not None
            success = bool(s.info.get("is_success", reward > 0 and terminated))
            stats = EpisodeStats(self.episodes, ep.steps, self._ret, success, ep.intervention_rate,
                                 self.env_steps, self.name, self._reward_check(s, rejected))
            self.episodes += 1
            if self.recorder is not None:
                self.recorder.end(success)
        return tr, stats

    def _reward_check(self, s: Step, rejected: bool) -> dict[str, float]:
        """A classifier reward against the sim's own test, where the env still reports it (``is_success`` in
        ``info``; on the rig nothing knows the truth): did the classifier end the episode, was that a false
        positive (the sim's test false at that step), or did it miss a success the sim saw at some step."""
        if self.reward_source != "classifier" or "is_success" not in s.info:
            return {}
        fired = bool(s.success)
        out = {"reward_fired": float(fired), "reward_false_positive": float(fired and not s.info["is_success"]),
               "reward_missed": float(not fired and self._truth_seen)}
        if self.reviewer is not None:
            out["reward_rejected"] = float(rejected)
        return out

    # ----------------------------------------------------------- evaluation
    def evaluate(self, episodes: int, seed: int = 10_000, max_steps: int | None = None) -> dict[str, float]:
        """Deterministic policy, no interventions: success rate, mean return and length."""
        acting = SACActing(self.agent, deterministic=True, action_spec=self.action_spec)
        eps = run_episodes(self.env, acting, range(seed, seed + episodes), max_steps=max_steps,
                           on_step=acting.executed)
        return {"success_rate": float(np.mean([e.success for e in eps])),
                "return": float(np.mean([e.ret for e in eps])), "length": float(np.mean([e.steps for e in eps]))}


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
    ep: list[dict[str, np.ndarray]] = []
    grip = 0.0

    def transition(s: Step) -> None:
        nonlocal grip
        tr = {f"obs/{k}": np.asarray(s.obs[k]) for k in obs_keys}
        tr.update({f"next_obs/{k}": np.asarray(s.next_obs[k]) for k in obs_keys})
        tr.update(
            action=s.action, grip=np.int64(gripper_label(s.action[6], grip)), reward=np.float32(s.success),
            terminated=np.bool_(s.terminated or s.success), intervened=np.bool_(True),
        )
        ep.append(tr)
        grip = float(s.action[6])

    loop = Rollout(env, expert, on_step=transition)
    while n_ok < num_episodes and attempts < max_attempts:
        attempts += 1
        ep = []
        obs = loop.reset(int(rng.integers(2**31)))
        grip = spec.width_to_gripper(float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0]))
        while not loop.done:
            loop.step()
        ok = bool(loop.episode and loop.episode.success)
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
