"""The board: definition checks, true-scale PDF, corner detection and board pose."""

from __future__ import annotations

import re
import zlib

import cv2
import numpy as np
import pytest

from calibration.board import BoardConfig, BoardError, board_pose, detect, synthetic_view, write_pdf
from calibration.handeye import pose_error
from calibration.intrinsics import Intrinsics
from rig.geometry import pose_to_matrix, rotvec_to_quat


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"marker_length": 0.04}, "smaller than square_length"),
        ({"dictionary": "DICT_NOPE"}, "unknown ArUco dictionary"),
        ({"squares_x": 12, "squares_y": 10}, "has only 50"),
        ({"squares_x": 1}, "at least 2x2"),
    ],
)
def test_bad_board_is_refused_with_the_reason(kwargs, match):
    with pytest.raises(BoardError, match=match):
        BoardConfig(**kwargs)


def test_board_round_trips_and_refuses_unknown_keys():
    b = BoardConfig(squares_x=6, squares_y=5, dictionary="DICT_5X5_100")
    assert BoardConfig.from_dict(b.to_dict()) == b
    with pytest.raises(BoardError, match="unknown board keys"):
        BoardConfig.from_dict({**b.to_dict(), "square_size": 1})


def test_board_is_a_hydra_structured_config():
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from calibration.board import register

    register()
    node = ConfigStore.instance().load("calibration/board/default.yaml").node
    cfg = OmegaConf.merge(node, {"squares_x": 6, "dictionary": "DICT_5X5_100"})
    assert BoardConfig.from_dict(OmegaConf.to_container(cfg)) == BoardConfig(squares_x=6, dictionary="DICT_5X5_100")


def _pdf_streams(data: bytes) -> list[bytes]:
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        raw = m.group(1)
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            out.append(raw)
    return out


def test_pdf_is_at_true_scale(tmp_path):
    b = BoardConfig()
    lay = write_pdf(b, tmp_path / "board.pdf", "A4")
    data = (tmp_path / "board.pdf").read_bytes()
    pt = 72 / 25.4
    box = [float(v) for v in re.search(rb"/MediaBox \[ *([\d. ]+)\]", data).group(1).split()]
    assert box[2] == pytest.approx(297 * pt, abs=0.1) and box[3] == pytest.approx(210 * pt, abs=0.1)
    # the board image is placed by `1 0 0 1 x y cm w 0 0 -h 0 h cm /I1 Do`: its size on paper is the board's
    pat = rb"1 0 0 1 ([\d.]+) ([\d.]+) cm ([\d.]+) 0 0\s+-?([\d.]+) 0 [\d.]+ cm /I"
    cms = [c for s in _pdf_streams(data) for c in re.findall(pat, s)]
    assert cms, "no image placement found in the PDF"
    x, y, w, h = (float(v) for v in cms[0])
    assert w == pytest.approx(240 * pt, abs=0.05) and h == pytest.approx(180 * pt, abs=0.05)
    assert x == pytest.approx(lay["board_x"] * pt, abs=0.05)
    with pytest.raises(BoardError, match="does not fit"):
        write_pdf(BoardConfig(squares_x=10, squares_y=8, square_length=0.04, marker_length=0.03),
                  tmp_path / "big.pdf", "A4")


def test_detects_corners_and_recovers_the_board_pose():
    board, intr = BoardConfig(), Intrinsics.pinhole(640, 480, 55.0)
    truth = pose_to_matrix(np.array([-0.11, -0.08, 0.42]), rotvec_to_quat(np.array([0.25, -0.2, 0.1])))
    det = detect(synthetic_view(board, intr, truth), board)
    assert len(det) >= 30
    proj, _ = cv2.projectPoints(det.object_points, cv2.Rodrigues(truth[:3, :3])[0], truth[:3, 3],
                                intr.camera_matrix, intr.dist)
    assert np.abs(proj.reshape(-1, 2) - det.corners).max() < 0.35
    est, rms = board_pose(det, intr.camera_matrix, intr.dist)
    t_mm, r_deg = pose_error(est, truth)
    assert rms < 0.3 and t_mm < 1.0 and r_deg < 0.2


def test_empty_image_gives_no_detection():
    det = detect(np.full((480, 640, 3), 200, np.uint8), BoardConfig())
    assert len(det) == 0
    with pytest.raises(BoardError, match="at least 4 corners"):
        board_pose(det, np.eye(3), np.zeros(5))
