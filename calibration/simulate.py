"""Sim ground truth: a ChArUco board rendered in MuJoCo with known extrinsics, written as a session.

The scene is built here from an MJCF string (independent of the ``sim``
package): the board is a textured quad (the same :class:`BoardConfig` image
the PDF prints, with a white margin) and a pinhole camera.

* eye_in_hand: the board lies on the table; the camera is mounted on a mocap
  "gripper" body (the TCP frame) that moves through the generated poses;
* eye_to_hand: the camera is fixed in the world; the board is mounted on the
  mocap gripper.

The recorded robot poses can carry noise (``pose_noise_mm``/``_deg``) and the
images sensor noise (``image_noise``, gray levels), to measure how the error
grows on a realistic rig. Rendering: ``MUJOCO_GL=egl``, no shadows,
reflections or multisampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from calibration.board import BoardConfig
from calibration.intrinsics import Intrinsics
from calibration.poses import PoseSetConfig, generate, look_at
from calibration.session import Session, SessionWriter, check_mode
from rig.geometry import matrix_to_quat, pose_to_matrix, quat_mul, rotvec_to_quat

log = logging.getLogger(__name__)

# MuJoCo cameras look along -z with y up; OpenCV's optical frame looks along +z with y down.
CV_TO_MJ = np.diag([1.0, -1.0, -1.0])


def _default_camera_in_gripper() -> list[float]:
    # wrist camera 5 cm ahead of the TCP axis, 10 cm up the hand, tilted a few degrees (x y z rx ry rz)
    return [0.05, -0.01, -0.10, 0.04, -0.06, 0.02]


@dataclass
class SimConfig:
    mode: str = "eye_in_hand"
    n_poses: int = 20
    seed: int = 0
    width: int = 640
    height: int = 480
    fovy_deg: float = 55.0
    board: BoardConfig = field(default_factory=BoardConfig)
    board_margin: float = 0.015  # m of white paper around the board
    show_board: bool = True  # False renders no board at all (a boardless session)
    image_noise: float = 0.0  # std of additive Gaussian noise, gray levels
    pose_noise_mm: float = 0.0  # std of the recorded TCP position error, mm per axis
    pose_noise_deg: float = 0.0  # std of the recorded TCP rotation error, degrees per axis
    # eye_in_hand ground truth: camera in the TCP frame [x y z rx ry rz] (m, rotation vector rad);
    # the board lies flat on the table, its centre at board_center
    camera_in_gripper: list[float] = field(default_factory=_default_camera_in_gripper)
    board_center: list[float] = field(default_factory=lambda: [0.5, 0.0, 0.0])
    board_yaw_deg: float = 90.0
    # eye_to_hand ground truth: fixed camera position and look-at point; board on the TCP
    camera_position: list[float] = field(default_factory=lambda: [1.0, 0.05, 0.5])
    camera_look_at: list[float] = field(default_factory=lambda: [0.5, 0.0, 0.3])
    board_offset_in_gripper: list[float] = field(default_factory=lambda: [0.06, 0.0, -0.02])
    poses: PoseSetConfig | None = None  # None: the defaults for the mode

    def __post_init__(self) -> None:
        check_mode(self.mode)


def _rt(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


def ground_truth(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) of the scene: camera optical frame in its parent, board frame in its parent."""
    bw, bh = cfg.board.size_m
    if cfg.mode == "eye_in_hand":
        v = np.asarray(cfg.camera_in_gripper, np.float64)
        x = pose_to_matrix(v[:3], rotvec_to_quat(v[3:]))
        # board face up: board z (into the board) points down, board x along the yawed base x
        yaw = np.radians(cfg.board_yaw_deg)
        bx = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        bz = np.array([0.0, 0.0, -1.0])
        r = np.stack([bx, np.cross(bz, bx), bz], axis=1)
    else:
        x = _rt(look_at(np.asarray(cfg.camera_position), np.asarray(cfg.camera_look_at)),
                np.asarray(cfg.camera_position, np.float64))
        # board on the side of the hand facing +x of the TCP frame, rows along TCP z (upright to the camera)
        r = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    center = np.asarray(cfg.board_center if cfg.mode == "eye_in_hand" else cfg.board_offset_in_gripper)
    y = _rt(r, center - r @ np.array([bw / 2, bh / 2, 0.0]))
    return x, y


def default_poses(cfg: SimConfig) -> PoseSetConfig:
    if cfg.poses is not None:
        return cfg.poses
    if cfg.mode == "eye_in_hand":
        return PoseSetConfig(mode="eye_in_hand", n=cfg.n_poses, seed=cfg.seed, look_at=list(cfg.board_center),
                             distance=[0.25, 0.40], max_tilt_deg=28.0, yaw_range_deg=40.0)
    return PoseSetConfig(mode="eye_to_hand", n=cfg.n_poses, seed=cfg.seed, center=[0.5, 0.0, 0.3],
                         spread=[0.06, 0.12, 0.08], max_tilt_deg=20.0, yaw_range_deg=30.0)


def _wxyz(q_xyzw: np.ndarray) -> str:
    q = np.asarray(q_xyzw)
    return f"{q[3]:.12g} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g}"


def _vec(v: np.ndarray) -> str:
    return " ".join(f"{float(a):.12g}" for a in v)


