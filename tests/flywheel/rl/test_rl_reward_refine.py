"""The reward classifier refined in the loop: the operator's verdicts relabel a rejected success before it reaches
a buffer, and the rejected frames teach the classifier to stop firing on them (HIL-SERL)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flywheel.rl.buffers import ReplayBuffer
from flywheel.rl.reward_classifier import ClassifierConfig, ClassifierReward, RewardClassifier
from flywheel.rl.reward_refine import RefineConfig, RefiningReward, sim_reviewer

KEYS = ["images/front", "images/wrist"]


def _classifier() -> RewardClassifier:
    cfg = ClassifierConfig(image_keys=KEYS, encoder="efficientnet-lite0", feature_block=10, feature_size=64,
                           channels=16, feature_dim=32, hidden_dims=[32], consecutive=2, threshold=0.5)
    return RewardClassifier(cfg, {k: (64, 64, 3) for k in KEYS})


def _frames(kind: str, n: int, shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Feature maps: ``success`` lights channels 0-9 of the front camera, ``fooling`` lights them and 20-29 (a state
    that looks like success but is not), ``plain`` is noise."""
    out = {f"features/{k.split('/')[1]}": rng.normal(0, 0.3, (n, *shape)).astype(np.float16) for k in KEYS}
    if kind in ("success", "fooling"):
        out["features/front"][:, 0:10] += 2.0
    if kind == "fooling":
        out["features/front"][:, 20:30] += 2.0
    return out


def _base(model: RewardClassifier, rng: np.random.Generator) -> ReplayBuffer:
    """A demo buffer: 60 plain frames and 30 success frames (reward 1)."""
    shape = model.trunk.out_shape
    buf = ReplayBuffer(200, {f"features/{k.split('/')[1]}": (shape, "float16") for k in KEYS})
    for kind, n, r in (("plain", 60, 0.0), ("success", 30, 1.0)):
        f = _frames(kind, n, shape, rng)
        batch = {**{f"obs/{k}": v for k, v in f.items()}, **{f"next_obs/{k}": v for k, v in f.items()}}
        batch.update(action=np.zeros((n, 7), np.float32), grip=np.zeros(n, np.int64), reward=np.full(n, r, np.float32),
                     terminated=np.full(n, r > 0), intervened=np.ones(n, bool))
        buf.add_batch(batch)
    return buf


