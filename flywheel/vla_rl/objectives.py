"""The shared pieces of the on-policy and preference methods: advantages, ratios, losses, group filters.

Pure functions over torch tensors (no policy, no env), each small enough to check by hand:

* :func:`gae` - generalised advantage estimation over concatenated episodes (PPO);
* :func:`group_advantages` - (R - mean of the group) / std of the group (GRPO, GSPO, GFPO);
* :func:`loo_advantages` - R minus the mean of the *other* members of the group (RLOO / LOOP);
* :func:`ppo_clip_loss` - PPO's clipped surrogate, with the clip fraction and an approximate KL;
* :func:`sequence_ratio` / :func:`gspo_loss` - GSPO's length-normalised per-trajectory ratio,
  exp(mean_t (log pi - log pi_old)), clipped per trajectory;
* :func:`kl_to_reference` - the k3 estimator of KL(pi || pi_ref) from sampled actions;
* :func:`mean_anchor` - a Gaussian head's mean held near the reference's (KL at unit scale);
* :func:`mixed_groups` - dynamic rejection: keep only groups whose outcomes differ (all-success and
  all-failure groups carry no group-relative signal);
* :func:`keep_k_best` / :func:`adaptive_k` - GFPO's filter: the k members of each group with the
  lowest cost (e.g. episode length), and k chosen by the group's difficulty;
* :func:`dpo_loss` - DPO over trajectory log-likelihoods against a frozen reference.

Groups are given as an integer id per member (any ids; members of a group need not be adjacent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _group_index(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(index of each member's group in 0..n-1, members per group, n)."""
    uniq, inv = torch.unique(groups, return_inverse=True)
    counts = torch.bincount(inv, minlength=len(uniq))
    return inv, counts, len(uniq)


