"""Log-probabilities of the stochastic heads checked against sampling; the flow sampler's marginals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flywheel.vla_rl import flow_sde
from flywheel.vla_rl.checkpoint import build_policy, load_policy, save_policy
from flywheel.vla_rl.policies import FlowChunkPolicy, GaussianChunkPolicy, StateFeatures, one_step_kl


def _enc():
    return StateFeatures(["state/a", "state/b"], [2, 1])


def _obs(n, seed=0):
    r = np.random.default_rng(seed)
    return {"state/a": r.normal(size=(n, 2)).astype(np.float32), "state/b": r.normal(size=(n, 1)).astype(np.float32)}


def test_state_features_fit_and_errors():
    enc = _enc()
    obs = _obs(500)
    enc.fit(obs)
    f = enc.policy_features(obs)
    assert f.shape == (500, 3)
    assert f.mean(0).abs().max() < 1e-4 and (f.std(0) - 1).abs().max() < 1e-3
    with pytest.raises(KeyError, match="state/b"):
        enc.policy_features({"state/a": obs["state/a"]})


def test_gaussian_log_prob_matches_sampling():
    torch.manual_seed(0)
    pol = GaussianChunkPolicy(_enc(), horizon=2, action_dim=3, init_log_std=-0.5)
    with torch.no_grad():
        pol.log_std_out.weight.normal_(0, 0.3)  # a state-dependent scale
    feats = pol.features(_obs(2))
    f = feats[:1].expand(40_000, -1)
    with torch.no_grad():
        a, logp, extra = pol.act(f)
        mean, log_std = pol.dist(f[:1])
        assert extra == {}
        assert torch.allclose(a.mean(0), mean[0], atol=0.02)
        assert torch.allclose(a.std(0), log_std[0].exp(), rtol=0.02)
        assert torch.allclose(pol.log_prob(f, a), logp, atol=1e-4)
        # E[-log p] is the entropy
        assert float(-logp.mean()) == pytest.approx(float(pol.entropy(f[:1])[0]), abs=0.05)
        # the scale depends on the state, and starts inside its bounds
        _, ls2 = pol.dist(feats)
        assert not torch.allclose(ls2[0], ls2[1])
        d, _, _ = pol.act(feats, deterministic=True)
        assert torch.allclose(d, pol.dist(feats)[0])


def test_gaussian_fixed_dims_execute_the_mean():
    torch.manual_seed(0)
    pol = GaussianChunkPolicy(_enc(), horizon=2, action_dim=3, fixed_dims=[2])
    feats = pol.features(_obs(1)).expand(20_000, -1)
    with torch.no_grad():
        a, lp, _ = pol.act(feats)
        mean, log_std = pol.dist(feats[:1])
        assert torch.allclose(a[:, :, 2], mean[:, :, 2].expand(20_000, -1), atol=1e-6)
        assert torch.allclose(a[:, :, :2].std(0), log_std[0, :, :2].exp(), rtol=0.03)
        # the fixed dim is outside the density: moving it changes nothing
        b = a.clone()
        b[:, :, 2] += 1.0
        assert torch.allclose(pol.log_prob(feats, b), lp)
        assert float(-lp.mean()) == pytest.approx(float(pol.entropy(feats[:1])[0]), abs=0.05)
    with pytest.raises(ValueError, match="fixed_dims"):
        GaussianChunkPolicy(_enc(), 1, 3, fixed_dims=[3])


def test_gaussian_samples_only_the_executed_steps():
    torch.manual_seed(0)
    pol = GaussianChunkPolicy(_enc(), horizon=4, action_dim=2, sampled_steps=2, init_log_std=-0.5)
    feats = pol.features(_obs(1)).expand(20_000, -1)
    with torch.no_grad():
        a, lp, _ = pol.act(feats)
        mean, log_std = pol.dist(feats[:1])
        assert torch.allclose(a[:, 2:], mean[:, 2:].expand(20_000, -1, -1), atol=1e-6)  # later steps: the mean
        assert torch.allclose(a[:, :2].std(0), log_std[0, :2].exp(), rtol=0.03)
        # by hand: the Gaussian density of the first two steps only
        z = (a[:, :2] - mean[:, :2]) / log_std[:, :2].exp()
        by_hand = (-0.5 * z**2 - log_std[:, :2] - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        assert torch.allclose(lp, by_hand, atol=1e-4)
        b = a.clone()
        b[:, 2:] += 1.0  # steps that never execute are outside the density
        assert torch.allclose(pol.log_prob(feats, b), lp)
        assert float(-lp.mean()) == pytest.approx(float(pol.entropy(feats[:1])[0]), abs=0.05)
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="sampled_steps"):
            GaussianChunkPolicy(_enc(), 4, 2, sampled_steps=bad)


class _WideEncoder:
    """Features shaped like a generalist's: wide (5000) and large (values ~ +-10)."""

    feature_dim = 5000

    def policy_features(self, obs):
        return torch.as_tensor(obs["f"])


