"""``calibrate-handeye`` end to end: board, simulate, solve, intrinsics; failures exit 2 with a message."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import cv2
import pytest
import yaml

from calibration import extrinsics
from calibration.cli import main


def test_board_pdf_and_png(tmp_path, capsys):
    assert main(["board", "--out", str(tmp_path / "b.pdf"), "--paper", "A3"]) == 0
    assert (tmp_path / "b.pdf").read_bytes().startswith(b"%PDF")
    assert "240 x 180 mm on A3" in capsys.readouterr().out
    assert main(["board", "--out", str(tmp_path / "b.png"), "--squares", "6x5", "--px-per-mm", "4"]) == 0
    img = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (5 * 120 + 80, 6 * 120 + 80)
    assert main(["board", "--out", str(tmp_path / "x.png"), "--marker-mm", "40"]) == 2
    assert "smaller than square_length" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["x.pdf", "x.png"])
def test_board_to_an_unwritable_path_is_one_line(tmp_path, capsys, name):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile / name, afile / "sub" / name):  # under a file: unwritable, even for root
        assert main(["board", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("calibrate-handeye board: error: cannot write") and str(afile) in err
    r = subprocess.run([sys.executable, "-m", "calibration.cli", "board", "--out", str(afile / name)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.render
def test_solve_writes_the_calibration_yaml(sim_sessions, tmp_path, capsys):
    out = tmp_path / "wrist.yaml"
    assert main(["solve", str(sim_sessions["eye_in_hand"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and "error vs sim ground truth" in printed
    doc = yaml.safe_load(out.read_text())
    for key in ("calibration_id", "camera", "parent_frame", "translation", "quaternion_xyzw", "method", "date",
                "residuals", "methods", "samples"):
        assert key in doc, key
    assert doc["parent_frame"] == "panda_hand_tcp" and doc["child_frame"] == "sim_wrist_optical_frame"
    assert len(doc["residuals"]["per_sample"]) == 16 and doc["samples"]["rejected"] == []
    assert doc["ground_truth_error"]["translation_mm"] < 2.0 and doc["ground_truth_error"]["rotation_deg"] < 0.2
    e = extrinsics.load(out)  # what the camera node and configs read
    assert e.calibration_id == doc["calibration_id"] and e.matrix().shape == (4, 4)


@pytest.mark.render
def test_solve_with_mode_and_method_subset(sim_sessions, tmp_path):
    out = tmp_path / "front.yaml"
    assert main(["solve", str(sim_sessions["eye_to_hand"]), "--methods", "tsai,shah", "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert set(doc["methods"]) == {"tsai", "shah"} and doc["parent_frame"] == "panda_link0"


@pytest.mark.render
def test_simulate_then_solve_boardless_exits_2(tmp_path, capsys):
    d = tmp_path / "empty"
    assert main(["simulate", str(d), "--mode", "eye_to_hand", "--poses", "4", "--no-board"]) == 0
    assert main(["solve", str(d)]) == 2
    err = capsys.readouterr().err
    assert "only 0 of 4 images show the board" in err and "Traceback" not in err


@pytest.mark.render
def test_degenerate_session_exits_2(tmp_path, capsys):
    d = tmp_path / "yaw_only"
    assert main(["simulate", str(d), "--poses", "6", "--max-tilt-deg", "0", "--yaw-range-deg", "30"]) == 0
    assert main(["solve", str(d)]) == 2
    assert "degenerate motion" in capsys.readouterr().err


@pytest.mark.ros
def test_collect_without_a_rig_exits_2(tmp_path, capsys):
    argv = ["collect", str(tmp_path / "s"), "--camera", "wrist", "--mode", "eye_in_hand", "--no-home",
            "--input-timeout-s", "0.5"]
    assert main(argv) == 2
    assert "no ee_pose within 0.5 s" in capsys.readouterr().err


@pytest.mark.render
def test_check_passes_a_good_calibration_and_flags_drift(sim_sessions, tmp_path, capsys):
    session = sim_sessions["eye_in_hand"]
    good = tmp_path / "good.yaml"
    assert main(["solve", str(session), "--out", str(good)]) == 0
    assert main(["check", str(session), "--calibration", str(good)]) == 0
    assert "ok: stored vs fresh" in capsys.readouterr().out
    doc = yaml.safe_load(good.read_text())
    doc["translation"][0] += 0.004  # the camera mount slipped by 4 mm
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["check", str(session), "--calibration", str(bad)]) == 3
    out = capsys.readouterr().out
    assert "DRIFTED" in out
    stored_px, fresh_px = (float(v) for v in re.findall(r"stored ([\d.]+) px, fresh ([\d.]+) px", out)[0])
    assert stored_px > 5 * fresh_px  # the stored calibration no longer predicts the images
    doc["camera"] = "front"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["check", str(session), "--calibration", str(bad)]) == 2
    assert "is for camera 'front'" in capsys.readouterr().err


def test_solve_missing_session_exits_2(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.render
def test_intrinsics_from_a_session(sim_sessions, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(sim_sessions["eye_in_hand"], d)
    assert main(["intrinsics", str(d)]) == 0
    info = yaml.safe_load((d / "intrinsics.yaml").read_text())
    f_true = 0.5 * 480 / 0.5206  # fovy 55 deg
    assert abs(info["k"][0] - f_true) / f_true < 0.02 and info["rms_px"] < 0.5


def test_console_script_is_installed():
    exe = shutil.which("calibrate-handeye", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "calibrate-handeye console script missing: reinstall the project (pip install -e .)"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "solve" in r.stdout and "collect" in r.stdout
