"""RLOO / LOOP (RIPT-VLA): leave-one-out baselines with PPO's clipped update.

Each episode's baseline is the mean return of the *other* G-1 members of its group,
A_i = R_i - mean_{j != i} R_j (unbiased, no critic, no std scaling). Groups that all succeed or
all fail carry no signal and are rejected before the update (dynamic rejection, on by default),
which saves their gradient compute; tasks are sampled per group (multi-task sampling, the
engine's ``tasks`` / ``task_weights``). Then PPO-clipped epochs over the kept decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.vla_rl.common import AlgoConfig, Algorithm
from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import loo_advantages


@dataclass
class RLOOConfig(AlgoConfig):
    reject_uniform: bool = True


class RLOO(Algorithm):
    name = "rloo"

    def learn(self, batch: RolloutBatch) -> dict[str, float]:
        batch, stats = self.reject(batch)
        if batch.num_episodes == 0:
            return stats
        adv = loo_advantages(batch.ret, batch.group)
        stats.update(self.clipped_epochs(batch, batch.per_step(adv)))
        return stats