def test_wide_raw_features_do_not_make_one_step_a_leap():
    # regression: on the compact VLA's raw features one Adam step at lr 3e-7 moved the old linear scale
    # head by an approximate KL of 0.2; reading normalised features keeps the step ~100x smaller
    torch.manual_seed(0)
    feats = torch.randn(16, 5000) * 10
    old = GaussianChunkPolicy(_WideEncoder(), 4, 7, log_std_hidden=0, norm_features=False)
    new = GaussianChunkPolicy(_WideEncoder(), 4, 7)
    new_normed = GaussianChunkPolicy(_WideEncoder(), 4, 7, norm_features=True)
    assert one_step_kl(old, feats, 1e-6) > 0.1
    assert one_step_kl(new_normed, feats, 1e-6) < 0.003  # without the LayerNorm: 0.007
    assert new.norm_features is False  # the class default: state features are standardised already
    pol = build_policy({"kind": "gaussian", "horizon": 2, "action_dim": 3}, {"type": "state", "keys": ["state/a"],
                                                                          "dims": [2]})
    assert pol.desc["head"]["norm_features"] is False and pol.desc["head"]["log_std_hidden"] == 32


def test_gaussian_scale_starts_at_init():
    pol = GaussianChunkPolicy(_enc(), horizon=1, action_dim=2, init_log_std=-1.0)
    _, ls = pol.dist(pol.features(_obs(3)))
    assert torch.allclose(ls, torch.full_like(ls, -1.0), atol=1e-5)
    with pytest.raises(ValueError, match="init_log_std"):
        GaussianChunkPolicy(_enc(), 1, 2, init_log_std=3.0)


def _gauss_target_velocity(mu: float, s: float):
    """The exact flow-matching velocity for actions ~ N(mu, s^2) (x_t = t noise + (1 - t) a)."""

    def v(x, t):
        t = t[:, None, None]
        var = t**2 + (1 - t) ** 2 * s**2
        return (t - (1 - t) * s**2) / var * (x - (1 - t) * mu) - mu

    return v


@pytest.mark.parametrize("noise_level", [0.0, 0.7])
def test_flow_sde_keeps_the_marginals(noise_level):
    """With the exact velocity of a Gaussian target, the SDE sampler (score-corrected drift) and the
    ODE both end at that target: the injected noise does not change the action distribution."""
    mu, s = 0.6, 0.3
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((20_000, 1, 1), generator=g)
    a, chain, lp = flow_sde.sample(_gauss_target_velocity(mu, s), noise, steps=100, noise_level=noise_level,
                                   generator=g)
    assert chain.shape == (20_000, 101, 1, 1) and torch.equal(chain[:, -1], a)
    assert float(a.mean()) == pytest.approx(mu, abs=0.01)
    assert float(a.std()) == pytest.approx(s, abs=0.012)
    if noise_level == 0:
        assert float(lp.abs().max()) == 0.0


