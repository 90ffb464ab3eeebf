"""Distillation into a compact generalist (issue #16): fine-tuning on cached encoder features, RLDG, configs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flywheel.data import EpisodeStore
from flywheel.distill import compact, rldg
from flywheel.distill.generalist import (
    GeneralistConfig,
    SFTConfig,
    backbone_family,
    ensure_backbone,
    env_kwargs,
    finetune,
    new_generalist,
    sft_batches,
)
from policy.compact import CompactVLA
from policy.config import CompactConfig
from policy.encoders import SentenceEncoder
from policy.feature_cache import FeatureCache, default_root

IMAGE = 32
HUMAN, RL = "PandaRig/LiftCube-Red-v0", "PandaRig/PegInsert-v0"
INSTR = {HUMAN: "pick up the red cube", RL: "insert the peg into the hole"}
ACT = {HUMAN: 0.5, RL: -0.5}  # old (human) episodes act +0.5, new (RL) ones -0.5: the share is readable


def _spec():
    from flywheel.distill.collect import make_env

    env = make_env(HUMAN, cameras=("front", "wrist"), image_size=IMAGE)
    spec = env.unwrapped.rig_spec
    env.close()
    return spec


def _episode(spec, t: int, task: str, rng) -> dict:
    ep = {k: rng.normal(size=(t, *s.shape)).astype(np.float32) for k, s in spec.state_specs().items()}
    for c in spec.cameras:
        ep[f"images/{c.name}"] = rng.integers(0, 256, (t, c.height, c.width, 3), dtype=np.uint8)
    act = np.full((t, 7), ACT[task], np.float32)
    act[:, :3] += 0.3 * ep["state/ee_pos"]  # a proprio-dependent part: something to learn
    ep["action"] = np.clip(act, -1, 1)
    return ep


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    spec = _spec()
    s = EpisodeStore(tmp_path_factory.mktemp("compact") / "store", "w", spec=spec, image_codec="png")
    rng = np.random.default_rng(0)
    for task, source, n in ((HUMAN, "human", 3), (RL, "rl", 2)):
        for _ in range(n):
            s.add_episode(_episode(spec, 12, task, rng), task=task, instruction=INSTR[task], success=True,
                          source=source)
    yield s
    s.close()


def _model(spec, stats=None) -> CompactVLA:
    """Random encoder weights (tests of the wheels live in tests/policy), instructions pre-embedded."""
    text = SentenceEncoder()
    rng = np.random.default_rng(1)
    text.preload({t: rng.normal(size=text.dim).astype(np.float32) for t in INSTR.values()})
    torch.manual_seed(0)
    cfg = CompactConfig(image_size=IMAGE, conv_dim=16, num_keypoints=8, text_dim=16, hidden_dim=64)
    return CompactVLA(cfg, spec, stats, text=text, pretrained=False)


@pytest.fixture(scope="module")
def parent(store, tmp_path_factory):
    from flywheel.distill.generalist import store_stats

    path = tmp_path_factory.mktemp("parent") / "g0"
    _model(store.spec, store_stats(store, _eps(store, "human"))).save_pretrained(path)
    return path


def _eps(store, source):
    from flywheel.distill.collect import select

    return select(store, source=source)


def _sft(**kw) -> SFTConfig:
    base = {"steps": 30, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "finetune": "frozen", "save_every": 100,
            "device": "cpu"}
    return SFTConfig(**{**base, **kw})


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------- cached chunks: weights
class MeanEncoder:
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2))[:, :, None, None]


def test_cached_feature_batches_weights_set_each_episodes_share(store):
    new, old = _eps(store, "rl"), _eps(store, "human")
    eps, w = rldg.mix_weights(new, old, 0.25)
    cache = FeatureCache(store, MeanEncoder(), "mean", root=Path(store.path).parent / "fx", frame_stride=2)
    data = sft_batches(store, eps, store.spec, 4000, seed=1, weights=w, features=cache)
    b = next(iter(data))
    share_old = float(np.mean(b["actions"][:, 0, 3].numpy() > 0))  # the constant dims: +0.5 old, -0.5 new
    assert abs(share_old - 0.25) < 0.04
    assert len(b["actions"]) == 4000  # with replacement: a batch may exceed the samples
    assert set(b) >= {"features/front", "features/wrist", "state/ee_pos", "instruction", "action_is_pad"}
    unweighted = next(iter(sft_batches(store, eps, store.spec, 4000, seed=1, features=cache)))  # every sample once
    assert len(unweighted["actions"]) == 5 * 6
    assert abs(float(np.mean(unweighted["actions"][:, 0, 3].numpy() > 0)) - 3 / 5) < 0.01
    with pytest.raises(ValueError, match="weights: 2 for 5 episodes"):
        sft_batches(store, eps, store.spec, 8, weights=[1.0, 1.0], features=cache)
    with pytest.raises(ValueError, match="not all 0"):
        sft_batches(store, eps, store.spec, 8, weights=[0.0] * 5, features=cache)
    # the image batches of the same samples: the same actions and padding as the feature batches
    feats = next(iter(sft_batches(store, eps, store.spec, 4000, seed=3, features=cache)))
    images = sft_batches(store, eps, store.spec, 8).dataset
    at = {int(g): i for i, g in enumerate(images.__getitems__(np.arange(len(images)))["index"])}
    ref = images.__getitems__([at[int(g)] for g in feats["index"]])
    assert torch.equal(feats["actions"], ref["actions"]) and torch.equal(feats["action_is_pad"], ref["action_is_pad"])
    assert torch.equal(feats["state/ee_pos"], ref["state/ee_pos"]) and feats["instruction"] == ref["instruction"]


def test_default_feature_root_is_features_next_to_the_store(store):
    assert default_root(store) == Path(store.path).parent / "features"


# ------------------------------------------------------------------- fine-tuning
def test_finetune_trains_the_head_on_cached_features(store, parent, tmp_path):
    import policy
    from policy.normalize import Normalizer

    out = tmp_path / "sft"
    ckpt = finetune(parent, store, _eps(store, "human") + _eps(store, "rl"), out, _sft(steps=40))
    losses = [r["loss"] for r in _log(out)]
    assert losses[-1] < 0.7 * losses[0]
    # the parent's normalisation, not the new data's
    assert Normalizer.read(ckpt / "stats.json") == Normalizer.read(parent / "stats.json")
    # the frozen encoder is untouched, the head moved
    a, b = CompactVLA.from_checkpoint(parent), CompactVLA.from_checkpoint(ckpt)
    for (k, v), w in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert not torch.equal(a.head.mlp[0].weight, b.head.mlp[0].weight)
    # every frame of every episode encoded once into the default root, under the model's cache id
    cid = compact.cache_id(b)
    files = sorted((default_root(store) / cid).rglob("*.npy"))
    assert len(files) == 5 * 2 and cid.startswith("efficientnet-lite0-w")  # random weights: a digest id
    pol = policy.load(ckpt, device="cpu")
    obs = {k: store.read(k, 0, 1)[0] for k in store.spec.observation_specs()}
    out_act = pol.infer({**obs, "instruction": INSTR[HUMAN]})["actions"]
    assert out_act.shape == (8, 7) and np.isfinite(out_act).all()


def test_a_killed_finetune_resumes_where_it_stopped(store, parent, tmp_path, monkeypatch):
    import policy.train as ptrain

    real = ptrain.save_checkpoint

    def save_then_die(model, opt, step, cfg, **kw):
        path = real(model, opt, step, cfg, **kw)
        if step == 10:
            raise RuntimeError("killed")
        return path

    out, sft = tmp_path / "sft", _sft(steps=20, save_every=10, frame_stride=2)
    monkeypatch.setattr(ptrain, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        finetune(parent, store, _eps(store, "human"), out, sft)
    monkeypatch.setattr(ptrain, "save_checkpoint", real)
    cache = compact.feature_cache(CompactVLA.from_checkpoint(parent), store, sft)
    assert all(cache.cached(i) for i in _eps(store, "human"))
    stamps = {p: p.stat().st_mtime_ns for p in cache.dir.glob("*.npy")}
    ckpt = finetune(parent, store, _eps(store, "human"), out, sft)
    assert ckpt.name == "step_000020"
    assert [r["step"] for r in _log(out)] == [10, 20]  # continued from step 10, not restarted
    assert {p: p.stat().st_mtime_ns for p in cache.dir.glob("*.npy")} == stamps  # features re-used, none added
    assert finetune(parent, store, _eps(store, "human"), out, sft) == ckpt  # done: returns at once


def test_weights_reach_the_compact_batches(store, parent):
    model = compact.prepare_model(parent, "frozen")
    eps, w = rldg.mix_weights(_eps(store, "rl"), _eps(store, "human"), 0.4)
    b = next(iter(compact.batches(model, store, eps, _sft(batch_size=3000), weights=w)))
    assert "features/front" in b and "images/front" not in b
    assert abs(float(np.mean(b["actions"][:, 0, 3].numpy() > 0)) - 0.4) < 0.04


def test_trained_encoder_falls_back_to_images_and_lora_is_refused(store, parent, tmp_path):
    ckpt = finetune(parent, store, _eps(store, "rl"), tmp_path / "p", _sft(steps=2, batch_size=4, finetune="partial"))
    a, b = CompactVLA.from_checkpoint(parent), CompactVLA.from_checkpoint(ckpt)
    assert b.cfg.finetune == "partial"
    assert not torch.equal(a.encoder.blocks[-1].state_dict()["_project_conv.weight"],
                           b.encoder.blocks[-1].state_dict()["_project_conv.weight"])
    assert torch.equal(a.encoder.blocks[0].state_dict()["_depthwise_conv.weight"],
                       b.encoder.blocks[0].state_dict()["_depthwise_conv.weight"])
    with pytest.raises(ValueError, match="sft.finetune='lora'"):
        finetune(parent, store, _eps(store, "rl"), tmp_path / "l", _sft(finetune="lora"))


# ------------------------------------------------------------------------ RLDG
def test_rldg_distills_rl_episodes_into_a_compact_parent(store, parent, tmp_path):
    import policy

    cfg = rldg.RLDGConfig(episodes_per_task=2, replay=0.3)
    ckpt, data = rldg.distill(str(parent), store, [RL], tmp_path / "rldg", _sft(steps=5), cfg, source="rl",
                              replay_episodes=_eps(store, "human"))
    assert data["episodes"] == _eps(store, "rl") and data["replay_episodes"] == 3
    assert data["replay_fraction"] == pytest.approx(0.3)
    assert policy.load(ckpt, device="cpu").spec == store.spec


def test_ire_stage1_on_a_compact_parent_trains_the_head_on_cached_features(parent, tmp_path):
    from flywheel.distill.ire_vla import IReVLAConfig, rl_stage

    s = EpisodeStore(tmp_path / "store", "w", spec=_spec(), image_codec="png")
    cfg = IReVLAConfig(rl_iterations=1, episodes_per_iteration=2, head_updates=5, batch_size=16, intervene=False,
                       device="cpu")
    g = GeneralistConfig(cameras=["wrist"], image_size=16, execute=8)  # the checkpoint's spec wins
    with s:
        ckpt, summary = rl_stage(parent, s, RL, tmp_path / "rl", cfg, g, progress=False)
        assert len(summary["episodes"]) == 2 and summary["history"][0]["samples"] > 0
        a, b = CompactVLA.from_checkpoint(parent), CompactVLA.from_checkpoint(ckpt)
        assert b.cfg.finetune == "frozen"  # the parent's setting, not unfrozen
        assert not torch.equal(a.head.mlp[0].weight, b.head.mlp[0].weight)
        for (k, v), w in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
        assert (tmp_path / "rl" / "critic.safetensors").is_file()
        assert len(list((tmp_path / "features").rglob("*.npy"))) == 2 * 2  # the shared cache, not a private one
        assert rl_stage(parent, s, RL, tmp_path / "rl", cfg, g, progress=False)[1] == summary  # done: cached
        # stage 2's feature root (``sft.feature_root``), where a store copy elsewhere shares its original's cache
        rl_stage(parent, s, RL, tmp_path / "rl2", cfg, g, seed=1, progress=False, feature_root=str(tmp_path / "fx"))
        assert len(list((tmp_path / "fx").rglob("*.npy"))) == 2 * 2  # this stage's new episodes, under that root
        assert len(list((tmp_path / "features").rglob("*.npy"))) == 2 * 2  # and none more under the default


def test_ire_stage1_with_ppo_trains_the_head_on_policy_and_records_its_rollouts(parent, tmp_path):
    """``method.stage1=ppo``: flywheel-vla-rl's PPO on the parent's head; rollouts land in the store under the
    round's collection, the trained head comes back as a compact generalist with the parent's encoder."""
    from flywheel.distill.collect import select
    from flywheel.distill.ire_vla import IReVLAConfig, rl_stage
    from flywheel.vla_rl.checkpoint import load_policy

    cfg = IReVLAConfig(stage1="ppo", stage1_env_steps=32, device="cpu",
                       stage1_overrides=["num_envs=2", "algo.groups_per_iter=2", "env.max_steps=16", "algo.epochs=1",
                                         "algo.minibatch_size=8", "algo.lr=1e-3", "algo.target_kl=0",
                                         "train.eval_episodes=1", "train.final_eval_episodes=1"])
    g = GeneralistConfig(execute=4)
    with EpisodeStore(tmp_path / "store", "w", spec=_spec(), image_codec="png") as s:
        ckpt, summary = rl_stage(parent, s, RL, tmp_path / "round1_rl", cfg, g, progress=False)
        eps = select(s, task=RL, source="rl", success=None, collection=f"ire/round1_rl/{RL}/ppo")
        assert summary["episodes"] == eps and len(eps) == 2
        assert all(s.record(i).length == 16 and s.record(i).extra["algo"] == "ppo" for i in eps)
        assert summary["successes"] == [i for i in eps if s.record(i).success]
        a, b = CompactVLA.from_checkpoint(parent), CompactVLA.from_checkpoint(ckpt)
        trained = load_policy(tmp_path / "round1_rl" / "vla_rl" / "policy").encoder.model
        for (k, v), w in zip(b.head.state_dict().items(), trained.head.state_dict().values(), strict=True):
            assert torch.equal(v, w), k  # the exported head is the one PPO trained
        assert not torch.equal(a.head.mlp[0].weight, b.head.mlp[0].weight)
        for (k, v), w in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
        assert rl_stage(parent, s, RL, tmp_path / "round1_rl", cfg, g, progress=False)[1] == summary  # done: cached


def test_ire_stage1_with_dpo_learns_from_the_operators_corrections(parent, tmp_path):
    """``method.stage1=dpo``: the simulated operator corrects the head's rollouts (``method.intervene``), its
    corrections are DPO's state pairs, and the store's episodes mark the operator's steps for stage 2."""
    from flywheel.distill.collect import select
    from flywheel.distill.ire_vla import IReVLAConfig, rl_stage

    cfg = IReVLAConfig(stage1="dpo", stage1_env_steps=32, device="cpu", max_interventions=2,
                       stage1_overrides=["num_envs=2", "algo.groups_per_iter=1", "algo.group_size=2",
                                         "env.max_steps=16", "algo.epochs=1", "train.eval_episodes=1",
                                         "train.final_eval_episodes=1"])
    g = GeneralistConfig(execute=4)
    with EpisodeStore(tmp_path / "store", "w", spec=_spec(), image_codec="png") as s:
        _, summary = rl_stage(parent, s, RL, tmp_path / "round1_rl", cfg, g, progress=False)
        eps = select(s, task=RL, source="rl", success=None, collection=f"ire/round1_rl/{RL}/dpo")
        assert summary["algo"] == "dpo" and summary["episodes"] == eps and len(eps) >= 2
        marks = np.concatenate([s.episode(i)["intervention"] for i in eps])
        assert 0 < marks.sum() < len(marks)  # the operator took some steps, not all
        hist = json.loads((tmp_path / "round1_rl" / "vla_rl" / "results.json").read_text())
        assert hist["config"]["intervention"]["max_interventions"] == 2


