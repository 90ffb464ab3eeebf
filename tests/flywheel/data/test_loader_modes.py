"""The loader's three image modes (streaming, in memory, cached features) give the same samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flywheel_data_helpers import make_episode

from flywheel.data import EpisodeStore
from flywheel.data.loader import EpisodeDataset, random_batches
from flywheel.data.sampler import RandomBatchSampler, episode_probabilities

LENGTHS = [5, 9, 3, 12]


@pytest.fixture
def store(tmp_path, spec):
    s = EpisodeStore(tmp_path / "s.zarr", "w", spec)
    for i, n in enumerate(LENGTHS):
        s.add_episode(make_episode(spec, n, seed=i), task=f"task{i % 2}", instruction=f"do {i}")
    yield s
    s.close()


class FakeFeatures:
    """A feature cache whose feature of a frame names its episode and step: 100 * episode + step."""

    def __init__(self, store, stride=1):
        self.store, self.stride, self.cameras = store, stride, ["front", "wrist"]

    def episode(self, index):
        r = self.store.record(index)
        f = (100 * index + np.arange(0, r.length, self.stride)).astype(np.float16)[:, None, None, None]
        return {c: f + (0.5 if c == "wrist" else 0.0) for c in self.cameras}


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("n_obs", [1, 2])
def test_in_memory_and_streaming_batches_are_equal(store, n_obs):
    eps = [3, 0, 2]  # the caller's order is kept
    stream = EpisodeDataset(store, episodes=eps, n_obs_steps=n_obs, horizon=4, image_cache_mb=0)
    mem = EpisodeDataset(store, episodes=eps, n_obs_steps=n_obs, horizon=4, in_memory=True)
    assert stream.episodes == mem.episodes == eps and len(mem) == 12 + 5 + 3
    idx = list(range(len(mem)))[::-1]
    a, b = stream.__getitems__(idx), mem.__getitems__(idx)
    _equal(a, b)
    assert a["episode_index"][-1] == 3 and a["instruction"][0] == "do 2"
    img = b["images/front"]
    assert img.dtype == torch.uint8 and img.shape == ((20, 32, 40, 3) if n_obs == 1 else (20, 2, 32, 40, 3))
    assert b["depth/front"].shape[-1] == 1


@pytest.mark.parametrize("stride", [1, 2])
def test_feature_batches_have_the_image_batches_actions(store, stride):
    keys = ["images/front", "images/wrist", "state/ee_pos"]
    feat = EpisodeDataset(store, episodes=[1, 0], obs_keys=keys, horizon=6, features=FakeFeatures(store, stride))
    img = EpisodeDataset(store, episodes=[1, 0], obs_keys=keys, horizon=6)
    assert len(feat) == len(range(0, 9, stride)) + len(range(0, 5, stride))
    b = feat.__getitems__(np.arange(len(feat)))
    assert "images/front" not in b and b["features/front"].dtype == torch.float16
    local = b["index"].numpy() - np.array([store.record(int(e)).start for e in b["episode_index"]])
    assert (local % stride == 0).all()
    np.testing.assert_array_equal(b["features/front"][:, 0, 0, 0].numpy(), 100 * b["episode_index"].numpy() + local)
    np.testing.assert_array_equal(b["features/wrist"][:, 0, 0, 0].numpy(), b["features/front"][:, 0, 0, 0].numpy() + 0.5)
    # the same steps through the image path: identical actions, padding, proprio and instruction
    pos = {int(g): i for i, g in enumerate(img.__getitems__(np.arange(len(img)))["index"])}
    ref = img.__getitems__([pos[int(g)] for g in b["index"]])
    for k in ("actions", "action_is_pad", "state/ee_pos", "index", "episode_index"):
        assert torch.equal(b[k], ref[k]), k
    assert b["instruction"] == ref["instruction"]
    with pytest.raises(ValueError, match="n_obs_steps"):
        EpisodeDataset(store, obs_keys=keys, n_obs_steps=2, features=FakeFeatures(store))


def test_random_batches_follow_the_old_draws_and_the_weights(store):
    ds = EpisodeDataset(store, episodes=[1, 3], obs_keys=["state/ee_pos"], in_memory=True)
    n = len(ds)
    # the sampler's draws are numpy's choice stream from one seeded generator (the distillation's former batches)
    rng = np.random.default_rng(7)
    want = [rng.choice(n, size=4).tolist() for _ in range(2 * (n // 4))]
    sampler = RandomBatchSampler(n, 4, seed=7)
    got = [b for _ in range(2) for b in sampler]
    assert got == want
    rng = np.random.default_rng(3)
    assert list(RandomBatchSampler(n, 8, seed=3, replace=False)) == [
        rng.choice(n, size=8, replace=False).tolist() for _ in range(n // 8)]
    # per-episode weights: episode 1 (9 steps) drawn a quarter of the time, episode 3 (12 steps) the rest
    b = next(iter(random_batches(ds, 4000, seed=1, weights=[1.0, 3.0])))
    assert abs(float(np.mean(b["episode_index"].numpy() == 1)) - 0.25) < 0.04
    assert b["actions"].shape == (4000, 8, 7)
    np.testing.assert_allclose(episode_probabilities(np.array([0, 0, 1]), [1.0, 1.0]), [0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match="one per episode"):
        ds.sample_probabilities([1.0])
    with pytest.raises(ValueError, match="not all 0"):
        ds.sample_probabilities([0.0, 0.0])


def test_intervened_only_episodes_train_on_their_operators_steps(store):
    """HG-DAgger's labels: an episode in ``intervened_only`` gives only the steps its operator took; the others
    all of theirs; an episode without any operator step drops out; weights still set each episode's share."""
    # by hand: episode 0 keeps samples 0 and 2 of 0-2, episode 1 none, episode 2 all; equal episode weights
    np.testing.assert_allclose(
        episode_probabilities(np.array([0, 0, 0, 1, 1, 2]), [1.0, 1.0, 1.0], np.array([1, 0, 1, 0, 0, 1], bool)),
        [0.25, 0.0, 0.25, 0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="no sample left"):
        episode_probabilities(np.array([0, 1]), [1.0, 0.0], np.array([0, 1], bool))
    ds = EpisodeDataset(store, episodes=[1, 3], obs_keys=["state/ee_pos"], in_memory=True)
    inter = store.read("intervention", 0, store.num_steps).astype(bool)
    r3 = store.record(3)
    assert 0 < inter[r3.start:r3.end].sum() < r3.length  # the fixture's episodes mix both kinds of steps
    p = ds.sample_probabilities(intervened_only=[3])
    b = ds.__getitems__(np.arange(len(ds)))
    on = p > 0
    from3 = b["episode_index"].numpy() == 3
    assert (on[~from3]).all() and (on[from3] == inter[b["index"].numpy()[from3]]).all()
    # no weights: every kept sample equally likely
    np.testing.assert_allclose(p[on], 1.0 / on.sum())
    # weights: episode 3's half spread over its operator's steps only
    p = ds.sample_probabilities([1.0, 1.0], intervened_only=[3])
    assert abs(p[from3].sum() - 0.5) < 1e-9 and np.allclose(p[from3 & on], 0.5 / (from3 & on).sum())
    batch = next(iter(random_batches(ds, 2000, seed=0, intervened_only=[3])))
    drawn = batch["index"].numpy()[batch["episode_index"].numpy() == 3]
    assert len(drawn) and inter[drawn].all()
    assert (batch["episode_index"].numpy() == 1).any()
