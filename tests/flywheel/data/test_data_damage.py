"""Damage to an episode store is contained and named; `repair` rebuilds metadata and quarantines the rest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flywheel_data_helpers import make_episode, small_spec

from flywheel.data import EpisodeStore, StoreError
from flywheel.data.damage import repair
from flywheel.data.integrity import check_store
from flywheel.data.store_layout import LOWDIM_CHUNK

LENGTHS = [6, 11, 4, 9, 5]  # steps 0-6-17-21-30-35; with 8-step chunks chunk 1 = steps 8..15 = episode 1 only


@pytest.fixture
def store(tmp_path):
    spec = small_spec(size=16, depth=True)
    path = tmp_path / "s.zarr"
    eps = [make_episode(spec, n, seed=i) for i, n in enumerate(LENGTHS)]
    with EpisodeStore(path, "w", spec, lowdim_chunk=8) as s:
        for i, ep in enumerate(eps):
            s.add_episode(ep, task=f"t{i}", source="rl", success=True)
    return path, eps


def _same(s: EpisodeStore, i: int, want: dict) -> None:
    for k in ("action", "state/ee_pos", "reward", "intervention", "depth/front"):
        np.testing.assert_array_equal(s.episode(i)[k], want[k], err_msg=f"episode {i} {k}")


def test_new_stores_chunk_low_dimensional_arrays_in_bounded_steps(tmp_path):
    spec = small_spec(size=16, depth=False)
    with EpisodeStore(tmp_path / "d.zarr", "w", spec) as s:
        s.add_episode(make_episode(spec, 3))
        assert all(s.chunk_steps(k) == LOWDIM_CHUNK <= 256 for k in s.keys if "/" not in k or "state/" in k)
        assert all(s.chunk_steps(k) == 1 for k in s.image_keys)


def test_a_damaged_chunk_costs_only_its_episodes_and_is_named(store):
    path, eps = store
    (path / "data/action/c/1/0").write_bytes(b"garbage")          # steps 8-15: episode 1
    (path / "data/reward/c/3").unlink()                          # steps 24-31: episodes 3 and 4
    (path / "data/images/front/c/19/0/0/0").write_bytes(b"xx")   # step 19: episode 2
    s = EpisodeStore(path)
    with pytest.raises(StoreError) as e:
        s.episode(1)["action"]
    msg = str(e.value)
    assert "data/action" in msg and "episode(s) [1]" in msg and str(path / "data/action/c/1/0") in msg
    with pytest.raises(StoreError, match=r"data/reward, steps \[30, 35\) of episode\(s\) \[4\].*c/3 is missing"):
        s.episode(4)["reward"]  # a missing chunk is an error, not silently zeros
    with pytest.raises(StoreError, match=r"data/images/front.*episode\(s\) \[2\].*c/19/0/0/0 does not decode"):
        s.episode(2)["images/front"]
    _same(s, 0, eps[0])  # the neighbours of the damaged chunks read as before
    np.testing.assert_array_equal(s.episode(3)["action"], eps[3]["action"])

    probs = check_store(str(path))  # keeps going: every damaged chunk, then the damaged episodes
    text = "\n".join(map(str, probs))
    assert "data/action: steps [8, 16) of episode(s) 1: does not decode" in text
    assert "data/reward: steps [24, 32) of episode(s) 3, 4: chunk file missing" in text
    assert "data/images/front: steps [19, 20) of episode(s) 2" in text
    assert probs[-1].episodes == (1, 2, 3, 4) and "4 damaged episodes: 1, 2, 3, 4" in str(probs[-1])

    done = repair(str(path))
    assert sum(d.startswith("quarantined episode") for d in done) == 4
    s = EpisodeStore(path)
    assert s.select() == [0] and [e.index for e in s] == [0]
    assert s.select(quarantined=s.record(1).quarantined) == [1] and "data/action" in s.record(1).quarantined
    with pytest.raises(StoreError, match="episode 1 is quarantined"):
        s.episode(1)["state/ee_pos"]  # its chunks were zero-filled: never read as data
    _same(s, 0, eps[0])
    for k in s.keys:  # whole-array reads work again
        assert len(s.read(k, 0, s.num_steps)) == s.num_steps
    assert not [p for p in check_store(str(path)) if p.severity == "error"]
    with EpisodeStore(path, "a") as w:  # and the store takes new episodes
        assert w.add_episode(eps[0]) == 5
    assert EpisodeStore(path).select() == [0, 5]


def test_torn_chunks_are_caught_not_read_as_garbage(store):
    """A truncated small chunk (blosc stores it raw) fails its CRC; a truncated JPEG its end marker."""
    path, eps = store
    for rel in ("data/state/ee_pos/c/0/0", "data/images/front/c/30/0/0/0"):
        f = path / rel
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    s = EpisodeStore(path)
    with pytest.raises(StoreError, match=r"data/state/ee_pos.*episode\(s\) \[0\].*c/0/0 does not decode.*checksum"):
        s.episode(0)["state/ee_pos"]
    with pytest.raises(StoreError, match=r"data/images/front.*episode\(s\) \[4\].*truncated JPEG"):
        s.episode(4)["images/front"]
    assert check_store(str(path))[-1].episodes == (0, 1, 4)


@pytest.mark.parametrize("target, named, how", [
    ("zarr.json", "root metadata", "truncate"),
    ("zarr.json", "root metadata", "garble"),
    ("meta/episodes/c/0", "meta/episodes", "garble"),
    ("meta/episode_ends/c/0", "meta/episode_ends", "truncate"),
    ("meta/episodes/zarr.json", "meta/episodes", "truncate"),
    ("data/action/zarr.json", "data/action", "truncate"),
    ("data/images/front/zarr.json", "data/images/front", "garble"),
])
def test_damaged_metadata_is_named_and_rebuilt_from_the_journal(store, target, named, how):
    path, eps = store
    f = path / target
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if how == "truncate" else bytes(b ^ 0x5A for b in data))
    with pytest.raises(StoreError, match=named) as e:
        s = EpisodeStore(path)
        s.episode(0)[named.removeprefix("data/")] if named.startswith("data/") else None
    assert str(path) in str(e.value) and "flywheel-data repair" in str(e.value)
    assert [p for p in check_store(str(path)) if p.severity == "error"]

    done = repair(str(path))
    assert done and "journal" in done[0]
    s = EpisodeStore(path)
    assert s.num_episodes == len(LENGTHS) and s.select() == list(range(len(LENGTHS)))
    assert [r.task for r in s.records] == [f"t{i}" for i in range(len(LENGTHS))]
    for i, ep in enumerate(eps):
        _same(s, i, ep)
    assert not [p for p in check_store(str(path)) if p.severity == "error"]


def test_journal_is_kept_in_step_with_the_commits(store):
    path, eps = store
    j = path / "journal.jsonl"
    lines = j.read_text().splitlines()
    assert len(lines) == 1 + len(LENGTHS) and json.loads(lines[-1])["n"] == len(LENGTHS)
    # a writer killed between its journal line and the commit point: the next writer drops the line
    j.write_text("\n".join([*lines, lines[-1].replace(f'"n": {len(LENGTHS)}', '"n": 99')]) + "\n{torn")
    assert any("journal" in p.where for p in check_store(str(path)))
    with EpisodeStore(path, "a"):
        pass
    assert j.read_text().splitlines() == lines
    # a store from before journals: readable, checked with a warning, given a journal by the next writer
    j.unlink()
    assert [p.severity for p in check_store(str(path)) if "journal" in p.where] == ["warning"]
    _same(EpisodeStore(path), 1, eps[1])
    with EpisodeStore(path, "a"):
        pass
    assert j.read_text().splitlines() == lines


def test_without_a_journal_damaged_metadata_is_a_clear_error(store):
    path, _ = store
    (path / "journal.jsonl").unlink()
    (path / "zarr.json").write_text("{")
    with pytest.raises(StoreError, match="no usable journal"):
        repair(str(path))


def test_old_stores_stay_readable(tmp_path):
    """A store from before this layout: 4096-step chunks, all-zero chunks never written, no journal."""
    spec = small_spec(size=16, depth=False)
    path = tmp_path / "old.zarr"
    ep = make_episode(spec, 12)
    ep["reward"][:] = 0
    with EpisodeStore(path, "w", spec, lowdim_chunk=4096) as s:
        s.add_episode(ep)
    (path / "data/reward/c/0").unlink()  # zarr of old did not write a chunk of fill values
    (path / "journal.jsonl").unlink()
    root = json.loads((path / "zarr.json").read_text())
    del root["attributes"]["flywheel_store"]["every_chunk_written"]
    (path / "zarr.json").write_text(json.dumps(root))
    s = EpisodeStore(path)
    np.testing.assert_array_equal(s.episode(0)["reward"], np.zeros(12, np.float32))
    assert not [p for p in check_store(str(path)) if p.severity == "error"]


def test_the_journal_and_quarantine_keep_records_as_committed_beside_operator_labels(store):
    """The label sidecar changes `success` on load; the journal and meta/episodes keep the committed value."""
    from flywheel.data.labels import append_label

    path, _ = store
    append_label(path, EpisodeStore(path).record(1), success=False, verdict="reject")
    lines = (path / "journal.jsonl").read_text()
    with EpisodeStore(path, "a") as w:
        assert w.record(1).success is False  # the review applies
        w.quarantine(1, "test")
    assert (path / "journal.jsonl").read_text().startswith(lines)  # appended, not rewritten
    s = EpisodeStore(path)
    assert s.record(1).quarantined == "test" and s.record(1).success is False
    raw = json.loads(str(s.root["meta/episodes"][1]))
    assert raw["success"] is True and raw["quarantined"] == "test" and "review" not in raw["extra"]
