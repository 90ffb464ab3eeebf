"""The VLA on tiny random backbones of two families: gradients, checkpoints, freezing, spec checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from policy_helpers import SyntheticChunks, batch_of, observation, tiny_spec

import policy
from policy.config import PolicyConfig, TrainConfig
from policy.model import VLA
from rig.spec import SpecError, SpecMismatch

CASES = [("smolvlm", "token_learner", "full"), ("paligemma", "flow", "lora")]


def make(backbones, family, head="token_learner", finetune="full", stats=None) -> VLA:
    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(backbones[family]), head=head, finetune=finetune, hidden_dim=32,
                       num_tokens=4, expert_heads=2, flow_steps=3)
    return VLA.from_backbone(cfg, tiny_spec(), stats)


def batch(spec, n=2):
    return batch_of([SyntheticChunks(spec)[i] for i in range(n)])


@pytest.mark.parametrize("family,head,finetune", CASES)
def test_forward_backward(tiny_backbones, family, head, finetune):
    m = make(tiny_backbones, family, head, finetune)
    assert type(m.backbone).__name__.lower().startswith({"smolvlm": "idefics3", "paligemma": "paligemma"}[family])
    loss = m(m.prepare(batch(m.spec)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    head_grads = [p.grad for p in m.head.parameters()]
    assert all(g is not None for g in head_grads) and any(g.abs().sum() > 0 for g in head_grads)
    bb = dict(m.backbone.named_parameters())
    with_grad = {n for n, p in bb.items() if p.grad is not None and p.grad.abs().sum() > 0}
    if finetune == "lora":
        assert with_grad and all("lora_" in n for n in with_grad)
    else:
        assert any("vision" in n for n in with_grad), "images must reach the loss"
        assert any("layers" in n and "vision" not in n for n in with_grad)


@pytest.mark.parametrize("family,head,finetune", CASES)
def test_save_then_load_gives_identical_actions(tiny_backbones, tmp_path, family, head, finetune):
    stats = {"actions": {"mean": [0.1] * 7, "std": [0.5] * 7}, "proprio": {"mean": [0.0] * 8, "std": [2.0] * 8}}
    m = make(tiny_backbones, family, head, finetune, stats)
    ck = m.save_pretrained(tmp_path / "ck")
    for f in ("model.safetensors", "policy_config.json", "stats.json", "spec.json", "backbone/config.json",
              "backbone/tokenizer.json", "backbone/processor_config.json"):
        assert (ck / f).is_file(), f
    saved = json.loads((ck / "stats.json").read_text())  # the one (per-key) format, from the old form given
    assert saved["action"]["std"] == [0.5] * 7 and saved["state/ee_quat"]["std"] == [2.0] * 4
    assert saved["action"]["mean"] == pytest.approx([0.1] * 7)
    obs = observation(m.spec)
    a1 = policy.Policy(m).infer(obs)["actions"]
    loaded = policy.load(ck, spec=tiny_spec())
    a2 = loaded.infer(obs)["actions"]
    (ck / "stats.json").write_text(json.dumps(stats))  # a checkpoint written before the per-key format
    np.testing.assert_array_equal(policy.load(ck, spec=tiny_spec()).infer(obs)["actions"], a1)
    assert a1.shape == (m.spec.action.chunk_horizon, 7) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    assert np.all(np.abs(a2) <= 1.0)
    other = loaded.infer(observation(m.spec, seed=1, instruction="open the drawer"))["actions"]
    assert not np.array_equal(a2, other), "the observation must change the actions"


def test_actions_are_unnormalised_and_clipped(tiny_backbones):
    stats = {"actions": {"mean": [0.0] * 6 + [5.0], "std": [1e-3] * 7}}
    out = policy.Policy(make(tiny_backbones, "smolvlm", stats=stats)).infer(observation(tiny_spec()))["actions"]
    np.testing.assert_allclose(out[:, 6], 1.0)  # mean 5 -> clipped
    assert np.all(np.abs(out[:, :6]) < 0.05)  # std 1e-3 shrinks the rest


def test_frozen_backbone_is_bit_identical_after_a_training_step(tiny_backbones, tmp_path):
    from policy.train import train

    m = make(tiny_backbones, "smolvlm", finetune="frozen")
    before_bb = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    before_head = {k: v.clone() for k, v in m.head.state_dict().items()}
    assert not any(p.requires_grad for p in m.backbone.parameters())
    data = [batch(m.spec)]
    train(m, data, TrainConfig(out_dir=str(tmp_path), steps=1, lr=1e-2, warmup_steps=0, save_every=100))
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, before_bb[k]), k
    assert any(not torch.equal(v, before_head[k]) for k, v in m.head.state_dict().items())
    # cached latents give the same loss as the full forward (RL on a frozen backbone)
    m.eval()
    b = batch(m.spec)
    feats = m.features(b)
    prep = m.prepare(b)
    torch.manual_seed(1)
    full = m(prep)
    torch.manual_seed(1)
    cached = m.head_loss(feats["hidden"], feats["mask"], feats["proprio"], prep["actions"], prep["action_is_pad"])
    assert torch.allclose(full, cached)


def test_spec_mismatch_is_refused_with_the_difference(tiny_backbones, tmp_path):
    ck = make(tiny_backbones, "smolvlm").save_pretrained(tmp_path / "ck")
    with pytest.raises(SpecMismatch, match=r"action\.chunk_horizon: 4 != 8"):
        policy.load(ck, spec=tiny_spec(chunk_horizon=4))
    with pytest.raises(FileNotFoundError, match="not a policy checkpoint"):
        policy.load(tmp_path)


def test_bad_observation_is_refused(tiny_backbones):
    p = policy.Policy(make(tiny_backbones, "smolvlm"))
    obs = observation(p.spec)
    del obs["images/wrist"]
    with pytest.raises(SpecError, match="images/wrist"):
        p.infer(obs)
    obs = observation(p.spec)
    obs.pop("instruction")
    with pytest.raises(SpecError, match="instruction"):
        p.infer(obs)


def test_hydra_group_composes():
    from policy.config import register
    from robot.config import compose

    register()
    cfg = compose("policy/flow", [])
    assert cfg.policy.head == "flow"
    with pytest.raises(ValueError, match="policy.head"):
        PolicyConfig(backbone="x", head="bogus").validate()


def test_loader_batches_and_per_key_stats_are_accepted(tiny_backbones):
    per_key = {"state/ee_pos": {"mean": [1.0] * 3, "std": [2.0] * 3}, "state/ee_quat": {"mean": [0.0] * 4,
               "std": [1.0] * 4}, "state/gripper_width": {"mean": [0.04], "std": [0.02]},
               "action": {"mean": [0.0] * 7, "std": [0.5] * 7}, "state/joint_pos": {"mean": [0] * 7, "std": [1] * 7}}
    m = make(tiny_backbones, "smolvlm", stats=per_key)
    assert m.normalizer.mean["proprio"][0] == 1.0 and m.normalizer.std["actions"][0] == 0.5
    b = batch(m.spec)
    # the store loader yields torch tensors (channels-last uint8 images): the same inputs as numpy arrays
    loader = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in b.items()}
    a, c = m.prepare(b), m.prepare(loader)
    for k in a["inputs"]:
        assert torch.equal(a["inputs"][k], c["inputs"][k]), k
    assert torch.equal(a["proprio"], c["proprio"]) and torch.equal(a["actions"], c["actions"])
    with pytest.raises(ValueError, match="state/gripper_width"):
        make(tiny_backbones, "smolvlm", stats={k: v for k, v in per_key.items() if k != "state/gripper_width"})


def test_flow_head_inpaints_a_committed_prefix(tiny_backbones):
    p = policy.Policy(make(tiny_backbones, "paligemma", head="flow"))
    obs = observation(p.spec)
    free = p.infer(obs)["actions"]
    prefix = np.full((3, 7), 0.5, np.float32)
    p.generator.manual_seed(0)
    inpainted = p.infer(obs, prefix=prefix)["actions"]
    np.testing.assert_allclose(inpainted[:3], prefix, atol=1e-6)
    assert not np.allclose(inpainted[3:], free[3:]), "the rest of the chunk must depend on the prefix"
