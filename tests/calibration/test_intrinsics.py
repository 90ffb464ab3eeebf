"""Intrinsics: camera_info conversion and calibration from board views."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.board import BoardConfig, synthetic_view
from calibration.intrinsics import Intrinsics, IntrinsicsError, calibrate
from rig.geometry import pose_to_matrix, rotvec_to_quat


def test_camera_info_round_trip_and_ros_message():
    k = np.array([[610.0, 0, 321.5], [0, 612.0, 239.0], [0, 0, 1]])
    intr = Intrinsics(640, 480, k, [0.1, -0.2, 0.001, 0.002, 0.05])
    back = Intrinsics.from_camera_info(intr.to_camera_info())
    np.testing.assert_allclose(back.camera_matrix, k)
    np.testing.assert_allclose(back.dist, intr.dist)
    from sensor_msgs.msg import CameraInfo  # the real message type, as the camera node publishes it

    msg = CameraInfo(**intr.to_camera_info())
    np.testing.assert_allclose(Intrinsics.from_camera_info(msg).camera_matrix, k)


@pytest.mark.parametrize(
    "info, match",
    [
        ({"width": 640, "height": 480}, "needs width, height and k"),
        ({"width": 640, "height": 480, "k": [0.0] * 9}, "uncalibrated camera"),
        ({"width": 640, "height": 480, "k": [500, 0, 320, 0, 500, 240, 0, 0, 1],
          "distortion_model": "equidistant"}, "not supported"),
    ],
)
def test_bad_camera_info_is_refused(info, match):
    with pytest.raises(IntrinsicsError, match=match):
        Intrinsics.from_camera_info(info)


def test_scaled_keeps_the_field_of_view():
    a = Intrinsics.pinhole(640, 480, 55.0)
    b = a.scaled(1280, 960)
    np.testing.assert_allclose(b.camera_matrix, Intrinsics.pinhole(1280, 960, 55.0).camera_matrix)


def test_calibrates_focal_length_and_principal_point_from_views():
    board = BoardConfig()
    truth = Intrinsics(640, 480, np.array([[520.0, 0, 322.0], [0, 520.0, 236.0], [0, 0, 1]]))
    rng = np.random.default_rng(1)
    views = []
    for _ in range(8):
        rv = np.concatenate([rng.uniform(-0.5, 0.5, 2), rng.uniform(-0.3, 0.3, 1)])
        center = np.array([0.12, 0.09, 0.0])
        r = pose_to_matrix(np.zeros(3), rotvec_to_quat(rv))[:3, :3]
        t = np.array([0, 0, rng.uniform(0.4, 0.5)]) - r @ center
        views.append(synthetic_view(board, truth, pose_to_matrix(t, rotvec_to_quat(rv))))
    intr, rms, n = calibrate(views, board)
    assert n == 8 and rms < 0.5
    k = intr.camera_matrix
    assert abs(k[0, 0] - 520) < 520 * 0.01 and abs(k[1, 1] - 520) < 520 * 0.01
    assert abs(k[0, 2] - 322) < 3 and abs(k[1, 2] - 236) < 3


def test_calibration_without_board_views_says_so():
    with pytest.raises(IntrinsicsError, match="only 0 of 3 images show the board"):
        calibrate([np.zeros((480, 640), np.uint8)] * 3, BoardConfig())
