"""The RL learner: buffers, RLPD updates, logging, checkpoints, and the training loops.

* :class:`Learner` owns the agent, the demo and online buffers, the counters and
  the TensorBoard writer; it checkpoints everything (weights and optimiser
  state as safetensors, buffers as npz, counters/RNG/history as JSON: no
  pickle) and resumes from it exactly.
* :func:`train_local` runs actor and learner in one process (``role=local``).
* :func:`serve` is the networked learner (``role=learner``): it takes
  transitions from any number of actors over :mod:`flywheel.rl.transport`,
  keeps the configured update-to-data ratio, and publishes weights periodically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from flywheel.rl.actor import Actor, EpisodeStats
from flywheel.rl.buffers import ReplayBuffer, rlpd_batch, route_transitions, stack_transitions
from flywheel.rl.sac import SACAgent

log = logging.getLogger(__name__)


@dataclass
class LearnerConfig:
    demo_capacity: int = 100_000
    online_capacity: int = 200_000
    warmup_steps: int = 0  # online env steps before updates start
    random_steps: int = 0  # first env steps with uniform random actions (local role)
    checkpoint_every: int = 5_000  # env steps
    eval_every: int = 2_000  # env steps (0: never)
    eval_episodes: int = 20
    log_every: int = 50  # update calls between TensorBoard loss scalars
    demo_only_batches: bool = False  # True: sample only the demo buffer (testing)


def weights_to_bytes(agent: SACAgent) -> bytes:
    return safetensors.torch.save(agent.policy_state_dict())


def weights_from_bytes(agent: SACAgent, data: bytes) -> None:
    agent.load_policy_state_dict(safetensors.torch.load(data))


class Learner:
    """Agent + demo/online buffers + counters + logs + checkpoints."""

    def __init__(self, agent: SACAgent, cfg: LearnerConfig, logdir: str | os.PathLike | None = None, seed: int = 0):
        self.agent = agent
        self.cfg = cfg
        shapes = agent_obs_shapes(agent)
        self.demo = ReplayBuffer(cfg.demo_capacity, shapes)
        self.online = ReplayBuffer(cfg.online_capacity, shapes)
        self.rng = np.random.default_rng(seed)
        self.logdir = Path(logdir) if logdir is not None else None
        self.env_steps = 0
        self.update_calls = 0
        self.critic_updates = 0
        self.episodes = 0
        self.intervened_steps = 0
        self.history: list[dict[str, Any]] = []  # per-episode and per-eval records
        self._recent: deque[EpisodeStats] = deque(maxlen=20)
        self._writer: Any = None
        self.last_info: dict[str, float] = {}

    # ------------------------------------------------------------- logging
    @property
    def writer(self) -> Any:
        if self._writer is None and self.logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir / "tb"))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def scalar(self, tag: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), self.env_steps)

    # ---------------------------------------------------------------- data
    def add_demos(self, batch: Mapping[str, np.ndarray]) -> None:
        self.demo.add_batch(batch)

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Online transitions (intervened ones also join the demo buffer)."""
        self.intervened_steps += route_transitions(batch, self.demo, self.online)
        self.env_steps += int(np.asarray(batch["reward"]).shape[0])

    def log_episode(self, stats: EpisodeStats) -> None:
        self.episodes += 1
        self._recent.append(stats)
        rec = {"kind": "episode", "env_steps": self.env_steps, **stats.to_dict()}
        self.history.append(rec)
        self.scalar("episode/return", stats.ret)
        self.scalar("episode/success", float(stats.success))
        self.scalar("episode/intervention_rate", stats.intervention_rate)
        self.scalar("episode/length", stats.length)
        self.scalar("episode/success_rate_last20", np.mean([s.success for s in self._recent]))

    def log_eval(self, metrics: Mapping[str, float]) -> None:
        self.history.append({"kind": "eval", "env_steps": self.env_steps, **metrics})
        for k, v in metrics.items():
            self.scalar(f"eval/{k}", v)

    # ------------------------------------------------------------ updating
    @property
    def ready(self) -> bool:
        return len(self.online) + len(self.demo) > 0 and self.env_steps >= self.cfg.warmup_steps

    def sample(self) -> dict[str, np.ndarray]:
        bs = self.agent.cfg.batch_size
        if self.cfg.demo_only_batches:
            return self.demo.sample(bs, self.rng)
        return rlpd_batch(self.demo, self.online, bs, self.rng)

    def train_step(self) -> dict[str, float]:
        """One agent update: ``utd_ratio`` critic updates (RLPD batches) and maybe an actor update."""
        info = self.agent.update([self.sample() for _ in range(self.agent.cfg.utd_ratio)])
        self.update_calls += 1
        self.critic_updates += self.agent.cfg.utd_ratio
        self.last_info = info
        if self.update_calls % self.cfg.log_every == 0:
            for k, v in info.items():
                self.scalar(f"train/{k}", v)
            self.scalar("train/utd_ratio", self.critic_updates / max(self.env_steps, 1))
            self.scalar("train/demo_buffer", len(self.demo))
            self.scalar("train/online_buffer", len(self.online))
        return info

    # ---------------------------------------------------------- checkpoint
    def save(self, path: str | os.PathLike) -> Path:
        """Write a complete checkpoint directory atomically (replacing an older one)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        tensors = {f"agent/{k}": v.detach().cpu().contiguous() for k, v in self.agent.state_dict().items()}
        opt_meta: dict[str, Any] = {}
        for name, opt in self.agent.optimizers().items():
            sd = opt.state_dict()
            opt_meta[name] = {"param_groups": sd["param_groups"], "state": {}}
            for pid, st in sd["state"].items():
                opt_meta[name]["state"][str(pid)] = sorted(st)
                for k, v in st.items():
                    tensors[f"opt/{name}/{pid}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        tensors["rng/torch"] = torch.get_rng_state()
        safetensors.torch.save_file(tensors, str(tmp / "agent.safetensors"))
        self.demo.save(tmp / "demo_buffer.npz")
        self.online.save(tmp / "online_buffer.npz")
        state = {
            "env_steps": self.env_steps, "update_calls": self.update_calls,
            "critic_updates": self.critic_updates, "episodes": self.episodes,
            "intervened_steps": self.intervened_steps, "agent_num_updates": self.agent.num_updates,
            "rng": self.rng.bit_generator.state, "optimizers": opt_meta, "history": self.history,
            "sac_config": asdict(self.agent.cfg), "learner_config": asdict(self.cfg),
        }
        (tmp / "state.json").write_text(json.dumps(state, default=_json_default))
        if path.exists():
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by :meth:`save` (weights, optimisers, buffers, counters, RNG)."""
        path = Path(path)
        if not (path / "state.json").exists():
            raise FileNotFoundError(f"{path} is not a learner checkpoint (no state.json)")
        state = json.loads((path / "state.json").read_text())
        tensors = safetensors.torch.load_file(str(path / "agent.safetensors"))
        agent_sd = {k[len("agent/"):]: v for k, v in tensors.items() if k.startswith("agent/")}
        self.agent.load_state_dict(agent_sd, strict=True)
        for name, opt in self.agent.optimizers().items():
            meta = state["optimizers"][name]
            opt_state = {
                int(pid): {k: tensors[f"opt/{name}/{pid}/{k}"] for k in keys} for pid, keys in meta["state"].items()
            }
            opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng/torch"])
        self.demo.load(path / "demo_buffer.npz")
        self.online.load(path / "online_buffer.npz")
        self.env_steps = state["env_steps"]
        self.update_calls = state["update_calls"]
        self.critic_updates = state["critic_updates"]
        self.episodes = state["episodes"]
        self.intervened_steps = state["intervened_steps"]
        self.agent.num_updates = state["agent_num_updates"]
        self.rng.bit_generator.state = state["rng"]
        self.history = state["history"]

    # ------------------------------------------------------------- curves
    def plot(self, path: str | os.PathLike, title: str = "") -> Path:
        """Learning curve PNG: eval success rate (and training success, intervention rate) vs env steps."""
        return plot_history(self.history, path, title)


def agent_obs_shapes(agent: SACAgent) -> dict[str, tuple[tuple[int, ...], str]]:
    return dict(agent.obs_shapes)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def plot_history(history: list[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [h for h in history if h["kind"] == "episode"]
    evals = [h for h in history if h["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if eps:
        x = np.array([h["env_steps"] for h in eps])
        w = min(20, len(eps))
        succ = np.convolve([float(h["success"]) for h in eps], np.ones(w) / w, mode="valid")
        inter = np.convolve([h["intervention_rate"] for h in eps], np.ones(w) / w, mode="valid")
        ax.plot(x[w - 1:], succ, label=f"training success ({w}-episode mean)", alpha=0.7)
        ax.plot(x[w - 1:], inter, label="intervention rate", alpha=0.7)
    if evals:
        ax.plot([h["env_steps"] for h in evals], [h["success_rate"] for h in evals], "o-", label="eval success")
    ax.set_xlabel("env steps")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ loops
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
