"""MJCF files on disk: the arm for franka-sim's FR3_MJCF, the Franka Hand, the whole rig."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mujoco
import pytest

from sim import assets

REPO = Path(__file__).resolve().parents[2]
FSIM_PY = REPO / ".fsim-venv" / "bin" / "python"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDA_FLYWHEEL_CACHE", str(tmp_path))


@pytest.mark.parametrize("visual", ["mesh", "primitive"])
def test_arm_mjcf_compiles_with_the_panda_names(visual):
    path = assets.panda_mjcf_path(visual)
    assert path.exists() and path == assets.panda_mjcf_path(visual)  # cached, same content -> same file
    m = mujoco.MjModel.from_xml_path(str(path))
    assert [m.joint(i).name for i in range(m.njnt)] == [f"joint{i}" for i in range(1, 8)]
    assert m.body("link7").id > 0
    assert m.body_mass.sum() == pytest.approx(16.69, abs=0.01)  # Menagerie Panda link masses


def test_hand_and_rig_mjcf():
    hand = mujoco.MjModel.from_xml_path(str(assets.hand_mjcf_path()))
    assert hand.body(1).name == "hand"
    assert {hand.joint(i).name for i in range(hand.njnt)} == {"finger_joint1", "finger_joint2"}
    assert tuple(hand.jnt_range[0]) == (0.0, 0.04)
    rig = mujoco.MjModel.from_xml_path(str(assets.rig_mjcf_path("primitive")))
    assert {rig.camera(i).name for i in range(rig.ncam)} == {"front", "wrist"}


@pytest.mark.skipif(not FSIM_PY.exists(), reason="franka-sim venv (.fsim-venv) not installed")
def test_franka_sim_builds_the_arm_and_hand_offline(tmp_path):
    env = dict(os.environ, FR3_MJCF=str(assets.panda_mjcf_path()), FRANKA_HAND_MJCF=str(assets.hand_mjcf_path()))
    code = ("from franka_sim.mujoco_franka_sim import build_model\n"
            "m, p = build_model(enable_hand=True)\n"
            "print(m.njnt, m.body('hand').id > 0)")
    out = subprocess.run([str(FSIM_PY), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["9", "True"]
