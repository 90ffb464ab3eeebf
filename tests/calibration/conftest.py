"""Shared fixtures: synthetic observations (no rendering) and rendered sim sessions (once per test run)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.board import Detection, board_pose
from calibration.handeye import Observation, inv
from calibration.intrinsics import Intrinsics
from calibration.poses import generate
from calibration.simulate import SimConfig, default_poses, ground_truth, simulate_session
from rig.geometry import pose_to_matrix, quat_mul, rotvec_to_quat


def _synthetic(mode: str, n: int = 16, pixel_noise: float = 0.0, seed: int = 0, poses=None,
              pose_noise_mm: float = 0.0, pose_noise_deg: float = 0.0):
    """Observations of the sim scene's geometry made by projecting the board corners (no images).

    Returns (observations, intrinsics, true X, true Y).
    """
    cfg = SimConfig(mode=mode, n_poses=n, seed=seed)
    x, y = ground_truth(cfg)
    intr = Intrinsics.pinhole(cfg.width, cfg.height, cfg.fovy_deg)
    pts = cfg.board.corner_points()
    rng = np.random.default_rng(seed + 100)
    obs = []
    for i, (pos, quat) in enumerate(poses if poses is not None else generate(default_poses(cfg))):
        g = pose_to_matrix(pos, quat)
        h = inv(g) if mode == "eye_in_hand" else g
        c = inv(x) @ h @ y
        proj, _ = cv2.projectPoints(pts, cv2.Rodrigues(c[:3, :3])[0], c[:3, 3], intr.camera_matrix, intr.dist)
        corners = proj.reshape(-1, 2) + rng.normal(0, pixel_noise, (len(pts), 2))
        det = Detection(np.arange(len(pts)), corners, pts)
        cb, rms = board_pose(det, intr.camera_matrix, intr.dist)
        rp = pos + rng.normal(0, pose_noise_mm * 1e-3, 3)
        rq = quat_mul(quat, rotvec_to_quat(rng.normal(0, np.radians(pose_noise_deg), 3)))
        obs.append(Observation(i, pose_to_matrix(rp, rq), cb, corners, pts, rms))
    return obs, intr, x, y


@pytest.fixture
def synthetic():
    """The synthetic-observation maker: ``synthetic(mode, n=16, pixel_noise=0.0, ...)``."""
    return _synthetic


@pytest.fixture(scope="session")
def sim_sessions(tmp_path_factory):
    """Rendered sim sessions (16 poses, 640x480) in both modes: {mode: path}."""
    root = tmp_path_factory.mktemp("calib_sim")
    out = {}
    for mode in ("eye_in_hand", "eye_to_hand"):
        out[mode] = root / mode
        simulate_session(out[mode], SimConfig(mode=mode, n_poses=16, seed=3))
    return out