def test_ire_stage1_names_the_learners_it_takes():
    from flywheel.distill.ire_onpolicy import check_stage1

    assert [check_stage1(n) for n in ("awr", "ppo", "rloo", "dpo")] == ["awr", "ppo", "rloo", "dpo"]
    for bad in ("sac", "sft"):
        with pytest.raises(ValueError, match="awr, ppo"):
            check_stage1(bad)


def test_compact_awr_moves_the_head_towards_successful_actions(parent, tmp_path):
    from flywheel.distill.ire_compact import CompactLearner
    from flywheel.distill.ire_vla import IReVLAConfig

    spec = _spec()
    rng = np.random.default_rng(3)
    with EpisodeStore(tmp_path / "store", "w", spec=spec, image_codec="png") as s:
        for k in range(6):  # the same kind of states; successes acted +0.5, failures -0.5
            ep = _episode(spec, 10, HUMAN, rng)
            ep["action"][:, 3:6] = 0.5 if k % 2 == 0 else -0.5
            s.add_episode(ep, task=RL, instruction=INSTR[RL], success=k % 2 == 0, source="rl")
        learner = CompactLearner(parent)
        m = learner.update(s, list(range(6)), tmp_path, IReVLAConfig(head_updates=150, batch_size=32, beta=0.1))
        d = learner.data(s, list(range(6)), 0.95)
    assert m["samples"] == 60 and m["mean_return"] > 0
    with torch.no_grad():
        feats = {c: torch.from_numpy(f).float() for c, f in d["features"].items()}
        pred = learner.model.head(feats, torch.from_numpy(d["text"]), torch.from_numpy(d["proprio"]))
    act = learner.model.normalizer.unnormalize("actions", pred.numpy())
    assert float(act[..., 3:6].mean()) > 0.2  # far nearer the successes' +0.5 than the failures' -0.5


