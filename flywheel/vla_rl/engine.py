"""The rollout engine of the on-policy methods: vectorised envs, batched inference, groups of G.

Each call to :meth:`RolloutEngine.collect` samples a task per group (multi-task sampling, uniform
over ``tasks`` or by ``task_weights``) and a fresh seed per group; the G members of a group start
from the same seed (the same initial state: GRPO's "same prompt") and differ only by the policy's
sampling. Groups run in waves on one vector env per task (``sim.make_vec`` by default, sync), all
envs stepped together and the policy evaluated once per decision for the whole batch. A decision
is one action chunk; its first ``exec_horizon`` actions execute (an episode may end inside).

A wave (:class:`Wave`, run by :func:`run_wave`, which returns plain data) is the unit of work and
is deterministic on its own: its envs reset with its seeds and the policy's sampling noise comes
from a ``torch.Generator`` seeded by a digest of the wave (task, seeds, G, deterministic), not
from the global RNG. So the waves can run anywhere: ``cluster=ClusterConfig(kind="ray")`` runs
them on Ray workers (:mod:`flywheel.vla_rl.ray_engine`) and the batch is the serial run's.

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

An operator (``make_operator``: env -> :class:`flywheel.rollout.Intervener`, e.g. the simulated one) may
take over during training rollouts (never in held-out evaluation): the executed action is then the
operator's, and per decision the batch holds ``intervened`` and ``operator_actions`` (the policy's chunk
with the operator's executed steps in place of its own), from which DPO forms its intervention pairs.
"""

from __future__ import annotations

import hashlib
import json
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
    intervened: torch.Tensor | None = None  # (S,) bool: an operator executed some of the decision's steps
    operator_actions: torch.Tensor | None = None  # (S, H, A) the chunk with the operator's executed steps

    def executed_actions(self) -> torch.Tensor:
        """(S, H, A) the chunks as executed: the operator's steps where it took over, else as sampled."""
        if self.intervened is None or self.operator_actions is None:
            return self.actions
        return torch.where(self.intervened[:, None, None], self.operator_actions, self.actions)

    @property
    def corrected(self) -> bool:
        """An operator executed some of the batch's decisions (``intervened`` and ``operator_actions`` hold them)."""
        return self.intervened is not None and self.operator_actions is not None and bool(self.intervened.any())

    def own_steps(self) -> torch.Tensor:
        """(S,) bool: the decisions whose executed chunk was the policy's own sample (all, without an operator)."""
        if self.intervened is None:
            return torch.ones(self.num_steps, dtype=torch.bool)
        return ~self.intervened.bool()

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
            intervened=None if self.intervened is None else self.intervened[steps],
            operator_actions=None if self.operator_actions is None else self.operator_actions[steps],
        )


class StoreRecorder:
    """Writes finished episodes to an :class:`flywheel.data.EpisodeStore` (``source="rl"``); only the
    keys of the store's rig spec are written (``state/privileged`` is not). ``collection`` names the run's
    episodes for :func:`flywheel.distill.collect.select` (iRe-VLA's stage 2 finds its RL successes by it)."""

    def __init__(self, store: Any, algo: str, policy_version: str = "", collection: str = "") -> None:
        self.store, self.algo, self.policy_version, self.collection = store, algo, policy_version, collection
        self.keys = list(store.spec.observation_specs())
        self.iteration = 0

    def record(self, task: str, instruction: str, obs: list[dict[str, np.ndarray]], actions: list[np.ndarray],
               rewards: list[float], success: bool, seed: int, group: int,
               interventions: list[bool] | None = None) -> int:
        """One episode; ``interventions`` marks the steps an operator took (the store's ``intervention``)."""
        arrays = {k: np.stack([o[k] for o in obs]) for k in self.keys}
        arrays["action"] = np.stack(actions).astype(np.float32)
        arrays["reward"] = np.asarray(rewards, np.float32)
        if interventions is not None:
            arrays["intervention"] = np.asarray(interventions, bool)
        return self.store.add_episode(
            arrays, task=task, instruction=instruction, success=bool(success), source="rl",
            policy_version=self.policy_version,
            extra={"algo": self.algo, "iteration": int(self.iteration), "seed": int(seed), "group": int(group),
                   **({"collection": self.collection} if self.collection else {})},
        )


@dataclass(frozen=True)
class SimVec:
    """A factory ``(task, num_envs) -> sim.make_vec(...)`` (sync) with fixed env overrides; picklable
    (a Ray worker rebuilds its envs from it)."""

    env_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, task: str, n: int) -> Any:
        import sim

        return sim.make_vec(task, n, "sync", **dict(self.env_kwargs))


