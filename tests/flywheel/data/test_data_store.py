"""The episode store: round trip, spec checks at the door, crash safety, concurrent readers, I/O errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from flywheel_data_helpers import make_episode, small_spec, step

from flywheel.data import EpisodeStore, StoreError, StoreLocked
from rig.spec import RigSpec, SpecError, SpecMismatch

REPO = Path(__file__).resolve().parents[3]


def _assert_episode_equal(ep, want, jpeg_tol: float = 6.0) -> None:
    for k, v in want.items():
        got = ep[k]
        assert got.shape == v.shape and got.dtype == v.dtype, k
        if k.startswith("images/"):
            assert np.abs(got.astype(np.int16) - v.astype(np.int16)).mean() < jpeg_tol, k
        else:
            np.testing.assert_array_equal(got, v, err_msg=k)


def test_round_trip_every_key_and_dtype(tmp_path, spec):
    path = tmp_path / "s.zarr"
    eps = [make_episode(spec, n, seed=i) for i, n in enumerate([7, 23, 1])]
    with EpisodeStore(path, "w", spec) as s:
        w = s.begin_episode(task="pick", instruction="pick the cube", source="human", rig_id="sim",
                            camera_ids={"front": "123"}, calibration_id="cal-1", policy_version="v0",
                            notes="first", extra={"operator": "ana"})
        for i in range(7):
            w.add(**step(eps[0], spec, i))
        assert w.commit(success=True) == 0
        assert s.add_episode(eps[1], task="place", source="rl", success=False) == 1
        assert s.add_episode(eps[2], task="pick", source="policy") == 2

    r = EpisodeStore(path)  # read only, fresh process view
    assert r.num_episodes == 3 and r.num_steps == 31
    np.testing.assert_array_equal(r.episode_ends, [7, 30, 31])
    assert RigSpec.from_dict(r.spec.to_dict()) == spec
    assert set(r.keys) == {*spec.observation_specs(), "action", "reward", "intervention", "timestamp"}
    for i, want in enumerate(eps):
        _assert_episode_equal(r.episode(i), want)
        img = r.read_image("images/front", r.record(i).start)  # the direct chunk-decoding path
        np.testing.assert_array_equal(img, r.episode(i)["images/front"][0])
    rec = r.record(0)
    assert (rec.task, rec.instruction, rec.success, rec.source, rec.rig_id) == (
        "pick", "pick the cube", True, "human", "sim")
    assert rec.camera_ids == {"front": "123"} and rec.extra == {"operator": "ana"}
    assert rec.calibration_id == "cal-1" and rec.policy_version == "v0" and rec.notes == "first"
    assert r.record(2).success is None
    assert r.select(task="pick") == [0, 2]
    assert r.select(success=True) == [0]
    assert r.select(source=["rl", "policy"]) == [1, 2]
    with pytest.raises(ValueError, match="unknown filter"):
        r.select(colour="red")
    with pytest.raises(StoreError, match="read-only"):
        r.begin_episode()
    # images are stored as real JPEG files, one per chunk
    chunk = path / "data/images/front/c/0/0/0/0"
    assert chunk.read_bytes()[:2] == b"\xff\xd8"
    assert r.nbytes_stored() < r.nbytes_raw()


def test_png_codec_is_lossless(tmp_path):
    spec = small_spec(depth=False)
    ep = make_episode(spec, 5)
    with EpisodeStore(tmp_path / "p.zarr", "w", spec, image_codec="png") as s:
        s.add_episode(ep, task="t")
        for k in spec.image_specs():
            np.testing.assert_array_equal(s.episode(0)[k], ep[k])
    with pytest.raises(ValueError, match="unknown image codec 'gif'"):
        EpisodeStore(tmp_path / "q.zarr", "w", spec, image_codec="gif")


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("state/ee_pos", np.zeros(4, np.float32), r"state/ee_pos: expected shape \(3,\)"),
        ("state/joint_pos", np.zeros(7, np.float64), "state/joint_pos: expected dtype float32"),
        ("images/front", np.zeros((32, 40, 3), np.float32), "images/front: expected dtype uint8"),
        ("images/wrist", np.zeros((16, 16, 3), np.uint8), r"images/wrist: expected shape \(32, 32, 3\)"),
        ("depth/front", np.zeros((32, 40), np.uint8), "depth/front: expected dtype uint16"),
        ("action", np.array([0, 0, np.nan, 0, 0, 0, 0], np.float32), "action.*NaN"),
        ("action", np.zeros(6, np.float32), "action: expected shape"),
        ("action", np.full(7, 3.0, np.float32), r"outside \[-1, 1\]"),
        ("state/bogus", np.zeros(1, np.float32), "state/bogus"),
    ],
)
def test_bad_step_is_refused_and_loses_nothing(tmp_path, spec, key, bad, match):
    ep = make_episode(spec, 3)
    with EpisodeStore(tmp_path / "s.zarr", "w", spec) as s:
        w = s.begin_episode(task="t")
        w.add(**step(ep, spec, 0))
        st = step(ep, spec, 1)
        if key == "action":
            st["action"] = bad
        else:
            st["obs"] = {**st["obs"], key: bad}
        with pytest.raises(SpecError, match=match):
            w.add(**st)
        w.add(**step(ep, spec, 1))  # the episode goes on as if the bad step never came
        w.add(**step(ep, spec, 2))
        w.commit()
        _assert_episode_equal(s.episode(0), ep)


def test_bad_whole_episode_is_refused(tmp_path, spec):
    ep = make_episode(spec, 4)
    with EpisodeStore(tmp_path / "s.zarr", "w", spec) as s:
        bad = dict(ep)
        bad["action"] = ep["action"].copy()
        bad["action"][2, 3] = np.nan
        with pytest.raises(SpecError, match=r"action: contains NaN or Inf at steps \[2\]"):
            s.add_episode(bad, task="t")
        with pytest.raises(SpecError, match="misses keys.*state/ee_pos"):
            s.add_episode({k: v for k, v in ep.items() if k != "state/ee_pos"})
        with pytest.raises(SpecError, match="disagree on the episode length"):
            s.add_episode({**ep, "reward": ep["reward"][:2]})
        with pytest.raises(ValueError, match="source 'robot' must be one of"):
            s.add_episode(ep, source="robot")
        with pytest.raises(ValueError, match="unknown episode metadata.*'colour'"):
            s.add_episode(ep, colour="red")
        assert s.num_episodes == 0 and s.num_steps == 0
        s.add_episode(ep)
        _assert_episode_equal(s.episode(0), ep)


def test_spec_mismatch_and_single_writer(tmp_path, spec):
    path = tmp_path / "s.zarr"
    s = EpisodeStore(path, "a", spec)
    with pytest.raises(StoreLocked, match="being written by another process"):
        EpisodeStore(path, "a", spec)
    reader = EpisodeStore(path, "r")  # readers never need the lock
    assert reader.num_episodes == 0
    s.close()
    other = small_spec(size=48)
    with pytest.raises(SpecMismatch, match=r"cameras\[0\].height: 48 != 32"):
        EpisodeStore(path, "a", other)
    with pytest.raises(StoreError, match="no episode store"):
        EpisodeStore(tmp_path / "missing.zarr")
    with pytest.raises(SpecError, match="needs spec="):
        EpisodeStore(tmp_path / "new.zarr", "a")
    EpisodeStore(path, "a", spec).close()  # the lock was released


def test_abort_and_reopen_drop_the_uncommitted_tail(tmp_path, spec):
    path = tmp_path / "s.zarr"
    ep = make_episode(spec, 40)
    with EpisodeStore(path, "w", spec) as s:
        s.add_episode(ep, task="kept")
        w = s.begin_episode(task="dropped")
        for i in range(20):  # > IMAGE_FLUSH: images already hit the disk beyond the committed end
            w.add(**step(ep, spec, i))
        with pytest.raises(StoreError, match="already being written"):
            s.begin_episode()
        w.abort()
        s.add_episode(make_episode(spec, 5, seed=3), task="next")
    r = EpisodeStore(path)
    assert [x.task for x in r.records] == ["kept", "next"]
    _assert_episode_equal(r.episode(1), make_episode(spec, 5, seed=3))


def test_a_new_writer_removes_a_dead_writers_chunks_and_temporaries(tmp_path, spec, caplog):
    """What a crashed writer leaves beyond the committed end (chunk folders, a half-written ``*.partial``) is
    gone once a new writer opens the store, the committed episodes untouched; a clean store opens silently."""
    path = tmp_path / "s.zarr"
    ep = make_episode(spec, 10)
    with EpisodeStore(path, "w", spec) as s:
        s.add_episode(ep, task="kept")
        t, cam = s.num_steps, s.image_keys[0]
    c = path / "data" / cam / "c"
    tail = c / str(t + 2) / "0"
    tail.mkdir(parents=True)
    (tail / "0.3f2a.partial").write_bytes(b"half a png")
    (c / str(t) / "0").mkdir(parents=True)
    (c / str(t) / "0" / "0").write_bytes(b"an uncommitted chunk")
    with caplog.at_level("WARNING"), EpisodeStore(path, "a", spec) as s:
        assert s.num_episodes == 1
    assert "dropped the uncommitted tail" in caplog.text
    assert not list(path.rglob("*.partial")) and not (c / str(t)).exists() and not (c / str(t + 2)).exists()
    _assert_episode_equal(EpisodeStore(path).episode(0), ep)
    caplog.clear()
    with caplog.at_level("WARNING"), EpisodeStore(path, "a", spec):
        pass
    assert "dropped" not in caplog.text


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {helpers!r})
    from flywheel_data_helpers import make_episode, small_spec, step
    from flywheel.data import EpisodeStore
    spec = small_spec()
    s = EpisodeStore({path!r}, "a", spec)
    k = s.num_episodes
    while True:
        ep = make_episode(spec, 12 + k % 7, seed=k)
        w = s.begin_episode(task=f"ep{{k}}")
        for i in range(len(ep["action"])):
            w.add(**step(ep, spec, i))
            if {pause}:
                print("inside", k, flush=True)
        w.commit(success=k % 2 == 0)
        print("committed", k, flush=True)
        k += 1
    """
)