def _score(reward: ClassifierReward, frames: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([float(reward.model.proba(reward.inputs({k: v[i] for k, v in frames.items()}))[0])
                     for i in range(len(frames["features/front"]))])


def test_rejected_frames_stop_the_classifier_firing_and_survive_a_restart(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _classifier()
    shape = model.trunk.out_shape
    reward = RefiningReward(model, RefineConfig(every=4, steps=150, lr=3e-3), features_from_obs=True,
                            save_dir=tmp_path / "ckpt", seed=0)
    reward.set_base(_base(model, rng))
    reward.refine()  # the base set alone: success frames score high, and so do the fooling ones
    success, fooling, plain = (_frames(k, 20, shape, rng) for k in ("success", "fooling", "plain"))
    assert _score(reward, success).min() > 0.5 and _score(reward, plain).max() < 0.5
    assert np.median(_score(reward, fooling)) > 0.5  # the classifier is fooled

    # four episodes end on fooling frames; the operator rejects each claimed success
    for _ in range(4):
        reward.reset()
        ep = _frames("fooling", 3, shape, rng)
        fired = [reward({k: v[i] for k, v in ep.items()}) for i in range(3)]
        assert 1.0 in fired
        reward.verdict(False)
    assert reward.counts == {"verdicts": 4, "rejected": 4, "refinements": 2}
    assert len(reward.labels) == 4 * 3 and not any(reward.labels)  # 3 frames seen per episode (fewer than 10)
    after = _score(reward, fooling)
    assert np.median(after) < 0.5, after  # refined: no longer fooled
    assert _score(reward, success).min() > 0.5  # and still fires on real successes

    # a restart resumes the refined classifier and its labelled frames
    again = RefiningReward(_classifier(), RefineConfig(every=4), features_from_obs=True)
    assert again.load(tmp_path / "ckpt")
    np.testing.assert_allclose(_score(again, fooling), after, atol=1e-5)
    assert again.labels == reward.labels and again.counts == reward.counts
    assert not RefiningReward(_classifier(), RefineConfig()).load(tmp_path / "nothing")

    # a confirmed success keeps its firing frames as positives
    reward.reset()
    for i in range(2):
        reward({k: v[i] for k, v in success.items()})
    reward.verdict(True)
    assert reward.labels[-2:] == [True, True] and reward.counts["verdicts"] == 5


def test_the_classifier_reads_the_agents_features_instead_of_running_the_trunk_again():
    model = _classifier()
    rng = np.random.default_rng(1)
    images = {k: rng.integers(0, 255, (64, 64, 3)).astype(np.uint8) for k in KEYS}
    feats = {f"features/{k.split('/')[1]}": model.trunk(images[k][None])[0] for k in KEYS}
    from_images = ClassifierReward(model)
    from_features = ClassifierReward(model, features_from_obs=True)
    from_images(images)
    from_features({**feats, "images/front": np.zeros((1,), np.uint8)})  # the images are not read
    assert from_features.probability == pytest.approx(from_images.probability, abs=1e-6)


def test_a_rejected_success_is_relabelled_before_it_reaches_a_buffer():
    """The operator's rejection: no reward, not a terminal (the episode was cut short), the episode still ends,
    the reward function hears the verdict, and the episode's stats count it."""
    from rl_toy_envs import LineEnv

    from flywheel.rl.actor import Actor
    from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of

    class Fires:  # claims success on the second frame of each episode
        def __init__(self):
            self.n, self.heard = 0, []

        def reset(self):
            self.n = 0

        def __call__(self, obs, info):
            self.n += 1
            return 1.0 if self.n == 2 else 0.0

        def verdict(self, ok):
            self.heard.append(ok)

    def episode(reviewer):
        env = LineEnv(horizon=20)
        agent = SACAgent(SACConfig(hidden_dims=[16], arm_dims=[0]), obs_shapes_of(env.observation_space))
        fn = Fires()
        actor = Actor(env, agent, reward_source="classifier", reward_fn=fn, seed=3, reviewer=reviewer)
        trs = []
        while True:
            tr, st = actor.step()
            trs.append(tr)
            if st is not None:
                return trs, st, fn.heard

    trs, st, heard = episode(lambda s: False)
    assert len(trs) == 2 and heard == [False]
    assert float(trs[-1]["reward"]) == 0.0 and not bool(trs[-1]["terminated"])
    assert st.extra["reward_rejected"] == 1.0 and st.extra["reward_fired"] == 1.0 and st.ret == 0.0
    trs, st, heard = episode(lambda s: True)
    assert heard == [True] and float(trs[-1]["reward"]) == 1.0 and bool(trs[-1]["terminated"])
    assert st.extra["reward_rejected"] == 0.0
    trs, st, heard = episode(None)  # no reviewer: the claim stands, nothing is heard
    assert heard == [] and float(trs[-1]["reward"]) == 1.0 and "reward_rejected" not in st.extra

    env = LineEnv()
    agent = SACAgent(SACConfig(hidden_dims=[16], arm_dims=[0]), obs_shapes_of(env.observation_space))
    with pytest.raises(ValueError, match="reviewer"):
        Actor(env, agent, reviewer=lambda s: True)
    assert sim_reviewer(SimpleNamespace(info={"is_success": True})) is True
    assert sim_reviewer(SimpleNamespace(info={})) is False


def test_review_is_configured_for_classifier_runs_the_sim_one_in_sim_the_operator_on_the_rig(tmp_path):
    from flywheel.rl.app import compose
    from flywheel.rl.build import make_reviewer, reward_fn

    path = _classifier().save(tmp_path / "clf.safetensors")
    cfg = compose(["rl_task=lift_cube", "algo.reward=classifier", f"algo.classifier={path}", "algo.review=sim",
                   "algo.refine.every=3", f"out_dir={tmp_path / 'run'}"])
    fn = reward_fn(cfg)
    assert isinstance(fn, RefiningReward) and fn.cfg.every == 3 and not fn.features_from_obs
    assert fn.save_dir == tmp_path / "run" / "reward_classifier"  # not in checkpoint/: the learner replaces that
    assert make_reviewer(cfg) is sim_reviewer
    assert make_reviewer(compose(["algo.reward=classifier", f"algo.classifier={path}"])) is None
    with pytest.raises(ValueError, match="needs algo.reward=classifier"):
        make_reviewer(compose(["algo.review=sim"]))
    with pytest.raises(ValueError, match="rig has none"):
        make_reviewer(compose(["env.kind=rig", "algo.reward=classifier", f"algo.classifier={path}", "algo.review=sim"]))
    with pytest.raises(ValueError, match="use one of none, sim, operator"):
        make_reviewer(compose(["algo.reward=classifier", f"algo.classifier={path}", "algo.review=human"]))
    with pytest.raises(ValueError, match="in sim the sim's test stands in"):
        make_reviewer(compose(["algo.reward=classifier", f"algo.classifier={path}", "algo.review=operator"]))
    rig = ["env.kind=rig", "env.privileged_state=false", "algo.reward=classifier", f"algo.classifier={path}",
           "algo.review=operator", "agent.encoder=pretrained", f"out_dir={tmp_path / 'rig'}"]
    assert make_reviewer(compose(rig)) is None  # the rig env asks the operator itself
    with pytest.raises(ValueError, match="review_timeout"):
        make_reviewer(compose([*rig, "algo.review_timeout=0"]))
    fn = reward_fn(compose(rig))  # the rig env runs it on raw frames, below the FeatureEnv
    assert isinstance(fn, RefiningReward) and not fn.features_from_obs
    # in sim it reads the actor env's features when that env adds them from the classifier's own trunk
    model = RewardClassifier.load(path)
    env = SimpleNamespace(image_keys=KEYS, featurizer=SimpleNamespace(encoder_id=model.cfg.encoder_id))
    plain = compose(["algo.reward=classifier", f"algo.classifier={path}"])
    assert reward_fn(plain, env).features_from_obs
    assert not reward_fn(plain, SimpleNamespace(image_keys=KEYS[:1], featurizer=env.featurizer)).features_from_obs
    assert not reward_fn(plain, SimpleNamespace(image_keys=KEYS, featurizer=SimpleNamespace(
        encoder_id="another trunk"))).features_from_obs
    with pytest.raises(ValueError, match="RefineConfig"):
        RefineConfig(steps=0)
