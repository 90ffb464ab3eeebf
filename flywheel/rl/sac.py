"""The HIL-SERL agent: SAC with RLPD-style critics and a discrete gripper critic.

The agent, built from its parts:

* **Encoder** (:mod:`flywheel.rl.encoders`) turns a spec observation dict into a
  feature vector: the state keys (proprioception, or every ``state/*`` key for
  state-only sim runs), plus per camera a conv net (``encoder="conv"``) or the
  generalist's frozen backbone and a projection (``encoder="latent"``), or a
  keypoint head on frozen pretrained features cached per env step
  (``encoder="pretrained"``, :mod:`flywheel.rl.pretrained`).
* **Critic** (:mod:`flywheel.rl.networks`): an ensemble of LayerNorm MLPs
  (RLPD/REDQ): every member regresses to one target, the minimum over a random
  subset of the target ensemble.
* **Actor**: a tanh-squashed Gaussian over the continuous arm dims (by default
  all six: translation and rotation deltas), temperature tuned to a target
  entropy.
* **Gripper critic**: a DQN head over three discrete gripper actions
  (open, stay, close) as HIL-SERL does; :mod:`flywheel.rl.actions` turns the arm
  action and the gripper choice into the 7-d spec action.

The update-to-data ratio is the number of critic updates per :meth:`SACAgent.update`
call (one batch each); the actor and temperature update every
``actor_update_period`` calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flywheel.rl.actions import ARM_DIMS, GRIP_STAY, compose_action
from flywheel.rl.encoders import (
    Encoder,
    LatentEncoderFn,
    obs_shapes_of,
    observation_layout,
    parse_state_deltas,
)

__all__ = ["SACAgent", "SACConfig", "obs_shapes_of"]  # obs_shapes_of: what SACAgent's constructor takes
from flywheel.rl.networks import EnsembleMLP, GaussianActor


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
    encoder: str = "state"  # state | conv | latent | pretrained (frozen EfficientNet-Lite0 features, cached)
    state_keys: list[str] | None = None  # None -> every state/* key in the observation
    # extra state features, differences of two slices of state keys: "key[i:j]-key[k:l]", e.g. the hole
    # relative to the peg ("state/privileged[3:6]-state/privileged[0:3]"), as a wrist camera would see it
    state_deltas: list[str] = field(default_factory=list)
    image_keys: list[str] | None = None  # None -> every images/* key (conv/latent only)
    feature_dim: int = 64  # per-camera feature size after the conv net / latent projection
    conv_channels: int = 32  # conv: channels of each layer; pretrained: the head's 1x1 conv
    pretrained_block: int = 10  # pretrained: the EfficientNet-Lite0 block the trunk is cut after (112 ch)
    pretrained_keypoints: int = 16  # pretrained: spatial-softmax keypoints per camera
    pretrained_spatial: int = 0  # pretrained: learned spatial embeddings per channel (HIL-SERL's), 0 off
    shift_pad: int = 4  # conv: random-shift augmentation (pixels), 0 disables
    feature_shift: float = 0.0  # pretrained: random sub-cell shift of the cached maps (cells, 0 disables)
    grad_clip: float = 10.0


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
        if not (np.isfinite(cfg.feature_shift) and cfg.feature_shift >= 0):
            raise ValueError(f"feature_shift={cfg.feature_shift}: give the largest shift in cells, >= 0 (0: off)")
        if cfg.pretrained_spatial < 0:
            raise ValueError(f"pretrained_spatial={cfg.pretrained_spatial}: give the kernels per channel, >= 0 (0: off)")
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
        self.actor = GaussianActor(d, cfg.hidden_dims, self.act_dim)
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
