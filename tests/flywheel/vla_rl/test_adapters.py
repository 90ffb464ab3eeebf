"""The compact VLA as the encoder of the stochastic heads: its own head is the mean / the flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

compact = pytest.importorskip("policy.compact")

INSTR = "insert the peg into the hole"


def make_checkpoint(path, head: str = "mlp", image: int = 32, image_codec: str = ""):
    """A small compact VLA checkpoint (random encoder weights) that knows the PegInsert instruction."""
    from policy.config import CompactConfig
    from policy.encoders import SentenceEncoder
    from rig.spec import default_spec

    text = SentenceEncoder()
    text.preload({INSTR: np.random.default_rng(0).normal(size=text.dim).astype(np.float32)})
    torch.manual_seed(0)
    model = compact.CompactVLA(CompactConfig(image_size=image, head=head, hidden_dim=64, conv_dim=16,
                                             num_keypoints=8, flow_steps=4, expert_layers=1,
                                             image_codec=image_codec),
                               default_spec(image), text=text, pretrained=False)
    model.save_pretrained(path)
    return model


def _obs(spec, n, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: rng.normal(size=(n, *s.shape)).astype(np.float32) for k, s in spec.state_specs().items()}
    for c in spec.cameras:
        obs[f"images/{c.name}"] = rng.integers(0, 256, (n, c.height, c.width, 3), dtype=np.uint8)
    obs["instruction"] = [INSTR] * n
    return obs


def test_gaussian_mean_is_the_generalists_head(tmp_path):
    from flywheel.vla_rl.checkpoint import build_policy, load_policy, save_policy

    model = make_checkpoint(tmp_path / "g0", "mlp")
    pol = build_policy({"kind": "gaussian", "hidden": [16], "value_hidden": [16]},
                       {"type": "checkpoint", "path": str(tmp_path / "g0")})
    assert (pol.horizon, pol.action_dim) == (model.spec.action.chunk_horizon, 7)
    obs = _obs(model.spec, 3)
    feats = pol.features(obs)
    assert feats.shape == (3, pol.feature_dim)
    with torch.no_grad():
        mean, _, _ = pol.act(feats, deterministic=True)
        ref = model.eval().predict(model.prepare(obs))
    assert torch.allclose(mean, ref, atol=1e-5)
    # only the head trains: the frozen image encoder gets no gradient
    a, lp, ex = pol.act(feats)
    pol.log_prob(feats, a.detach(), ex).sum().backward()
    assert all(p.grad is None for p in pol.encoder.model.encoder.parameters())
    assert any(p.grad is not None for p in pol.encoder.model.head.parameters())
    # the RL policy directory holds the head, not the encoder, and reloads to the same policy
    with torch.no_grad():
        for p in pol.encoder.model.head.parameters():
            p.add_(0.01)
    save_policy(pol, tmp_path / "rl")
    back = load_policy(tmp_path / "rl")
    with torch.no_grad():
        assert torch.allclose(back.act(feats, deterministic=True)[0], pol.act(feats, deterministic=True)[0],
                              atol=1e-5)
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(tmp_path / "rl" / "policy.safetensors")) if k.startswith("encoder.model.encoder")]
    # exported as a generalist checkpoint: its prediction is the trained policy's deterministic action
    from flywheel.vla_rl.cli import export_generalist
    from policy.compact import CompactVLA

    g = CompactVLA.from_checkpoint(export_generalist(tmp_path / "rl", tmp_path / "generalist")).eval()
    with torch.no_grad():
        assert torch.allclose(g.predict(g.prepare(obs)), pol.act(feats, deterministic=True)[0], atol=1e-5)
        assert not torch.allclose(g.predict(g.prepare(obs)), ref, atol=1e-3)  # not the starting head


def test_rollout_frames_take_the_generalists_training_codec(tmp_path):
    """The engine's live frames go through the store codec the generalist trained on, as in the policy node:
    the RL policy's deterministic action is the one ``policy.load(...).infer`` gives (measured: without the
    round trip the iRe-VLA candidate's held-out success read 0.38 instead of 0.56)."""
    import policy
    from flywheel.vla_rl.checkpoint import build_policy

    model = make_checkpoint(tmp_path / "g0", "mlp", image_codec="jpeg:30")
    pol = build_policy({"kind": "gaussian", "hidden": [16], "value_hidden": [16]},
                       {"type": "checkpoint", "path": str(tmp_path / "g0")})
    obs = _obs(model.spec, 2)
    with torch.no_grad():
        feats = pol.features(obs)
        mean = pol.to_env(pol.act(feats, deterministic=True)[0])
        raw = model.eval().features(obs)
    node = policy.load(tmp_path / "g0")
    served = node.infer({k: v[0] for k, v in obs.items()})["actions"]
    np.testing.assert_allclose(mean[0], served, atol=1e-4)
    cam = model.spec.camera_names[0]  # the round trip changes what the head sees
    n_map = raw[f"features/{cam}"][0].numel()
    assert not torch.allclose(feats[:, :n_map], raw[f"features/{cam}"].flatten(1), rtol=1e-4, atol=0)


