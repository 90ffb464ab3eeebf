"""GRPO: group-relative advantages, no critic.

G rollouts start from the same (task, seed); each episode's outcome (its return: the sparse
success, or the shaped return) is normalised within its group, A_i = (R_i - mean) / (std + eps),
and every decision of the episode gets A_i. Then PPO-clipped epochs with KL to the reference
(SFT) policy. Groups whose members all got the same return have A = 0 and teach nothing; with
``reject_uniform`` they are dropped before the update (as DAPO's dynamic sampling / LOOP do).
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.vla_rl.common import AlgoConfig, Algorithm
from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import group_advantages


@dataclass
class GRPOConfig(AlgoConfig):
    kl_coef: float = 0.01
    scale: bool = True  # divide by the group's std (Dr. GRPO sets this off)


class GRPO(Algorithm):
    name = "grpo"

    def learn(self, batch: RolloutBatch) -> dict[str, float]:
        batch, stats = self.reject(batch)
        if batch.num_episodes == 0:
            return stats
        adv = group_advantages(batch.ret, batch.group, scale=self.cfg.scale)
        stats.update(self.clipped_epochs(batch, batch.per_step(adv)))
        return stats
