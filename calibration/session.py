"""The recorded calibration session: a directory that can be solved again at any time.

Layout (format version 1)::

    SESSION_DIR/
      session.yaml     # what was recorded: camera, mode, frames, board, intrinsics, source, date
      poses.json       # one entry per sample: base -> gripper pose when the image was taken
      images/000.png   # the camera images (colour or gray PNG), one per sample

``session.yaml``::

    format_version: 1
    camera: wrist                  # camera name (topic cameras/<name>/...)
    mode: eye_in_hand              # or eye_to_hand
    base_frame: panda_link0
    gripper_frame: panda_hand_tcp  # the frame the poses in poses.json are of (ee_pose's frame)
    created: '2026-11-21T08:00:00Z'
    source: rig                    # rig | sim
    board: {squares_x: 8, squares_y: 6, square_length: 0.03, marker_length: 0.022,
            dictionary: DICT_4X4_50, legacy_pattern: false}
    intrinsics: {width: 640, height: 480, distortion_model: plumb_bob, d: [...], k: [...], ...}
    ground_truth:                  # sim sessions only: the true extrinsics
      translation: [x, y, z]       # camera optical frame in the parent frame, m
      quaternion_xyzw: [x, y, z, w]
      board_translation: [...]     # board in base (eye_in_hand) or gripper (eye_to_hand)
      board_quaternion_xyzw: [...]

``poses.json``: ``{"samples": [{"index": 0, "image": "images/000.png",
"position": [x, y, z], "quaternion_xyzw": [x, y, z, w], "stamp": 12.3}, ...]}``
with positions in metres in ``base_frame``. Writers flush both files after every
sample, so an interrupted collection keeps what it recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from calibration.board import BoardConfig, BoardError
from calibration.intrinsics import Intrinsics, IntrinsicsError
from rig.geometry import pose_to_matrix, quat_normalize
from rig.spec import BASE_FRAME, TCP_FRAME

FORMAT_VERSION = 1
MODES = ("eye_in_hand", "eye_to_hand")


class SessionError(ValueError):
    """A session directory that is missing files or contradicts itself."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SessionError(f"mode {mode!r} is not one of {MODES}")
    return mode


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class PoseSample:
    """One recorded robot pose (base -> gripper) and the image taken there."""

    index: int
    image: str  # path relative to the session directory
    position: np.ndarray  # (3,) m
    quaternion: np.ndarray  # (4,) x, y, z, w
    stamp: float | None = None

    def matrix(self) -> np.ndarray:
        return pose_to_matrix(self.position, self.quaternion)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "image": self.image,
            "position": [float(v) for v in self.position],
            "quaternion_xyzw": [float(v) for v in self.quaternion],
            "stamp": self.stamp,
        }