def test_ire_stage2_trains_a_compact_parent_on_cached_features(store, parent, tmp_path):
    from flywheel.distill.ire_vla import IReVLAConfig, sl_stage

    ckpt = sl_stage(parent, store, _eps(store, "human"), _eps(store, "rl"), tmp_path / "sl", _sft(steps=3),
                    IReVLAConfig(stage2_finetune="frozen"))
    assert CompactVLA.from_checkpoint(ckpt).cfg.finetune == "frozen"


# --------------------------------------------------------------------- configs
def test_generalist_config_kind_and_backbone_family(store, parent, tmp_path):
    g = GeneralistConfig()
    assert g.kind == "vla" and backbone_family(g) == "smolvlm"
    with pytest.warns(DeprecationWarning, match="backbone_family"):
        assert backbone_family(GeneralistConfig(family="paligemma")) == "paligemma"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone_family(GeneralistConfig(backbone_family="paligemma"))
    c = GeneralistConfig(kind="compact", backbone=str(parent))
    assert ensure_backbone(c, tmp_path) == str(parent) and not list(tmp_path.iterdir())
    model = new_generalist(c, store.spec, ensure_backbone(c, tmp_path), {})
    assert isinstance(model, CompactVLA) and model.normalizer.to_dict() == CompactVLA.from_checkpoint(parent).normalizer.to_dict()
    stats = CompactVLA.from_checkpoint(parent).normalizer.to_dict()
    fresh = new_generalist(GeneralistConfig(kind="compact", head="mlp", image_size=IMAGE, hidden_dim=32), store.spec,
                           ensure_backbone(GeneralistConfig(kind="compact"), tmp_path), stats)
    assert fresh.cfg.head == "mlp" and fresh.cfg.image_size == IMAGE and fresh.normalizer.to_dict() == stats
    with pytest.raises(ValueError, match="generalist.kind='vlm'"):
        ensure_backbone(GeneralistConfig(kind="vlm"), tmp_path)
    with pytest.raises(ValueError, match="generalist.head='token'"):
        new_generalist(GeneralistConfig(kind="compact", head="token"), store.spec, "", {})


