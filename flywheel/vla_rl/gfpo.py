"""GFPO: sample a larger group, keep the k best by a cost, learn from those only.

Per group of G (larger than GRPO's), the k members with the lowest cost - episode length by
default, so that at equal success the shorter trajectories are reinforced - are kept;
advantages are normalised over the kept members only (the others get none, and cost no update
compute). ``adaptive``: GFPO's adaptive-difficulty variant, k per group from its success rate
(hard groups keep more, k_min..k_max).

``by_outcome`` (default): the cost ranks successes against successes and failures against failures, each
keeping its share of k. A robot episode ends at its success and a failure lasts the time limit, so an
unstratified length filter keeps the successes first: no length pressure (every success is kept) and,
once k of G succeed, nothing to learn (a kept set of successes only has zero advantages). Stratified, the
kept set has the group's success rate (GRPO's advantages) and only the shorter successes are reinforced,
as the paper's filter does for answers of any correctness. Measured on the toy task in docs/bench/vla_rl.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flywheel.vla_rl.common import AlgoConfig, Algorithm
from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import adaptive_k, group_advantages, keep_k_best


@dataclass
class GFPOConfig(AlgoConfig):
    group_size: int = 16
    groups_per_iter: int = 4
    keep: int = 8  # k
    cost: str = "length"  # length | neg_progress (lower is better)
    adaptive: bool = True  # measured on the toy task: 0.91 vs 0.82 with k = 8 fixed (docs/bench/vla_rl.md)
    k_min: int = 4
    k_max: int = 12
    by_outcome: bool = True  # rank within successes and within failures (see the module's docstring)
    kl_coef: float = 0.01


class GFPO(Algorithm):
    name = "gfpo"

    def cost(self, batch: RolloutBatch) -> torch.Tensor:
        if self.cfg.cost == "length":
            return batch.length.float()
        if self.cfg.cost == "neg_progress":
            return -batch.progress
        raise ValueError(f"gfpo.cost={self.cfg.cost!r}: use length or neg_progress")

    def learn(self, batch: RolloutBatch) -> dict[str, float]:
        batch, stats = self.reject(batch)
        if batch.num_episodes == 0:
            return stats
        cfg = self.cfg
        k = adaptive_k(batch.success, batch.group, cfg.k_min, cfg.k_max) if cfg.adaptive else cfg.keep
        keep = keep_k_best(self.cost(batch), batch.group, k, batch.success if cfg.by_outcome else None)
        n_before = batch.num_steps
        batch = batch.select(keep)
        self.filtered(n_before - batch.num_steps)
        stats["kept_fraction"] = batch.num_steps / max(n_before, 1)
        adv = group_advantages(batch.ret, batch.group)
        stats.update(self.clipped_epochs(batch, batch.per_step(adv)))
        return stats
