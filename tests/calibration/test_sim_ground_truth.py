"""The whole pipeline on MuJoCo-rendered ChArUco sessions against their known extrinsics."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.handeye import CalibrationError, DegenerateMotionError, calibrate_session, pose_error
from calibration.poses import PoseSetConfig
from calibration.session import Session
from calibration.simulate import BoardScene, SimConfig, default_poses, simulate_session
from rig.geometry import pose_to_matrix

pytestmark = pytest.mark.render


def _truth(s: Session) -> np.ndarray:
    return pose_to_matrix(np.asarray(s.ground_truth["translation"]), np.asarray(s.ground_truth["quaternion_xyzw"]))


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_rendered_session_recovers_ground_truth(mode, sim_sessions):
    s = Session.load(sim_sessions[mode])
    assert s.source == "sim" and len(s.samples) == 16
    assert s.image(0).shape == (480, 640, 3)
    res = calibrate_session(s)
    t_mm, r_deg = pose_error(res.extrinsic, _truth(s))
    assert t_mm < 2.0 and r_deg < 0.2  # the bar; in practice ~0.05 mm / 0.005 deg
    assert t_mm < 0.5 and r_deg < 0.05
    assert res.rejected == [] and res.warnings == []
    assert res.summary()["holdout_reprojection_px_max"] < 0.5


def test_rendering_matches_the_scene_geometry():
    """The board seen in a rendered image sits where the ground truth puts it (texture orientation, camera
    convention, principal point)."""
    from calibration.board import board_pose, detect
    from calibration.handeye import inv
    from calibration.poses import generate

    cfg = SimConfig(mode="eye_in_hand", width=640, height=480)
    pos, quat = generate(default_poses(cfg))[0]
    with BoardScene(cfg) as scene:
        img = scene.render(pos, quat)
        det = detect(img, cfg.board)
        assert len(det) == cfg.board.num_corners
        c, rms = board_pose(det, scene.intrinsics.camera_matrix, scene.intrinsics.dist)
        truth = inv(scene.x) @ inv(pose_to_matrix(pos, quat)) @ scene.y
    t_mm, r_deg = pose_error(c, truth)
    assert rms < 0.2 and t_mm < 0.3 and r_deg < 0.05


def test_noisy_session_stays_close(tmp_path):
    cfg = SimConfig(mode="eye_to_hand", n_poses=16, seed=5, image_noise=3.0, pose_noise_mm=0.3,
                    pose_noise_deg=0.03)
    s = simulate_session(tmp_path / "noisy", cfg)
    res = calibrate_session(Session.load(tmp_path / "noisy"))
    t_mm, r_deg = pose_error(res.extrinsic, _truth(s))
    assert t_mm < 2.0 and r_deg < 0.2


def test_boardless_session_fails_clearly(tmp_path):
    simulate_session(tmp_path / "s", SimConfig(mode="eye_in_hand", n_poses=5, show_board=False))
    with pytest.raises(CalibrationError, match=r"only 0 of 5 images show the board .* 0 corners < min_corners"):
        calibrate_session(Session.load(tmp_path / "s"))


def test_degenerate_session_fails_clearly(tmp_path):
    cfg = SimConfig(mode="eye_in_hand", n_poses=6)
    cfg.poses = PoseSetConfig(**{**default_poses(cfg).__dict__, "max_tilt_deg": 0.0, "yaw_range_deg": 30.0})
    simulate_session(tmp_path / "s", cfg)
    with pytest.raises(DegenerateMotionError, match="degenerate motion"):
        calibrate_session(Session.load(tmp_path / "s"))
