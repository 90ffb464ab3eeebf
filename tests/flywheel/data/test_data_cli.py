"""flywheel-data: info, check (finds damage) and export-lerobot (reads back with pyarrow + ffmpeg)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from flywheel_data_helpers import small_spec, write_store

from flywheel.data import EpisodeStore
from flywheel.data.cli import main

LENGTHS = [6, 11, 4]


@pytest.fixture
def store_path(tmp_path):
    return str(write_store(tmp_path / "s.zarr", small_spec(size=32, depth=False), LENGTHS, lambda i: dict(
        task=f"task{i % 2}", instruction=f"do task {i % 2}", source=["human", "rl", "rl"][i], success=i != 1)))


def test_info(store_path, capsys):
    assert main(["info", store_path]) == 0
    out = capsys.readouterr().out
    assert "episodes     3   steps 21" in out and "compression" in out
    assert main(["info", store_path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["by_source"]["rl"] == {"episodes": 2, "steps": 15, "success": 1, "labelled": 2}
    assert info["by_task"]["task0"]["episodes"] == 2 and info["compression_ratio"] > 1


def test_check_passes_then_finds_damage(store_path, capsys):
    assert main(["check", store_path]) == 0
    assert "0 errors" in capsys.readouterr().out

    chunk = Path(store_path) / "data/images/front/c/7/0/0/0"
    chunk.write_bytes(b"not a jpeg")
    (Path(store_path) / "data/images/wrist/c/3/0/0/0").unlink()
    assert main(["check", store_path]) == 1
    out = capsys.readouterr().out
    assert "data/images/front: steps [7, 8) of episode(s) 1: the image chunk" in out
    assert "data/images/wrist: steps [3, 4) of episode(s) 0: chunk file missing" in out
    assert "2 damaged episodes: 0, 1; `flywheel-data repair" in out
    assert main(["check", str(Path(store_path).parent / "nope.zarr")]) == 1
    # repair quarantines the damaged episodes; the rest reads and checks clean
    assert main(["repair", store_path]) == 0
    assert "quarantined episode 0" in capsys.readouterr().out
    assert EpisodeStore(store_path).select() == [2]
    assert main(["check", store_path]) == 0
    assert main(["repair", store_path]) == 0
    assert "nothing to repair" in capsys.readouterr().out


def test_check_passes_on_a_healthy_empty_store(tmp_path, capsys):
    with EpisodeStore(tmp_path / "e.zarr", "w", small_spec(size=16, depth=False)):
        pass
    assert main(["check", str(tmp_path / "e.zarr")]) == 0
    assert "0 errors, 0 warnings - OK" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "e.zarr")]) == 0


def _one_line_error(capsys, argv: list[str], *want: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"flywheel-data {argv[0]}: ")
    for w in want:
        assert w in err, err


def test_cli_errors_are_one_clear_line(store_path, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(capsys, ["info", str(tmp_path / "nope.zarr")], "no episode store at")
    _one_line_error(capsys, ["info", str(afile)], "no episode store at")
    _one_line_error(capsys, ["stats", store_path, str(tmp_path / "o"), "--keys", "state/bogus"],
                    "'state/bogus' is not an array of this store")
    _one_line_error(capsys, ["stats", store_path, str(afile / "o")], str(afile))
    _one_line_error(capsys, ["stats", str(tmp_path / "nope.zarr"), str(tmp_path / "o")], "no episode store")
    _one_line_error(capsys, ["repair", str(tmp_path / "nope.zarr")], "no episode store")
    (Path(store_path) / "zarr.json").write_text("{")  # damaged metadata: named, with the way out
    _one_line_error(capsys, ["info", store_path], "zarr.json", "flywheel-data repair")
    _one_line_error(capsys, ["stats", store_path, str(tmp_path / "o")], "zarr.json")
    assert main(["check", store_path]) == 1
    out = capsys.readouterr().out
    assert "cannot open the store" in out and "zarr.json" in out and "Traceback" not in out


def test_stats_command(store_path, tmp_path, capsys):
    from flywheel.data.stats import load_stats

    assert main(["stats", store_path, str(tmp_path / "ckpt"), "--success-only"]) == 0
    stats = load_stats(tmp_path / "ckpt")
    s = EpisodeStore(store_path)
    act = np.concatenate([s.episode(i)["action"] for i in (0, 2)])  # the successful episodes
    np.testing.assert_allclose(stats["action"]["mean"], act.mean(0), rtol=1e-6)
    assert set(stats) == {*s.spec.state_specs(), "action"}


@pytest.mark.slow
def test_export_lerobot_reads_back(store_path, tmp_path):
    import imageio_ffmpeg

    out = tmp_path / "lerobot"
    # through the console script, as users run it
    r = subprocess.run([sys.executable, "-m", "flywheel.data.cli", "export-lerobot", store_path, str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    store = EpisodeStore(store_path)
    spec = store.spec
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3 and info["total_frames"] == 21
    assert info["fps"] == 10 and info["features"]["observation.images.front"]["dtype"] == "video"
    assert info["features"]["observation.images.front"]["shape"] == [32, 40, 3]
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    state = np.concatenate([np.concatenate([store.episode(i)[k] for k in spec.state_specs()], axis=1)
                            for i in range(3)])
    np.testing.assert_array_equal(np.array(data["observation.state"], np.float32), state)
    np.testing.assert_array_equal(np.array(data["action"], np.float32),
                                  np.concatenate([store.episode(i)["action"] for i in range(3)]))
    np.testing.assert_array_equal(np.array(data["next.reward"], np.float32),
                                  np.concatenate([store.episode(i)["reward"] for i in range(3)]))
    np.testing.assert_array_equal(data["complementary_info.is_intervention"],
                                  np.concatenate([store.episode(i)["intervention"] for i in range(3)]))
    assert data["episode_index"] == [0] * 6 + [1] * 11 + [2] * 4
    assert data["index"] == list(range(21)) and data["frame_index"][6:8] == [0, 1]
    assert sum(data["next.done"]) == 3 and data["task_index"][:7] == [0] * 6 + [1]
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["do task 0", "do task 1"]
    assert b"pandas" in tasks.schema.metadata  # pandas.read_parquet restores the task index
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == LENGTHS and eps[1]["dataset_from_index"] == 6
    assert eps[2]["tasks"] == ["do task 0"]
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.allclose(stats["action"]["mean"], np.array(data["action"]).mean(0), atol=1e-6)
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    # videos: every frame, at the episode's from_timestamp, close to the stored JPEG frames (lossy)
    for cam, (h, w) in (("front", (32, 40)), ("wrist", (32, 32))):
        vk = f"observation.images.{cam}"
        gen = imageio_ffmpeg.read_frames(str(out / f"videos/{vk}/chunk-000/file-000.mp4"))
        meta = next(gen)
        assert meta["size"] == (w, h)
        frames = np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])
        assert len(frames) == 21
        for e in eps:
            start = round(e[f"videos/{vk}/from_timestamp"] * 10)
            want = store.episode(e["episode_index"])[f"images/{cam}"]
            got = frames[start:start + e["length"]]
            assert np.abs(got.astype(np.int16) - want.astype(np.int16)).mean() < 8
    # a second export into the same place needs --overwrite
    assert main(["export-lerobot", store_path, str(out)]) == 2
    assert main(["export-lerobot", store_path, str(out), "--overwrite", "--success-only",
                 "--vcodec", "libx264"]) == 0
    assert json.loads((out / "meta/info.json").read_text())["total_episodes"] == 2
