"""Trajectory-level preference optimisation (GRAPE): DPO over whole rollouts, no critic.

Each iteration rolls out groups of G from the same (task, seed), scores every trajectory with
GRAPE's customised reward and pairs the best of each group with the worst (or every better/worse
pair, ``pairs=all``):

    score = w_success * success + w_progress * z(progress) + w_self * z(self-likelihood)

where progress is the external stage measure (in sim the task's own stage predicates through
``info["dense_reward"]``: reached / grasped / lifted / aligned / inserted; on the rig the process
reward model's progress), self-likelihood is the trajectory's mean log pi per decision, and z()
standardises within the group. The loss is DPO on the trajectory log-likelihoods
(sum over decisions of log pi) against the frozen starting policy.

Operator interventions give pairs too (:func:`intervention_pairs`): at the states where the
operator took over, the operator's chunk is preferred over the policy's proposed chunk; those
state-level pairs join the same loss (Gaussian heads: the operator's actions have a density).
A batch rolled out with an operator (``flywheel-vla-rl intervention.enabled=true``) brings its own
pairs, and its trajectories are scored as executed (the operator's steps where it took over).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flywheel.vla_rl.common import AlgoConfig, Algorithm, frozen_copy
from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import dpo_loss, group_mean, mean_anchor


@dataclass
class DPOConfig(AlgoConfig):
    lr: float = 1e-4
    beta: float = 0.1
    epochs: int = 8  # gradient steps per batch (full batch of pairs)
    w_success: float = 1.0
    w_progress: float = 0.5
    w_self: float = 0.1
    pairs: str = "best_worst"  # best_worst | all
    length_normalise: bool = False  # mean instead of sum of log pi over a trajectory
    # RPO (Pang et al. 2024): + nll_coef x the chosen side's negative log-likelihood per decision (the chosen
    # trajectories' decisions and the operator's chunks). DPO's margin alone is unbounded: it can grow by moving
    # the policy away from the rejected actions anywhere, not towards the chosen ones (measured: docs/bench).
    # A Gaussian head's term holds its scale fixed (``mean_log_prob``): with a learned scale the likelihood of
    # far-off operator actions rose by widening the Gaussian, not by moving its mean
    nll_coef: float = 0.0
    # + anchor_coef x 0.5 ||mean - mean_ref||^2 per decision, over every step and dim of the chunk (normalised
    # units), on every state of the batch (a Gaussian head's KL to the starting policy at unit scale, the dims
    # outside the log-probability included). Measured without it: corrections on one task moved the head's mean
    # on the tasks it already did by ~0.5 std and those tasks were forgotten (docs/bench/vla_rl.md)
    anchor_coef: float = 0.0


@dataclass
class StatePairs:
    """Preference pairs on the same states: ``chosen`` preferred over ``rejected`` (normalised chunks)."""

    feats: torch.Tensor  # (P, D)
    chosen: torch.Tensor  # (P, H, A)
    rejected: torch.Tensor  # (P, H, A)


def intervention_pairs(feats: torch.Tensor, policy_chunks: torch.Tensor, operator_chunks: torch.Tensor,
                       intervened: torch.Tensor) -> StatePairs:
    """Pairs from interventions: where ``intervened`` (N,), the operator's chunk beats the policy's."""
    m = intervened.bool()
    return StatePairs(feats[m], operator_chunks[m], policy_chunks[m])


def _z(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    c = x - group_mean(x, groups)
    return c / (group_mean(c**2, groups).sqrt() + 1e-6)


def grape_scores(batch: RolloutBatch, self_lp: torch.Tensor, w_success: float, w_progress: float,
                 w_self: float) -> torch.Tensor:
    """GRAPE's customised trajectory reward (E,), see the module docstring."""
    return (w_success * batch.success.float() + w_progress * _z(batch.progress.float(), batch.group)
            + w_self * _z(self_lp.float(), batch.group))


