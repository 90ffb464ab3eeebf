"""Stochastic generalist heads with log-probabilities, over a policy's feature extractor.

An **encoder** is anything with ``policy_features(obs) -> (B, D)`` tensor (``obs``: a batch of spec
observations, arrays with a leading batch axis, plus ``"instruction"``: a list of strings) and an
int ``feature_dim``. The compact VLA exposes its frozen EfficientNet + MiniLM + proprio features
this way; :class:`StateFeatures` is the state-only one (sim state keys, tests, from-scratch runs).
An encoder may also offer ``policy_mean``: a module (B, D) -> (B, H, A) (its behaviour-cloned
regression head, normalised actions), which then becomes the Gaussian's mean, so RL fine-tunes the
generalist's own head; ``flow_velocity(feats) -> v(x, t)`` with a module ``flow_module`` (its flow
head, used by :class:`FlowChunkPolicy`); and ``unnormalize_actions(a) -> a`` (normalised -> spec
units). :mod:`flywheel.vla_rl.adapters` wraps the compact VLA this way.

The encoder is frozen: features are computed once in the rollout and reused by every update (the
algorithms never call it), as with iRe-VLA's frozen backbone.

A **chunk policy** (:class:`GaussianChunkPolicy`, :class:`FlowChunkPolicy`) gives, on features:
``act(feats, deterministic) -> (actions (B, H, A), logp (B,), extra)``, ``log_prob(feats, actions,
extra) -> (B,)``, ``value(feats) -> (B,)``, ``entropy(feats)`` (or None). ``extra`` holds what the
log-likelihood needs beyond the actions (the flow sampler's chain); the rollout stores it per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.vla_rl import flow_sde


def mlp(sizes: Sequence[int], act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class StateFeatures(nn.Module):
    """State-only features: the listed observation keys flattened and concatenated, then
    ``(x - shift) / scale`` (fixed; fit with :meth:`fit`). No trainable parameters."""

    def __init__(self, keys: Sequence[str], dims: Sequence[int]) -> None:
        super().__init__()
        if len(keys) != len(dims) or not keys:
            raise ValueError(f"StateFeatures: keys {list(keys)} and dims {list(dims)} must be non-empty and match")
        self.keys, self.dims = list(keys), [int(d) for d in dims]
        self.feature_dim = int(sum(self.dims))
        self.register_buffer("shift", torch.zeros(self.feature_dim))
        self.register_buffer("scale", torch.ones(self.feature_dim))

    def raw(self, obs: Mapping[str, Any]) -> torch.Tensor:
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"StateFeatures: observation misses {missing} (has {sorted(obs)})")
        parts = [torch.as_tensor(np.asarray(obs[k], np.float32)).reshape(len(obs[k]), -1) for k in self.keys]
        x = torch.cat(parts, -1)
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"StateFeatures: {self.keys} give {x.shape[1]} values, expected {self.feature_dim}")
        return x.to(self.shift.device)

    def fit(self, obs: Mapping[str, Any]) -> None:
        x = self.raw(obs)
        self.shift.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-3) if len(x) > 1 else torch.ones_like(self.scale))

    @torch.no_grad()
    def policy_features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        return (self.raw(obs) - self.shift) / self.scale


class ChunkPolicyBase(nn.Module):
    """What both stochastic heads share: the frozen encoder, a value head, spec conversion."""

    def __init__(self, encoder: Any, horizon: int, action_dim: int, value_hidden: Sequence[int],
                 norm_features: bool = False) -> None:
        super().__init__()
        if not hasattr(encoder, "policy_features") or not hasattr(encoder, "feature_dim"):
            raise TypeError("encoder: needs policy_features(obs) -> (B, D) and feature_dim")
        self.encoder = encoder
        if isinstance(encoder, nn.Module):
            encoder.requires_grad_(False)
            for name in ("policy_mean", "flow_module"):  # the generalist's own head trains
                if isinstance(getattr(encoder, name, None), nn.Module):
                    getattr(encoder, name).requires_grad_(True)
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.feature_dim = int(encoder.feature_dim)
        # ``norm_features``: the value (and the Gaussian's scale, and its mean unless that is the
        # generalist's own head) read the features through a LayerNorm.
        # A generalist's features are wide and large (the compact VLA's: 14.7k values up to ~40) and one
        # Adam step moves a linear layer's output by about lr x sum|x|: on raw features even lr 3e-7 moved
        # the policy by an approximate KL of 0.2 in one step. State features are standardised already
        # (and a LayerNorm over a few values would erase them): build_policy turns it on for generalists.
        self.norm_features = bool(norm_features)
        self.head_norm: nn.Module = (nn.LayerNorm(self.feature_dim, elementwise_affine=False) if norm_features
                                     else nn.Identity())
        self.value_net = mlp([self.feature_dim, *value_hidden, 1])

    @torch.no_grad()
    def features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        return self.encoder.policy_features(obs).float()

    def value(self, feats: torch.Tensor) -> torch.Tensor:
        return self.value_net(self.head_norm(feats)).squeeze(-1)

    def to_env(self, actions: torch.Tensor) -> np.ndarray:
        """Normalised chunks -> spec actions in [-1, 1] (numpy)."""
        un = getattr(self.encoder, "unnormalize_actions", None)
        a = actions.detach()
        if un is not None:
            a = torch.as_tensor(un(a))
        return np.clip(a.cpu().numpy().astype(np.float32), -1.0, 1.0)

    def from_env(self, actions: np.ndarray) -> torch.Tensor:
        """Spec actions (..., A) -> normalised (the inverse of :meth:`to_env` inside [-1, 1])."""
        norm = getattr(self.encoder, "normalize_actions", None)
        a = np.asarray(actions, np.float32)
        return torch.as_tensor(np.asarray(norm(a), np.float32) if norm is not None else a)

    def entropy(self, feats: torch.Tensor) -> torch.Tensor | None:
        return None


class GaussianChunkPolicy(ChunkPolicyBase):
    """A diagonal Gaussian over the (normalised) action chunk, with a learned state-dependent scale:
    log_std = lo + (hi - lo) * sigmoid(g(f)), g a small MLP (``log_std_hidden`` units; 0: one linear layer)
    whose last layer starts at 0 with its bias so log_std starts at ``init_log_std``; f through a LayerNorm
    when ``norm_features``. ``deterministic`` acts with the mean.

    ``fixed_dims`` (action dims) and ``sampled_steps`` (the chunk's first steps; 0 = all) say what is
    sampled: the rest is given at the mean, without noise and outside the log-probability. With a
    receding horizon only a chunk's first steps execute; the others change nothing in the env, so
    their noise would only add variance to the importance ratios and the KL."""

    def __init__(
        self, encoder: Any, horizon: int, action_dim: int, *, hidden: Sequence[int] = (128, 128),
        init_log_std: float = -1.0, log_std_bounds: tuple[float, float] = (-5.0, 1.0),
        value_hidden: Sequence[int] = (128, 128), fixed_dims: Sequence[int] = (), sampled_steps: int = 0,
        log_std_hidden: int = 32, norm_features: bool = False,
    ) -> None:
        super().__init__(encoder, horizon, action_dim, value_hidden, norm_features)
        bad = [d for d in fixed_dims if not 0 <= int(d) < action_dim]
        if bad:
            raise ValueError(f"fixed_dims {bad} are not action dims 0..{action_dim - 1}")
        if not 0 <= int(sampled_steps) <= self.horizon:
            raise ValueError(f"sampled_steps={sampled_steps} must lie in 0..{self.horizon} (0: the whole chunk)")
        # dims executed at the mean, without noise and outside the log-probability (e.g. the gripper
        # while a peg is held: exploring it drops the peg); likewise steps past ``sampled_steps``
        sampled = torch.ones(self.horizon, action_dim)
        sampled[:, [int(d) for d in fixed_dims]] = 0.0
        if int(sampled_steps):
            sampled[int(sampled_steps):] = 0.0
        self.register_buffer("sampled", sampled, persistent=False)
        lo, hi = log_std_bounds
        if not lo < init_log_std < hi:
            raise ValueError(f"init_log_std={init_log_std} must lie inside log_std_bounds={log_std_bounds}")
        self.lo, self.hi = float(lo), float(hi)
        d, n = self.feature_dim, self.horizon * self.action_dim
        mean = getattr(encoder, "policy_mean", None)
        if mean is not None:  # the generalist's own head: fine-tune it
            self.mean_net: nn.Module = mean
            self._own_mean = False
        else:
            self.mean_net = mlp([d, *hidden, n])
            self._own_mean = True
        # the scale: a small bottleneck on the normalised features (0: one linear layer), its last layer
        # starting at zero so the scale starts at init_log_std everywhere
        self.log_std_hidden = int(log_std_hidden)
        if self.log_std_hidden > 0:
            self.log_std_net: nn.Module = nn.Sequential(nn.Linear(d, self.log_std_hidden), nn.Tanh(),
                                                        nn.Linear(self.log_std_hidden, n))
        else:
            self.log_std_net = nn.Linear(d, n)
        last = self.log_std_out
        nn.init.zeros_(last.weight)
        p = (init_log_std - lo) / (hi - lo)
        nn.init.constant_(last.bias, math.log(p / (1 - p)))

    @property
    def log_std_out(self) -> nn.Linear:
        """The scale head's output layer."""
        net = self.log_std_net
        return net[-1] if isinstance(net, nn.Sequential) else net  # type: ignore[return-value]

    def dist(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each (B, H, A)."""
        b, x = feats.shape[0], self.head_norm(feats)
        mean = self.mean_net(x if self._own_mean else feats)  # a generalist's own head reads its raw features
        log_std = self.lo + (self.hi - self.lo) * torch.sigmoid(self.log_std_net(x))
        mean = mean.reshape(b, self.horizon, self.action_dim)
        return mean, log_std.reshape(b, self.horizon, self.action_dim)

    def act(self, feats: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        mean, log_std = self.dist(feats)
        if deterministic:
            return mean, torch.zeros(feats.shape[0], device=feats.device), {}
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        a = mean + log_std.exp() * eps * self.sampled
        return a, _normal_logp(a, mean, log_std, self.sampled), {}

    def log_prob(self, feats: torch.Tensor, actions: torch.Tensor, extra: Mapping[str, torch.Tensor] | None = None):
        return self.logp_of(self.dist(feats), actions)

    def mean_log_prob(self, feats: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(actions) with the scale held fixed (no gradient to it): fitting the mean to the actions.
        (The full likelihood of far-off actions falls fastest by widening the scale, not by moving the mean.)"""
        return self.logp_of(self.dist(feats), actions, fixed_scale=True)

    def logp_of(self, dist: tuple[torch.Tensor, torch.Tensor], actions: torch.Tensor,
                fixed_scale: bool = False) -> torch.Tensor:
        """:meth:`log_prob` (or, ``fixed_scale``, :meth:`mean_log_prob`) from a :meth:`dist` already computed:
        one head forward serves several terms of a loss."""
        mean, log_std = dist
        return _normal_logp(actions, mean, log_std.detach() if fixed_scale else log_std, self.sampled)

    def entropy(self, feats: torch.Tensor) -> torch.Tensor:
        _, log_std = self.dist(feats)
        return ((log_std + 0.5 * math.log(2 * math.pi * math.e)) * self.sampled).flatten(1).sum(1)


def one_step_kl(policy: ChunkPolicyBase, feats: torch.Tensor, lr: float, params: Sequence[str] | None = None,
                seed: int = 0) -> float:
    """How far one Adam step moves a head: the approximate KL (k3, on its own samples) between a copy of
    ``policy`` before and after one policy-gradient step with random advantages on ``feats``, stepping
    ``params`` (parameter names; default every trainable one). ``policy`` itself is not changed."""
    import copy

    pol = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        a, lp, _ = pol.act(feats, generator=g)
    adv = torch.randn(len(feats), generator=g)
    named = dict(pol.named_parameters())
    ps = [named[n] for n in params] if params else [p for p in pol.parameters() if p.requires_grad]
    opt = torch.optim.Adam(ps, lr=lr)
    loss = -(pol.log_prob(feats, a) * adv).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        r = pol.log_prob(feats, a) - lp
    return float(((r.exp() - 1) - r).mean())


def _normal_logp(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    z = (x - mean) * torch.exp(-log_std)
    lp = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
    return (lp if mask is None else lp * mask).flatten(1).sum(1)


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None] * 100.0
    return torch.cat([ang.sin(), ang.cos()], -1)


class FlowChunkPolicy(ChunkPolicyBase):
    """A flow-matching chunk head (an MLP velocity network on features) sampled with the stochastic
    SDE of :mod:`flywheel.vla_rl.flow_sde`: ``extra["chain"]`` carries the denoising chain, and the
    log-probability is the sum of its per-step Gaussian transitions. ``deterministic`` is the ODE."""

    def __init__(
        self, encoder: Any, horizon: int, action_dim: int, *, hidden: Sequence[int] = (128, 128),
        steps: int = 5, noise_level: float = 0.5, t_max: float = 0.9, time_dim: int = 16,
        value_hidden: Sequence[int] = (128, 128), norm_features: bool = False,
    ) -> None:
        super().__init__(encoder, horizon, action_dim, value_hidden, norm_features)
        if noise_level <= 0:
            raise ValueError(f"FlowChunkPolicy: noise_level={noise_level} must be > 0 (0 is the evaluation ODE)")
        self.steps, self.noise_level, self.t_max, self.time_dim = int(steps), float(noise_level), float(t_max), time_dim
        n = self.horizon * self.action_dim
        self.external = hasattr(encoder, "flow_velocity")  # the generalist's own flow head
        if not self.external:
            self.vel_net = mlp([n + time_dim + self.feature_dim, *hidden, n], act=nn.GELU)

    def velocity_fn(self, feats: torch.Tensor) -> flow_sde.Velocity:
        if self.external:
            return self.encoder.flow_velocity(feats)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            h = torch.cat([x.flatten(1), _time_embedding(t, self.time_dim), feats], -1)
            return self.vel_net(h).reshape(x.shape)

        return velocity

    def flow_loss(self, feats: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The behaviour-cloning (flow-matching) loss, for supervised warm starts."""
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        return ((self.velocity_fn(feats)(x_t, t) - (noise - actions)) ** 2).mean()

    def act(self, feats: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        b = feats.shape[0]
        noise = torch.randn((b, self.horizon, self.action_dim), generator=generator).to(feats.device)
        level = 0.0 if deterministic else self.noise_level
        a, chain, lp = flow_sde.sample(self.velocity_fn(feats), noise, self.steps, level, t_max=self.t_max,
                                       generator=generator)
        return a, lp.sum(1), {"chain": chain}

    def log_prob(self, feats: torch.Tensor, actions: torch.Tensor, extra: Mapping[str, torch.Tensor] | None = None):
        if extra is None or "chain" not in extra:
            raise KeyError("FlowChunkPolicy.log_prob needs extra['chain'] (the stored denoising chain)")
        return flow_sde.chain_log_prob(self.velocity_fn(feats), extra["chain"], self.noise_level, t_max=self.t_max)