def test_a_compact_checkpoint_dictates_the_env_cameras_and_size(parent):
    g = GeneralistConfig(cameras=["wrist"], image_size=16)
    assert env_kwargs(g, parent) == {"cameras": ("front", "wrist"), "image_size": IMAGE}
    assert env_kwargs(g) == {"cameras": ("wrist",), "image_size": 16}


def test_evaluate_runs_a_compact_checkpoint(parent):
    from flywheel.distill.generalist import evaluate

    g = GeneralistConfig(cameras=["wrist"], image_size=16, execute=4)  # the checkpoint's own spec wins
    res = evaluate(parent, [HUMAN], 1, g, progress=False, device="cpu")
    assert res[HUMAN].episodes == 1


def test_flywheel_distill_rldg_cli_takes_a_compact_parent(store, parent, tmp_path):
    from flywheel.distill import cli

    over = ["method=rldg", f"parent={parent}", f"store={store.path}", f"workdir={tmp_path / 'job'}",
            f"method.tasks=[{RL}]", "sft.finetune=frozen", "sft.frame_stride=2", "sft.steps=3", "sft.batch_size=8",
            "sft.device=cpu", f"sft.feature_root={tmp_path / 'fx'}", "method.episodes_per_task=2", "progress=false"]
    state = cli.run(cli.compose(over))
    ckpt = state["stages"]["distill"]["output"]["checkpoint"]
    assert CompactVLA.from_checkpoint(ckpt).cfg.finetune == "frozen"
    assert list((tmp_path / "fx").rglob("*.s2.npy"))  # the features went where sft.feature_root said


