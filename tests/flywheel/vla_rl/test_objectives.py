"""Each objective against a case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flywheel.vla_rl.objectives import (
    adaptive_k,
    dpo_loss,
    gae,
    group_advantages,
    gspo_loss,
    keep_k_best,
    kl_to_reference,
    loo_advantages,
    mean_anchor,
    mixed_groups,
    ppo_clip_loss,
    sequence_ratio,
)

T = torch.tensor


def test_gae_one_episode_by_hand():
    adv, ret = gae(T([1.0, 0.0, 2.0]), T([0.5, 0.2, 0.1]), T([0.2, 0.1, 9.0]), T([False, False, True]),
                   T([False, False, True]), gamma=0.9, lam=0.8)
    # delta2 = 2 - 0.1 (terminal: no bootstrap of 9); delta1 = 0 + 0.9*0.1 - 0.2; delta0 = 1 + 0.9*0.2 - 0.5
    a2 = 1.9
    a1 = -0.11 + 0.72 * a2
    a0 = 0.68 + 0.72 * a1
    assert adv.tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert ret.tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.1], abs=1e-6)


def test_gae_stops_at_episode_ends_and_bootstraps_truncation():
    adv, _ = gae(T([1.0, 1.0]), T([0.0, 0.0]), T([0.5, 0.5]), T([False, False]), T([True, True]), 0.9, 0.95)
    assert adv.tolist() == pytest.approx([1.45, 1.45])


def test_group_advantages_normalise_within_groups():
    r = T([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    g = T([0, 0, 0, 0, 7, 7, 7, 7])
    a = group_advantages(r, g)
    assert a[:4].tolist() == pytest.approx([1, -1, -1, 1], abs=1e-4)
    assert a[4:].tolist() == pytest.approx([0, 0, 0, 0])
    assert group_advantages(r, g, scale=False)[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_group_advantages_groups_need_not_be_adjacent():
    a = group_advantages(T([1.0, 3.0, 0.0, 0.0]), T([1, 2, 1, 2]))
    assert a.tolist() == pytest.approx([1, 1, -1, -1], abs=1e-4)


def test_leave_one_out_baselines():
    a = loo_advantages(T([1.0, 0.0, 0.0, 1.0, 5.0]), T([0, 0, 0, 0, 1]))
    assert a.tolist() == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 0.0])


def test_ppo_clip_by_hand_and_its_gradient():
    logp = torch.log(T([1.5, 0.5, 1.1])).requires_grad_(True)
    loss, st = ppo_clip_loss(logp, torch.zeros(3), T([1.0, 1.0, -1.0]), clip=0.2)
    # min(1.5, 1.2) = 1.2 (clipped), min(0.5, 0.8) = 0.5, min(-1.1, -1.1) = -1.1
    assert float(loss.detach()) == pytest.approx(-(1.2 + 0.5 - 1.1) / 3)
    assert st["clip_frac"] == pytest.approx(2 / 3)
    loss.backward()
    # d(-r A / 3)/d logp = -r A / 3 where unclipped; 0 where the clip is active
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5 / 3, 1.1 / 3])


def test_ppo_weights_mask_samples():
    loss, _ = ppo_clip_loss(torch.zeros(2), torch.zeros(2), T([1.0, 5.0]), 0.2, weights=T([1.0, 0.0]))
    assert float(loss) == pytest.approx(-1.0)


def test_gspo_sequence_ratio_and_clip_by_hand():
    logp, old = T([0.2, 0.0, -0.1]), torch.zeros(3)
    traj = T([0, 0, 1])
    per_step, per_traj = sequence_ratio(logp, old, traj)
    assert per_traj.tolist() == pytest.approx([math.exp(0.1), math.exp(-0.1)])
    assert per_step.tolist() == pytest.approx([math.exp(0.1), math.exp(0.1), math.exp(-0.1)])
    loss, st = gspo_loss(logp, old, T([1.0, 1.0, -1.0]), traj, clip=0.05)
    # s0 = 1.105 -> min(1.105, 1.05) = 1.05; s1 = 0.905, A = -1 -> min(-0.905, -0.95) = -0.95
    assert float(loss) == pytest.approx(-(1.05 - 0.95) / 2)
    assert st["clip_frac"] == 1.0


def test_kl_k3():
    assert float(kl_to_reference(torch.zeros(4), torch.zeros(4))) == 0.0
    d = math.log(2.0)
    assert float(kl_to_reference(T([0.0]), T([d]))) == pytest.approx(2 - d - 1)
    # unbiased: samples from N(0,1), reference N(0.5,1): KL = 0.5^2 / 2
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    lp, ref = -0.5 * x**2, -0.5 * (x - 0.5) ** 2
    assert float(kl_to_reference(lp, ref)) == pytest.approx(0.125, abs=0.01)


def test_dynamic_rejection_keeps_mixed_groups():
    keep = mixed_groups(T([1, 1, 0, 0, 1, 0]), T([0, 0, 1, 1, 2, 2]))
    assert keep.tolist() == [False, False, False, False, True, True]


def test_gfpo_keeps_k_lowest_cost_per_group():
    keep = keep_k_best(T([5.0, 3.0, 9.0, 3.0, 1.0, 2.0]), T([0, 0, 0, 0, 1, 1]), 2)
    assert keep.tolist() == [False, True, False, True, True, True]
    keep = keep_k_best(T([5.0, 3.0, 9.0, 3.0, 1.0, 2.0]), T([0, 0, 0, 0, 1, 1]), T([1, 1, 1, 1, 2, 2]))
    assert keep.tolist() == [False, True, False, False, True, True]


def test_gfpo_by_outcome_keeps_the_groups_success_rate_and_the_shortest_of_each():
    # group 0: lengths of 3 successes (4, 6, 9) and 5 failures (12 each, the time limit); k = 4 of 8
    length = T([4.0, 12.0, 6.0, 12.0, 9.0, 12.0, 12.0, 12.0])
    success = T([1, 0, 1, 0, 1, 0, 0, 0]).bool()
    groups = T([0] * 8)
    plain = keep_k_best(length, groups, 4)  # the successes first: every success kept, one failure
    assert plain.tolist() == [True, True, True, False, True, False, False, False]
    strat = keep_k_best(length, groups, 4, success)  # 3/8 of 4 = 1.5 -> 2 successes (the shortest), 2 failures
    assert strat.tolist() == [True, True, True, True, False, False, False, False]
    # every success: the k shortest; one success in eight: kept, with k - 1 failures
    assert keep_k_best(length, groups, 2, torch.ones(8, dtype=torch.bool)).tolist() == [
        True, False, True, False, False, False, False, False]
    one = T([0, 0, 0, 0, 0, 0, 0, 1]).bool()  # index 7 the only success (length 12); failures ranked by length
    assert keep_k_best(length, groups, 3, one).tolist() == [True, False, True, False, False, False, False, True]


def test_gfpo_outcome_shares_are_proportional_and_keep_each_outcome():
    from flywheel.vla_rl.objectives import _shares

    rng = np.random.default_rng(0)
    for _ in range(5000):
        sizes = [int(x) for x in rng.integers(1, 33, size=int(rng.integers(1, 3)))]  # successes, failures
        k = int(rng.integers(0, sum(sizes) + 1))
        take = _shares(sizes, k)
        assert sum(take) == k and all(0 <= t <= n for t, n in zip(take, sizes, strict=True)), (sizes, k, take)
        assert all(abs(t - k * n / sum(sizes)) < 1 for t, n in zip(take, sizes, strict=True)), (sizes, k, take)
        if k >= len(sizes):
            assert min(take) >= 1, (sizes, k, take)


def test_adaptive_k_gives_hard_groups_more():
    k = adaptive_k(T([0, 0, 1, 1, 1, 0]), T([0, 0, 1, 1, 2, 2]), k_min=2, k_max=6)
    assert k.tolist() == [6, 6, 2, 2, 4, 4]


def test_mean_anchor_by_hand():
    mean = torch.zeros(2, 3, 2)
    ref = torch.zeros(2, 3, 2)
    ref[0, 0, 0], ref[1, 2, 1] = 2.0, 1.0  # per sample 0.5 * 4 and 0.5 * 1, averaged over the two
    assert float(mean_anchor(mean, ref)) == pytest.approx((2.0 + 0.5) / 2)
    assert float(mean_anchor(ref, ref)) == 0.0


def test_dpo_by_hand():
    loss, st = dpo_loss(T([-1.0]), T([-2.0]), T([-1.5]), T([-1.5]), beta=1.0)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert st["pref_acc"] == 1.0 and st["margin"] == pytest.approx(1.0)
    loss2, _ = dpo_loss(T([-2.0]), T([-1.0]), T([-1.5]), T([-1.5]), beta=1.0)
    assert float(loss2) > float(loss)