def test_flow_sde_log_prob_matches_sampling():
    v = _gauss_target_velocity(0.2, 0.5)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn((30_000, 2, 3), generator=g)
    _, chain, lp = flow_sde.sample(v, noise, steps=4, noise_level=0.5, generator=g)
    # recomputed from the stored chain = what the sampler reported
    assert torch.allclose(flow_sde.chain_log_prob(v, chain, 0.5, per_step=True), lp, atol=1e-3)
    # each step is Gaussian with std sigma_k sqrt(|dt|): E[log p_k] = -d/2 (1 + log(2 pi std^2))
    _, sig, dt = flow_sde.schedule(4, 0.5)
    for k, sk in enumerate(sig):
        std = sk * math.sqrt(-dt)
        expect = -6 / 2 * (1 + math.log(2 * math.pi * std**2))
        assert float(lp[:, k].mean()) == pytest.approx(expect, abs=0.05)
    with pytest.raises(ValueError, match="no density"):
        flow_sde.chain_log_prob(v, chain, 0.0)


def test_deterministic_sampler_is_the_flow_heads_ode():
    from policy.heads import FlowMatchingHead

    torch.manual_seed(0)
    head = FlowMatchingHead(16, 3, 4, 2, hidden_dim=32, layers=1, heads=2, steps=5).eval()
    hidden, mask, proprio = torch.randn(3, 6, 16), torch.ones(3, 6, dtype=torch.bool), torch.randn(3, 3)
    ref = head.sample(hidden, mask, proprio, generator=torch.Generator().manual_seed(7))
    noise = torch.randn((3, 4, 2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        vel = flow_sde.head_velocity(head, hidden, mask, proprio)
        a, _, _ = flow_sde.sample(vel, noise, 5, 0.0)
        assert torch.allclose(a, ref, atol=1e-5)
        a2, chain, lp = flow_sde.sample(vel, noise, 5, 0.5, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(flow_sde.chain_log_prob(vel, chain, 0.5), lp.sum(1), atol=1e-3)
        assert not torch.allclose(a2, ref)


def test_flow_policy_log_prob_and_gradients():
    torch.manual_seed(0)
    pol = FlowChunkPolicy(_enc(), horizon=2, action_dim=2, steps=3, noise_level=0.5)
    feats = pol.features(_obs(8))
    with torch.no_grad():
        a, lp, extra = pol.act(feats)
    assert extra["chain"].shape == (8, 4, 2, 2)
    new = pol.log_prob(feats, a, extra)
    assert torch.allclose(new.detach(), lp, atol=1e-3)
    new.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.vel_net.parameters())
    with pytest.raises(KeyError, match="chain"):
        pol.log_prob(feats, a, {})
    d, dlp, _ = pol.act(feats, deterministic=True)
    assert float(dlp.abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_policy_checkpoint_round_trip(tmp_path, kind):
    head = {"kind": kind, "horizon": 2, "action_dim": 2, "hidden": [16], "value_hidden": [16]}
    pol = build_policy(head, {"type": "state", "keys": ["state/a", "state/b"], "dims": [2, 1]})
    pol.encoder.fit(_obs(50))
    save_policy(pol, tmp_path / "p", {"algo": "test"})
    back = load_policy(tmp_path / "p")
    feats = pol.features(_obs(4, seed=3))
    assert torch.allclose(back.features(_obs(4, seed=3)), feats)
    with torch.no_grad():
        a, _, extra = pol.act(feats)
        assert torch.allclose(back.log_prob(feats, a, extra), pol.log_prob(feats, a, extra), atol=1e-5)
        assert torch.allclose(back.value(feats), pol.value(feats))
    with pytest.raises(FileNotFoundError, match="not an RL policy"):
        load_policy(tmp_path)