def test_flow_policy_runs_the_generalists_flow_head(tmp_path):
    from flywheel.vla_rl.checkpoint import build_policy

    model = make_checkpoint(tmp_path / "g0", "flow")
    pol = build_policy({"kind": "flow", "steps": 4, "noise_level": 0.5},
                       {"type": "checkpoint", "path": str(tmp_path / "g0")})
    obs = _obs(model.spec, 2)
    feats = pol.features(obs)
    with torch.no_grad():
        torch.manual_seed(5)
        det, _, _ = pol.act(feats, deterministic=True)
        torch.manual_seed(5)
        prep = model.eval().prepare(obs)
        ref = model.predict(prep)
        a, lp, ex = pol.act(feats)
    assert torch.allclose(det, ref, atol=1e-4)
    new = pol.log_prob(feats, a, ex)
    assert torch.allclose(new.detach(), lp, atol=1e-2)
    new.sum().backward()
    assert any(p.grad is not None for p in pol.encoder.model.head.action.parameters())


def test_head_train_mlp_freezes_the_keypoints(tmp_path):
    from flywheel.vla_rl.checkpoint import build_policy

    make_checkpoint(tmp_path / "g0", "mlp")
    pol = build_policy({"kind": "gaussian", "hidden": [16], "value_hidden": [16]},
                       {"type": "checkpoint", "path": str(tmp_path / "g0")})
    head = pol.encoder.model.head
    pol.encoder.set_trainable("mlp")
    assert all(p.requires_grad for p in head.mlp.parameters())
    assert not any(p.requires_grad for m in (head.cameras, head.keypoints, head.text_proj) for p in m.parameters())
    feats = pol.features(_obs(pol.encoder.spec, 2))
    a, lp, ex = pol.act(feats)
    pol.log_prob(feats, a.detach(), ex).sum().backward()
    assert all(p.grad is None for p in head.cameras.parameters()) and head.mlp[0].weight.grad is not None
    with pytest.raises(ValueError, match="all \\| mlp"):
        pol.encoder.set_trainable("keypoints")
    make_checkpoint(tmp_path / "g0f", "flow")
    flow = build_policy({"kind": "flow", "steps": 4, "noise_level": 0.5}, {"type": "checkpoint", "path": str(tmp_path / "g0f")})
    with pytest.raises(ValueError, match="head=mlp"):
        flow.encoder.set_trainable("mlp")


@pytest.mark.parametrize("algo", ["grpo", "gspo", "gfpo", "dpo"])
def test_a_reference_policy_leaves_the_generalists_head_trainable(tmp_path, algo):
    """The KL reference (GRPO, GSPO, GFPO: kl_coef > 0; DPO always) is a frozen copy. It shared the whole encoder,
    the generalist's own head (the Gaussian's mean) included, so freezing the reference froze the policy's mean:
    those methods trained only the scale. The reference now shares only what never trains."""
    from flywheel.vla_rl import algorithm
    from flywheel.vla_rl.checkpoint import build_policy

    make_checkpoint(tmp_path / "g0", "mlp")
    pol = build_policy({"kind": "gaussian", "hidden": [16], "value_hidden": [16]},
                       {"type": "checkpoint", "path": str(tmp_path / "g0")})
    algo_cls, cfg_cls = algorithm(algo)
    a = algo_cls(pol, cfg_cls(), seed=0)
    head, ref_head = pol.encoder.model.head, a.ref.encoder.model.head
    assert ref_head is not head and all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in ref_head.parameters())
    trained = {id(p) for g in a.opt.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in head.parameters())  # the optimiser steps the mean
    assert a.ref.encoder.model.encoder is pol.encoder.model.encoder  # the image encoder is shared, not copied
    assert a.ref.encoder.model.text is pol.encoder.model.text
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1)
    feats = pol.features(_obs(pol.encoder.spec, 2))
    with torch.no_grad():
        assert not torch.allclose(pol.act(feats, deterministic=True)[0], a.ref.act(feats, deterministic=True)[0])