def group_mean(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The mean of each member's group, per member."""
    inv, counts, n = _group_index(groups)
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inv, values)
    return (sums / counts.to(values.dtype))[inv]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminal: torch.Tensor,
    episode_end: torch.Tensor, gamma: float, lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over steps of concatenated episodes (time order within each).

    ``next_values[t]``: V(s_{t+1}) (the value of the observation after step t; at a truncated end
    the bootstrap value). ``terminal[t]``: the episode ended for real at t (no bootstrap).
    ``episode_end[t]``: t is the last step of its episode (the recursion stops there).
    Returns (advantages, returns = advantages + values).
    """
    delta = rewards + gamma * next_values * (~terminal.bool()).to(rewards.dtype) - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    cont = (~episode_end.bool()).to(rewards.dtype)
    for t in range(len(rewards) - 1, -1, -1):
        running = delta[t] + gamma * lam * cont[t] * running
        adv[t] = running
    return adv, adv + values


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6,
                     scale: bool = True) -> torch.Tensor:
    """GRPO: (R_i - mean_g) / (std_g + eps) per member (std with Bessel's correction off, as GRPO)."""
    centred = rewards - group_mean(rewards, groups)
    if not scale:
        return centred
    std = group_mean(centred**2, groups).sqrt()
    return centred / (std + eps)


def loo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO: R_i - mean_{j != i} R_j within the group (0 for a group of one)."""
    inv, counts, n = _group_index(groups)
    sums = torch.zeros(n, dtype=rewards.dtype, device=rewards.device).index_add_(0, inv, rewards)
    k = counts[inv].to(rewards.dtype)
    others = (sums[inv] - rewards) / (k - 1).clamp_min(1)
    return torch.where(k > 1, rewards - others, torch.zeros_like(rewards))


def ppo_clip_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate, -mean(min(r A, clip(r, 1-e, 1+e) A)) with r = exp(logp - old_logp).

    ``weights`` (0/1 or any non-negative) weight each sample in the mean. Returns (loss, stats:
    ``clip_frac`` (share of samples whose ratio is outside the band), ``approx_kl`` (k3 of old vs
    new), ``ratio``)."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    w = torch.ones_like(surr) if weights is None else weights.to(surr.dtype)
    denom = w.sum().clamp_min(1e-8)
    loss = -(surr * w).sum() / denom
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip).to(surr.dtype)
        stats = {
            "clip_frac": float((clipped * w).sum() / denom),
            "approx_kl": float((((ratio - 1.0) - log_ratio) * w).sum() / denom),
            "ratio": float((ratio * w).sum() / denom),
        }
    return loss, stats


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, traj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO's importance ratio per trajectory: s_i = exp(mean over its steps of (logp - old_logp)).

    ``traj`` gives each step's trajectory id. Returns (s per step (broadcast), s per trajectory in
    the order of ``torch.unique(traj)``)."""
    inv, counts, n = _group_index(traj)
    sums = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add_(0, inv, logp - old_logp)
    s = (sums / counts.to(logp.dtype)).exp()
    return s[inv], s


def gspo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, traj: torch.Tensor, clip: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO: -mean over trajectories of min(s_i A_i, clip(s_i) A_i); ``adv`` is per step (constant
    within a trajectory; its mean over the trajectory is used)."""
    inv, counts, n = _group_index(traj)
    _, s = sequence_ratio(logp, old_logp, traj)
    a = torch.zeros(n, dtype=adv.dtype, device=adv.device).index_add_(0, inv, adv) / counts.to(adv.dtype)
    surr = torch.minimum(s * a, s.clamp(1.0 - clip, 1.0 + clip) * a)
    with torch.no_grad():
        stats = {"clip_frac": float(((s - 1.0).abs() > clip).float().mean()), "seq_ratio": float(s.mean())}
    return -surr.mean(), stats


def mean_anchor(mean: torch.Tensor, ref_mean: torch.Tensor) -> torch.Tensor:
    """0.5 ||mean - ref_mean||^2 per sample, summed over every other axis, averaged over samples: the KL between
    two Gaussians of unit scale, for anchoring a head's mean (all of it, not only what a log-probability sees)."""
    return 0.5 * ((mean - ref_mean) ** 2).flatten(1).sum(1).mean()


def kl_to_reference(logp: torch.Tensor, ref_logp: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(pi || pi_ref) by the k3 estimator on samples from pi: E[exp(d) - d - 1], d = ref_logp - logp.

    Unbiased, always >= 0. ``d`` is clamped to +-20 so a far-off reference cannot overflow."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    k3 = d.exp() - d - 1.0
    if weights is None:
        return k3.mean()
    w = weights.to(k3.dtype)
    return (k3 * w).sum() / w.sum().clamp_min(1e-8)


def mixed_groups(success: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Dynamic rejection: True for members of groups whose outcomes are not all equal."""
    s = success.to(torch.float64)
    m = group_mean(s, groups)
    return (m > 0.0) & (m < 1.0)


def keep_k_best(cost: torch.Tensor, groups: torch.Tensor, k: int | torch.Tensor,
                outcome: torch.Tensor | None = None) -> torch.Tensor:
    """GFPO's filter: within each group, True for the ``k`` members of lowest cost (ties: lower index).

    ``k`` is one int or one per member (the value for its group, as :func:`adaptive_k` gives).
    ``outcome`` (e.g. success) ranks members only against others of the same outcome: each outcome keeps
    its share of the group's k (largest remainder; at least one member of each outcome present, where k
    allows), so the kept set has the group's success rate and the filter only chooses *which* successes
    and failures. Without it, a length cost on episodes that end at success keeps the successes first
    (every failure lasts the time limit), and a kept set of successes only has no advantage to learn from."""
    n = len(cost)
    keep = torch.zeros(n, dtype=torch.bool, device=cost.device)
    kk = torch.as_tensor(k, device=cost.device).expand(n) if not torch.is_tensor(k) or k.dim() == 0 else k
    for g in torch.unique(groups):
        idx = torch.nonzero(groups == g).flatten()
        k_g = min(int(kk[idx[0]]), len(idx))
        strata = [idx] if outcome is None else [idx[outcome[idx] == o] for o in torch.unique(outcome[idx])]
        for members, take in zip(strata, _shares([len(m) for m in strata], k_g), strict=True):
            order = members[torch.argsort(cost[members], stable=True)]
            keep[order[:take]] = True
    return keep


def _shares(sizes: list[int], k: int) -> list[int]:
    """``k`` split over strata of ``sizes`` in proportion (largest remainder), each non-empty stratum at least
    one while k allows (smallest strata first), none more than its size."""
    total = sum(sizes)
    exact = [k * s / total for s in sizes]
    take = [min(s, max(1, int(e))) if k >= len(sizes) else int(e) for s, e in zip(sizes, exact, strict=True)]
    while sum(take) > k:  # the minimum of one overshot: trim the largest
        take[max(range(len(take)), key=lambda i: take[i])] -= 1
    for i in sorted(range(len(sizes)), key=lambda i: (take[i] - exact[i], sizes[i])):
        if sum(take) >= k:
            break
        if take[i] < sizes[i]:
            take[i] += 1
    while sum(take) < k:  # remainders exhausted: fill whatever has room
        i = next(i for i in range(len(take)) if take[i] < sizes[i])
        take[i] += 1
    return take


def adaptive_k(success: torch.Tensor, groups: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    """GFPO's adaptive difficulty: a hard group (low success rate) keeps more members.

    k = round(k_min + (1 - success rate of the group) * (k_max - k_min)), per member."""
    rate = group_mean(success.to(torch.float64), groups)
    return torch.round(k_min + (1.0 - rate) * (k_max - k_min)).long()


def dpo_loss(
    logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO: -mean log sigmoid(beta * ((lp_w - ref_w) - (lp_l - ref_l))) over pairs of trajectory
    log-likelihoods. Returns (loss, stats: ``pref_acc`` (share of pairs with a positive margin),
    ``margin`` (mean implicit reward margin))."""
    margin = beta * ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected))
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {"pref_acc": float((margin > 0).float().mean()), "margin": float(margin.mean())}
    return loss, stats
