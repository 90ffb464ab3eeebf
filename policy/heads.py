"""Action heads on a VLM's last hidden states.

Both take ``hidden`` (B, T, D), its ``mask`` (B, T; True = a real token) and the
normalised proprioception (B, P), and work on normalised action chunks
(B, H, A).

* :class:`TokenLearnerHead` (iRe-VLA): a TokenLearner pools the hidden states
  into a few tokens, an MLP maps them plus proprioception to the chunk.
* :class:`FlowMatchingHead` (pi0 / SmolVLA): a small transformer "action
  expert" cross-attends to the hidden states and predicts the flow-matching
  velocity; inference integrates from noise with Euler steps, computing the
  keys and values of the prefix once (a prefix KV cache) for all steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def masked_mse(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the non-padded steps of a chunk."""
    err = (pred.float() - target.float()) ** 2
    if is_pad is None:
        return err.mean()
    keep = (~is_pad.bool()).unsqueeze(-1).to(err.dtype)
    return (err * keep).sum() / (keep.sum() * err.shape[-1]).clamp_min(1.0)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class TokenLearner(nn.Module):
    """Learns ``num_tokens`` spatial-attention maps over the sequence and pools with them."""

    def __init__(self, dim: int, num_tokens: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = _mlp([dim, hidden, num_tokens])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(hidden)
        logits = self.attn(x).float()  # (B, T, S)
        logits = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        weights = logits.softmax(dim=1).to(x.dtype)
        return torch.einsum("bts,btd->bsd", weights, x)  # (B, S, D)


class TokenLearnerHead(nn.Module):
    """iRe-VLA's head: TokenLearner pooling, then an MLP with proprioception, to an action chunk."""

    def __init__(
        self, dim: int, proprio_dim: int, horizon: int, action_dim: int, *, num_tokens: int = 8,
        hidden_dim: int = 256, layers: int = 2,
    ) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.pool = TokenLearner(dim, num_tokens, hidden_dim)
        self.mlp = _mlp([num_tokens * dim + proprio_dim] + [hidden_dim] * layers + [horizon * action_dim])

    def latent(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pooled tokens, flattened (B, S*D)."""
        return self.pool(hidden, mask).flatten(1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.latent(hidden, mask), proprio.to(hidden.dtype)], dim=-1)
        return self.mlp(z).view(-1, self.horizon, self.action_dim)

    def loss(self, hidden, mask, proprio, actions, is_pad=None) -> torch.Tensor:
        return masked_mse(self(hidden, mask, proprio), actions, is_pad)

    def sample(self, hidden, mask, proprio, generator=None, prefix=None) -> torch.Tensor:
        """The chunk; a regression head cannot condition on a committed ``prefix``: it only overwrites it."""
        out = self(hidden, mask, proprio)
        if prefix is not None and prefix.shape[1]:
            out = out.clone()
            out[:, : prefix.shape[1]] = prefix.to(out.dtype)
        return out


class _ExpertBlock(nn.Module):
    """Pre-norm block: self-attention over action tokens, cross-attention to the prefix, MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.o1 = nn.Linear(dim, dim)
        self.q2 = nn.Linear(dim, dim)
        self.kv2 = nn.Linear(dim, 2 * dim)
        self.o2 = nn.Linear(dim, dim)
        self.mlp = _mlp([dim, 4 * dim, dim])

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def prefix_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv2(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mem_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (self._split(t) for t in self.qkv(self.n1(x)).chunk(3, dim=-1))
        x = x + self.o1(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        q = self._split(self.q2(self.n2(x)))
        att = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mem_mask[:, None, None, :].bool())
        x = x + self.o2(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.n3(x))


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None] * 1000.0
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class FlowMatchingHead(nn.Module):
    """Flow-matching action expert: x_t = t * noise + (1 - t) * actions, predicts noise - actions."""

    def __init__(
        self, dim: int, proprio_dim: int, horizon: int, action_dim: int, *, hidden_dim: int = 256,
        layers: int = 2, heads: int = 4, steps: int = 10,
    ) -> None:
        super().__init__()
        if hidden_dim % heads:
            raise ValueError(f"flow head: hidden_dim={hidden_dim} is not divisible by expert_heads={heads}")
        self.horizon, self.action_dim, self.hidden_dim, self.steps = horizon, action_dim, hidden_dim, steps
        self.prefix_proj = nn.Linear(dim, hidden_dim)
        self.proprio_proj = nn.Linear(proprio_dim, hidden_dim)
        self.action_in = nn.Linear(action_dim, hidden_dim)
        self.time_mlp = _mlp([hidden_dim, hidden_dim, hidden_dim])
        self.pos = nn.Parameter(torch.zeros(1, horizon, hidden_dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_ExpertBlock(hidden_dim, heads) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, action_dim))

    def prefix(self, hidden, mask, proprio):
        """Keys/values of the prefix (hidden states + proprio token) for every block, and its mask."""
        mem = torch.cat([self.prefix_proj(hidden), self.proprio_proj(proprio.to(hidden.dtype))[:, None]], dim=1)
        mem_mask = torch.cat([mask.bool(), torch.ones_like(mask[:, :1], dtype=torch.bool)], dim=1)
        return [blk.prefix_kv(mem) for blk in self.blocks], mem_mask

    def velocity(self, x_t, t, kvs, mem_mask) -> torch.Tensor:
        h = self.action_in(x_t.to(self.pos.dtype)) + self.pos
        h = h + self.time_mlp(_time_embedding(t, self.hidden_dim).to(h.dtype))[:, None]
        for blk, kv in zip(self.blocks, kvs, strict=True):
            h = blk(h, kv, mem_mask)
        return self.out(h)

    def loss(self, hidden, mask, proprio, actions, is_pad=None) -> torch.Tensor:
        b = actions.shape[0]
        noise = torch.randn_like(actions, dtype=torch.float32)
        # pi0's time distribution: Beta(1.5, 1) shifted towards the noisy end
        t = torch.distributions.Beta(1.5, 1.0).sample((b,)).to(actions.device) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions.float()
        kvs, mem_mask = self.prefix(hidden, mask, proprio)
        return masked_mse(self.velocity(x_t, t, kvs, mem_mask), noise - actions.float(), is_pad)

    @torch.no_grad()
    def sample(self, hidden, mask, proprio, generator: torch.Generator | None = None,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Euler integration from noise (t=1) to actions (t=0).

        ``prefix`` (B, P, A): actions already committed for the chunk's first P steps (they execute
        while this chunk is computed). They are inpainted: at every step the first P positions are
        set to the noisy prefix of the current time, so the rest of the chunk continues them
        (real-time chunking, the hard-inpainting variant)."""
        b = hidden.shape[0]
        noise = torch.randn(
            (b, self.horizon, self.action_dim), generator=generator, device="cpu" if generator is None
            else generator.device, dtype=torch.float32,
        ).to(hidden.device)
        p = 0 if prefix is None else min(int(prefix.shape[1]), self.horizon)
        known = None if not p else prefix[:, :p].float().to(hidden.device)
        x = noise
        kvs, mem_mask = self.prefix(hidden, mask, proprio)
        dt = -1.0 / self.steps
        for i in range(self.steps):
            tau = 1.0 + i * dt
            if p:
                x = x.clone()
                x[:, :p] = tau * noise[:, :p] + (1.0 - tau) * known
            t = torch.full((b,), tau, device=hidden.device)
            x = x + dt * self.velocity(x, t, kvs, mem_mask).float()
        if p:
            x[:, :p] = known
        return x
