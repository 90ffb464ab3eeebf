"""The HIL-SERL agent: SAC with RLPD-style critics and a discrete gripper critic.

One readable file for the whole agent:

* **Encoder** turns a spec observation dict into a feature vector: the state
  keys (proprioception, or every ``state/*`` key for state-only sim runs), plus
  per camera either a small conv net trained by the critic with random-shift
  augmentation (``encoder="conv"``), or frozen features of the generalist's
  backbone (``encoder="latent"``, iRe-VLA's latent RL) through a callable hook
  followed by a trainable projection.
* **Critic**: an ensemble of LayerNorm MLPs (RLPD/REDQ): every member regresses
  to one target, the minimum over a random subset of the target ensemble.
* **Actor**: a tanh-squashed Gaussian over the continuous arm dims (by default
  all six: translation and rotation deltas), temperature tuned to a target
  entropy.
* **Gripper critic**: a DQN head over three discrete gripper actions
  (open, stay, close) as HIL-SERL does; :func:`compose_action` turns the arm
  action and the gripper choice into the 7-d spec action
  (open = +1, close = -1, stay = the current gripper command).

The update-to-data ratio is the number of critic updates per :meth:`SACAgent.update`
call (one batch each); the actor and temperature update every
``actor_update_period`` calls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Discrete gripper actions (indices of the gripper critic's outputs).
GRIP_OPEN, GRIP_STAY, GRIP_CLOSE = 0, 1, 2
GRIP_NAMES = ("open", "stay", "close")
ARM_DIMS = 6  # translation (3) + rotation vector (3) of the spec action

# A frozen image encoder: uint8 images (B, H, W, 3) -> features (B, D), both torch.
LatentEncoderFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SACConfig:
    """Hyper-parameters of the agent (defaults follow RLPD / HIL-SERL)."""

    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    num_critics: int = 2  # critic ensemble size (RLPD uses 10 with num_min_critics=2)
    num_min_critics: int = 2  # target = min over a random subset of this size
    discount: float = 0.97
    tau: float = 0.005  # target network Polyak rate
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temp_lr: float = 3e-4
    init_temperature: float = 0.01
    target_entropy: float | None = None  # None -> -len(arm_dims) / 2
    backup_entropy: bool = False  # HIL-SERL: no entropy term in the critic target
    utd_ratio: int = 1  # critic updates per update() call
    actor_update_period: int = 1  # actor/temperature update every N update() calls
    batch_size: int = 256
    # which of the 6 arm dims SAC controls; the others are held at 0
    arm_dims: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    gripper: bool = True  # discrete gripper critic; False -> gripper held at gripper_fixed
    gripper_fixed: float = 1.0  # the gripper command when gripper=False (-1 closed .. +1 open)
    gripper_penalty: float = 0.0  # subtracted from the gripper critic's reward on open/close
    gripper_epsilon: float = 0.05  # epsilon-greedy exploration of the gripper while training
    # observation encoding
    encoder: str = "state"  # state | conv | latent
    state_keys: list[str] | None = None  # None -> every state/* key in the observation
    # extra state features, differences of two slices of state keys: "key[i:j]-key[k:l]", e.g. the hole
    # relative to the peg ("state/privileged[3:6]-state/privileged[0:3]"), as a wrist camera would see it
    state_deltas: list[str] = field(default_factory=list)
    image_keys: list[str] | None = None  # None -> every images/* key (conv/latent only)
    feature_dim: int = 64  # per-camera feature size after the conv net / latent projection
    conv_channels: int = 32
    shift_pad: int = 4  # random-shift augmentation (pixels), 0 disables
    grad_clip: float = 10.0


# ----------------------------------------------------------------- networks
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


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ random-shift augmentation of (B, C, H, W) float images (replicate padding)."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    ox = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    oy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None]).view(b, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None]).view(b, 1, 1, w)
    bidx = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    cidx = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[bidx, cidx, rows, cols]


class ConvEncoder(nn.Module):
    """Small conv net for one camera: uint8 (B, H, W, 3) -> (B, feature_dim)."""

    def __init__(self, image_shape: tuple[int, ...], channels: int, feature_dim: int):
        super().__init__()
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1), nn.ReLU(),
        )
        h, w = int(image_shape[0]), int(image_shape[1])
        with torch.no_grad():
            n = self.conv(torch.zeros(1, 3, h, w)).numel()
        self.head = nn.Sequential(nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, img: torch.Tensor, shift_pad: int = 0) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).float() / 255.0
        x = random_shift(x, shift_pad)
        return self.head(self.conv(x - 0.5).flatten(1))


class LatentEncoder(nn.Module):
    """Frozen features from a callable (the generalist's backbone) + a trainable projection."""

    def __init__(self, fn: LatentEncoderFn, image_shape: tuple[int, ...], feature_dim: int):
        super().__init__()
        self._fn = [fn]  # a list keeps the callable out of state_dict / parameters
        with torch.no_grad():
            d = int(fn(torch.zeros(1, *image_shape, dtype=torch.uint8)).reshape(1, -1).shape[1])
        self.head = nn.Sequential(nn.Linear(d, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, img: torch.Tensor, shift_pad: int = 0) -> torch.Tensor:
        with torch.no_grad():
            z = self._fn[0](img).reshape(img.shape[0], -1).float()
        return self.head(z)


class Encoder(nn.Module):
    """Observation dict (torch) -> feature vector: image features ++ state vector."""

    def __init__(
        self,
        cfg: SACConfig,
        state_keys: list[str],
        state_dim: int,
        image_shapes: Mapping[str, tuple[int, ...]],
        latent_fn: LatentEncoderFn | None,
        deltas: list[tuple[slice, slice]] = (),  # type: ignore[assignment]
    ):
        super().__init__()
        self.state_keys = list(state_keys)
        self.deltas = list(deltas)
        state_dim += sum(a.stop - a.start for a, _ in self.deltas)
        self.image_keys = list(image_shapes)
        self.shift_pad = cfg.shift_pad if cfg.encoder == "conv" else 0
        self.cams = nn.ModuleDict()
        for k, shape in image_shapes.items():
            name = k.replace("/", "__")
            if cfg.encoder == "conv":
                self.cams[name] = ConvEncoder(shape, cfg.conv_channels, cfg.feature_dim)
            elif cfg.encoder == "latent":
                if latent_fn is None:
                    raise ValueError("encoder='latent' needs latent_encoder=<callable images -> features>")
                self.cams[name] = LatentEncoder(latent_fn, shape, cfg.feature_dim)
        self.out_dim = state_dim + cfg.feature_dim * len(self.cams)
        # state normalisation (identity until set_state_stats; saved with the weights)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set_state_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def state_vector(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The state keys concatenated, then the configured deltas (not normalised)."""
        x = torch.cat([obs[k].reshape(obs[k].shape[0], -1).float() for k in self.state_keys], -1)
        return torch.cat([x, *(x[:, a] - x[:, b] for a, b in self.deltas)], -1)

    def forward(self, obs: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        parts = [enc(obs[k.replace("__", "/")], self.shift_pad if augment else 0) for k, enc in self.cams.items()]
        if self.state_keys:
            parts.append((self.state_vector(obs) - self.state_mean) / self.state_std)
        return torch.cat(parts, -1)


class Actor(nn.Module):
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


# ------------------------------------------------------------------ actions
def gripper_label(command: float, previous: float, threshold: float = 0.5) -> int:
    """Discrete gripper action that explains a continuous command given the previous one."""
    if abs(float(command) - float(previous)) <= threshold:
        return GRIP_STAY
    return GRIP_OPEN if command > previous else GRIP_CLOSE


def compose_action(arm: np.ndarray, arm_dims: list[int], grip: int, current_gripper: float) -> np.ndarray:
    """The 7-d spec action: SAC's arm dims (others 0) + the gripper choice.

    open -> +1, close -> -1, stay -> ``current_gripper`` (the gripper command in force).
    """
    a = np.zeros(7, np.float32)
    a[list(arm_dims)] = np.clip(np.asarray(arm, np.float32).reshape(-1), -1.0, 1.0)
    if grip == GRIP_OPEN:
        a[6] = 1.0
    elif grip == GRIP_CLOSE:
        a[6] = -1.0
    elif grip == GRIP_STAY:
        a[6] = float(np.clip(current_gripper, -1.0, 1.0))
    else:
        raise ValueError(f"gripper action {grip!r} is not one of 0 (open), 1 (stay), 2 (close)")
    return a


# -------------------------------------------------------------------- agent
def obs_shapes_of(space_or_obs: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} from a gymnasium Dict space or one observation dict."""
    items = space_or_obs.spaces.items() if hasattr(space_or_obs, "spaces") else space_or_obs.items()
    return {k: (tuple(v.shape), str(np.dtype(v.dtype))) for k, v in items}


def observation_layout(
    obs_shapes: Mapping[str, tuple[tuple[int, ...], str]], cfg: SACConfig
) -> tuple[list[str], list[str]]:
    """(state keys, image keys) the agent reads, checked against the observation."""
    if cfg.encoder not in ("state", "conv", "latent"):
        raise ValueError(f"encoder={cfg.encoder!r}: use one of state, conv, latent")
    state_keys = list(cfg.state_keys) if cfg.state_keys is not None else sorted(
        k for k in obs_shapes if k.startswith("state/")
    )
    missing = [k for k in state_keys if k not in obs_shapes]
    if missing:
        raise KeyError(f"state_keys {missing} are not in the observation (has {sorted(obs_shapes)})")
    image_keys: list[str] = []
    if cfg.encoder != "state":
        image_keys = list(cfg.image_keys) if cfg.image_keys is not None else sorted(
            k for k in obs_shapes if k.startswith("images/")
        )
        missing = [k for k in image_keys if k not in obs_shapes]
        if missing or not image_keys:
            raise KeyError(
                f"encoder={cfg.encoder!r} needs images, but image keys {missing or '[]'} are not in the "
                f"observation (has {sorted(obs_shapes)}); make the env with cameras or use encoder=state"
            )
    return state_keys, image_keys


_DELTA = re.compile(r"^\s*([\w/]+)\[(\d+):(\d+)\]\s*-\s*([\w/]+)\[(\d+):(\d+)\]\s*$")


def parse_state_deltas(
    deltas: list[str], state_keys: list[str], obs_shapes: Mapping[str, tuple[tuple[int, ...], str]]
) -> list[tuple[slice, slice]]:
    """``"a[i:j]-b[k:l]"`` -> (slice, slice) into the concatenated state vector, checked."""
    offsets, o = {}, 0
    for k in state_keys:
        n = int(np.prod(obs_shapes[k][0]))
        offsets[k] = (o, n)
        o += n
    out = []
    for d in deltas:
        m = _DELTA.match(d)
        if not m:
            raise ValueError(f"state_deltas entry {d!r}: write it as 'key[i:j]-key[k:l]'")
        sl = []
        for key, i, j in (m.group(1, 2, 3), m.group(4, 5, 6)):
            if key not in offsets:
                raise KeyError(f"state_deltas entry {d!r}: {key} is not one of the state keys {state_keys}")
            i, j = int(i), int(j)
            if not 0 <= i < j <= offsets[key][1]:
                raise ValueError(f"state_deltas entry {d!r}: [{i}:{j}] is outside {key} (size {offsets[key][1]})")
            sl.append(slice(offsets[key][0] + i, offsets[key][0] + j))
        if sl[0].stop - sl[0].start != sl[1].stop - sl[1].start:
            raise ValueError(f"state_deltas entry {d!r}: the two slices differ in length")
        out.append((sl[0], sl[1]))
    return out


class SACAgent(nn.Module):
    """SAC + RLPD critics + discrete gripper critic (see the module docstring)."""

    def __init__(
        self,
        cfg: SACConfig,
        obs_shapes: Mapping[str, tuple[tuple[int, ...], str]],
        latent_encoder: LatentEncoderFn | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if not 1 <= cfg.num_min_critics <= cfg.num_critics:
            raise ValueError(
                f"num_min_critics={cfg.num_min_critics} must be in 1..num_critics={cfg.num_critics}"
            )
        bad = [d for d in cfg.arm_dims if not 0 <= d < ARM_DIMS]
        if bad or not cfg.arm_dims:
            raise ValueError(f"arm_dims={list(cfg.arm_dims)}: give a non-empty subset of 0..5")
        self.cfg = cfg
        self.device = torch.device(device)
        self.state_keys, self.image_keys = observation_layout(obs_shapes, cfg)
        self.obs_keys = self.state_keys + self.image_keys
        self.obs_shapes = {k: (tuple(obs_shapes[k][0]), str(obs_shapes[k][1])) for k in self.obs_keys}
        state_dim = sum(int(np.prod(obs_shapes[k][0])) for k in self.state_keys)
        deltas = parse_state_deltas(list(cfg.state_deltas), self.state_keys, obs_shapes)
        self.encoder = Encoder(
            cfg, self.state_keys, state_dim, {k: tuple(obs_shapes[k][0]) for k in self.image_keys}, latent_encoder,
            deltas,
        )
        self.act_dim = len(cfg.arm_dims)
        d = self.encoder.out_dim
        self.actor = Actor(d, cfg.hidden_dims, self.act_dim)
        self.critic = EnsembleMLP(cfg.num_critics, d + self.act_dim, cfg.hidden_dims, 1)
        self.critic_target = EnsembleMLP(cfg.num_critics, d + self.act_dim, cfg.hidden_dims, 1)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.grip_critic = EnsembleMLP(2, d, cfg.hidden_dims, 3)
        self.grip_target = EnsembleMLP(2, d, cfg.hidden_dims, 3)
        self.grip_target.load_state_dict(self.grip_critic.state_dict())
        for p in [*self.critic_target.parameters(), *self.grip_target.parameters()]:
            p.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = (
            float(cfg.target_entropy) if cfg.target_entropy is not None else -self.act_dim / 2.0
        )
        self.to(self.device)
        critic_params = [*self.encoder.parameters(), *self.critic.parameters(), *self.grip_critic.parameters()]
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.temp_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temp_lr)
        self.num_updates = 0

    # ------------------------------------------------------------ helpers
    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def to_torch(self, obs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(np.asarray(obs[k]), device=self.device) for k in self.obs_keys}

    def arm_action(self, spec_actions: torch.Tensor) -> torch.Tensor:
        return spec_actions[:, list(self.cfg.arm_dims)].clamp(-1.0, 1.0)

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """What an actor needs to act (pushed to actors as safetensors)."""
        keep = ("encoder.", "actor.", "grip_critic.")
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k.startswith(keep)}

    def load_policy_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(dict(sd), strict=False)
        keep = ("encoder.", "actor.", "grip_critic.")
        missing = [k for k in missing if k.startswith(keep)]
        if missing or unexpected:
            raise KeyError(f"policy weights do not fit this agent: missing {missing}, unexpected {unexpected}")

    # ------------------------------------------------------------- acting
    @torch.no_grad()
    def act(
        self,
        obs: Mapping[str, np.ndarray],
        current_gripper: float,
        deterministic: bool = False,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, int]:
        """One observation -> (7-d spec action, gripper index)."""
        t = {k: v.unsqueeze(0) for k, v in self.to_torch(obs).items()}
        feat = self.encoder(t)
        arm, _ = self.actor(feat, deterministic=deterministic)
        if not self.cfg.gripper:
            return compose_action(arm[0].cpu().numpy(), self.cfg.arm_dims, GRIP_STAY, self.cfg.gripper_fixed), GRIP_STAY
        if not deterministic and rng is not None and rng.random() < self.cfg.gripper_epsilon:
            grip = int(rng.integers(3))
        else:
            grip = int(self.grip_critic(feat).mean(0).argmax(-1).item())
        return compose_action(arm[0].cpu().numpy(), self.cfg.arm_dims, grip, current_gripper), grip

    # ----------------------------------------------------------- learning
    def update(self, batches: list[Mapping[str, Any]]) -> dict[str, float]:
        """``len(batches)`` critic updates (the UTD ratio), then maybe one actor/temperature update.

        A batch holds ``obs/<key>``, ``next_obs/<key>``, ``action`` (7-d spec), ``grip`` (int),
        ``reward``, ``terminated`` as numpy arrays.
        """
        info: dict[str, float] = {}
        for b in batches:
            feat = self._critic_step(self._batch_to_torch(b), info)
        self.num_updates += 1
        if self.num_updates % self.cfg.actor_update_period == 0:
            self._actor_step(feat.detach(), info)
        return info

    def _batch_to_torch(self, b: Mapping[str, Any]) -> dict[str, Any]:
        dev = self.device
        return {
            "obs": {k: torch.as_tensor(b[f"obs/{k}"], device=dev) for k in self.obs_keys},
            "next_obs": {k: torch.as_tensor(b[f"next_obs/{k}"], device=dev) for k in self.obs_keys},
            "action": torch.as_tensor(b["action"], device=dev, dtype=torch.float32),
            "grip": torch.as_tensor(b["grip"], device=dev, dtype=torch.long),
            "reward": torch.as_tensor(b["reward"], device=dev, dtype=torch.float32),
            "terminated": torch.as_tensor(b["terminated"], device=dev, dtype=torch.float32),
        }

    def _critic_step(self, b: dict[str, Any], info: dict[str, float]) -> torch.Tensor:
        cfg = self.cfg
        feat = self.encoder(b["obs"], augment=True)
        with torch.no_grad():
            next_feat = self.encoder(b["next_obs"], augment=True)
            next_a, next_logp = self.actor(next_feat)
            q_next = self.critic_target(torch.cat([next_feat, next_a], -1)).squeeze(-1)  # (n, B)
            idx = torch.randperm(cfg.num_critics, device=self.device)[: cfg.num_min_critics]
            q_next = q_next[idx].min(0).values
            if cfg.backup_entropy:
                q_next = q_next - self.alpha * next_logp
            not_done = 1.0 - b["terminated"]
            target = b["reward"] + cfg.discount * not_done * q_next
            if cfg.gripper:  # double DQN: online argmax, min over the target pair
                g_next = self.grip_critic(next_feat).mean(0).argmax(-1)
                gq_next = self.grip_target(next_feat).gather(-1, g_next.view(1, -1, 1).expand(2, -1, 1))
                gq_next = gq_next.squeeze(-1).min(0).values
                g_reward = b["reward"] - cfg.gripper_penalty * (b["grip"] != GRIP_STAY).float()
                g_target = g_reward + cfg.discount * not_done * gq_next
        q = self.critic(torch.cat([feat, self.arm_action(b["action"])], -1)).squeeze(-1)
        critic_loss = ((q - target.unsqueeze(0)) ** 2).mean()
        loss = critic_loss
        if cfg.gripper:
            gq = self.grip_critic(feat).gather(-1, b["grip"].view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
            grip_loss = ((gq - g_target.unsqueeze(0)) ** 2).mean()
            loss = loss + grip_loss
            info["grip_loss"] = grip_loss.item()
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(
            [p for g in self.critic_opt.param_groups for p in g["params"]], cfg.grad_clip
        )
        self.critic_opt.step()
        with torch.no_grad():
            pairs = [(self.critic, self.critic_target)] + ([(self.grip_critic, self.grip_target)] if cfg.gripper else [])
            for net, tgt in pairs:
                for p, pt in zip(net.parameters(), tgt.parameters(), strict=True):
                    pt.lerp_(p, cfg.tau)
        info.update(critic_loss=critic_loss.item(), q_mean=q.mean().item(), q_target=target.mean().item())
        return feat

    def _actor_step(self, feat: torch.Tensor, info: dict[str, float]) -> None:
        a, logp = self.actor(feat)
        q = self.critic(torch.cat([feat, a], -1)).squeeze(-1).mean(0)
        actor_loss = (self.alpha.detach() * logp - q).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.grad_clip)
        self.actor_opt.step()
        temp_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.temp_opt.zero_grad(set_to_none=True)
        temp_loss.backward()
        self.temp_opt.step()
        info.update(
            actor_loss=actor_loss.item(), temp_loss=temp_loss.item(),
            alpha=self.alpha.item(), entropy=-logp.mean().item(),
        )

    def bc_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One behaviour-cloning step (the BC baseline): arm mean -> demo action, gripper -> demo label."""
        b = self._batch_to_torch(batch)
        feat = self.encoder(b["obs"], augment=True)
        arm = self.arm_action(b["action"]).clamp(-0.999, 0.999)
        loss = F.mse_loss(self.actor.mean_action(feat), arm)
        if self.cfg.gripper:
            logits = self.grip_critic(feat).mean(0)
            loss = loss + F.cross_entropy(logits, b["grip"])
        if not hasattr(self, "_bc_opt"):
            self._bc_opt = torch.optim.Adam(
                [*self.encoder.parameters(), *self.actor.parameters(), *self.grip_critic.parameters()],
                lr=self.cfg.actor_lr,
            )
        self._bc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._bc_opt.step()
        return {"bc_loss": loss.item()}

    def fit_state_normalizer(self, batch: Mapping[str, np.ndarray]) -> None:
        """Normalise state inputs with the mean/std of ``batch`` (e.g. the demos); frozen afterwards."""
        if not self.state_keys:
            return
        obs = {k: torch.as_tensor(np.asarray(batch[f"obs/{k}"], np.float32)) for k in self.state_keys}
        x = self.encoder.state_vector(obs).numpy()
        self.encoder.set_state_stats(x.mean(0), x.std(0))

    # ---------------------------------------------------------- training state
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "actor": self.actor_opt, "temp": self.temp_opt}
