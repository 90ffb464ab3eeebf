"""The frozen-encoder feature cache: encode each stored frame once, reuse, invalidate on change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policy.feature_cache import FeatureCache
from rig.spec import default_spec

IMAGE = 16


class CountingEncoder:
    """A stand-in encoder: per-channel means as a (3, 1, 1) map, counting the frames it saw."""

    def __init__(self, scale: float = 1.0) -> None:
        self.frames, self.scale = 0, scale

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.frames += len(images)
        return images.float().mean(dim=(1, 2))[:, :, None, None] * self.scale


def _episode(spec, t: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ep = {k: rng.normal(size=(t, *s.shape)).astype(np.float32) for k, s in spec.state_specs().items()}
    for c in spec.cameras:
        ep[f"images/{c.name}"] = rng.integers(0, 256, (t, c.height, c.width, 3), dtype=np.uint8)
    ep["action"] = np.tile(np.arange(t, dtype=np.float32)[:, None], (1, 7)) / 10  # action = step index / 10
    return ep


@pytest.fixture
def store(tmp_path):
    from flywheel.data import EpisodeStore

    spec = default_spec(IMAGE)
    st = EpisodeStore(tmp_path / "store", mode="w", spec=spec, image_codec="png")
    for i, t in enumerate((5, 7)):
        st.add_episode(_episode(spec, t, i), task="t", instruction=f"task {i}", success=True)
    yield st
    st.close()


def test_each_frame_is_encoded_once_and_reused(store):
    enc = CountingEncoder()
    cache = FeatureCache(store, enc, "fake-a")
    first = cache.build([0, 1], progress=False)
    assert first["encoded"] == 2 and enc.frames == (5 + 7) * 2
    again = FeatureCache(store, enc, "fake-a")  # a new job over the same store
    assert again.build([0, 1], progress=False)["encoded"] == 0 and enc.frames == 24
    feats = again.episode(1)
    assert again.hits == 3 and again.misses == 0
    assert feats["front"].shape == (7, 3, 1, 1) and feats["front"].dtype == np.float16
    img = store.read("images/front", store.record(1).start, store.record(1).end)
    np.testing.assert_allclose(feats["front"][:, :, 0, 0], img.reshape(7, -1, 3).mean(1), rtol=1e-3)


def test_another_encoder_misses_the_cache(store):
    a, b = CountingEncoder(1.0), CountingEncoder(2.0)
    FeatureCache(store, a, "fake-a").build([0], progress=False)
    cache_b = FeatureCache(store, b, "fake-b")
    assert not cache_b.cached(0)
    fb = cache_b.episode(0)
    assert b.frames == 10
    fa = FeatureCache(store, a, "fake-a").episode(0)
    np.testing.assert_allclose(fb["front"].astype(np.float32), 2 * fa["front"].astype(np.float32), rtol=1e-2)


def test_a_rebuilt_store_misses_the_old_entries(tmp_path, store):
    from flywheel.data import EpisodeStore

    enc = CountingEncoder()
    FeatureCache(store, enc, "fake-a").build([0, 1], progress=False)
    spec, path = store.spec, store.path
    store.close()
    new = EpisodeStore(path, mode="w", spec=spec, image_codec="png")  # same path, new content
    new.add_episode(_episode(spec, 5, 99), task="t", instruction="task 0", success=True)
    cache = FeatureCache(new, enc, "fake-a")
    assert not cache.cached(0)
    new.close()


def test_a_copied_store_reuses_the_entries_and_another_store_does_not(tmp_path, store):
    import shutil

    from flywheel.data import EpisodeStore

    enc = CountingEncoder()
    root = tmp_path / "features"
    FeatureCache(store, enc, "fake-a", root).build([0, 1], progress=False)
    spec = store.spec
    store.close()
    shutil.copytree(store.path, tmp_path / "elsewhere" / "copy")  # a benchmark's private copy
    copy = EpisodeStore(tmp_path / "elsewhere" / "copy", mode="a")
    copy.add_episode(_episode(spec, 6, 7), task="t", instruction="new", success=True)  # the copy grows
    cache = FeatureCache(copy, enc, "fake-a", root)
    assert cache.build([0, 1, 2], progress=False)["encoded"] == 1 and enc.frames == 24 + 12
    other = EpisodeStore(tmp_path / "other", mode="w", spec=spec, image_codec="png")  # same shapes, new content
    for i, t in enumerate((5, 7)):
        other.add_episode(_episode(spec, t, 10 + i), task="t", instruction=f"task {i}", success=True)
    theirs = FeatureCache(other, enc, "fake-a", root)
    assert not theirs.cached(0) and not theirs.cached(1)
    img = other.read("images/front", 0, 5)
    np.testing.assert_allclose(theirs.episode(0)["front"][:, :, 0, 0], img.reshape(5, -1, 3).mean(1), rtol=1e-3)
    copy.close()
    other.close()


def test_entries_of_the_path_keyed_layout_are_moved_in(store):
    from policy.feature_cache import _digest

    enc = CountingEncoder()
    cache = FeatureCache(store, enc, "fake-a")
    cache.build([0, 1], progress=False)
    legacy = cache.legacy_dir
    assert legacy.name == _digest(str(Path(store.path).resolve()))
    legacy.mkdir()
    for f in cache.dir.glob("*.npy"):  # as an older version left them
        f.rename(legacy / f.name)
    again = FeatureCache(store, enc, "fake-a")
    assert again.build([0, 1], progress=False)["encoded"] == 0 and enc.frames == 24
    assert not list(legacy.glob("*.npy")) and len(list(again.dir.glob("*.npy"))) == 4


def test_frame_stride_and_chunks(store):
    enc = CountingEncoder()
    cache = FeatureCache(store, enc, "fake-a", frame_stride=2)
    from flywheel.data.loader import EpisodeDataset  # the store loader's feature-cache mode

    data = EpisodeDataset(store, episodes=[0, 1], obs_keys=["images/front", "images/wrist", "state/ee_pos"],
                          horizon=4, features=cache)
    assert enc.frames == (3 + 4) * 2  # steps 0, 2, 4 and 0, 2, 4, 6
    assert len(data) == 7
    b = {k: v.numpy() if torch.is_tensor(v) else v for k, v in data.__getitems__(np.arange(7)).items()}
    assert b["features/front"].shape == (7, 3, 1, 1)
    assert b["instruction"] == ["task 0"] * 3 + ["task 1"] * 4
    # episode 0 (5 steps): the chunk from step 4 is [4, pad, pad, pad]; episode 1 starts over at 0
    np.testing.assert_array_equal(np.round(b["actions"][2, :, 0] * 10), [4, 4, 4, 4])
    np.testing.assert_array_equal(b["action_is_pad"][2], [False, True, True, True])
    np.testing.assert_array_equal(np.round(b["actions"][5, :, 0] * 10), [4, 5, 6, 6])
    np.testing.assert_array_equal(b["action_is_pad"][5], [False, False, False, True])
    full = FeatureCache(store, CountingEncoder(), "fake-a").episode(1)  # stride 1: a new entry
    np.testing.assert_array_equal(full["front"][::2], cache.episode(1)["front"])
    enc4 = CountingEncoder()
    four = FeatureCache(store, enc4, "fake-a", frame_stride=4)  # served by the stride-2 entries
    assert four.build([0, 1], progress=False)["encoded"] == 0 and enc4.frames == 0
    np.testing.assert_array_equal(four.episode(1)["front"], full["front"][::4])


def test_unknown_camera_and_bad_ids_are_refused(store):
    with pytest.raises(KeyError, match="cameras \\['side'\\]"):
        FeatureCache(store, CountingEncoder(), "x", cameras=["side"])
    with pytest.raises(ValueError, match="encoder_id"):
        FeatureCache(store, CountingEncoder(), "a/b")