def _check_store(path, spec) -> int:
    r = EpisodeStore(path)
    for i in range(r.num_episodes):
        ep = r.episode(i)
        assert ep.record.task == f"ep{i}"
        _assert_episode_equal(ep, make_episode(spec, 12 + i % 7, seed=i))
    return r.num_episodes


@pytest.mark.slow
def test_writer_killed_mid_episode_leaves_committed_episodes(tmp_path, spec):
    """SIGKILL a writer (a) right inside an episode and (b) at random moments, maybe mid-commit."""
    path = str(tmp_path / "s.zarr")
    helpers = str(Path(__file__).parent)
    committed = 0
    for attempt, delay in enumerate([None, 0.05, 0.21, 0.37]):
        code = WRITER.format(path=path, helpers=helpers, pause="i == 15" if delay is None else "False")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
        seen = []
        try:
            while True:
                line = p.stdout.readline()
                assert line, "writer died early"
                seen.append(line.split())
                if delay is None and line.startswith("inside"):
                    break  # step 15 of an episode: its images have hit the disk, nothing is committed
                if delay is not None and line.startswith("committed"):
                    time.sleep(delay)
                    break
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
        last = max(int(w[1]) for w in seen if w[0] == "committed") + 1 if any(
            w[0] == "committed" for w in seen) else committed
        n = _check_store(path, spec)
        assert n >= max(last, committed), (attempt, n, last)
        committed = n
    # the store takes a new writer, which truncates the dead writer's tail and appends
    with EpisodeStore(path, "a", spec) as s:
        k = s.num_episodes
        s.add_episode(make_episode(spec, 12 + k % 7, seed=k), task=f"ep{k}")
    assert _check_store(path, spec) == committed + 1
    assert not list(Path(path).rglob("*.partial"))