def preference_pairs(scores: torch.Tensor, groups: torch.Tensor, mode: str = "best_worst",
                     min_gap: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) episode indices within groups, where the chosen score is higher by > min_gap."""
    if mode not in ("best_worst", "all"):
        raise ValueError(f"dpo.pairs={mode!r}: use best_worst or all")
    ch, rj = [], []
    for g in torch.unique(groups):
        idx = torch.nonzero(groups == g).flatten()
        s = scores[idx]
        if mode == "best_worst":
            i, j = idx[int(torch.argmax(s))], idx[int(torch.argmin(s))]
            if scores[i] - scores[j] > min_gap:
                ch.append(int(i))
                rj.append(int(j))
        else:
            for a in idx.tolist():
                for b in idx.tolist():
                    if scores[a] - scores[b] > min_gap:
                        ch.append(a)
                        rj.append(b)
    return torch.tensor(ch, dtype=torch.long), torch.tensor(rj, dtype=torch.long)


class DPO(Algorithm):
    name = "dpo"

    def __init__(self, policy, cfg: DPOConfig, ref=None, seed: int = 0) -> None:
        super().__init__(policy, cfg, ref=ref if ref is not None else frozen_copy(policy), seed=seed)
        if cfg.anchor_coef and not hasattr(policy, "dist"):
            raise ValueError(f"dpo.anchor_coef={cfg.anchor_coef}: the mean anchor needs a Gaussian head "
                             f"(head.kind=gaussian), not {type(policy).__name__}")

    def rpo_logp(self, feats: torch.Tensor, actions: torch.Tensor, logp: torch.Tensor,
                 dist: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The RPO term's log-likelihood: the mean's fit at a fixed scale where the head has one, else ``logp``.
        ``dist``: the head's (mean, log_std) on ``feats``, already computed."""
        if dist is not None:
            return self.policy.logp_of(dist, actions, fixed_scale=True)
        fit = getattr(self.policy, "mean_log_prob", None)
        return fit(feats, actions) if fit is not None else logp

    def traj_logp(self, model, batch: RolloutBatch, step_lp: torch.Tensor | None = None) -> torch.Tensor:
        """(E,) log pi of each trajectory as executed; ``step_lp``: its decisions' log pi, already computed."""
        if step_lp is None:
            step_lp = model.log_prob(batch.feats, batch.executed_actions(), batch.extra)
        lp = batch.episode_sum(step_lp)
        return lp / batch.decisions().clamp_min(1) if self.cfg.length_normalise else lp

    def update(self, batch: RolloutBatch, state_pairs: StatePairs | None = None) -> dict[str, float]:
        if state_pairs is None and batch.corrected:
            state_pairs = intervention_pairs(batch.feats, batch.actions, batch.operator_actions, batch.intervened)
        batch, stats = self.reject(batch)
        cfg = self.cfg
        if state_pairs is not None:  # the pairs are offered too (two chunks each), so "saved" stays >= 0
            self.samples_offered += 2 * len(state_pairs.feats) * cfg.epochs
        mean_lp = batch.episode_sum(batch.logp) / batch.decisions().clamp_min(1)
        scores = grape_scores(batch, mean_lp, cfg.w_success, cfg.w_progress, cfg.w_self)
        ch, rj = preference_pairs(scores, batch.group, cfg.pairs)
        n_state = 0 if state_pairs is None else len(state_pairs.feats)
        stats["pairs"] = float(len(ch))
        stats["state_pairs"] = float(n_state)
        if len(ch) == 0 and n_state == 0:
            return stats
        assert self.ref is not None
        with torch.no_grad():
            ref_traj = self.traj_logp(self.ref, batch)
            if n_state:
                ref_sc = self.ref.log_prob(state_pairs.feats, state_pairs.chosen)
                ref_sr = self.ref.log_prob(state_pairs.feats, state_pairs.rejected)
            ref_mean = self.ref.dist(batch.feats)[0] if cfg.anchor_coef else None
        executed = batch.executed_actions()
        chosen_steps = torch.isin(batch.episode, ch)
        logs: dict[str, list[float]] = {}
        for _ in range(cfg.epochs):
            losses, n, nll = [], 0, []
            # with the anchor on (a Gaussian head), one forward of the head on the batch serves the trajectories'
            # log pi, the RPO fit of the chosen steps and the anchor
            dist = self.policy.dist(batch.feats) if ref_mean is not None else None
            if len(ch):
                step_lp = self.policy.log_prob(batch.feats, executed, batch.extra) if dist is None \
                    else self.policy.logp_of(dist, executed)
                lp = self.traj_logp(self.policy, batch, step_lp)
                loss, st = dpo_loss(lp[ch], lp[rj], ref_traj[ch], ref_traj[rj], cfg.beta)
                losses.append(loss * len(ch))
                n += len(ch)
                if cfg.nll_coef:
                    nll.append(-self.rpo_logp(batch.feats[chosen_steps], executed[chosen_steps],
                                              step_lp[chosen_steps],
                                              None if dist is None else (dist[0][chosen_steps],
                                                                         dist[1][chosen_steps])))
                for k, v in st.items():
                    logs.setdefault(k, []).append(v)
            if n_state:
                sc = self.policy.log_prob(state_pairs.feats, state_pairs.chosen)
                sr = self.policy.log_prob(state_pairs.feats, state_pairs.rejected)
                loss_s, st = dpo_loss(sc, sr, ref_sc, ref_sr, cfg.beta)
                losses.append(loss_s * n_state)
                n += n_state
                if cfg.nll_coef:
                    nll.append(-self.rpo_logp(state_pairs.feats, state_pairs.chosen, sc))
                logs.setdefault("state_pref_acc", []).append(st["pref_acc"])
            total = torch.stack(losses).sum() / n
            if dist is not None:
                anchor = mean_anchor(dist[0], ref_mean)
                total = total + cfg.anchor_coef * anchor
                logs.setdefault("anchor", []).append(float(anchor.detach()))
            if cfg.nll_coef:
                chosen_nll = torch.cat(nll).mean()
                total = total + cfg.nll_coef * chosen_nll
                logs.setdefault("chosen_nll", []).append(float(chosen_nll.detach()))
            logs.setdefault("grad_norm", []).append(self.step(total, batch.num_steps + 2 * n_state))
            logs.setdefault("loss", []).append(float(total.detach()))
        stats.update({k: float(np.mean(v)) for k, v in logs.items()})
        return stats
