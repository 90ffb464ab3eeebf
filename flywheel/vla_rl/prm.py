"""A process reward model: task progress in [0, 1] predicted from the policy's features.

Trained on successful demonstrations (VLA-RL's robotic process reward model, simplified): every
decision of a successful episode of T decisions is labelled with its progress (t + 1) / T, and a
small MLP on the frozen features regresses it (sigmoid output, MSE). It then serves twice:

* dense shaping for PPO / GRPO (:meth:`ProgressModel.shape`): potential-based,
  r'_t = r_t + coef * (gamma * P(s_{t+1}) - P(s_t)), with s_{t+1} the next decision's features
  (the final observation's at an episode's end) - a shaping that leaves the optimal policy as is;
* GRAPE's external cost on the rig, where no stage predicates exist
  (:meth:`ProgressModel.progress_of`: the highest progress an episode reached).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.policies import mlp


@dataclass
class PRMConfig:
    enabled: bool = False
    coef: float = 1.0  # shaping weight
    gamma: float = 0.99
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    steps: int = 2000  # gradient steps of the fit
    lr: float = 1e-3
    batch_size: int = 256
    demos: int = 20  # successful demonstration episodes to fit on


def progress_targets(lengths: Sequence[int]) -> torch.Tensor:
    """(t + 1) / T for every decision t of episodes of T decisions, concatenated."""
    return torch.cat([torch.arange(1, n + 1, dtype=torch.float32) / n for n in lengths])


class ProgressModel(nn.Module):
    def __init__(self, feature_dim: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.net = mlp([feature_dim, *hidden, 1], act=nn.ReLU)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(feats).squeeze(-1))

    def fit(self, feats: torch.Tensor, targets: torch.Tensor, steps: int = 2000, lr: float = 1e-3,
            batch_size: int = 256, seed: int = 0) -> float:
        """Regress ``targets`` (N,) from ``feats`` (N, D); returns the final full-batch MSE."""
        if len(feats) != len(targets) or len(feats) == 0:
            raise ValueError(f"ProgressModel.fit: {len(feats)} features for {len(targets)} targets")
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.randint(len(feats), (min(batch_size, len(feats)),), generator=g)
            loss = ((self(feats[idx]) - targets[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(((self(feats) - targets) ** 2).mean())

    def fit_episodes(self, episodes: Sequence[torch.Tensor], **kw) -> float:
        """Fit on successful episodes, each its decisions' features (T_i, D)."""
        return self.fit(torch.cat(list(episodes)), progress_targets([len(e) for e in episodes]), **kw)

    @torch.no_grad()
    def shape(self, batch: RolloutBatch, coef: float, gamma: float) -> RolloutBatch:
        """The batch with potential-based progress shaping added to its per-decision rewards."""
        p = self(batch.feats)
        p_final = self(batch.final_feats)
        nxt = torch.cat([p[1:], p.new_zeros(1)])
        p_next = torch.where(batch.last_step(), p_final[batch.episode], nxt)
        shaped = batch.rewards + coef * (gamma * p_next - p)
        return replace(batch, rewards=shaped, ret=batch.episode_sum(shaped))

    @torch.no_grad()
    def progress_of(self, batch: RolloutBatch) -> torch.Tensor:
        """The highest predicted progress of each episode (E,), final observation included."""
        p = self(batch.feats)
        best = torch.full((batch.num_episodes,), -1.0).scatter_reduce(0, batch.episode, p, "amax")
        return torch.maximum(best, self(batch.final_feats))
