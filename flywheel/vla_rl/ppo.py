"""PPO with GAE and a critic (iRe-VLA's RL stage, RL4VLA, VLA-RL) on the chunk policy's features.

One decision is one action chunk; its reward is the env reward summed over the executed actions
(plus the process reward's shaping when configured). The value head shares the frozen features.
Advantages: GAE(gamma, lambda) per episode, bootstrapped with V(final observation) when an
episode was cut by the step limit rather than ended; normalised over the batch. Then ``epochs``
passes of minibatch PPO: clipped surrogate + ``vf_coef`` * value MSE (+ KL to the reference,
- entropy bonus).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flywheel.vla_rl.common import AlgoConfig, Algorithm
from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import gae


@dataclass
class PPOConfig(AlgoConfig):
    gamma: float = 0.99
    lam: float = 0.95
    vf_coef: float = 0.5
    norm_adv: bool = True
    group_size: int = 1  # PPO needs no groups: every episode its own seed
    groups_per_iter: int = 32


class PPO(Algorithm):
    name = "ppo"
    uses_value = True

    @torch.no_grad()
    def advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, value targets) per decision."""
        cfg, pol = self.cfg, self.policy
        values = pol.value(batch.feats)
        final_v = pol.value(batch.final_feats)
        last = batch.last_step()
        nxt = torch.cat([values[1:], values.new_zeros(1)])
        next_values = torch.where(last, final_v[batch.episode], nxt)
        terminal = last & batch.terminal[batch.episode]
        return gae(batch.rewards, values, next_values, terminal, last, cfg.gamma, cfg.lam)

    def learn(self, batch: RolloutBatch) -> dict[str, float]:
        batch, stats = self.reject(batch)
        if batch.num_episodes == 0:
            return stats
        adv, ret = self.advantages(batch)
        if self.cfg.norm_adv and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        stats.update(self.clipped_epochs(batch, adv, value_targets=ret, vf_coef=self.cfg.vf_coef))
        return stats
