"""What every algorithm file shares: its config fields, the optimiser, the reference policy, the
clipped policy-gradient epochs, and the bookkeeping of update compute.

An algorithm is a small class with ``learn(batch: RolloutBatch) -> dict[str, float]`` (its own learning from one
batch of rollouts), ``state_dict()`` / ``load_state_dict()`` (its optimiser, for resuming), and two class
attributes the trainer reads: ``name`` and ``uses_value``. The trainer calls :meth:`Algorithm.update`: ``learn``,
then, where an operator took over some decisions (``flywheel-vla-rl intervention.enabled=true``), the operator's
corrections. Those decisions' executed chunks were not the policy's samples, so they are out of every ratio term
(:meth:`RolloutBatch.own_steps`); their episodes' outcomes still count in the advantages (an assisted success
raises its group's baseline and its own decisions' advantage), and the operator's chunks are fitted at the
states it took over: ``operator_coef`` x their negative log-likelihood with the head's scale held fixed (the mean
moves to them; DPO's RPO term), ``operator_epochs`` full-batch steps after the algorithm's own.
``samples_trained`` counts the decisions that went through a gradient step (times epochs): the
update compute; ``samples_offered`` what it would have been without dynamic rejection, GFPO's filter and the KL
early stop; ``samples_filtered`` the part of it rejection and filtering kept out (the rest of the saving is the
early stop's).

Retained states (``train.retain_tasks``, ``algo.retain_coef``): the reference policy's own decisions on tasks
to keep (the expert tasks), collected once at the start of a run; every gradient step of every algorithm adds
``retain_coef`` x 0.5 ||mean - mean_ref||^2 on a minibatch of them (Learning without Forgetting's distillation
on the old tasks' states, for a head trained on one task).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flywheel.vla_rl.engine import RolloutBatch
from flywheel.vla_rl.objectives import kl_to_reference, mean_anchor, mixed_groups, ppo_clip_loss


@dataclass
class AlgoConfig:
    """Fields every algorithm has (each file's config adds its own)."""

    lr: float = 3e-4
    epochs: int = 4  # passes over each batch
    minibatch_size: int = 256  # decisions per gradient step (trajectories for GSPO, pairs for DPO)
    clip: float = 0.2  # PPO ratio clip
    max_grad_norm: float = 1.0
    kl_coef: float = 0.0  # weight of KL(pi || pi_ref) to the frozen starting (SFT) policy
    ent_coef: float = 0.0  # entropy bonus (heads with a closed-form entropy)
    groups_per_iter: int = 8  # groups collected per iteration
    group_size: int = 8  # rollouts per (task, seed) group (1: no groups, as plain PPO)
    reject_uniform: bool = False  # dynamic rejection: drop groups that all succeed or all fail
    target_kl: float = 0.05  # stop the epochs once the approximate KL to the sampling policy passes it (0: never)
    # batches an operator corrected (intervention.enabled): the operator's chunks fitted after the algorithm's own
    # update, operator_coef x their mean NLL at a fixed scale, operator_epochs full-batch steps (0: epochs)
    operator_coef: float = 1.0
    operator_epochs: int = 0
    # the reference's mean held at the retained states (train.retain_tasks) at every gradient step (0: off)
    retain_coef: float = 0.0


def frozen_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """The reference policy: a frozen deep copy that shares what never trains (a generalist's image and text
    encoders) and copies the rest. A generalist encoder's own head is trainable (it is the Gaussian's mean):
    sharing it would freeze the policy's mean along with the reference (the defect before 2026-12-01)."""
    enc = getattr(policy, "encoder", None)
    shared: list[Any] = []
    if enc is not None:  # its modules without a trainable parameter, and what it names besides (a text encoder)
        shared = [m for m in enc.modules() if not any(p.requires_grad for p in m.parameters())]
        shared += list(getattr(enc, "shared_with_reference", list)())
    memo = {id(o): o for o in shared}
    ref = copy.deepcopy(policy, memo)
    ref.requires_grad_(False)
    return ref.eval()


class Algorithm:
    """Base: optimiser over the policy's trainable parameters, reference policy, counters."""

    name = "base"
    uses_value = False

    def __init__(self, policy: Any, cfg: AlgoConfig, ref: Any | None = None, seed: int = 0) -> None:
        self.policy, self.cfg = policy, cfg
        if cfg.operator_coef < 0 or cfg.operator_epochs < 0:
            raise ValueError(f"{self.name}: algo.operator_coef={cfg.operator_coef} and algo.operator_epochs="
                             f"{cfg.operator_epochs} must be >= 0 (0 epochs: as many as algo.epochs)")
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{self.name}: the policy has no trainable parameters")
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        if cfg.retain_coef < 0:
            raise ValueError(f"{self.name}: algo.retain_coef={cfg.retain_coef} must be >= 0")
        if cfg.retain_coef > 0 and not hasattr(policy, "dist"):
            raise ValueError(f"{self.name}: algo.retain_coef={cfg.retain_coef} holds a Gaussian head's mean; "
                             f"{type(policy).__name__} has none (head.kind=gaussian)")
        needs_ref = cfg.kl_coef > 0 or cfg.retain_coef > 0
        self.ref = ref if ref is not None else (frozen_copy(policy) if needs_ref else None)
        self.retain_feats: torch.Tensor | None = None  # set_retained: the retained states' features
        self.retain_mean: torch.Tensor | None = None  # and the reference's chunk means there
        self._retain_log: list[float] = []
        self.samples_trained = 0  # decisions x epochs that went through gradient steps
        self.samples_offered = 0  # the same without dynamic rejection / filtering / the KL early stop
        self.samples_filtered = 0  # decisions x epochs kept out by rejection / filtering
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One iteration's learning: the algorithm's own (:meth:`learn`), then the operator's corrections."""
        stats = self.learn(batch)
        if batch.corrected:
            m = batch.intervened
            stats.update(self.fit_corrections(batch.feats[m], batch.operator_actions[m]))
        return stats

    def learn(self, batch: RolloutBatch) -> dict[str, float]:
        raise NotImplementedError

    def fit_corrections(self, feats: torch.Tensor, chunks: torch.Tensor) -> dict[str, float]:
        """The operator's chunks at the states it took over: ``operator_epochs`` full-batch steps on
        ``operator_coef`` x their mean negative log-likelihood, the head's scale held fixed."""
        cfg = self.cfg
        fit = getattr(self.policy, "mean_log_prob", None)
        if fit is None:
            raise ValueError(f"{self.name}: an operator's corrections need a head with a density for its chunks "
                             f"(head.kind=gaussian), not {type(self.policy).__name__}")
        epochs = cfg.operator_epochs or cfg.epochs
        self.samples_offered += len(feats) * epochs
        nll = []
        for _ in range(epochs):
            loss = -fit(feats, chunks).mean()
            nll.append(float(loss.detach()))
            if cfg.operator_coef > 0:
                self.step(cfg.operator_coef * loss, len(feats))
        return {"operator_nll": float(np.mean(nll)), "corrections": float(len(feats))}

    # ------------------------------------------------------------------ pieces
    def reject(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """Dynamic rejection (if configured): keep the groups with mixed outcomes. Counts the
        update compute the whole batch would have cost (``samples_offered``)."""
        n_groups = len(torch.unique(batch.group))
        self.samples_offered += batch.num_steps * self.cfg.epochs
        if not self.cfg.reject_uniform:
            return batch, {"groups_rejected": 0.0}
        keep = mixed_groups(batch.success, batch.group)
        kept = len(torch.unique(batch.group[keep])) if keep.any() else 0
        out = batch.select(keep)
        self.filtered(batch.num_steps - out.num_steps)
        return out, {"groups_rejected": 1.0 - kept / max(n_groups, 1)}

    def filtered(self, decisions: int) -> None:
        """Count ``decisions`` kept out of every epoch of the update by rejection or a filter."""
        self.samples_filtered += int(decisions) * self.cfg.epochs

    @torch.no_grad()
    def ref_logp(self, batch: RolloutBatch) -> torch.Tensor | None:
        if self.ref is None:
            return None
        return self.ref.log_prob(batch.feats, batch.actions, batch.extra)

    @torch.no_grad()
    def set_retained(self, feats: torch.Tensor) -> None:
        """The states whose reference behaviour every gradient step holds (``retain_coef`` > 0)."""
        if self.cfg.retain_coef <= 0 or self.ref is None:
            raise ValueError(f"{self.name}: retained states need algo.retain_coef > 0")
        if len(feats) == 0:
            raise ValueError(f"{self.name}: no retained states (the retained tasks' rollouts made no decision)")
        self.retain_feats = feats
        self.retain_mean = torch.cat([self.ref.dist(feats[i: i + 256])[0] for i in range(0, len(feats), 256)])

    def retain_loss(self) -> torch.Tensor | None:
        """0.5 ||mean - mean_ref||^2 on a minibatch of the retained states (None when there are none)."""
        if self.retain_feats is None or self.retain_mean is None:
            return None
        idx = torch.randperm(len(self.retain_feats), generator=self.gen)[: self.cfg.minibatch_size]
        r = mean_anchor(self.policy.dist(self.retain_feats[idx])[0], self.retain_mean[idx])
        self._retain_log.append(float(r.detach()))
        return r

    def retain_stats(self) -> dict[str, float]:
        """The retained states' mean drift over the gradient steps since the last call ({} when none)."""
        out = {"retain": float(np.mean(self._retain_log))} if self._retain_log else {}
        self._retain_log = []
        return out

    def step(self, loss: torch.Tensor, n: int) -> float:
        r = self.retain_loss()
        if r is not None:
            loss = loss + self.cfg.retain_coef * r
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                            self.cfg.max_grad_norm)
        self.opt.step()
        self.samples_trained += n
        return float(gn)

    def minibatches(self, n: int, size: int) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=self.gen)
        return [perm[i: i + size] for i in range(0, n, max(1, size))]

    def clipped_epochs(self, batch: RolloutBatch, adv: torch.Tensor, weights: torch.Tensor | None = None,
                       value_targets: torch.Tensor | None = None, vf_coef: float = 0.0) -> dict[str, float]:
        """PPO-clipped epochs over the decisions of ``batch`` with per-step advantages ``adv``;
        KL to the reference, entropy bonus and (``value_targets``) a value loss when configured."""
        cfg, pol = self.cfg, self.policy
        ref = self.ref_logp(batch)
        own = None if batch.intervened is None else batch.own_steps()
        logs: dict[str, list[float]] = {"early_stop": [0.0]}
        for _ in range(cfg.epochs):
            if logs["early_stop"][0]:
                break
            for mb in self.minibatches(batch.num_steps, cfg.minibatch_size):
                ex = {k: v[mb] for k, v in batch.extra.items()}
                f = batch.feats[mb]
                logp = pol.log_prob(f, batch.actions[mb], ex)
                w = None if weights is None else weights[mb]
                if own is not None:  # the operator's decisions are out of the ratio terms
                    w = own[mb].to(logp.dtype) if w is None else w * own[mb]
                loss, st = ppo_clip_loss(logp, batch.logp[mb], adv[mb], cfg.clip, w)
                if ref is not None and cfg.kl_coef > 0:
                    kl = kl_to_reference(logp, ref[mb], w)
                    loss = loss + cfg.kl_coef * kl
                    st["kl_ref"] = float(kl.detach())
                if cfg.ent_coef > 0:
                    ent = pol.entropy(f)
                    if ent is not None:
                        loss = loss - cfg.ent_coef * ent.mean()
                        st["entropy"] = float(ent.mean().detach())
                if value_targets is not None:
                    vl = ((pol.value(f) - value_targets[mb]) ** 2).mean()
                    loss = loss + vf_coef * vl
                    st["value_loss"] = float(vl.detach())
                st["grad_norm"] = self.step(loss, len(mb))
                st["loss"] = float(loss.detach())
                for k, v in st.items():
                    logs.setdefault(k, []).append(v)
                if cfg.target_kl and st["approx_kl"] > cfg.target_kl:  # the policy moved enough for this batch
                    logs["early_stop"] = [1.0]
                    break
        return {k: float(np.mean(v)) for k, v in logs.items()}

    # -------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "samples_trained": self.samples_trained,
                "samples_offered": self.samples_offered, "samples_filtered": self.samples_filtered,
                "gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd["opt"])
        self.samples_trained, self.samples_offered = int(sd["samples_trained"]), int(sd["samples_offered"])
        self.samples_filtered = int(sd.get("samples_filtered", 0))
        self.gen.set_state(sd["gen"])


def episode_stats(batch: RolloutBatch) -> dict[str, float]:
    """success, return, episode length (all, and of the successes) of a batch."""
    succ = batch.success.float()
    out = {"success": float(succ.mean()), "return": float(batch.ret.mean()),
           "episode_length": float(batch.length.float().mean())}
    if batch.success.any():
        out["success_length"] = float(batch.length[batch.success].float().mean())
    return out
