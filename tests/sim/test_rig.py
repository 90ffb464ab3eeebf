"""SimRig: the impedance controller, the gripper, state, wrench, rendering."""

from __future__ import annotations

import numpy as np
import pytest

from rig.geometry import quat_angle
from sim.model import HOME_JOINTS, ObjectSpec
from sim.rig import SimRig

DOWN = np.array([1.0, 0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def rig():
    r = SimRig((ObjectSpec("cube", "box"),)).connect()
    yield r
    r.close()


def test_home_pose_is_the_franka_tcp_pointing_down(rig):
    rig.reset()
    s = rig.state()
    np.testing.assert_allclose(s["state/joint_pos"], HOME_JOINTS, atol=1e-6)
    np.testing.assert_allclose(s["state/ee_pos"], [0.307, 0.0, 0.487], atol=2e-3)
    assert quat_angle(s["state/ee_quat"], DOWN) < 1e-3
    assert s["state/gripper_width"][0] == pytest.approx(0.08, abs=1e-4)
    for k in ("state/ee_pos", "state/ee_quat", "state/joint_pos", "state/joint_vel", "state/ee_wrench"):
        assert s[k].dtype == np.float32


def test_holds_still_under_gravity_and_reaches_a_target(rig):
    rig.reset()
    p0 = rig.ee_pos
    rig.step(250)
    assert np.linalg.norm(rig.ee_pos - p0) < 1e-3
    goal = np.array([0.5, 0.1, 0.2])
    quat = np.array([np.cos(0.2), np.sin(0.2), 0.0, 0.0])  # pointing down, yawed 0.4 rad
    rig.set_cartesian_target(goal, quat)
    rig.step(750)
    s = rig.state()
    assert np.linalg.norm(s["state/ee_pos"] - goal) < 3e-3
    assert quat_angle(s["state/ee_quat"], quat) < 0.02
    assert np.abs(s["state/joint_vel"]).max() < 0.05


def test_stiffness_means_what_franky_means(rig):
    """A static offset force F on a spring K moves the TCP by F/K (gravity compensated)."""
    rig.reset_to_pose(np.array([0.45, 0.0, 0.3]), DOWN)
    rig.set_impedance(translational_stiffness=1000.0)
    try:
        hand = rig.model.body("hand").id
        rig.data.xfrc_applied[hand, 2] = -10.0  # push down 10 N at the hand
        rig.step(1500)
        dz = 0.3 - rig.ee_pos[2]
        assert dz == pytest.approx(10.0 / 1000.0, rel=0.25)
    finally:
        rig.data.xfrc_applied[:] = 0.0
        rig.set_impedance(translational_stiffness=2000.0)


def test_gripper_moves_at_speed_and_grasps_with_force_limit(rig):
    rig.reset()
    rig.set_gripper(0.0, speed=0.1, force=20.0)
    rig.step(100)  # 0.2 s at 0.1 m/s -> about 0.02 m closed
    assert 0.05 < rig.gripper_width < 0.07
    rig.step(400)
    assert rig.gripper_width < 0.002
    rig.set_gripper(0.05, speed=0.1)
    rig.step(400)
    assert rig.gripper_width == pytest.approx(0.05, abs=2e-3)
    with pytest.raises(ValueError, match="speed"):
        rig.set_gripper(0.05, speed=0.0)


def test_wrench_sees_the_table_pushing_back(rig):
    rig.reset_to_pose(np.array([0.6, -0.2, 0.05]), DOWN)
    rig.set_gripper(0.0, speed=0.1)
    rig.step(200)
    rig.set_cartesian_target(np.array([0.6, -0.2, -0.02]), DOWN)  # 2 cm into the table
    rig.step(500)
    w = rig.state()["state/ee_wrench"]
    assert w[2] > 10.0  # the table pushes up on the fingers
    assert abs(w[0]) < 0.5 * w[2] and abs(w[1]) < 0.5 * w[2]


def test_ik_reset_to_pose(rig):
    pos = np.array([0.5, -0.1, 0.15])
    rig.reset_to_pose(pos, DOWN)
    assert np.linalg.norm(rig.ee_pos - pos) < 1e-4


def test_bad_targets_are_refused(rig):
    with pytest.raises(ValueError, match="target"):
        rig.set_cartesian_target(np.array([np.nan, 0, 0]), DOWN)
    with pytest.raises(ValueError, match="500 Hz"):
        SimRig(timestep=0.01)
    with pytest.raises(RuntimeError, match="connect"):
        SimRig().step(1)


@pytest.mark.render
def test_render_rgb_and_depth_change_when_the_arm_moves(rig):
    rig.reset()
    a = rig.render("front", 64, 64)
    w = rig.render("wrist", 64, 64)
    d = rig.render("front", 64, 64, depth=True)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and w.shape == (64, 64, 3)
    assert d.shape == (64, 64) and d.dtype == np.uint16 and d.max() > 0
    rig.set_cartesian_target(np.array([0.5, 0.15, 0.15]), DOWN)
    rig.step(500)
    b = rig.render("front", 64, 64)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0
    b[:] = 0  # a fresh array each time: the next render is unaffected
    assert rig.render("front", 64, 64).any()
