"""The recorded session format and the generated pose sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.board import BoardConfig
from calibration.intrinsics import Intrinsics
from calibration.poses import PoseGenerationError, PoseSetConfig, generate, is_safe
from calibration.session import Session, SessionError, SessionWriter
from rig.geometry import quat_to_matrix
from rig.safety import SafetyConfig


def _session() -> Session:
    return Session(camera="wrist", mode="eye_in_hand", board=BoardConfig(squares_x=6, squares_y=5),
                   intrinsics=Intrinsics.pinhole(64, 48, 50.0))


def test_writer_and_loader_round_trip(tmp_path):
    w = SessionWriter(tmp_path / "s", _session())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    for i, im in enumerate(images):
        w.add(im, [0.4 + i * 0.01, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0], stamp=float(i))
    s = Session.load(tmp_path / "s")
    assert (s.camera, s.mode, s.parent_frame, s.board) == ("wrist", "eye_in_hand", "panda_hand_tcp",
                                                           BoardConfig(squares_x=6, squares_y=5))
    assert [p.image for p in s.samples] == ["images/000.png", "images/001.png", "images/002.png"]
    np.testing.assert_allclose(s.samples[2].position, [0.42, 0.0, 0.3])
    np.testing.assert_array_equal(s.image(1), images[1])  # lossless, RGB order kept
    np.testing.assert_allclose(s.intrinsics.camera_matrix, _session().intrinsics.camera_matrix)
    with pytest.raises(SessionError, match="already holds a session"):
        SessionWriter(tmp_path / "s", _session())


def test_broken_sessions_say_what_is_wrong(tmp_path):
    with pytest.raises(SessionError, match="does not exist"):
        Session.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SessionError, match="session.yaml is missing"):
        Session.load(tmp_path / "empty")
    w = SessionWriter(tmp_path / "s", _session())
    w.add(np.zeros((48, 64, 3), np.uint8), [0.4, 0, 0.3], [1.0, 0, 0, 0])
    poses = json.loads((tmp_path / "s/poses.json").read_text())
    del poses["samples"][0]["quaternion_xyzw"]
    (tmp_path / "s/poses.json").write_text(json.dumps(poses))
    with pytest.raises(SessionError, match="sample 0.*quaternion_xyzw"):
        Session.load(tmp_path / "s")
    with pytest.raises(SessionError, match="mode 'eye_on_hand'"):
        Session(camera="c", mode="eye_on_hand", board=BoardConfig(), intrinsics=Intrinsics.pinhole(64, 48, 50))


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_generated_poses_are_safe_diverse_and_reproducible(mode):
    cfg = PoseSetConfig(mode=mode, n=15, seed=7)
    poses = generate(cfg)
    assert len(poses) == 15
    assert all(is_safe(p, q, SafetyConfig()) for p, q in poses)
    again = generate(cfg)
    np.testing.assert_allclose(np.array([p for p, _ in poses]), np.array([p for p, _ in again]))
    if mode == "eye_in_hand":  # the TCP z axis aims at the board
        for p, q in poses:
            z = quat_to_matrix(q)[:, 2]
            to_board = np.asarray(cfg.look_at) - p
            np.testing.assert_allclose(z, to_board / np.linalg.norm(to_board), atol=1e-9)


def test_unreachable_pose_request_is_refused():
    with pytest.raises(PoseGenerationError, match="inside the safety limits"):
        generate(PoseSetConfig(mode="eye_to_hand", center=[1.5, 0.0, 0.3]), max_tries=200)