class BoardScene:
    """The MuJoCo scene of one sim config: ``connect()``, ``render(T_base_gripper)``, ``close()``."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.x, self.y = ground_truth(cfg)
        self.intrinsics = Intrinsics.pinhole(cfg.width, cfg.height, cfg.fovy_deg)
        self._model = self._data = self._renderer = None

    def mjcf(self) -> str:
        cfg = self.cfg
        bw, bh = cfg.board.size_m
        m = cfg.board_margin
        verts = [(-m, -m), (bw + m, -m), (bw + m, bh + m), (-m, bh + m)]
        vertex = " ".join(f"{a:.9g} {b:.9g} 0" for a, b in verts)
        # texture row 0 (the image top) at v = 0; face normal along -z (towards viewer)
        texcoord = "0 0 1 0 1 1 0 1"
        quad = '<geom type="mesh" mesh="board" material="board" contype="0" conaffinity="0"/>' \
            if cfg.show_board else ""
        board_pos, board_q = self.y[:3, 3], matrix_to_quat(self.y[:3, :3])
        cam_r = self.x[:3, :3] @ CV_TO_MJ
        camera = (f'<camera name="cam" pos="{_vec(self.x[:3, 3])}" quat="{_wxyz(matrix_to_quat(cam_r))}" '
                  f'fovy="{cfg.fovy_deg}"/>')
        board = f'<body name="board" pos="{_vec(board_pos)}" quat="{_wxyz(board_q)}">{quad}</body>'
        in_hand, fixed = (camera, board) if cfg.mode == "eye_in_hand" else (board, camera)
        return f"""
<mujoco model="charuco_calibration">
  <compiler inertiafromgeom="false"/>
  <visual>
    <global offwidth="{cfg.width}" offheight="{cfg.height}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.55 0.55 0.55" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <map znear="0.01" zfar="20"/>
  </visual>
  <asset>
    <texture name="board" type="2d" file="board.png"/>
    <material name="board" texture="board" specular="0" shininess="0" reflectance="0"/>
    <mesh name="board" inertia="shell" vertex="{vertex}" face="0 2 1 0 3 2" texcoord="{texcoord}"/>
  </asset>
  <worldbody>
    <geom name="table" type="plane" size="3 3 0.01" pos="0 0 -0.002" rgba="0.35 0.35 0.38 1"
          contype="0" conaffinity="0"/>
    {fixed}
    <body name="gripper" mocap="true" pos="0.5 0 0.4">
      <inertial pos="0 0 0" mass="1" diaginertia="0.01 0.01 0.01"/>
      {in_hand}
    </body>
  </worldbody>
</mujoco>"""

    def board_png(self) -> bytes:
        cfg = self.cfg
        px_per_m = 4000.0
        sq = max(8, round(cfg.board.square_length * px_per_m))
        margin_px = round(cfg.board_margin * sq / cfg.board.square_length)
        ok, buf = cv2.imencode(".png", cfg.board.image(px_per_m, margin_px=margin_px))
        assert ok
        return buf.tobytes()

    def connect(self) -> BoardScene:
        import mujoco

        self._model = mujoco.MjModel.from_xml_string(self.mjcf(), {"board.png": self.board_png()})
        self._data = mujoco.MjData(self._model)
        self._renderer = mujoco.Renderer(self._model, self.cfg.height, self.cfg.width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        return self

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        self._model = self._data = self._renderer = None

    def __enter__(self) -> BoardScene:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def render(self, pos: np.ndarray, quat: np.ndarray) -> np.ndarray:
        """RGB image with the gripper (TCP) at ``pos``/``quat`` (xyzw) in the base frame."""
        import mujoco

        if self._renderer is None:
            raise RuntimeError("BoardScene.render before connect()")
        self._data.mocap_pos[0] = pos
        q = np.asarray(quat, np.float64)
        self._data.mocap_quat[0] = [q[3], q[0], q[1], q[2]]
        mujoco.mj_forward(self._model, self._data)
        self._renderer.update_scene(self._data, camera="cam")
        return self._renderer.render().copy()


def perturb_pose(pos: np.ndarray, quat: np.ndarray, mm: float, deg: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    p = pos + rng.normal(0.0, mm * 1e-3, 3)
    q = quat_mul(quat, rotvec_to_quat(rng.normal(0.0, np.radians(deg), 3)))
    return p, q / np.linalg.norm(q)


def simulate_session(out_dir: str | Path, cfg: SimConfig, overwrite: bool = False,
                     progress: bool = False) -> Session:
    """Render a whole session into ``out_dir`` (session.yaml, poses.json, images/) with ground truth."""
    poses = generate(default_poses(cfg))
    rng = np.random.default_rng(cfg.seed + 1)
    scene = BoardScene(cfg)
    gt = {
        "translation": [float(v) for v in scene.x[:3, 3]],
        "quaternion_xyzw": [float(v) for v in matrix_to_quat(scene.x[:3, :3])],
        "board_translation": [float(v) for v in scene.y[:3, 3]],
        "board_quaternion_xyzw": [float(v) for v in matrix_to_quat(scene.y[:3, :3])],
        "image_noise": cfg.image_noise,
        "pose_noise_mm": cfg.pose_noise_mm,
        "pose_noise_deg": cfg.pose_noise_deg,
    }
    session = Session(camera="sim_" + ("wrist" if cfg.mode == "eye_in_hand" else "front"), mode=cfg.mode,
                      board=cfg.board, intrinsics=scene.intrinsics, source="sim", ground_truth=gt)
    writer = SessionWriter(out_dir, session, overwrite=overwrite)
    it = poses
    if progress:
        from tqdm import tqdm

        it = tqdm(poses, desc=f"render {cfg.mode}", unit="img")
    with scene:
        for pos, quat in it:
            img = scene.render(pos, quat)
            if cfg.image_noise > 0:
                img = np.clip(img + rng.normal(0.0, cfg.image_noise, img.shape), 0, 255).astype(np.uint8)
            rp, rq = perturb_pose(pos, quat, cfg.pose_noise_mm, cfg.pose_noise_deg, rng)
            writer.add(img, rp, rq)
    log.info("wrote sim session %s (%d images, %s)", out_dir, len(poses), cfg.mode)
    return session
