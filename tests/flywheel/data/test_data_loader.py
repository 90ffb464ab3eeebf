"""Training loaders: windows with padding, filters, splits, stats, source mixing, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flywheel_data_helpers import make_episode

from flywheel.data import EpisodeStore
from flywheel.data.loader import EpisodeDataset, make_loader, split_episodes
from flywheel.data.sampler import MixedBatchSampler, groups_by_source
from flywheel.data.stats import compute_stats, load_stats, normalize, save_stats, unnormalize

LENGTHS = [5, 9, 3, 12]
SOURCES = ["human", "rl", "human", "policy"]
SUCCESS = [True, False, True, True]


@pytest.fixture
def store(tmp_path, spec):
    s = EpisodeStore(tmp_path / "s.zarr", "w", spec)
    for i, n in enumerate(LENGTHS):
        s.add_episode(make_episode(spec, n, seed=i), task=f"task{i % 2}", instruction=f"do {i}",
                      source=SOURCES[i], success=SUCCESS[i])
    yield s
    s.close()


def test_windows_pad_like_lerobot(store, spec):
    ds = EpisodeDataset(store, n_obs_steps=2, horizon=4, image_cache_mb=8)
    assert len(ds) == sum(LENGTHS)
    eps = [make_episode(spec, n, seed=i) for i, n in enumerate(LENGTHS)]
    # first step of episode 1: obs history repeats its first step; later: real history
    first = ds[5]
    np.testing.assert_array_equal(first["state/ee_pos"].numpy(), eps[1]["state/ee_pos"][[0, 0]])
    np.testing.assert_array_equal(first["actions"].numpy(), eps[1]["action"][0:4])
    assert not first["action_is_pad"].any() and first["episode_index"] == 1
    assert first["instruction"] == "do 1" and first["task_index"] == 1
    # last step of episode 1: the action chunk is padded with its last action and flagged
    last = ds[5 + 8]
    np.testing.assert_array_equal(last["state/joint_pos"].numpy(), eps[1]["state/joint_pos"][[7, 8]])
    np.testing.assert_array_equal(last["actions"].numpy(), eps[1]["action"][[8, 8, 8, 8]])
    np.testing.assert_array_equal(last["action_is_pad"].numpy(), [False, True, True, True])
    assert bool(last["done"]) and not bool(ds[5 + 7]["done"])
    assert last["reward"] == pytest.approx(float(eps[1]["reward"][8]))
    # images: uint8 channels-last history, close to what was written (JPEG)
    img = last["images/front"]
    assert img.dtype == torch.uint8 and img.shape == (2, 32, 40, 3)
    want = eps[1]["images/front"][[7, 8]].astype(np.int16)
    assert np.abs(img.numpy().astype(np.int16) - want).mean() < 6
    assert ds[0]["depth/front"].shape == (2, 32, 40, 1)
    # the second pass hits the decoded-frame cache
    hits = ds.cache.hits
    ds[5 + 8]
    assert ds.cache.hits > hits


def test_filters_split_and_refresh(store, spec):
    ds = EpisodeDataset(store, success=True, source="human")
    assert ds.episodes == [0, 2] and len(ds) == 5 + 3
    assert EpisodeDataset(store, source=["rl", "policy"]).episodes == [1, 3]
    assert EpisodeDataset(store, task="task1").episodes == [1, 3]
    with pytest.raises(ValueError, match="unknown filter"):
        EpisodeDataset(store, succes=True)
    train, val = EpisodeDataset(store).split(val_fraction=0.25, seed=1)
    assert set(train.episodes).isdisjoint(val.episodes) and sorted(train.episodes + val.episodes) == [0, 1, 2, 3]
    assert split_episodes(range(10), 0.2, seed=3) == split_episodes(range(10), 0.2, seed=3)
    assert len(split_episodes(range(10), 0.2)[1]) == 2
    reader = EpisodeDataset(EpisodeStore(store.path, "r"))
    store.add_episode(make_episode(spec, 4, seed=9), source="rl")
    assert reader.refresh() and len(reader) == sum(LENGTHS) + 4 and reader.episodes[-1] == 4


def test_stats_saved_and_loaded(store, tmp_path):
    stats = compute_stats(store, keys=["state/ee_pos", "action", "images/front"])
    act = np.concatenate([store.episode(i)["action"] for i in range(4)])
    np.testing.assert_allclose(stats["action"]["mean"], act.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(act, 0.99, axis=0), rtol=1e-6)
    assert stats["action"]["count"][0] == len(act)
    assert stats["images/front"]["mean"].shape == (3, 1, 1)
    assert 0 <= stats["images/front"]["min"].min() <= stats["images/front"]["max"].max() <= 1
    jpath, spath = save_stats(stats, tmp_path / "ckpt")
    for p in (tmp_path / "ckpt", jpath, spath):
        back = load_stats(p)
        for k in stats:
            for s in stats[k]:
                np.testing.assert_allclose(back[k][s], stats[k][s], rtol=1e-12)
    x = torch.from_numpy(act)
    for mode in ("mean_std", "min_max"):
        y = normalize(x, stats["action"], mode)
        assert torch.allclose(unnormalize(y, stats["action"], mode), x, atol=1e-5)
    assert normalize(act, stats["action"], "min_max").min() >= -1 - 1e-6


def test_mixed_sampler_keeps_ratios(store):
    ds = EpisodeDataset(store, obs_keys=["state/ee_pos"])
    groups = groups_by_source(ds.sources)
    assert {k: len(v) for k, v in groups.items()} == {"human": 8, "rl": 9, "policy": 12}
    sampler = MixedBatchSampler(groups, {"human": 0.5, "rl": 0.5}, batch_size=10, num_batches=20)
    assert sampler.counts == {"human": 5, "rl": 5}
    for batch in sampler:
        src = ds.sources[batch]
        assert len(batch) == 10 and (src == "human").sum() == 5 and (src == "rl").sum() == 5
    odd = MixedBatchSampler(groups, {"human": 1, "rl": 1, "policy": 1}, batch_size=10, num_batches=1)
    assert sum(odd.counts.values()) == 10
    with pytest.raises(ValueError, match=r"\['online'\] have a positive ratio but no samples"):
        MixedBatchSampler({**groups, "online": []}, {"human": 0.5, "online": 0.5}, 8, 1)
    loader = make_loader(ds, batch_sampler=sampler, num_workers=0)
    batch = next(iter(loader))
    assert batch["state/ee_pos"].shape == (10, 3)  # n_obs_steps=1: no observation-step axis


@pytest.mark.slow
def test_loader_with_workers(store):
    ds = EpisodeDataset(store, n_obs_steps=2, horizon=4)
    loader = make_loader(ds, batch_size=8, num_workers=2, persistent_workers=False)
    seen = []
    for batch in loader:
        assert batch["images/wrist"].shape == (8, 2, 32, 32, 3)
        assert batch["actions"].shape == (8, 4, 7) and len(batch["instruction"]) == 8
        seen.extend(batch["index"].tolist())
    assert len(seen) == (len(ds) // 8) * 8 and len(set(seen)) == len(seen)


def test_decode_threads_give_the_same_batches(store):
    plain = EpisodeDataset(store, n_obs_steps=2, image_cache_mb=0)
    threaded = EpisodeDataset(store, n_obs_steps=2, image_cache_mb=0, decode_threads=2)
    idx = list(range(0, len(plain), 2))
    a, b = plain.__getitems__(idx), threaded.__getitems__(idx)
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
    import pickle

    assert pickle.loads(pickle.dumps(threaded))._decoder is None  # picklable for worker processes
