"""Policies refuse non-finite weights at load (naming the tensor) and non-finite actions at inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import damage_head_weight, observation, tiny_spec

import policy
from policy.checkpoint import WEIGHTS
from policy.checks import NonFiniteError, check_finite_output, check_finite_weights
from policy.config import PolicyConfig
from policy.model import VLA


def _model(tiny_backbones) -> VLA:
    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(tiny_backbones["smolvlm"]), hidden_dim=32, num_tokens=4)
    return VLA.from_backbone(cfg, tiny_spec())


def test_weight_check_names_the_tensor_and_ignores_integer_tensors():
    ok = {"a.weight": torch.ones(3), "steps": torch.tensor([7]), "mask": torch.zeros(2, dtype=torch.bool)}
    check_finite_weights(ok, "ok.safetensors")
    check_finite_weights(list(ok.items()), "ok.safetensors")
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(4, 5)
        t[2, 3] = bad
        with pytest.raises(NonFiniteError, match=r"x\.safetensors: tensor 'head\.proj\.weight' \(4, 5\) has 1 non"):
            check_finite_weights({**ok, "head.proj.weight": t}, "x.safetensors")
    half = torch.zeros(3, dtype=torch.bfloat16)
    half[0] = float("nan")
    with pytest.raises(NonFiniteError, match="'h'"):
        check_finite_weights({"h": half}, "x")


def test_output_check():
    check_finite_output(torch.zeros(8, 7))
    x = torch.zeros(8, 7)
    x[1, 0], x[5, 3] = float("nan"), float("inf")
    with pytest.raises(NonFiniteError, match=r"2 non-finite \(NaN or Inf\) values in actions \(8, 7\)"):
        check_finite_output(x)


def test_a_checkpoint_with_a_nan_weight_is_refused_naming_the_tensor(tiny_backbones, tmp_path):
    ck = _model(tiny_backbones).save_pretrained(tmp_path / "ck")
    policy.load(ck)  # the healthy checkpoint loads
    name = damage_head_weight(ck, float("nan"), index=1)
    with pytest.raises(NonFiniteError, match=f"tensor '{name}'"):
        policy.load(ck)
    with pytest.raises(NonFiniteError, match=WEIGHTS):
        VLA.from_checkpoint(ck)  # training resume and the flywheel load through here too


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_inference_that_yields_nan_or_inf_raises_instead_of_returning_actions(tiny_backbones, bad, monkeypatch):
    p = policy.Policy(_model(tiny_backbones))
    obs = observation(p.spec)
    assert np.all(np.isfinite(p.infer(obs)["actions"]))
    real = p.model.predict

    def broken(*args, **kwargs):
        out = real(*args, **kwargs).clone()
        out[0, -1, 2] = bad  # one value of the chunk: clamp would turn Inf into a valid-looking 1.0
        return out

    monkeypatch.setattr(p.model, "predict", broken)
    with pytest.raises(NonFiniteError, match="non-finite"):
        p.infer(obs)


def test_node_chunk_check_refuses_nan_and_wrong_shapes():
    from policy.node import NonFiniteActions, check_chunk

    np.testing.assert_array_equal(check_chunk(np.zeros((8, 7)), 7), np.zeros((8, 7), np.float32))
    for bad in (np.full((8, 7), np.nan), np.zeros((8, 6)), np.zeros(7), np.zeros((0, 7)), [[1e39] * 7]):
        with pytest.raises(NonFiniteActions):
            check_chunk(bad, 7)
