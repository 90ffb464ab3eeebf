"""The RL learner: buffers, RLPD updates, logging, checkpoints (the loops that drive it: :mod:`flywheel.rl.loops`).

* :class:`Learner` owns the agent, the demo and online buffers, the counters and
  the TensorBoard writer; it checkpoints everything (weights and optimiser
  state as safetensors, buffers as npz, counters/RNG/history as JSON: no
  pickle) and resumes from it exactly.
* :func:`weights_to_bytes` / :func:`weights_from_bytes`: what a learner publishes
  to its actors (the policy part of the agent, as safetensors).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from flywheel.registry import replace_dir
from flywheel.rl.actor import EpisodeStats
from flywheel.rl.buffers import ReplayBuffer, rlpd_batch, route_transitions
from flywheel.rl.sac import SACAgent

log = logging.getLogger(__name__)


def agent_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The agent's state dict from a checkpoint's tensors (:meth:`Learner.save` prefixes them ``agent/``)."""
    return {k[len("agent/"):]: v for k, v in tensors.items() if k.startswith("agent/")}


def load_agent_weights(agent: SACAgent, checkpoint: str | os.PathLike) -> None:
    """Load only the agent's weights from a checkpoint directory (for acting: no optimisers, buffers or
    counters); every key must match the agent."""
    tensors = safetensors.torch.load_file(str(Path(checkpoint) / "agent.safetensors"))
    agent.load_state_dict(agent_state(tensors), strict=True)


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
        for k, v in stats.extra.items():  # e.g. reward_false_positive: per episode and over the last 20
            self.scalar(f"episode/{k}", v)
            self.scalar(f"episode/{k}_last20", np.mean([s.extra.get(k, 0.0) for s in self._recent]))

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
        return replace_dir(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by :meth:`save` (weights, optimisers, buffers, counters, RNG)."""
        path = Path(path)
        if not (path / "state.json").exists():
            raise FileNotFoundError(f"{path} is not a learner checkpoint (no state.json)")
        state = json.loads((path / "state.json").read_text())
        tensors = safetensors.torch.load_file(str(path / "agent.safetensors"))
        self.agent.load_state_dict(agent_state(tensors), strict=True)
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
    from flywheel.plotting import figure

    eps = [h for h in history if h["kind"] == "episode"]
    evals = [h for h in history if h["kind"] == "eval"]
    with figure(path, (6, 3.5), dpi=100) as ax:
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
    return Path(path)
