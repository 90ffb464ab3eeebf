"""Camera intrinsics: from the device (CameraInfo / RealSense) or calibrated from ChArUco images.

Pixel convention is OpenCV's: pixel centres at integer coordinates, (0, 0) the
centre of the top-left pixel. Distortion follows ROS ``plumb_bob`` (k1, k2, p1,
p2, k3), which is OpenCV's 5-coefficient model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from calibration.board import BoardConfig, detect


class IntrinsicsError(ValueError):
    """Intrinsics that are missing, malformed or cannot be calibrated."""


@dataclass
class Intrinsics:
    width: int
    height: int
    camera_matrix: np.ndarray  # (3, 3)
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))  # plumb_bob (k1, k2, p1, p2, k3)
    model: str = "plumb_bob"

    def __post_init__(self) -> None:
        self.camera_matrix = np.asarray(self.camera_matrix, dtype=np.float64).reshape(3, 3)
        self.dist = np.asarray(self.dist, dtype=np.float64).reshape(-1)
        if self.width <= 0 or self.height <= 0:
            raise IntrinsicsError(f"image size must be positive, got {self.width}x{self.height}")
        fx, fy = self.camera_matrix[0, 0], self.camera_matrix[1, 1]
        if not (np.isfinite(self.camera_matrix).all() and fx > 0 and fy > 0):
            raise IntrinsicsError(
                f"camera_matrix needs positive finite fx, fy, got fx={fx}, fy={fy}: is camera_info "
                "filled in (K all zeros means an uncalibrated camera)?"
            )

    @classmethod
    def pinhole(cls, width: int, height: int, fovy_deg: float) -> Intrinsics:
        """An ideal camera with square pixels and the principal point at the image centre."""
        f = 0.5 * height / np.tan(np.radians(fovy_deg) / 2)
        k = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
        return cls(width, height, k, np.zeros(5))

    # --------------------------------------------------------- camera_info
    @classmethod
    def from_camera_info(cls, msg: Any) -> Intrinsics:
        """From a sensor_msgs/CameraInfo message or a dict with its fields (width, height, k, d)."""
        def get(name: str, default: Any = None) -> Any:
            return msg.get(name, default) if isinstance(msg, Mapping) else getattr(msg, name, default)

        width, height, k = get("width"), get("height"), get("k")
        if width is None or height is None or k is None or len(k) != 9:
            raise IntrinsicsError("camera_info needs width, height and k (9 values, row-major 3x3)")
        width, height = int(width), int(height)
        d = get("d")
        d = np.asarray([] if d is None else list(d), dtype=np.float64)
        model = get("distortion_model", "") or "plumb_bob"
        if model not in ("plumb_bob", "rational_polynomial"):
            raise IntrinsicsError(
                f"distortion_model {model!r} is not supported; use plumb_bob or rational_polynomial"
            )
        return cls(width, height, np.asarray(list(k), dtype=np.float64), d if d.size else np.zeros(5), model)

    def to_camera_info(self) -> dict[str, Any]:
        """The CameraInfo fields (plain lists) for a ROS message or YAML."""
        p = np.zeros((3, 4))
        p[:3, :3] = self.camera_matrix
        return {
            "width": int(self.width),
            "height": int(self.height),
            "distortion_model": self.model,
            "d": [float(v) for v in self.dist],
            "k": [float(v) for v in self.camera_matrix.reshape(-1)],
            "r": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
            "p": [float(v) for v in p.reshape(-1)],
        }

    @classmethod
    def from_realsense(cls, intr: Any) -> Intrinsics:
        """From a ``pyrealsense2.intrinsics`` (the device's factory calibration)."""
        k = np.array([[intr.fx, 0, intr.ppx], [0, intr.fy, intr.ppy], [0, 0, 1]])
        return cls(int(intr.width), int(intr.height), k, np.asarray(list(intr.coeffs)[:5], np.float64))

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera at another resolution (same field of view)."""
        sx, sy = width / self.width, height / self.height
        k = self.camera_matrix.copy()
        k[0, 0] *= sx
        k[1, 1] *= sy
        k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
        k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
        return Intrinsics(width, height, k, self.dist.copy(), self.model)


def calibrate(
    images: Iterable[np.ndarray], board: BoardConfig, min_corners: int = 8, min_views: int = 5
) -> tuple[Intrinsics, float, int]:
    """Calibrate intrinsics from board images. Returns (intrinsics, RMS reprojection px, views used).

    Views need several board orientations (tilted by 20-45 degrees) for the
    focal length to be observable; a set of fronto-parallel views fails or
    gives a poor focal length.
    """
    objs, imgs, size = [], [], None
    n_total = 0
    for im in images:
        n_total += 1
        h, w = im.shape[:2]
        if size is None:
            size = (w, h)
        elif size != (w, h):
            raise IntrinsicsError(f"image {n_total - 1} is {w}x{h}, the first was {size[0]}x{size[1]}")
        det = detect(im, board)
        if len(det) >= min_corners:
            objs.append(det.object_points.astype(np.float32))
            imgs.append(det.corners.astype(np.float32).reshape(-1, 1, 2))
    if len(objs) < min_views:
        raise IntrinsicsError(
            f"only {len(objs)} of {n_total} images show the board ({board.describe()}) with >= "
            f"{min_corners} corners; intrinsics need >= {min_views} such views"
        )
    assert size is not None
    rms, k, d, _, _ = cv2.calibrateCamera(objs, imgs, size, None, None)
    return Intrinsics(size[0], size[1], k, d.reshape(-1)[:5]), float(rms), len(objs)
