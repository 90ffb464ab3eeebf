"""Collection for distillation: roll agents out, record every episode in the store, pick the successes.

Every rollout lands in the episode store tagged by ``source`` (``human`` for the
scripted/teleop operator, ``rl`` for specialists and the generalist's own
RL-stage rollouts, ``policy`` for plain generalist rollouts) and by a
``collection`` name plus its ``seed`` (in the record's ``extra``), so that

* a killed collection resumes: seeds already committed under the same
  collection name are skipped, and
* distillation selects exactly the data it wants (:func:`select`).

Agents may act on more than the store keeps: a specialist can read the
privileged object state (``state/privileged``) while the recorded episode keeps
only the rig spec's keys (proprio + camera images), which is what the
generalist trains on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.rollout import Agent, Intervener, Rollout, Step
from rig.spec import RigSpec

log = logging.getLogger(__name__)


@dataclass
class CollectStats:
    """What one :func:`record_rollouts` call did (skipped seeds were recorded by an earlier run)."""

    collection: str
    episodes: int = 0
    successes: int = 0
    skipped: int = 0
    steps: int = 0
    intervened_steps: int = 0
    episode_indices: list[int] = field(default_factory=list)
    skipped_successes: int = 0  # successes among the skipped seeds' episodes (recorded earlier)

    @property
    def success_rate(self) -> float:
        """Over the episodes this call recorded."""
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def success_rate_all(self) -> float:
        """Over every requested seed's episode, the earlier-recorded (skipped) ones included."""
        n = self.episodes + self.skipped
        return (self.successes + self.skipped_successes) / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "episodes": self.episodes, "successes": self.successes,
                "skipped": self.skipped, "skipped_successes": self.skipped_successes, "steps": self.steps,
                "intervened_steps": self.intervened_steps, "success_rate": self.success_rate,
                "success_rate_all": self.success_rate_all}


def make_env(task: str, cameras: Sequence[str] = ("front", "wrist"), image_size: int = 32,
             privileged_state: bool = True, **overrides: Any) -> Any:
    """A sim env whose observations hold the spec keys (+ ``state/privileged`` for specialists)."""
    import sim

    return sim.make(task, cameras=tuple(cameras), image_size=int(image_size),
                    privileged_state=privileged_state, **overrides)


def recorded_seeds(store: Any, collection: str) -> set[int]:
    """Seeds already committed under ``collection``."""
    return {int(r.extra["seed"]) for r in store.records
            if r.extra.get("collection") == collection and "seed" in r.extra}


@dataclass
class RolledEpisode:
    """One whole episode as the store will hold it: the spec observations, actions, rewards, flags.

    What a Ray worker sends back to the driver (numpy arrays travel by reference), and
    what the serial path commits too, so both write the same episode.
    """

    task: str
    instruction: str
    seed: int
    obs: dict[str, np.ndarray]  # spec key -> (T, ...)
    action: np.ndarray  # (T, A)
    reward: np.ndarray  # (T,)
    intervention: np.ndarray  # (T,) bool
    success: bool

    @property
    def steps(self) -> int:
        return len(self.action)


def roll_episode(env: Any, agent: Agent, seed: int, keys: Iterable[str], *, intervener: Intervener | None = None,
                 max_steps: int | None = None) -> RolledEpisode:
    """Roll ``agent`` once from ``seed`` (its own random stream re-seeded from it), keeping the ``keys`` observations.

    The episode is its seed's alone (``flywheel.cluster.seed_agent``), whichever process rolls it.
    """
    from flywheel.cluster import seed_agent

    keys = set(keys)
    obs: dict[str, list[np.ndarray]] = {}
    act: list[np.ndarray] = []
    rew: list[float] = []
    itv: list[bool] = []

    def record(s: Step) -> None:
        for k, v in s.obs.items():
            if k in keys:
                obs.setdefault(k, []).append(np.array(v))
        act.append(np.array(s.action))
        rew.append(s.reward)
        itv.append(s.intervened)

    seed_agent(agent, int(seed))
    ep = Rollout(env, agent, intervener=intervener, max_steps=max_steps, on_step=record).run(int(seed))
    base = env.unwrapped
    return RolledEpisode(base.task_id, base.instruction, int(seed), {k: np.stack(v) for k, v in obs.items()},
                         np.stack(act), np.asarray(rew, np.float64), np.asarray(itv, bool), bool(ep.success))