def make_sim_vec(env_kwargs: Mapping[str, Any] | None = None) -> SimVec:
    """A factory ``(task, num_envs) -> sim.make_vec(...)`` (sync) with fixed env overrides."""
    return SimVec(dict(env_kwargs or {}))


def env_attr(vec: Any, name: str, default: str) -> str:
    """The first env's ``name`` attribute of a vector env (its instruction, its task id), else ``default``."""
    try:
        return str(vec.get_attr(name)[0])
    except (AttributeError, KeyError, TypeError, IndexError):
        return default


# ---------------------------------------------------------------------------- one wave
@dataclass(frozen=True)
class Wave:
    """The unit of work: G rollouts from each of ``seeds`` (one group per seed) on one vector env.

    Its sampling noise comes from a generator seeded by :meth:`noise_seed` (a digest of the task,
    the seeds, G and ``deterministic``), so a wave gives the same result wherever it runs."""

    task: str
    seeds: tuple[int, ...]
    groups: tuple[int, ...]  # the batch's group id of each seed
    group_size: int
    deterministic: bool

    def noise_seed(self) -> int:
        key = json.dumps([self.task, [int(s) for s in self.seeds], int(self.group_size), bool(self.deterministic)])
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


@dataclass
class WaveResult:
    """What a wave returns (plain data: it crosses processes). Episode ``i`` is env ``i``'s."""

    instruction: str
    task_id: str
    episodes: list[dict[str, Any]]  # task, seed, group, ret, length, success, progress, terminal, final_feats
    steps: list[tuple]  # per decision: feats, actions, logp, rewards, episode (long, wave-local), extra, assist
    # (episode, obs/act/rew/inter: the operator's steps), as they ended
    traces: list[tuple[int, dict[str, list]]] = field(default_factory=list)


