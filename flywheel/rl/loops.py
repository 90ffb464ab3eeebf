"""The RL training loops: actor and learner in one process, the networked learner, the networked actor.

* :func:`train_local` runs actor and learner in one process (``role=local``):
  one update call per env step after warm-up.
* :func:`serve` is the networked learner (``role=learner``): it takes
  transitions from any number of actors over :mod:`flywheel.rl.transport`,
  keeps the configured update-to-data ratio, and publishes weights periodically.
* :func:`run_actor` is the networked actor (``role=actor``): it steps the env
  (through :class:`flywheel.rl.actor.Actor`, i.e. the one rollout loop), ships
  transitions in chunks and loads weights as they come.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flywheel.rl.actor import Actor, EpisodeStats
from flywheel.rl.buffers import stack_transitions
from flywheel.rl.learner import Learner, weights_from_bytes, weights_to_bytes

log = logging.getLogger(__name__)


def train_local(
    learner: Learner,
    actor: Actor,
    total_steps: int,
    *,
    eval_actor: Actor | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[Learner], None] | None = None,
) -> dict[str, float]:
    """Actor and learner in one process: one update call per env step after warm-up."""
    from tqdm import tqdm

    cfg = learner.cfg
    bar = tqdm(total=total_steps, initial=learner.env_steps, disable=not progress, desc="env steps")
    while learner.env_steps < total_steps:
        random = learner.env_steps < cfg.random_steps
        tr, stats = actor.step(random_action=random)
        learner.add(stack_transitions([tr]))
        if stats is not None:
            learner.log_episode(stats)
            bar.set_postfix(
                succ=f"{np.mean([s.success for s in learner._recent]):.2f}",
                interv=f"{stats.intervention_rate:.2f}",
            )
        if learner.ready:
            learner.train_step()
        bar.update(1)
        s = learner.env_steps
        if eval_actor is not None and cfg.eval_every and s % cfg.eval_every == 0:
            m = eval_actor.evaluate(cfg.eval_episodes)
            learner.log_eval(m)
            log.info("env step %d: eval %s", s, m)
        if checkpoint_dir is not None and cfg.checkpoint_every and s % cfg.checkpoint_every == 0:
            learner.save(checkpoint_dir)
        if callback is not None:
            callback(learner)
    bar.close()
    if checkpoint_dir is not None:
        learner.save(checkpoint_dir)
    return learner.last_info


def serve(
    learner: Learner,
    endpoint: Any,
    total_steps: int,
    *,
    weights_period_s: float = 5.0,
    checkpoint_dir: str | os.PathLike | None = None,
    eval_actor: Actor | None = None,
    idle_timeout_s: float | None = None,
    progress: bool = True,
) -> None:
    """The networked learner: ingest actors' transitions, update at the UTD ratio, publish weights.

    Stops after ``total_steps`` env steps (or ``idle_timeout_s`` without any message).
    """
    from tqdm import tqdm

    cfg = learner.cfg
    bar = tqdm(total=total_steps, initial=learner.env_steps, disable=not progress, desc="env steps (all actors)")
    last_pub = -1e9
    last_msg = time.monotonic()
    last_ckpt = learner.env_steps
    last_eval = learner.env_steps
    version = learner.update_calls
    while learner.env_steps < total_steps:
        now = time.monotonic()
        if now - last_pub >= weights_period_s:
            endpoint.publish_weights(version, weights_to_bytes(learner.agent))
            last_pub = now
        behind = learner.ready and learner.update_calls < learner.env_steps - cfg.warmup_steps
        msgs = endpoint.recv(timeout_ms=0 if behind else 50)
        if msgs:
            last_msg = now
        elif idle_timeout_s is not None and now - last_msg > idle_timeout_s:
            log.warning("no actor message for %.0f s: stopping", idle_timeout_s)
            break
        for m in msgs:
            if m.get("type") == "transitions":
                before = learner.env_steps
                try:  # the transport checked the message's form; the buffers check its fields' shapes
                    learner.add(m["batch"])
                except (KeyError, TypeError, ValueError) as e:
                    if hasattr(endpoint, "refuse"):
                        endpoint.refuse(m, e)
                    continue
                bar.update(learner.env_steps - before)
                for st in m.get("episodes", []):
                    learner.log_episode(EpisodeStats(
                        int(st["episode"]), int(st["length"]), float(st["return"]), bool(st["success"]),
                        float(st["intervention_rate"]), int(st["env_steps"]), str(st.get("actor", m.get("actor"))),
                        {str(k): float(v) for k, v in dict(st.get("extra") or {}).items()},
                    ))
        # keep update calls in step with received env steps (the UTD ratio per env step)
        n = 0
        while learner.ready and learner.update_calls < learner.env_steps - cfg.warmup_steps and n < 50:
            learner.train_step()
            version += 1
            n += 1
        if eval_actor is not None and cfg.eval_every and learner.env_steps - last_eval >= cfg.eval_every:
            last_eval = learner.env_steps
            learner.log_eval(eval_actor.evaluate(cfg.eval_episodes))
        if checkpoint_dir is not None and learner.env_steps - last_ckpt >= cfg.checkpoint_every:
            learner.save(checkpoint_dir)
            last_ckpt = learner.env_steps
    while learner.ready and learner.update_calls < learner.env_steps - cfg.warmup_steps:
        learner.train_step()  # catch up with the last transitions
        version += 1
    endpoint.publish_weights(version, weights_to_bytes(learner.agent))
    bar.close()
    if checkpoint_dir is not None:
        learner.save(checkpoint_dir)


def run_actor(
    actor: Actor,
    endpoint: Any,
    total_steps: int,
    *,
    send_every: int = 50,
    wait_for_weights_s: float = 30.0,
    random_steps: int = 0,
    progress: bool = False,
    rate_hz: float = 0.0,
) -> None:
    """The networked actor: step the env, ship transitions in chunks, load weights as they come.

    ``rate_hz`` > 0 paces the steps as a robot's control loop would (a sim otherwise runs flat out).
    """
    from tqdm import tqdm

    from flywheel.rl.transport import ActorEndpoint

    assert isinstance(endpoint, ActorEndpoint) or hasattr(endpoint, "send")
    msg = endpoint.poll_weights(timeout_ms=int(wait_for_weights_s * 1000))
    version = -1
    if msg is not None:
        weights_from_bytes(actor.agent, msg["data"])
        version = int(msg["version"])
    else:
        log.warning("%s: no weights from the learner within %.0f s; acting with initial weights",
                    actor.name, wait_for_weights_s)
    pending: list[dict[str, np.ndarray]] = []
    episodes: list[dict[str, Any]] = []
    bar = tqdm(total=total_steps, disable=not progress, desc=f"{actor.name} steps")
    steps = 0
    next_t = time.monotonic()
    while steps < total_steps:
        if rate_hz > 0:
            next_t += 1.0 / rate_hz
            time.sleep(max(0.0, next_t - time.monotonic()))
        tr, stats = actor.step(random_action=actor.env_steps < random_steps)
        pending.append(tr)
        steps += 1
        bar.update(1)
        if stats is not None:
            episodes.append(stats.to_dict())
        if len(pending) >= send_every or stats is not None or steps == total_steps:
            endpoint.send({"type": "transitions", "batch": stack_transitions(pending), "episodes": episodes,
                           "weights_version": version})
            pending, episodes = [], []
            w = endpoint.poll_weights(0)
            if w is not None and int(w["version"]) != version:
                weights_from_bytes(actor.agent, w["data"])
                version = int(w["version"])
    for _ in range(50):  # give the outbox a moment to drain
        if not endpoint.outbox:
            break
        endpoint.flush()
        time.sleep(0.05)
    bar.close()
