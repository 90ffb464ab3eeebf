"""The rollout engine of the on-policy methods: vectorised envs, batched inference, groups of G.

Each call to :meth:`RolloutEngine.collect` samples a task per group (multi-task sampling, uniform
over ``tasks`` or by ``task_weights``) and a fresh seed per group; the G members of a group start
from the same seed (the same initial state: GRPO's "same prompt") and differ only by the policy's
sampling. Groups run in waves on one vector env per task (``sim.make_vec`` by default, sync), all
envs stepped together and the policy evaluated once per decision for the whole batch. A decision
is one action chunk; its first ``exec_horizon`` actions execute (an episode may end inside).

The stop rule and the action clipping are :mod:`flywheel.rollout`'s (``episode_over``,
``executed``), so a step and an episode mean what they mean everywhere else. (That module's
``Rollout`` drives one env and one agent; this engine needs a batch of envs and the per-step
log-probabilities, so it keeps its own loop over the same rules.) Vector envs autoreset on the
step after an episode ends; the engine ignores an env from its end until the next wave, so those
few extra steps are neither counted nor recorded.

What it returns (:class:`RolloutBatch`): per decision the frozen-encoder features (reused by the
update: the encoder never runs again), the chunk, its log-probability under the sampling policy,
``extra`` (the flow sampler's chain) and the summed reward; per episode its group, task, seed,
success, return, length, progress (the env's ``info["dense_reward"]`` stage measure, highest seen,
or a process reward model's) and the features of the final observation (value bootstraps).
Episodes go to the episode store when a :class:`StoreRecorder` is given (``source=rl``, the
algorithm and iteration in the record's ``extra``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from flywheel.rollout import episode_over, executed

log = logging.getLogger(__name__)


@dataclass
class RolloutBatch:
    """Decisions of whole episodes, contiguous and in time order per episode."""

    feats: torch.Tensor  # (S, D)
    actions: torch.Tensor  # (S, H, A) normalised chunks as sampled
    logp: torch.Tensor  # (S,) under the sampling policy
    rewards: torch.Tensor  # (S,) env reward summed over the executed actions
    episode: torch.Tensor  # (S,) long: index of the step's episode
    extra: dict[str, torch.Tensor]  # (S, ...) each
    group: torch.Tensor  # (E,) long
    success: torch.Tensor  # (E,) bool
    ret: torch.Tensor  # (E,) sum of rewards
    length: torch.Tensor  # (E,) env steps
    progress: torch.Tensor  # (E,) highest stage measure seen (higher is better)
    terminal: torch.Tensor  # (E,) bool: ended for real (success / env termination), no bootstrap
    final_feats: torch.Tensor  # (E, D) features of the last observation
    tasks: list[str] = field(default_factory=list)  # (E,)
    seeds: list[int] = field(default_factory=list)  # (E,)
    env_steps: int = 0

    @property
    def num_episodes(self) -> int:
        return len(self.group)

    @property
    def num_steps(self) -> int:
        return len(self.logp)

    def per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-episode tensor (E, ...) to the steps (S, ...)."""
        return x[self.episode]

    def episode_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a per-step tensor (S,) over each episode -> (E,)."""
        return torch.zeros(self.num_episodes, dtype=x.dtype, device=x.device).index_add_(0, self.episode, x)

    def decisions(self) -> torch.Tensor:
        """Decisions per episode (E,)."""
        return torch.bincount(self.episode, minlength=self.num_episodes)

    def last_step(self) -> torch.Tensor:
        """(S,) bool: the step is the last of its episode."""
        nxt = torch.cat([self.episode[1:], self.episode.new_tensor([-1])])
        return nxt != self.episode

    def select(self, keep: torch.Tensor) -> RolloutBatch:
        """The batch restricted to the episodes where ``keep`` (E,) is True (renumbered)."""
        keep = keep.bool()
        new_id = torch.cumsum(keep.long(), 0) - 1
        steps = keep[self.episode]
        return replace(
            self, feats=self.feats[steps], actions=self.actions[steps], logp=self.logp[steps],
            rewards=self.rewards[steps], episode=new_id[self.episode[steps]],
            extra={k: v[steps] for k, v in self.extra.items()}, group=self.group[keep], success=self.success[keep],
            ret=self.ret[keep], length=self.length[keep], progress=self.progress[keep],
            terminal=self.terminal[keep], final_feats=self.final_feats[keep],
            tasks=[t for t, k in zip(self.tasks, keep.tolist(), strict=True) if k],
            seeds=[s for s, k in zip(self.seeds, keep.tolist(), strict=True) if k],
        )


class StoreRecorder:
    """Writes finished episodes to an :class:`flywheel.data.EpisodeStore` (``source="rl"``); only the
    keys of the store's rig spec are written (``state/privileged`` is not)."""

    def __init__(self, store: Any, algo: str, policy_version: str = "") -> None:
        self.store, self.algo, self.policy_version = store, algo, policy_version
        self.keys = list(store.spec.observation_specs())
        self.iteration = 0

    def record(self, task: str, instruction: str, obs: list[dict[str, np.ndarray]], actions: list[np.ndarray],
               rewards: list[float], success: bool, seed: int, group: int) -> int:
        arrays = {k: np.stack([o[k] for o in obs]) for k in self.keys}
        arrays["action"] = np.stack(actions).astype(np.float32)
        arrays["reward"] = np.asarray(rewards, np.float32)
        return self.store.add_episode(
            arrays, task=task, instruction=instruction, success=bool(success), source="rl",
            policy_version=self.policy_version,
            extra={"algo": self.algo, "iteration": int(self.iteration), "seed": int(seed), "group": int(group)},
        )


