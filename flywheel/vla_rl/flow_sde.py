"""A stochastic sampler for a flow-matching action head, with a log-likelihood per denoising step.

The flow head (:class:`policy.heads.FlowMatchingHead`) uses x_t = t * noise + (1 - t) * actions and
predicts v = noise - actions; inference integrates the ODE dx = v dt from t = 1 (noise) to t = 0.
That ODE has no tractable action likelihood, so on-policy RL (flow-GRPO, piRL's flow-SDE) replaces
it by an SDE with the same marginals and turns every Euler step into a Gaussian transition:

    mean_k = x_k + [v(x_k, t_k) + sigma_k^2 / (2 t_k) * (x_k + (1 - t_k) v(x_k, t_k))] dt
    x_{k+1} = mean_k + sigma_k * sqrt(|dt|) * eps,      eps ~ N(0, I)

with dt = -1/K and sigma_k = noise_level * sqrt(t_k / (1 - t_k)) (t_k capped at ``t_max`` so the
first step stays finite). The term in sigma^2 is the score correction that keeps the marginals of
x_t those of the ODE. The log-likelihood of a sampled chain is the sum of the Gaussian transition
log-densities; :func:`chain_log_prob` recomputes it under new parameters from the stored chain
(the "action" PPO/GRPO needs a ratio for is the chain, whose last state is the executed chunk).
``noise_level=0`` is the deterministic Euler ODE, identical to ``FlowMatchingHead.sample``: the
evaluation mode.

A velocity function is ``v(x (B, H, A), t (B,)) -> (B, H, A)``; :func:`head_velocity` makes one from
a ``FlowMatchingHead`` and its prefix (keys/values computed once for all steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def schedule(steps: int, noise_level: float, t_max: float = 0.9) -> tuple[list[float], list[float], float]:
    """(t_k for k < K, sigma_k, dt) of the K-step sampler."""
    if steps < 1:
        raise ValueError(f"flow sampler: steps={steps} must be >= 1")
    if noise_level < 0:
        raise ValueError(f"flow sampler: noise_level={noise_level} must be >= 0")
    dt = -1.0 / steps
    ts = [1.0 + k * dt for k in range(steps)]
    sig = [noise_level * math.sqrt(min(t, t_max) / (1.0 - min(t, t_max))) for t in ts]
    return ts, sig, dt


def step_mean(x: torch.Tensor, v: torch.Tensor, t: float, sigma: float, dt: float) -> torch.Tensor:
    """The mean of one SDE step (the Euler step when ``sigma`` is 0)."""
    drift = v if sigma == 0.0 else v + (sigma**2 / (2.0 * t)) * (x + (1.0 - t) * v)
    return x + drift * dt


def sample(
    velocity: Velocity, noise: torch.Tensor, steps: int, noise_level: float, *, t_max: float = 0.9,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrate from ``noise`` (B, H, A) at t=1 to t=0.

    Returns (actions (B, H, A), chain (B, K+1, H, A) with chain[:, 0] = noise and chain[:, -1] =
    actions, per-step log-likelihoods (B, K); zeros when ``noise_level`` is 0: the ODE is
    deterministic)."""
    ts, sig, dt = schedule(steps, noise_level, t_max)
    b = noise.shape[0]
    x = noise.float()
    chain = [x]
    logps = []
    for t, s in zip(ts, sig, strict=True):
        v = velocity(x, torch.full((b,), t, device=x.device)).float()
        mean = step_mean(x, v, t, s, dt)
        if s > 0:
            std = s * math.sqrt(-dt)
            eps = torch.randn(mean.shape, generator=generator, device=mean.device if generator is None
                              else generator.device).to(mean.device)
            x = mean + std * eps
            logps.append(_gauss_logp(x, mean, std))
        else:
            x = mean
            logps.append(torch.zeros(b, device=x.device))
        chain.append(x)
    return x, torch.stack(chain, 1), torch.stack(logps, 1)


def _gauss_logp(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    d = x[0].numel()
    sq = ((x - mean) ** 2).flatten(1).sum(1)
    return -0.5 * sq / std**2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))


def chain_log_prob(
    velocity: Velocity, chain: torch.Tensor, noise_level: float, *, t_max: float = 0.9, per_step: bool = False,
) -> torch.Tensor:
    """Log-likelihood of a stored chain (B, K+1, H, A) under ``velocity``: (B,) or (B, K) per step."""
    steps = chain.shape[1] - 1
    if noise_level <= 0:
        raise ValueError("chain_log_prob: the deterministic sampler (noise_level=0) has no density")
    ts, sig, dt = schedule(steps, noise_level, t_max)
    b = chain.shape[0]
    out = []
    for k, (t, s) in enumerate(zip(ts, sig, strict=True)):
        x = chain[:, k].float()
        v = velocity(x, torch.full((b,), t, device=x.device)).float()
        out.append(_gauss_logp(chain[:, k + 1].float(), step_mean(x, v, t, s, dt), s * math.sqrt(-dt)))
    lp = torch.stack(out, 1)
    return lp if per_step else lp.sum(1)


def head_velocity(head, hidden: torch.Tensor, mask: torch.Tensor, proprio: torch.Tensor) -> Velocity:
    """The velocity function of a :class:`policy.heads.FlowMatchingHead` for one batch of prefixes."""
    kvs, mem_mask = head.prefix(hidden, mask, proprio)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return head.velocity(x, t, kvs, mem_mask)

    return velocity