def test_flywheel_distill_ire_vla_cli_runs_every_stage_from_a_compact_g0(parent, tmp_path, monkeypatch):
    """The whole iRe-VLA job from a compact G0 on the demos its store already holds (expert_demos=0)."""

    from flywheel.distill import cli, generalist

    trained_on: list[list[int]] = []
    real_finetune = generalist.finetune

    def spy(parent, store, episodes, *a, **kw):
        trained_on.append([int(e) for e in episodes])
        return real_finetune(parent, store, episodes, *a, **kw)

    monkeypatch.setattr(generalist, "finetune", spy)

    spec = _spec()
    rng = np.random.default_rng(5)
    with EpisodeStore(tmp_path / "store", "w", spec=spec, image_codec="png") as s:
        for k in range(2):
            s.add_episode(_episode(spec, 10, HUMAN, rng), task=HUMAN, instruction=INSTR[HUMAN], success=True,
                          source="human", extra={"collection": f"g0-human-{HUMAN}", "seed": k})
        s.add_episode(_episode(spec, 10, HUMAN, rng), task=HUMAN, instruction=INSTR[HUMAN], success=True,
                      source="human", extra={"collection": "someone-else"})
    over = [f"parent={parent}", f"store={tmp_path / 'store'}", f"workdir={tmp_path / 'job'}", "method=ire_vla",
            f"method.expert_tasks=[{HUMAN}]", "method.unseen_tasks=[]", "method.expert_demos=0",
            "method.expert_collection='g0-human-{task}'", "method.eval_episodes=1", "method.stage2_steps=2",
            "sft.finetune=frozen", "sft.batch_size=8", "sft.device=cpu", "sft.warmup_steps=1",
            f"method.rl_tasks=[{RL}]", "method.rl_iterations=1", "method.episodes_per_iteration=1",
            "method.head_updates=2", "method.batch_size=8", "method.intervene=false",
            "method.stage2_finetune=frozen", "method.device=cpu", "progress=false"]
    state = cli.run(cli.compose(over))
    out = state["stages"]
    assert out["stage0"]["output"]["checkpoint"] == str(parent)  # the given G0 is stage 0
    assert out["expert_demos"]["output"][HUMAN]["episodes"] == 0  # nothing recorded: the store's demos serve
    assert [k for k in out if k.startswith("eval_")] == ["eval_stage0", "eval_round1_rl", "eval_round1_sl"]
    assert out["eval_round1_sl"]["output"]["expert"] is not None and out["eval_round1_sl"]["output"]["unseen"] is None
    with EpisodeStore(tmp_path / "store", "r") as s:
        rl_ok = [i for i in range(3, s.num_episodes) if s.record(i).success]
    assert out["round1_sl"]["output"]["rl_successes"] == len(rl_ok)
    assert trained_on == [[0, 1, *rl_ok]]  # stage 2 only: the g0-human demos and RL successes, not "someone-else"
    assert Path(state["stages"]["report"]["output"]["report"]).is_file()


def test_flywheel_eval_renders_what_a_checkpoint_was_trained_on(parent, tmp_path, caplog):
    """``flywheel-eval`` of a compact checkpoint renders its spec's cameras at its size, whatever ``cameras=`` and
    ``image_size=`` say (before, a 128 px generalist evaluated at the default 32 px failed in the policy's spec
    check), and says so."""
    from omegaconf import OmegaConf

    from flywheel.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(policy=str(parent), tasks=[RL], episodes=1, max_steps=4, execute=4, cameras=["front"],
                     image_size=2 * IMAGE, progress=False, device="cpu", out=str(tmp_path / "r.json"))
    with caplog.at_level("WARNING", logger="flywheel.evaluate"):
        res = run_eval(OmegaConf.structured(cfg))
    assert res[RL].episodes == 1
    assert f"cameras ['front', 'wrist'] at {IMAGE} px" in caplog.text
