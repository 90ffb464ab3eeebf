"""GSPO: one length-normalised importance ratio per trajectory, clipped per trajectory.

Token- (here: decision-) level ratios multiply noise over long episodes; GSPO instead uses
s_i = exp(mean_t (log pi(a_t) - log pi_old(a_t))) for the whole trajectory i and clips s_i, with
group-normalised advantages as GRPO. Minibatches are whole trajectories.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from flywheel.vla_rl.common import AlgoConfig, Algorithm
from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import group_advantages, gspo_loss, kl_to_reference


@dataclass
class GSPOConfig(AlgoConfig):
    clip: float = 0.05  # sequence ratios move less than per-step ones: a tighter band
    kl_coef: float = 0.01
    minibatch_size: int = 16  # trajectories per gradient step


class GSPO(Algorithm):
    name = "gspo"

    def learn(self, batch: RolloutBatch) -> dict[str, float]:
        batch, stats = self.reject(batch)
        if batch.num_episodes == 0:
            return stats
        cfg, pol = self.cfg, self.policy
        adv = batch.per_step(group_advantages(batch.ret, batch.group))
        ref = self.ref_logp(batch)
        own = batch.own_steps()
        logs: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.epochs):
            for eps in self.minibatches(batch.num_episodes, cfg.minibatch_size):
                mb = torch.nonzero(torch.isin(batch.episode, eps) & own).flatten()  # an operator's are not ours
                if len(mb) == 0:
                    continue
                ex = {k: v[mb] for k, v in batch.extra.items()}
                logp = pol.log_prob(batch.feats[mb], batch.actions[mb], ex)
                loss, st = gspo_loss(logp, batch.logp[mb], adv[mb], batch.episode[mb], cfg.clip)
                if ref is not None and cfg.kl_coef > 0:
                    kl = kl_to_reference(logp, ref[mb])
                    loss = loss + cfg.kl_coef * kl
                    st["kl_ref"] = float(kl.detach())
                st["grad_norm"] = self.step(loss, len(mb))
                st["loss"] = float(loss.detach())
                for k, v in st.items():
                    logs[k].append(v)
        stats.update({k: float(np.mean(v)) for k, v in logs.items()})
        return stats
