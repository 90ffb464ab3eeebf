"""The reward classifier separates synthetic success/failure images and reports precision/recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.rl.reward_classifier import (
    ClassifierConfig,
    RewardClassifier,
    precision_recall,
    split_by_group,
    train_classifier,
)


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Success: a bright 'object' blob inside the goal region (left half); failure: in the right half."""
    imgs = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    labels = rng.random(n) < 0.4
    for i in range(n):
        y = rng.integers(4, 24)
        x = rng.integers(2, 10) if labels[i] else rng.integers(18, 26)
        imgs[i, y:y + 6, x:x + 6] = (230, 200, 40)
    return imgs, labels


def test_precision_recall_counts():
    m = precision_recall(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    groups = np.repeat(np.arange(10), 5)
    tr, va = split_by_group(groups, 0.2, np.random.default_rng(0))
    assert len(va) == 10 and not set(groups[tr]) & set(groups[va])


def test_classifier_separates_success_from_failure(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    imgs, labels = _images(400, rng)
    # independent frames, not episodes: a single frame above the threshold fires
    cfg = ClassifierConfig(image_keys=["images/front"], channels=16, feature_dim=32, hidden_dims=[32],
                           epochs=6, lr=1e-3, shift_pad=2, consecutive=1)
    model, m = train_classifier({"images/front": imgs}, labels, cfg, groups=np.arange(400) // 4, seed=0)
    assert m["n_val"] == 80 and m["precision"] >= 0.9 and m["recall"] >= 0.9, m
    # the thresholded reward on single observations
    test_imgs, test_labels = _images(40, np.random.default_rng(1))
    rewards = [model.reward({"images/front": im}) for im in test_imgs]
    assert np.mean(np.array(rewards) == test_labels) >= 0.9
    # safetensors round trip gives the same probabilities
    path = model.save(tmp_path / "clf.safetensors")
    again = RewardClassifier.load(path)
    np.testing.assert_allclose(again.predict_proba({"images/front": test_imgs}),
                               model.predict_proba({"images/front": test_imgs}), atol=1e-6)


def test_classifier_rejects_bad_input():
    imgs = np.zeros((10, 16, 16, 3), np.uint8)
    cfg = ClassifierConfig(epochs=1)
    with pytest.raises(ValueError, match="one class"):
        train_classifier({"images/front": imgs}, np.zeros(10), cfg)
    with pytest.raises(KeyError, match="images/front"):
        train_classifier({"images/wrist": imgs}, np.arange(10) % 2, cfg)
    with pytest.raises(ValueError, match="labels"):
        train_classifier({"images/front": imgs}, np.arange(9) % 2, cfg)


def test_frames_from_store_treats_a_failed_episode_as_all_negative(tmp_path):
    """A classifier positive the operator rejected (success=False) must not train as a success."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from flywheel_data_helpers import make_episode, small_spec

    from flywheel.data import EpisodeStore
    from flywheel.rl.reward_classifier import frames_from_store

    spec = small_spec(depth=False)
    with EpisodeStore(tmp_path / "s.zarr", mode="w", spec=spec) as store:
        for i, success in enumerate([True, False]):
            ep = make_episode(spec, 6, seed=i)
            ep["reward"] = np.array([0, 0, 0, 1, 1, 1], np.float32)  # the success event at step 3
            store.add_episode(ep, success=success, task="t")
    with EpisodeStore(tmp_path / "s.zarr", mode="r") as store:
        images, labels, groups = frames_from_store(store, ["images/front"])
    assert images["images/front"].shape[0] == 12
    assert labels[:6].tolist() == [False] * 3 + [True] * 3
    assert not labels[6:].any()
    assert groups.tolist() == [0] * 6 + [1] * 6
