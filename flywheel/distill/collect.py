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
from collections.abc import Iterable, Mapping, Sequence
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

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "episodes": self.episodes, "successes": self.successes,
                "skipped": self.skipped, "steps": self.steps, "intervened_steps": self.intervened_steps,
                "success_rate": self.success_rate}


def make_env(task: str, cameras: Sequence[str] = ("front", "wrist"), image_size: int = 32,
             privileged_state: bool = True, **overrides: Any) -> Any:
    """A sim env whose observations hold the spec keys (+ ``state/privileged`` for specialists)."""
    import sim

    return sim.make(task, cameras=tuple(cameras), image_size=int(image_size),
                    privileged_state=privileged_state, **overrides)


def spec_obs(obs: Mapping[str, Any], spec: RigSpec) -> dict[str, np.ndarray]:
    """Only the keys the rig spec (and so the store) holds."""
    keys = spec.observation_specs()
    return {k: np.asarray(v) for k, v in obs.items() if k in keys}


def recorded_seeds(store: Any, collection: str) -> set[int]:
    """Seeds already committed under ``collection``."""
    return {int(r.extra["seed"]) for r in store.records
            if r.extra.get("collection") == collection and "seed" in r.extra}


def record_rollouts(
    store: Any,
    env: Any,
    agent: Agent,
    seeds: Iterable[int],
    *,
    source: str,
    collection: str,
    policy_version: str = "",
    intervener: Intervener | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> CollectStats:
    """Roll ``agent`` once per seed and commit each episode (success or not) to ``store``.

    With an ``intervener`` (a simulated or real operator) the executed action is
    the intervener's when it takes over; such steps carry ``intervention=True``.
    """
    from tqdm.auto import tqdm

    base = env.unwrapped
    spec: RigSpec = store.spec
    seeds = [int(s) for s in seeds]
    done = recorded_seeds(store, collection)
    todo = [s for s in seeds if s not in done]
    st = CollectStats(collection, skipped=len(seeds) - len(todo))
    if st.skipped:
        log.info("%s: %d of %d seeds already recorded, resuming", collection, st.skipped, len(seeds))
    writer: Any = None

    def record(s: Step) -> None:
        writer.add(spec_obs(s.obs, spec), s.action, reward=s.reward, intervention=s.intervened)

    loop = Rollout(env, agent, intervener=intervener, max_steps=max_steps, on_step=record)
    with tqdm(total=len(todo), desc=f"collect {collection}", disable=not progress, leave=False) as bar:
        for seed in todo:
            loop.reset(seed)
            writer = store.begin_episode(task=base.task_id, instruction=base.instruction, source=source,
                                         policy_version=policy_version, rig_id="sim",
                                         extra={"collection": collection, "seed": seed})
            try:
                while not loop.done:
                    loop.step()
                ep = loop.episode
                assert ep is not None
                idx = writer.commit(success=ep.success)
            except BaseException:
                if not writer.closed:
                    writer.abort()
                raise
            st.episodes += 1
            st.successes += int(ep.success)
            st.steps += ep.steps
            st.intervened_steps += ep.interventions
            st.episode_indices.append(idx)
            bar.update(1)
            bar.set_postfix(success=f"{st.success_rate:.2f}")
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

        self.expert = sim.expert(env, noise=noise, seed=seed)

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.expert.act(obs), np.float32)