@pytest.mark.slow
def test_readers_train_while_a_writer_appends(tmp_path, spec):
    path = str(tmp_path / "s.zarr")
    EpisodeStore(path, "w", spec).close()
    code = WRITER.format(path=path, helpers=str(Path(__file__).parent), pause="False")
    reader = EpisodeStore(path)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        checked = 0
        deadline = time.time() + 60
        while checked < 8 and time.time() < deadline:
            if reader.refresh():
                for i in range(checked, reader.num_episodes):
                    ep = reader.episode(i)
                    _assert_episode_equal(ep, make_episode(spec, 12 + i % 7, seed=i))
                    reader.read_image("images/wrist", ep.record.end - 1)
                checked = reader.num_episodes
            else:
                # reading committed data while the writer writes beyond it
                if reader.num_episodes:
                    reader.episode(reader.num_episodes - 1)["images/front"]
                time.sleep(0.01)
        assert checked >= 8
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    sys.path.insert(0, {helpers!r})
    from flywheel_data_helpers import small_spec, step
    from flywheel.data import EpisodeStore, StoreError
    spec = small_spec(size=64, depth=False)
    s = EpisodeStore({path!r}, "a", spec)
    rng = np.random.default_rng(0)
    ep = {{k: rng.integers(0, 255, size=(20, *v.shape)).astype(v.dtype) if k.startswith("images")
           else np.zeros((20, *v.shape), v.dtype) for k, v in spec.observation_specs().items()}}
    ep["action"] = np.zeros((20, 7), np.float32)
    ep["reward"] = np.zeros(20, np.float32); ep["intervention"] = np.zeros(20, bool)
    ep["timestamp"] = np.arange(20.0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))  # every noisy JPEG is larger: "disk full"
    w = s.begin_episode(task="big")
    errors = []
    for i in range(20):
        try:
            w.add(**step(ep, spec, i))  # a failed write keeps the step in memory
        except StoreError as e:
            errors.append(str(e))
    try:
        w.commit()
    except StoreError as e:
        errors.append(str(e))
    print("ERROR", errors[-1] if errors else "none")
    print("episodes", EpisodeStore({path!r}).num_episodes)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed: the retry commits it all
    print("retry", w.commit())
    """
)


def test_write_error_is_clear_and_commits_nothing_by_halves(tmp_path):
    spec = small_spec(size=64, depth=False)
    path = str(tmp_path / "s.zarr")
    with EpisodeStore(path, "w", spec) as s:
        s.add_episode(make_episode(spec, 3), task="before")
    code = FULL_DISK.format(path=path, helpers=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ERROR writing episode 1 to"), out.stdout
    assert "File too large" in lines[0] and "Nothing of this episode was committed" in lines[0]
    assert lines[1] == "episodes 1"  # the committed episode is there, the failed one is not
    assert lines[2] == "retry 1"
    r = EpisodeStore(path)
    assert [x.task for x in r.records] == ["before", "big"] and len(r.episode(1)) == 20


def test_import_is_light():
    code = "import sys, flywheel.data; print(sorted(m for m in ('torch', 'zarr', 'rclpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_fsspec_url_store(spec):
    """Any fsspec URL zarr supports (here the in-memory filesystem) holds a store too."""
    ep = make_episode(spec, 4)
    with EpisodeStore("memory://flywheel-test/s.zarr", "w", spec) as s:
        s.add_episode(ep, task="remote")
    r = EpisodeStore("memory://flywheel-test/s.zarr")
    assert r.record(0).task == "remote"
    _assert_episode_equal(r.episode(0), ep)
    np.testing.assert_array_equal(r.read_image("images/wrist", 2), r.episode(0)["images/wrist"][2])
