"""The reward classifier on frozen pretrained features, its threshold for a target precision, the
episode-level false positives, and the consecutive-frames reward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from flywheel.rl.reward_classifier import (
    ClassifierConfig,
    ClassifierReward,
    RewardClassifier,
    train_classifier,
)
from flywheel.rl.reward_threshold import choose_threshold, episode_metrics, evaluate, fires


def _episodes(n_eps: int, steps: int, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray]:
    """Episodes whose object (a yellow square) moves from the right half into the goal (left half):
    frames with the object in the goal are success frames; half the episodes never get there."""
    imgs = {k: rng.integers(0, 50, (n_eps * steps, 32, 32, 3)).astype(np.uint8) for k in ("images/front",
                                                                                           "images/wrist")}
    labels = np.zeros(n_eps * steps, bool)
    for e in range(n_eps):
        success_at = int(rng.integers(steps // 2, steps - 2)) if e % 2 == 0 else steps
        for t in range(steps):
            i = e * steps + t
            labels[i] = t >= success_at
            y = int(rng.integers(4, 22))
            x = int(rng.integers(2, 8)) if labels[i] else int(rng.integers(18, 24))
            imgs["images/front"][i, y:y + 8, x:x + 8] = (230, 200, 40)
            imgs["images/wrist"][i, 10:20, 10:20] = (200, 200, 200)  # the wrist view tells nothing
    return imgs, labels, np.repeat(np.arange(n_eps), steps)


def _cfg(**kw) -> ClassifierConfig:
    base = dict(image_keys=["images/front", "images/wrist"], encoder="efficientnet-lite0", feature_block=10,
                feature_size=64, channels=16, feature_dim=32, hidden_dims=[32], epochs=15, lr=3e-3,
                val_fraction=0.25, target_precision=0.95, consecutive=2)
    base.update(kw)
    return ClassifierConfig(**base)


def test_fires_needs_consecutive_frames_of_one_episode():
    scores = np.array([0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1])
    assert fires(scores, groups, 0.5, 1).tolist() == [1, 0, 1, 1, 1, 1, 0]
    # the run of 0.9s across the episode boundary (frames 3 -> 4) does not count
    assert fires(scores, groups, 0.5, 2).tolist() == [0, 0, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="consecutive"):
        fires(scores, groups, 0.5, 0)


def test_episode_false_positives_count_firings_before_the_true_success():
    labels = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0], bool)
    groups = np.repeat(np.arange(4), 4)
    fired = np.array([0, 0, 0, 1,   # ep 0: fires one step after the success -> detected, delay 1
                      0, 1, 0, 0,   # ep 1: never succeeds but fires -> a false positive
                      1, 0, 1, 1,   # ep 2: fires before its success -> a false positive
                      0, 0, 0, 0], bool)  # ep 3: quiet failure
    m = episode_metrics(fired, labels, groups)
    assert m["false_positive_episodes"] == 2 and m["false_positives_per_100"] == pytest.approx(50.0)
    assert m["episode_recall"] == pytest.approx(0.5) and m["episode_precision"] == pytest.approx(1 / 3)
    assert m["delay_steps"] == pytest.approx(1.0)


def test_threshold_is_the_smallest_reaching_the_target_precision():
    # one frame per episode: scores and labels; precision at threshold t counts scores > t
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 1, 1, 0, 1, 1, 0, 0, 0], bool)
    groups = np.arange(10)
    got = choose_threshold(scores, labels, groups, target_precision=0.95)
    # everything above 0.7 is positive (precision 1, recall 4/6); letting 0.7 in drops it to 0.8
    assert 0.7 <= got["threshold"] < 0.8 and got["target_met"] == 1.0
    assert got["precision"] == 1.0 and got["recall"] == pytest.approx(4 / 6)
    lower = choose_threshold(scores, labels, groups, target_precision=0.8)
    assert lower["threshold"] < 0.5 and lower["precision"] >= 0.8 and lower["recall"] == 1.0
    # unreachable (the top score is a negative): flagged, the most precise threshold returned
    bad = choose_threshold(np.array([0.9, 0.1]), np.array([0, 1], bool), np.arange(2), 0.95)
    assert bad["target_met"] == 0.0
    # the chosen threshold reproduces its metrics
    assert evaluate(scores, labels, groups, got["threshold"])["precision"] == got["precision"]


def test_pretrained_classifier_separates_success_and_chooses_its_threshold(tmp_path):
    torch.manual_seed(0)
    images, labels, groups = _episodes(24, 10, np.random.default_rng(0))
    model, m = train_classifier(images, labels, _cfg(), groups=groups, seed=0)
    assert model.cfg.encoder_id.startswith("efficientnet-lite0-") and model.trunk is not None and model.trunk.encoder_id == model.cfg.encoder_id
    assert m["n_val"] == 60 and m["target_met"] == 1.0, m
    # two frames in a row: the first success frame never fires, so frame recall stays below 1
    assert m["precision"] >= 0.95 and m["recall"] >= 0.7 and m["false_positives_per_100"] == 0.0, m
    assert m["episode_recall"] == 1.0, m
    assert 0.0 < model.cfg.threshold < 1.0
    # fresh episodes, scored frame by frame
    fresh, fresh_labels, fresh_groups = _episodes(8, 10, np.random.default_rng(1))
    p = model.predict_proba(fresh)
    got = evaluate(p, fresh_labels, fresh_groups, model.cfg.threshold, model.cfg.consecutive)
    assert got["precision"] >= 0.9 and got["recall"] >= 0.7 and got["episode_recall"] >= 0.75, got
    assert got["false_positives_per_100"] <= 12.5, got  # at most one of the 8 fresh episodes

    # saved without the frozen trunk, named in the metadata; the round trip scores the same
    path = model.save(tmp_path / "clf.safetensors")
    keys = set(safetensors.torch.load_file(str(path)))
    assert keys and not any(k.startswith("trunk") or "_blocks" in k for k in keys)
    assert sum(v.numel() for v in safetensors.torch.load_file(str(path)).values()) < 50_000
    again = RewardClassifier.load(path)
    assert again.cfg == model.cfg and again.cfg.threshold == model.cfg.threshold
    np.testing.assert_allclose(again.predict_proba(fresh), p, atol=1e-5)

    # as the actor's reward_fn: fires after `consecutive` positive frames of one episode
    reward = again.reward_fn()
    assert isinstance(reward, ClassifierReward)
    ep = int(np.flatnonzero(fresh_labels)[0]) // 10
    frames = range(ep * 10, ep * 10 + 10)
    out = [reward({k: v[i] for k, v in fresh.items()}, {}) for i in frames]
    assert 1.0 in out and out.index(1.0) >= int(np.argmax(fresh_labels[ep * 10: ep * 10 + 10])) + 1


def test_classifier_reward_counts_consecutive_frames_and_resets():
    class Stub:
        cfg = ClassifierConfig(consecutive=2, threshold=0.5, image_keys=[])

        def __init__(self, seq):
            self.seq = iter(seq)

        def inputs(self, images):
            return {}

        def proba(self, x):
            return np.array([next(self.seq)])

    r = ClassifierReward(Stub([0.9, 0.1, 0.8, 0.6, 0.9, 0.9, 0.9]))  # type: ignore[arg-type]
    assert [r({}) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]
    assert r.probability == pytest.approx(0.6)  # the last frame's belief, for the operator
    r({})
    r.reset()  # a new episode: the streak of the last one does not carry over
    assert r({}) == 0.0 and r({}) == 1.0


def test_pretrained_file_with_another_trunk_is_refused(tmp_path):
    images, labels, groups = _episodes(4, 6, np.random.default_rng(0))
    model = RewardClassifier(_cfg(), {k: v.shape[1:] for k, v in images.items()})
    path = model.save(tmp_path / "clf.safetensors")
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()

    cfg = json.loads(meta["config"])
    cfg["encoder_id"] = "efficientnet-lite0-000000000000-b10-64px-imagenet"
    safetensors.torch.save_file(safetensors.torch.load_file(str(path)), str(path),
                                {**meta, "config": json.dumps(cfg)})
    with pytest.raises(ValueError, match="retrain"):
        RewardClassifier.load(path)
    with pytest.raises(ValueError, match="ClassifierConfig.encoder"):
        ClassifierConfig(encoder="resnet")


def test_build_reward_fn_loads_a_classifier_as_a_stateful_reward(tmp_path):
    from types import SimpleNamespace

    from flywheel.rl.build import reward_fn

    images, _, _ = _episodes(2, 6, np.random.default_rng(0))
    model = RewardClassifier(_cfg(consecutive=1, threshold=-1.0), {k: v.shape[1:] for k, v in images.items()})
    path = model.save(tmp_path / "clf.safetensors")
    fn = reward_fn(SimpleNamespace(algo=SimpleNamespace(reward="classifier", classifier=str(path))))
    assert isinstance(fn, ClassifierReward)
    assert fn({k: v[0] for k, v in images.items()}, {}) == 1.0  # threshold -1: every frame fires


def test_actor_restarts_the_reward_streak_every_episode():
    """A streak left over from a timed-out episode must not make the next one fire early."""
    from rl_toy_envs import LineEnv

    from flywheel.rl.actor import Actor
    from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of

    class Stub:  # every frame scores above the threshold
        cfg = ClassifierConfig(consecutive=3, threshold=0.5, image_keys=[])

        def inputs(self, images):
            return {}

        def proba(self, x):
            return np.array([1.0])

    env = LineEnv(horizon=2)  # episodes time out before three frames in a row
    agent = SACAgent(SACConfig(hidden_dims=[16], arm_dims=[0]), obs_shapes_of(env.observation_space))
    reward = ClassifierReward(Stub())  # type: ignore[arg-type]
    actor = Actor(env, agent, reward_source="classifier", reward_fn=reward, seed=0)
    rewards = [float(actor.step()[0]["reward"]) for _ in range(8)]
    assert rewards == [0.0] * 8  # without the reset, the 3rd step (first of episode 2) would fire


def test_on_the_rig_the_env_runs_the_classifier_and_the_actor_reads_its_success(tmp_path):
    """The rig env's success test is the classifier (it announces ``success``); the actor must not run a second
    copy on the same frame. In sim the actor runs it (the env knows nothing of it)."""
    from types import SimpleNamespace

    from flywheel.rl.app import actor_reward

    images, _, _ = _episodes(2, 6, np.random.default_rng(0))
    path = RewardClassifier(_cfg(consecutive=1), {k: v.shape[1:] for k, v in images.items()}).save(
        tmp_path / "clf.safetensors")
    algo = SimpleNamespace(reward="classifier", classifier=str(path), review="none")
    rig_env = SimpleNamespace(unwrapped=SimpleNamespace(reward_fn=ClassifierReward(RewardClassifier.load(path))))
    assert actor_reward(SimpleNamespace(env=SimpleNamespace(kind="rig"), algo=algo), rig_env) == \
        ("success", None, None)  # and the env's classifier, without review, hears no verdicts
    source, fn, refining = actor_reward(SimpleNamespace(env=SimpleNamespace(kind="sim"), algo=algo), None)
    assert source == "classifier" and isinstance(fn, ClassifierReward) and refining is None
    assert actor_reward(SimpleNamespace(env=SimpleNamespace(kind="sim"),
                                        algo=SimpleNamespace(reward="success", classifier="")), None) == \
        ("success", None, None)


def test_a_classifier_reward_is_checked_against_the_sims_own_test_every_episode(tmp_path):
    """In sim the env still reports ``is_success``: each training episode says whether the classifier fired,
    fired wrongly or missed a success, the learner logs it, and the run's results count it per 100 episodes."""
    from rl_toy_envs import LineEnv, LineExpert

    from flywheel.rl.actor import Actor
    from flywheel.rl.learner import Learner, LearnerConfig
    from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of

    class Always:  # fires on every frame (one in a row suffices)
        def __init__(self, fire):
            self.fire = fire

        def __call__(self, obs, info):
            return 1.0 if self.fire else 0.0

    class Scripted(LineExpert):  # drives the point onto the goal: the sim's own test passes
        def step(self, obs, policy_action):
            return self.act(obs), True

    def episode(fire: bool, intervener=None) -> dict:
        env = LineEnv(horizon=20)
        agent = SACAgent(SACConfig(hidden_dims=[16], arm_dims=[0]), obs_shapes_of(env.observation_space))
        actor = Actor(env, agent, reward_source="classifier", reward_fn=Always(fire), seed=3, intervener=intervener)
        while True:
            _, st = actor.step()
            if st is not None:
                return st.extra

    # fires on the first frame, far from the goal: a false positive
    assert episode(True) == {"reward_fired": 1.0, "reward_false_positive": 1.0, "reward_missed": 0.0}
    # never fires while the operator reaches the goal (LineEnv ends the episode on its own success): missed
    assert episode(False, Scripted()) == {"reward_fired": 0.0, "reward_false_positive": 0.0, "reward_missed": 1.0}

    # the sim's success reward has nothing to check
    env = LineEnv(horizon=3)
    agent = SACAgent(SACConfig(hidden_dims=[16], arm_dims=[0]), obs_shapes_of(env.observation_space))
    actor = Actor(env, agent, seed=0)
    stats = [st for _ in range(6) if (st := actor.step()[1]) is not None]
    assert stats and all(st.extra == {} and "extra" not in st.to_dict() for st in stats)

    from flywheel.rl.actor import EpisodeStats

    learner = Learner(agent, LearnerConfig())
    logged: dict[str, float] = {}
    learner.scalar = lambda tag, value: logged.__setitem__(tag, float(value))  # type: ignore[method-assign]
    learner.log_episode(EpisodeStats(0, 5, 0.0, False, 0.0, 5, "a", {"reward_false_positive": 1.0}))
    learner.log_episode(EpisodeStats(1, 5, 0.0, False, 0.0, 10, "a", {"reward_false_positive": 0.0}))
    assert [h["extra"]["reward_false_positive"] for h in learner.history if h["kind"] == "episode"] == [1.0, 0.0]
    assert logged["episode/reward_false_positive"] == 0.0
    assert logged["episode/reward_false_positive_last20"] == 0.5

    from flywheel.rl.app import reward_check_summary

    eps = [h for h in learner.history if h["kind"] == "episode"] + [{"kind": "episode", "success": True}]
    assert reward_check_summary(eps) == {"reward_check_episodes": 2,
                                         "reward_check_per_100_episodes": {"reward_false_positive": 50.0}}
    assert reward_check_summary([{"kind": "episode", "success": True}]) == {}