@torch.no_grad()
def run_wave(policy: Any, vec: Any, wave: Wave, *, exec_horizon: int, max_steps: int | None,
             record: bool = False, operators: Sequence[Any] | None = None) -> WaveResult:
    """Roll one wave on ``vec`` (all its envs step; those past the wave's episodes are ignored).
    ``operators``: one :class:`flywheel.rollout.Intervener` per env, who may take over (reset here)."""
    g, n = wave.group_size, vec.num_envs
    n_active = len(wave.seeds) * g
    if n_active > n:
        raise ValueError(f"a wave of {len(wave.seeds)} groups of {g} needs {n_active} envs; the vector env has {n}")
    gen = torch.Generator().manual_seed(wave.noise_seed())
    env_seeds = [int(wave.seeds[min(i // g, len(wave.seeds) - 1)]) for i in range(n)]
    obs, _ = vec.reset(seed=env_seeds)
    if operators is not None:
        if len(operators) < n_active:
            raise ValueError(f"{len(operators)} operators for {n_active} envs")
        for op in operators:
            op.reset()
    instr = env_attr(vec, "instruction", wave.task)
    alive = np.arange(n) < n_active
    eps = [dict(task=wave.task, seed=env_seeds[i], group=int(wave.groups[i // g]), ret=0.0, length=0, success=False,
                progress=-np.inf, terminal=False, final_feats=None) for i in range(n_active)]
    out = WaveResult(instr, env_attr(vec, "task_id", wave.task), eps, [])
    traces: list[dict[str, list]] = [{"obs": [], "act": [], "rew": [], "inter": []} for _ in range(n)]
    final_obs: dict[int, dict[str, np.ndarray]] = {}
    steps = np.zeros(n, int)
    while alive.any():
        feats = policy.features({**obs, "instruction": [instr] * n})
        act, logp, extra = policy.act(feats, deterministic=wave.deterministic, generator=gen)
        env_act = policy.to_env(act)
        idx = np.nonzero(alive)[0]
        rew = np.zeros(n)
        op_act = took = None
        if operators is not None:  # the chunks with the operator's steps, and which steps those were (n, H)
            op_act, took = env_act.copy(), np.zeros(env_act.shape[:2], bool)
        for j in range(exec_horizon):
            a = np.stack([executed(x) for x in env_act[:, j]])
            if op_act is not None:
                for i in np.nonzero(alive)[0]:
                    ai, theirs = operators[i].step({k: v[i] for k, v in obs.items()}, a[i])
                    if theirs:
                        a[i] = op_act[i, j] = executed(ai)
                        took[i, j] = True
            nobs, r, term, trunc, info = vec.step(a)
            succ = np.asarray(info.get("is_success", np.zeros(n, bool)), bool)
            prog = np.asarray(info.get("dense_reward", np.zeros(n)), float)
            for i in np.nonzero(alive)[0]:
                steps[i] += 1
                rew[i] += float(r[i])
                e = eps[i]
                e["ret"] += float(r[i])
                e["length"] += 1
                e["success"] = e["success"] or bool(succ[i])
                e["progress"] = max(e["progress"], float(prog[i]))
                if record:
                    traces[i]["obs"].append({k: np.asarray(v[i]) for k, v in obs.items()})
                    traces[i]["act"].append(a[i])
                    traces[i]["rew"].append(float(r[i]))
                    traces[i]["inter"].append(bool(took is not None and took[i, j]))
                if episode_over(bool(term[i]), bool(trunc[i]), bool(succ[i]), int(steps[i]), max_steps):
                    alive[i] = False
                    e["terminal"] = bool(term[i]) or bool(succ[i])
                    final_obs[int(i)] = {k: np.asarray(v[i]) for k, v in nobs.items()}
                    if record:
                        out.traces.append((int(i), traces[i]))
            obs = nobs
            if not alive.any():
                break
        assist = None
        if op_act is not None:
            steps_taken = torch.as_tensor(took[idx])
            op_norm = policy.from_env(op_act[idx]).to(act.dtype)[..., : act.shape[-1]]
            assist = (steps_taken.any(1), torch.where(steps_taken[..., None], op_norm, act[idx]))
        out.steps.append((feats[idx], act[idx], logp[idx], torch.as_tensor(rew[idx], dtype=torch.float32),
                          torch.as_tensor(idx, dtype=torch.long), {k: v[idx] for k, v in extra.items()}, assist))
    keys = list(final_obs)
    fo = {k: np.stack([final_obs[e][k] for e in keys]) for k in final_obs[keys[0]]}
    ff = policy.features({**fo, "instruction": [instr] * len(keys)})
    for e, f in zip(keys, ff, strict=True):
        eps[e]["final_feats"] = f
    return out


# -------------------------------------------------------------------------- the engine
class RolloutEngine:
    """Collects groups of rollouts of a chunk policy (see the module docstring).

    ``cluster`` (a :class:`flywheel.cluster.ClusterConfig`, ``kind=ray``) runs the waves on Ray
    workers (:mod:`flywheel.vla_rl.ray_engine`): the same batch as the serial run; ``make_vec``
    must then be picklable (:func:`make_sim_vec`'s is)."""

    def __init__(
        self, policy: Any, make_vec: Callable[[str, int], Any], tasks: Sequence[str], *, group_size: int = 8,
        num_envs: int = 16, exec_horizon: int = 1, max_steps: int | None = None,
        task_weights: Sequence[float] | None = None, seed: int = 0, recorder: StoreRecorder | None = None,
        cluster: Any = None, make_operator: Callable[[Any], Any] | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("RolloutEngine: tasks must name at least one task")
        if group_size < 1 or num_envs < group_size:
            raise ValueError(f"RolloutEngine: need 1 <= group_size ({group_size}) <= num_envs ({num_envs})")
        if not 1 <= exec_horizon <= policy.horizon:
            raise ValueError(f"exec_horizon={exec_horizon} must be in [1, the chunk horizon {policy.horizon}]")
        if task_weights is not None and len(task_weights) != len(tasks):
            raise ValueError(f"task_weights has {len(task_weights)} entries for {len(tasks)} tasks")
        if cluster is not None:
            cluster.validate()
            if make_operator is not None and cluster.kind == "ray":
                raise ValueError("an operator (interventions) needs the local rollouts: cluster.kind=local")
        self.policy, self.make_vec, self.tasks = policy, make_vec, list(tasks)
        self.make_operator = make_operator
        self._operators: dict[str, list[Any]] = {}
        self.group_size, self.num_envs, self.exec_horizon, self.max_steps = group_size, num_envs, exec_horizon, max_steps
        w = np.ones(len(tasks)) if task_weights is None else np.asarray(task_weights, float)
        self.task_p = w / w.sum()
        self.rng = np.random.default_rng(seed)
        self.next_seed = int(seed) * 1_000_003
        self.recorder = recorder
        self.cluster = cluster
        self.pool: Any = None  # the Ray wave pool, connected on the first collect
        self._vecs: dict[str, Any] = {}
        self.env_steps = 0

    def close(self) -> None:
        for v in self._vecs.values():
            v.close()
        self._vecs.clear()
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the same sampling (JSON)."""
        return {"rng": self.rng.bit_generator.state, "next_seed": self.next_seed, "env_steps": self.env_steps}

    def load_state(self, st: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.next_seed, self.env_steps = int(st["next_seed"]), int(st["env_steps"])

    # ------------------------------------------------------------------ collect
    def waves(self, seeds: Sequence[int], tasks: Sequence[str], g: int, deterministic: bool) -> list[Wave]:
        """The groups cut into waves: per task (first-seen order), ``num_envs // g`` groups a wave."""
        out = []
        per_wave = max(1, self.num_envs // g)
        for task in dict.fromkeys(tasks):
            ids = [i for i, t in enumerate(tasks) if t == task]
            for w in range(0, len(ids), per_wave):
                chunk = ids[w: w + per_wave]
                out.append(Wave(task, tuple(int(seeds[i]) for i in chunk), tuple(chunk), g, bool(deterministic)))
        return out

    def collect(self, num_groups: int, *, group_size: int | None = None, deterministic: bool = False,
                seeds: Sequence[int] | None = None, tasks: Sequence[str] | None = None,
                count: bool = True, assisted: bool = True) -> RolloutBatch:
        """``num_groups`` groups of ``group_size`` episodes. ``seeds`` / ``tasks`` (one per group) fix the
        groups (held-out evaluation); else the next seeds and sampled tasks. ``count``: add the env steps
        to :attr:`env_steps` (the training budget). ``assisted``: the operator (if any) may take over."""
        g = int(group_size or self.group_size)
        if not 1 <= g <= self.num_envs:
            raise ValueError(f"group_size={g} must be in [1, num_envs={self.num_envs}]: a group runs in one wave")
        if seeds is None:
            seeds = list(range(self.next_seed, self.next_seed + num_groups))
            self.next_seed += num_groups
        if tasks is None:
            tasks = [self.tasks[i] for i in self.rng.choice(len(self.tasks), size=num_groups, p=self.task_p)]
        waves = self.waves(seeds, tasks, g, deterministic)
        rec = self.recorder is not None
        acc = _Acc()
        if self.cluster is not None and self.cluster.kind == "ray":
            for res in self._pool().run(waves, self.policy, record=rec):
                self._absorb(acc, res)
        else:
            for w in waves:
                self._absorb(acc, self._run_local(w, rec, assisted))
        batch = acc.build()
        if count:
            self.env_steps += batch.env_steps
        return batch

    def _run_local(self, wave: Wave, record: bool, assisted: bool = True) -> WaveResult:
        if wave.task not in self._vecs:
            self._vecs[wave.task] = self.make_vec(wave.task, self.num_envs)
        vec, ops = self._vecs[wave.task], None
        if assisted and self.make_operator is not None:
            if wave.task not in self._operators:
                self._operators[wave.task] = [self.make_operator(env) for env in vec.envs]
            ops = self._operators[wave.task]
        return run_wave(self.policy, vec, wave, exec_horizon=self.exec_horizon, max_steps=self.max_steps,
                        record=record, operators=ops)

    def _pool(self) -> Any:
        if self.pool is None:
            from flywheel.vla_rl.ray_engine import RayWavePool

            self.pool = RayWavePool(self.policy, self.make_vec, self.cluster, num_envs=self.num_envs,
                                    exec_horizon=self.exec_horizon, max_steps=self.max_steps).connect()
        return self.pool

    def _absorb(self, acc: _Acc, res: WaveResult) -> None:
        base = acc.add_wave(res)
        if self.recorder is not None:
            for i, tr in res.traces:
                e = acc.ep[base + i]
                self.recorder.record(res.task_id, res.instruction, tr["obs"], tr["act"], tr["rew"], e["success"],
                                     e["seed"], e["group"], tr.get("inter"))


class _Acc:
    """Accumulates decisions and episodes over waves, then builds one :class:`RolloutBatch`."""

    def __init__(self) -> None:
        self.ep: list[dict[str, Any]] = []
        self.steps: list[tuple] = []

    def add_wave(self, res: WaveResult) -> int:
        """Append a wave's episodes and decisions; returns the batch index of its episode 0."""
        base = len(self.ep)
        self.ep.extend(res.episodes)
        for feats, act, logp, rew, ep, extra, assist in res.steps:
            self.steps.append((feats, act, logp, rew, ep + base, extra, assist))
        return base

    def build(self) -> RolloutBatch:
        if not self.steps:
            raise RuntimeError("RolloutEngine: no decisions were collected")
        cat = lambda i: torch.cat([s[i] for s in self.steps])  # noqa: E731
        episode = cat(4)
        order = torch.argsort(episode, stable=True)  # episodes contiguous, decisions in time order
        extra = {k: torch.cat([s[5][k] for s in self.steps])[order] for k in self.steps[0][5]}
        assisted = [s[6] for s in self.steps if s[6] is not None]
        if assisted and len(assisted) != len(self.steps):
            raise RuntimeError("RolloutEngine: assisted and unassisted waves in one batch")
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
            intervened=torch.cat([a[0] for a in assisted])[order] if assisted else None,
            operator_actions=torch.cat([a[1] for a in assisted])[order].float() if assisted else None,
        )