def commit_episode(store: Any, ep: RolledEpisode, *, source: str, collection: str, policy_version: str = "") -> int:
    """Write one rolled episode to ``store`` (tagged by collection and seed); returns its index."""
    writer = store.begin_episode(task=ep.task, instruction=ep.instruction, source=source,
                                 policy_version=policy_version, rig_id="sim",
                                 extra={"collection": collection, "seed": ep.seed})
    try:
        for t in range(ep.steps):
            writer.add({k: v[t] for k, v in ep.obs.items()}, ep.action[t], reward=float(ep.reward[t]),
                       intervention=bool(ep.intervention[t]))
        return int(writer.commit(success=ep.success))
    except BaseException:
        if not writer.closed:
            writer.abort()
        raise


def record_rollouts(
    store: Any,
    env: Any,
    agent: Agent | None,
    seeds: Iterable[int],
    *,
    source: str,
    collection: str,
    policy_version: str = "",
    intervener: Intervener | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    pool: Any = None,
) -> CollectStats:
    """Roll ``agent`` once per seed and commit each episode (success or not) to ``store``, in seed order.

    Each episode is its seed's alone: the env resets with the seed and the agent's
    own random stream is re-seeded from it. With an ``intervener`` (a simulated or
    real operator) the executed action is the intervener's when it takes over; such
    steps carry ``intervention=True``.

    ``pool``: a connected :class:`flywheel.cluster.RayEpisodePool` whose workers
    rebuild the agent (its ``PolicySource``) and roll the seeds; whole episodes come
    back and this process, the store's one writer, commits them in seed order, so the
    store ends up as the serial run's. ``env`` and ``agent`` are then unused.
    """
    from tqdm.auto import tqdm

    spec: RigSpec = store.spec
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    done = recorded_seeds(store, collection)
    todo = [s for s in seeds if s not in done]
    st = CollectStats(collection, skipped=len(seeds) - len(todo))
    if st.skipped:
        wanted = set(seeds) & done
        st.skipped_successes = sum(bool(r.success) for r in store.records
                                   if r.extra.get("collection") == collection and r.extra.get("seed") in wanted)
        log.info("%s: %d of %d seeds already recorded, resuming", collection, st.skipped, len(seeds))

    def commit(ep: RolledEpisode) -> None:
        idx = commit_episode(store, ep, source=source, collection=collection, policy_version=policy_version)
        st.episodes += 1
        st.successes += int(ep.success)
        st.steps += ep.steps
        st.intervened_steps += int(ep.intervention.sum())
        st.episode_indices.append(idx)
        bar.update(1)
        bar.set_postfix(success=f"{st.success_rate:.2f}")

    keys = list(spec.observation_specs())
    with tqdm(total=len(todo), desc=f"collect {collection}", disable=not progress, leave=False) as bar:
        if pool is not None:
            from flywheel.cluster import collect_on_pool

            if intervener is not None:
                raise ValueError("record_rollouts(pool=...): interveners do not run on Ray workers; collect "
                                 "with an intervener serially (pool=None)")
            if max_steps is not None and max_steps != pool.src.max_steps:
                raise ValueError(f"record_rollouts(max_steps={max_steps}) with a pool: set the pool's "
                                 f"PolicySource.max_steps (it is {pool.src.max_steps})")
            collect_on_pool(pool, env.unwrapped.task_id, todo, keys, commit)
        else:
            if agent is None:
                raise ValueError("record_rollouts: agent=None needs a pool (whose workers rebuild the agent)")
            for seed in todo:
                commit(roll_episode(env, agent, seed, keys, intervener=intervener, max_steps=max_steps))
    return st


def select(store: Any, *, task: str | Sequence[str] | None = None, source: str | Sequence[str] | None = None,
           collection: str | Sequence[str] | None = None, success: bool | None = True,
           limit: int | None = None) -> list[int]:
    """Episode indices matching the filters (successes by default), oldest first, at most ``limit``."""
    filters: dict[str, Any] = {}
    if task is not None:
        filters["task"] = list(task) if not isinstance(task, str) else task
    if source is not None:
        filters["source"] = list(source) if not isinstance(source, str) else source
    if success is not None:
        filters["success"] = success
    idx = store.select(**filters)
    if collection is not None:
        names = {collection} if isinstance(collection, str) else set(collection)
        idx = [i for i in idx if store.record(i).extra.get("collection") in names]
    return idx[:limit] if limit is not None else idx


class ExpertAgent:
    """The scripted operator (``sim.expert``) as an agent; ``noise`` ~1 is human-like."""

    def __init__(self, env: Any, noise: float = 1.0, seed: int = 0):
        import sim

        self.seed = int(seed)
        self.expert = sim.expert(env, noise=noise, seed=seed)

    def seed_episode(self, seed: int) -> None:
        """The operator's noise from the episode seed and the agent's own ``seed`` (another ``seed``, other
        demos of the same episodes), so an episode is the same on any worker and on resume."""
        self.expert.rng = np.random.default_rng(int(seed) if self.seed == 0 else [self.seed, int(seed)])

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.expert.act(obs), np.float32)