def make_sim_vec(env_kwargs: Mapping[str, Any] | None = None) -> Callable[[str, int], Any]:
    """A factory ``(task, num_envs) -> sim.make_vec(...)`` (sync) with fixed env overrides."""
    kw = dict(env_kwargs or {})

    def make(task: str, n: int) -> Any:
        import sim

        return sim.make_vec(task, n, "sync", **kw)

    return make


def _env_attr(vec: Any, name: str, default: str) -> str:
    try:
        return str(vec.get_attr(name)[0])
    except (AttributeError, KeyError, TypeError, IndexError):
        return default


class RolloutEngine:
    """Collects groups of rollouts of a chunk policy (see the module docstring)."""

    def __init__(
        self, policy: Any, make_vec: Callable[[str, int], Any], tasks: Sequence[str], *, group_size: int = 8,
        num_envs: int = 16, exec_horizon: int = 1, max_steps: int | None = None,
        task_weights: Sequence[float] | None = None, seed: int = 0, recorder: StoreRecorder | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("RolloutEngine: tasks must name at least one task")
        if group_size < 1 or num_envs < group_size:
            raise ValueError(f"RolloutEngine: need 1 <= group_size ({group_size}) <= num_envs ({num_envs})")
        if not 1 <= exec_horizon <= policy.horizon:
            raise ValueError(f"exec_horizon={exec_horizon} must be in [1, the chunk horizon {policy.horizon}]")
        if task_weights is not None and len(task_weights) != len(tasks):
            raise ValueError(f"task_weights has {len(task_weights)} entries for {len(tasks)} tasks")
        self.policy, self.make_vec, self.tasks = policy, make_vec, list(tasks)
        self.group_size, self.num_envs, self.exec_horizon, self.max_steps = group_size, num_envs, exec_horizon, max_steps
        w = np.ones(len(tasks)) if task_weights is None else np.asarray(task_weights, float)
        self.task_p = w / w.sum()
        self.rng = np.random.default_rng(seed)
        self.next_seed = int(seed) * 1_000_003
        self.recorder = recorder
        self._vecs: dict[tuple[str, int], Any] = {}
        self._instr: dict[str, str] = {}
        self._task_id: dict[str, str] = {}
        self.env_steps = 0

    def close(self) -> None:
        for v in self._vecs.values():
            v.close()
        self._vecs.clear()

    def _vec(self, task: str, n: int) -> Any:
        if (task, n) not in self._vecs:
            self._vecs[(task, n)] = self.make_vec(task, n)
            self._instr[task] = _env_attr(self._vecs[(task, n)], "instruction", task)
            self._task_id[task] = _env_attr(self._vecs[(task, n)], "task_id", task)
        return self._vecs[(task, n)]

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the same sampling (JSON)."""
        return {"rng": self.rng.bit_generator.state, "next_seed": self.next_seed, "env_steps": self.env_steps}

    def load_state(self, st: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.next_seed, self.env_steps = int(st["next_seed"]), int(st["env_steps"])

    # ------------------------------------------------------------------ collect
    @torch.no_grad()
    def collect(self, num_groups: int, *, group_size: int | None = None, deterministic: bool = False,
                seeds: Sequence[int] | None = None, tasks: Sequence[str] | None = None,
                count: bool = True) -> RolloutBatch:
        """``num_groups`` groups of ``group_size`` episodes. ``seeds`` / ``tasks`` (one per group) fix the
        groups (held-out evaluation); else the next seeds and sampled tasks. ``count``: add the env steps
        to :attr:`env_steps` (the training budget)."""
        g = int(group_size or self.group_size)
        if not 1 <= g <= self.num_envs:
            raise ValueError(f"group_size={g} must be in [1, num_envs={self.num_envs}]: a group runs in one wave")
        if seeds is None:
            seeds = list(range(self.next_seed, self.next_seed + num_groups))
            self.next_seed += num_groups
        if tasks is None:
            tasks = [self.tasks[i] for i in self.rng.choice(len(self.tasks), size=num_groups, p=self.task_p)]
        acc = _Acc()
        for task in dict.fromkeys(tasks):
            ids = [i for i, t in enumerate(tasks) if t == task]
            per_wave = max(1, self.num_envs // g)
            for w in range(0, len(ids), per_wave):
                chunk = ids[w: w + per_wave]
                self._wave(task, [int(seeds[i]) for i in chunk], chunk, g, deterministic, acc)
        batch = acc.build(self.policy.feature_dim)
        if count:
            self.env_steps += batch.env_steps
        return batch

    def _wave(self, task: str, seeds: list[int], group_ids: list[int], g: int, deterministic: bool,
              acc: _Acc) -> None:
        n_active = len(seeds) * g
        vec = self._vec(task, self.num_envs)
        n = self.num_envs
        env_seeds = [seeds[min(i // g, len(seeds) - 1)] for i in range(n)]
        obs, _ = vec.reset(seed=env_seeds)
        instr = self._instr[task]
        alive = np.arange(n) < n_active
        ep = [acc.new_episode(task, env_seeds[i], group_ids[i // g]) if alive[i] else -1 for i in range(n)]
        steps = np.zeros(n, int)
        rec = self.recorder is not None
        traces: list[dict[str, list]] = [{"obs": [], "act": [], "rew": []} for _ in range(n)]
        final_obs: dict[int, dict[str, np.ndarray]] = {}
        pol = self.policy
        while alive.any():
            feats = pol.features({**obs, "instruction": [instr] * n})
            act, logp, extra = pol.act(feats, deterministic=deterministic)
            env_act = pol.to_env(act)
            idx = np.nonzero(alive)[0]
            rew = np.zeros(n)
            for j in range(self.exec_horizon):
                a = np.stack([executed(x) for x in env_act[:, j]])
                nobs, r, term, trunc, info = vec.step(a)
                succ = np.asarray(info.get("is_success", np.zeros(n, bool)), bool)
                prog = np.asarray(info.get("dense_reward", np.zeros(n)), float)
                for i in np.nonzero(alive)[0]:
                    steps[i] += 1
                    rew[i] += float(r[i])
                    e = acc.ep[ep[i]]
                    e["ret"] += float(r[i])
                    e["length"] += 1
                    e["success"] = e["success"] or bool(succ[i])
                    e["progress"] = max(e["progress"], float(prog[i]))
                    if rec:
                        traces[i]["obs"].append({k: np.asarray(v[i]) for k, v in obs.items()})
                        traces[i]["act"].append(a[i])
                        traces[i]["rew"].append(float(r[i]))
                    if episode_over(bool(term[i]), bool(trunc[i]), bool(succ[i]), int(steps[i]), self.max_steps):
                        alive[i] = False
                        e["terminal"] = bool(term[i]) or bool(succ[i])
                        final_obs[ep[i]] = {k: np.asarray(v[i]) for k, v in nobs.items()}
                        if rec:
                            self._record(task, instr, traces[i], e)
                obs = nobs
                if not alive.any():
                    break
            acc.add_steps(feats[idx], act[idx], logp[idx], torch.as_tensor(rew[idx], dtype=torch.float32),
                          [ep[i] for i in idx], {k: v[idx] for k, v in extra.items()})
        keys = list(final_obs)
        fo = {k: np.stack([final_obs[e][k] for e in keys]) for k in final_obs[keys[0]]}
        ff = pol.features({**fo, "instruction": [instr] * len(keys)})
        for e, f in zip(keys, ff, strict=True):
            acc.ep[e]["final_feats"] = f

    def _record(self, task: str, instr: str, trace: Mapping[str, list], e: Mapping[str, Any]) -> None:
        assert self.recorder is not None
        self.recorder.record(self._task_id[task], instr, trace["obs"], trace["act"], trace["rew"], e["success"], e["seed"], e["group"])


class _Acc:
    """Accumulates decisions and episodes over waves, then builds one :class:`RolloutBatch`."""

    def __init__(self) -> None:
        self.ep: list[dict[str, Any]] = []
        self.steps: list[tuple] = []

    def new_episode(self, task: str, seed: int, group: int) -> int:
        self.ep.append(dict(task=task, seed=seed, group=group, ret=0.0, length=0, success=False,
                            progress=-np.inf, terminal=False, final_feats=None))
        return len(self.ep) - 1

    def add_steps(self, feats, act, logp, rew, eps, extra) -> None:
        self.steps.append((feats, act, logp, rew, torch.as_tensor(eps, dtype=torch.long), extra))

    def build(self, feature_dim: int) -> RolloutBatch:
        if not self.steps:
            raise RuntimeError("RolloutEngine: no decisions were collected")
        cat = lambda i: torch.cat([s[i] for s in self.steps])  # noqa: E731
        episode = cat(4)
        order = torch.argsort(episode, stable=True)  # episodes contiguous, decisions in time order
        extra = {k: torch.cat([s[5][k] for s in self.steps])[order] for k in self.steps[0][5]}
        e = self.ep
        return RolloutBatch(
            feats=cat(0)[order].float(), actions=cat(1)[order].float(), logp=cat(2)[order].float(),
            rewards=cat(3)[order], episode=episode[order], extra=extra,
            group=torch.tensor([x["group"] for x in e], dtype=torch.long),
            success=torch.tensor([x["success"] for x in e], dtype=torch.bool),
            ret=torch.tensor([x["ret"] for x in e], dtype=torch.float32),
            length=torch.tensor([x["length"] for x in e], dtype=torch.long),
            progress=torch.tensor([x["progress"] if np.isfinite(x["progress"]) else 0.0 for x in e],
                                  dtype=torch.float32),
            terminal=torch.tensor([x["terminal"] for x in e], dtype=torch.bool),
            final_feats=torch.stack([x["final_feats"].float() for x in e]),
            tasks=[x["task"] for x in e], seeds=[int(x["seed"]) for x in e],
            env_steps=int(sum(x["length"] for x in e)),
        )
