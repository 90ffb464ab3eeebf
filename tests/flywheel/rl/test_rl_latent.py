"""iRe-VLA latent RL: the generalist's frozen backbone as the agent's image encoder (tiny random backbone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.rl.build import latent_encoder_from_policy
from flywheel.rl.sac import SACAgent, SACConfig
from rig.spec import default_spec


@pytest.mark.slow
def test_frozen_generalist_backbone_encodes_images_for_sac(tmp_path):
    from policy.config import PolicyConfig
    from policy.inference import Policy
    from policy.model import VLA
    from policy.tiny import main as make_tiny

    make_tiny(["--family", "smolvlm", "--out", str(tmp_path / "bb")])
    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(tmp_path / "bb"), head="token_learner", finetune="frozen", hidden_dim=32,
                       num_tokens=4, expert_heads=2, flow_steps=3)
    pol = Policy(VLA.from_backbone(cfg, default_spec(32), None), device="cpu")
    enc = latent_encoder_from_policy(pol, "insert the peg")
    imgs = torch.as_tensor(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    z = enc(imgs)
    assert z.shape[0] == 3 and z.ndim == 2 and torch.isfinite(z).all()
    assert not torch.allclose(z[0], z[1])  # different images, different features
    before = {k: v.clone() for k, v in pol.model.state_dict().items()}
    shapes = {"state/ee_pos": ((3,), "float32"), "images/front": ((32, 32, 3), "uint8")}
    agent = SACAgent(SACConfig(encoder="latent", hidden_dims=[16], batch_size=4, state_keys=["state/ee_pos"]),
                     shapes, latent_encoder=enc)
    a, _ = agent.act({"state/ee_pos": np.zeros(3, np.float32), "images/front": imgs[0].numpy()}, 1.0)
    assert a.shape == (7,)
    batch = {"obs/state/ee_pos": np.zeros((4, 3), np.float32), "next_obs/state/ee_pos": np.zeros((4, 3), np.float32),
             "obs/images/front": np.repeat(imgs[:1].numpy(), 4, 0), "next_obs/images/front": np.repeat(imgs[1:2].numpy(), 4, 0),
             "action": np.zeros((4, 7), np.float32), "grip": np.ones(4, np.int64), "reward": np.ones(4, np.float32),
             "terminated": np.zeros(4, bool)}
    agent.update([batch])
    for k, v in pol.model.state_dict().items():  # the generalist stays frozen
        assert torch.equal(v, before[k]), k
    assert not any(k.startswith("encoder.cams.images__front._fn") for k in agent.state_dict())