@dataclass
class Session:
    camera: str
    mode: str
    board: BoardConfig
    intrinsics: Intrinsics
    samples: list[PoseSample] = field(default_factory=list)
    base_frame: str = BASE_FRAME
    gripper_frame: str = TCP_FRAME
    source: str = "rig"
    created: str = field(default_factory=utc_now)
    ground_truth: dict[str, Any] | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode)

    @property
    def parent_frame(self) -> str:
        """The frame the solved camera pose is expressed in."""
        return self.gripper_frame if self.mode == "eye_in_hand" else self.base_frame

    def image(self, i: int) -> np.ndarray:
        """Sample ``i``'s image as RGB (or gray) uint8."""
        if self.path is None:
            raise SessionError("session has no directory to read images from")
        p = self.path / self.samples[i].image
        im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise SessionError(f"cannot read image {p} of sample {i}: missing or not an image")
        return cv2.cvtColor(im, cv2.COLOR_BGR2RGB) if im.ndim == 3 else im

    # ------------------------------------------------------------- files
    def header(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "camera": self.camera,
            "mode": self.mode,
            "base_frame": self.base_frame,
            "gripper_frame": self.gripper_frame,
            "created": self.created,
            "source": self.source,
            "board": self.board.to_dict(),
            "intrinsics": self.intrinsics.to_camera_info(),
        }
        if self.ground_truth is not None:
            d["ground_truth"] = self.ground_truth
        return d

    def write_files(self) -> None:
        """(Re)write session.yaml and poses.json; images are written by :class:`SessionWriter`."""
        if self.path is None:
            raise SessionError("session has no directory")
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / "session.yaml", yaml.safe_dump(self.header(), sort_keys=False))
        _atomic_write(
            self.path / "poses.json",
            json.dumps({"samples": [s.to_dict() for s in self.samples]}, indent=1),
        )

    @classmethod
    def load(cls, path: str | Path) -> Session:
        path = Path(path)
        if not path.is_dir():
            raise SessionError(f"session directory {path} does not exist")
        for name in ("session.yaml", "poses.json"):
            if not (path / name).is_file():
                raise SessionError(
                    f"{path} is not a calibration session: {name} is missing (expected session.yaml, "
                    "poses.json and images/; see calibration/session.py)"
                )
        try:
            head = yaml.safe_load((path / "session.yaml").read_text()) or {}
            poses = json.loads((path / "poses.json").read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise SessionError(f"{path}: cannot parse session files: {e}") from e
        version = head.get("format_version")
        if version != FORMAT_VERSION:
            raise SessionError(f"{path}/session.yaml: format_version {version!r}, this code reads {FORMAT_VERSION}")
        missing = [k for k in ("camera", "mode", "board", "intrinsics") if k not in head]
        if missing:
            raise SessionError(f"{path}/session.yaml misses keys {missing}")
        try:
            board = BoardConfig.from_dict(dict(head["board"]))
            intr = Intrinsics.from_camera_info(head["intrinsics"])
        except (BoardError, IntrinsicsError, TypeError) as e:
            raise SessionError(f"{path}/session.yaml: {e}") from e
        samples = []
        for j, s in enumerate(poses.get("samples", [])):
            try:
                samples.append(
                    PoseSample(
                        index=int(s.get("index", j)),
                        image=str(s["image"]),
                        position=np.asarray(s["position"], dtype=np.float64).reshape(3),
                        quaternion=quat_normalize(np.asarray(s["quaternion_xyzw"], np.float64).reshape(4)),
                        stamp=s.get("stamp"),
                    )
                )
            except (KeyError, ValueError, TypeError) as e:
                raise SessionError(
                    f"{path}/poses.json sample {j}: {e!r}; each sample needs image, position [x, y, z] "
                    "and quaternion_xyzw [x, y, z, w]"
                ) from e
        return cls(
            camera=str(head["camera"]),
            mode=check_mode(str(head["mode"])),
            board=board,
            intrinsics=intr,
            samples=samples,
            base_frame=str(head.get("base_frame", BASE_FRAME)),
            gripper_frame=str(head.get("gripper_frame", TCP_FRAME)),
            source=str(head.get("source", "rig")),
            created=str(head.get("created", "")),
            ground_truth=head.get("ground_truth"),
            path=path,
        )


class SessionWriter:
    """Records a session sample by sample (image + pose), flushing the files after each one."""

    def __init__(self, path: str | Path, session: Session, overwrite: bool = False) -> None:
        self.path = Path(path)
        if (self.path / "poses.json").exists() and not overwrite:
            raise SessionError(f"{self.path} already holds a session; pick a new directory or pass overwrite")
        session.path = self.path
        session.samples = []
        self.session = session
        (self.path / "images").mkdir(parents=True, exist_ok=True)
        session.write_files()

    def add(self, image: np.ndarray, position: np.ndarray, quaternion: np.ndarray,
            stamp: float | None = None) -> PoseSample:
        i = len(self.session.samples)
        rel = f"images/{i:03d}.png"
        im = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        if not cv2.imwrite(str(self.path / rel), im):
            raise SessionError(f"cannot write {self.path / rel}")
        s = PoseSample(i, rel, np.asarray(position, np.float64).reshape(3),
                       quat_normalize(np.asarray(quaternion, np.float64).reshape(4)), stamp)
        self.session.samples.append(s)
        self.session.write_files()
        return s


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
