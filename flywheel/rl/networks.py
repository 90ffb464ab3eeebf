"""The SAC agent's networks: LayerNorm MLPs, critic ensembles (RLPD/REDQ) and the tanh-Gaussian actor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied to (n, B, in) at once."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, d))
        self.bias = nn.Parameter(torch.zeros(n, 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """An ensemble of LayerNorm MLPs: input (B, d) or (n, B, d) -> (n, B, d_out)."""

    def __init__(self, n: int, d_in: int, hidden: list[int], d_out: int):
        super().__init__()
        self.n = n
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [EnsembleLinear(n, d, h), EnsembleLayerNorm(n, h), nn.ReLU()]
            d = h
        layers.append(EnsembleLinear(n, d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, -1, -1)
        return self.net(x)


def mlp(d_in: int, hidden: list[int], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class GaussianActor(nn.Module):
    """Tanh-squashed Gaussian policy over the controlled arm dims."""

    def __init__(self, d_in: int, hidden: list[int], act_dim: int):
        super().__init__()
        self.net = mlp(d_in, hidden, 2 * act_dim)

    def forward(self, feat: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(feat).chunk(2, -1)
        log_std = -5.0 + 3.5 * (torch.tanh(log_std) + 1.0)  # in [-5, 2]
        if deterministic:
            return torch.tanh(mean), torch.zeros(feat.shape[0], device=feat.device)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp

    def mean_action(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(feat).chunk(2, -1)[0])
