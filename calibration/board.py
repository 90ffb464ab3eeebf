"""The ChArUco board: its definition, a printable PDF at true scale, detection and board pose.

A :class:`BoardConfig` is the one description of the physical board (squares,
square and marker size in metres, ArUco dictionary). The same config makes the
printed PDF, the texture of the simulated board and the detector, so a board
that prints, renders and detects is the same board everywhere.

Board frame (OpenCV's): origin at the top-left outer corner of the printed
board, x to the right along the columns, y down along the rows, z into the
board. The chessboard corner with id ``k`` sits at
``((k % (squares_x - 1) + 1) * square, (k // (squares_x - 1) + 1) * square, 0)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PAPER_MM = {"A4": (210.0, 297.0), "A3": (297.0, 420.0), "letter": (215.9, 279.4)}


class BoardError(ValueError):
    """A board definition that cannot work (bad sizes, unknown dictionary, does not fit the paper)."""


@dataclass(frozen=True)
class BoardConfig:
    """A ChArUco board. Lengths in metres; the defaults print on A4 (240 x 180 mm)."""

    squares_x: int = 8
    squares_y: int = 6
    square_length: float = 0.030
    marker_length: float = 0.022
    dictionary: str = "DICT_4X4_50"
    legacy_pattern: bool = False  # boards printed by OpenCV < 4.6 with an even number of rows

    def __post_init__(self) -> None:
        if self.squares_x < 2 or self.squares_y < 2:
            raise BoardError(
                f"board needs at least 2x2 squares, got squares_x={self.squares_x}, squares_y={self.squares_y}"
            )
        if not 0 < self.marker_length < self.square_length:
            raise BoardError(
                f"marker_length={self.marker_length} must be positive and smaller than "
                f"square_length={self.square_length} (both in metres)"
            )
        if not self.dictionary.startswith("DICT_") or not hasattr(cv2.aruco, self.dictionary):
            raise BoardError(
                f"unknown ArUco dictionary {self.dictionary!r}; use one of cv2.aruco's DICT_* names, "
                "e.g. DICT_4X4_50, DICT_5X5_100, DICT_6X6_250"
            )
        n_markers = (self.squares_x * self.squares_y) // 2
        size = int(self.dictionary.split("_")[-1])
        if n_markers > size:
            raise BoardError(
                f"a {self.squares_x}x{self.squares_y} board needs {n_markers} markers but "
                f"{self.dictionary} has only {size}; pick a larger dictionary"
            )

    # ------------------------------------------------------------ geometry
    @property
    def size_m(self) -> tuple[float, float]:
        """Board (width, height) in metres."""
        return self.squares_x * self.square_length, self.squares_y * self.square_length

    @property
    def num_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    def corner_points(self) -> np.ndarray:
        """(num_corners, 3) chessboard corners in the board frame, indexed by corner id."""
        return np.asarray(self.make().getChessboardCorners(), dtype=np.float64).reshape(-1, 3)

    def make(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        b = cv2.aruco.CharucoBoard(
            (self.squares_x, self.squares_y), self.square_length, self.marker_length, d
        )
        b.setLegacyPattern(self.legacy_pattern)
        return b

    def image(self, px_per_m: float = 4000.0, margin_px: int = 0) -> np.ndarray:
        """The board as a grayscale uint8 image at ``px_per_m`` (a whole number of pixels per square)."""
        sq = max(8, round(self.square_length * px_per_m))
        w, h = self.squares_x * sq, self.squares_y * sq
        return self.make().generateImage((w + 2 * margin_px, h + 2 * margin_px), marginSize=margin_px)

    # ------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoardConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BoardError(f"unknown board keys {sorted(unknown)}; known keys are {sorted(known)}")
        return cls(**d)

    def describe(self) -> str:
        return (
            f"ChArUco {self.squares_x}x{self.squares_y}, square {self.square_length * 1e3:.1f} mm, "
            f"marker {self.marker_length * 1e3:.1f} mm, {self.dictionary}"
        )


def register() -> None:
    """Register the board as a hydra structured config (group ``calibration/board``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="calibration/board", name="default", node=BoardConfig)


# ------------------------------------------------------------------ printing
def write_pdf(board: BoardConfig, path: str | Path, paper: str = "A4") -> dict[str, float]:
    """Write the board to a one-page PDF at true physical scale.

    The page carries the board description, a 100 mm check bar and the note to
    print at 100 %. Returns the layout in mm (page and board size, board origin
    from the page's lower-left corner) so callers and tests can check the scale.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if paper not in PAPER_MM:
        raise BoardError(f"unknown paper {paper!r}; use one of {sorted(PAPER_MM)}")
    pw, ph = PAPER_MM[paper]
    bw, bh = (v * 1e3 for v in board.size_m)
    if bw > bh:  # landscape board on a landscape page
        pw, ph = max(pw, ph), min(pw, ph)
    text_mm, margin = 14.0, 5.0
    if bw + 2 * margin > pw or bh + 2 * margin + text_mm > ph:
        raise BoardError(
            f"the {bw:.0f} x {bh:.0f} mm board does not fit on {paper} ({pw:.0f} x {ph:.0f} mm) with "
            f"margins; use a larger paper (--paper A3) or smaller squares"
        )
    fig = Figure(figsize=(pw / 25.4, ph / 25.4))
    x0 = (pw - bw) / 2
    y0 = (ph - bh + text_mm) / 2  # board above the text block
    ax = fig.add_axes((x0 / pw, y0 / ph, bw / pw, bh / ph))
    ax.imshow(board.image(px_per_m=4000.0), cmap="gray", vmin=0, vmax=255, interpolation="none",
              extent=(0, bw, bh, 0), aspect="auto")
    ax.set_axis_off()
    # 100 mm check bar and the description under the board
    bar_y = (y0 - 5.0) / ph
    fig.add_artist(Line2D([x0 / pw, (x0 + 100.0) / pw], [bar_y, bar_y], color="black",
                                           linewidth=1.5, solid_capstyle="butt"))
    for xm in (x0, x0 + 100.0):
        fig.add_artist(Line2D([xm / pw, xm / pw], [bar_y - 1.5 / ph, bar_y + 1.5 / ph],
                                               color="black", linewidth=1.0))
    fig.text((x0 + 104.0) / pw, bar_y, "this bar must measure 100 mm", va="center", fontsize=8)
    fig.text(x0 / pw, (y0 - 10.0) / ph,
             f"{board.describe()}  |  print at 100 % (no fit-to-page) on {paper}  |  "
             f"board {bw:.1f} x {bh:.1f} mm", va="center", fontsize=8)
    fig.savefig(str(path), format="pdf")
    return {"page_w": pw, "page_h": ph, "board_w": bw, "board_h": bh, "board_x": x0, "board_y": y0}


# ----------------------------------------------------------------- detection
@dataclass
class Detection:
    """ChArUco corners seen in one image."""

    ids: np.ndarray  # (N,) int corner ids
    corners: np.ndarray  # (N, 2) float64 pixel coordinates (OpenCV convention: pixel centres at integers)
    object_points: np.ndarray  # (N, 3) float64 the same corners in the board frame, m

    def __len__(self) -> int:
        return len(self.ids)


def detect(image: np.ndarray, board: BoardConfig) -> Detection:
    """Detect the board's chessboard corners (sub-pixel) in an RGB or grayscale image.

    Returns an empty :class:`Detection` when the board is not in view.
    """
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    b = board.make()
    det = cv2.aruco.CharucoDetector(b)
    cc, ci, _, _ = det.detectBoard(gray)
    if ci is None or len(ci) == 0:
        return Detection(np.zeros(0, int), np.zeros((0, 2)), np.zeros((0, 3)))
    ids = ci.reshape(-1).astype(int)
    corners = cc.reshape(-1, 2).astype(np.float64)
    obj = board.corner_points()[ids]
    return Detection(ids, corners, obj)


def board_pose(
    det: Detection, camera_matrix: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, float]:
    """Board pose in the camera frame ``T_cam_board`` (4x4) and the reprojection RMS (px).

    Planar PnP (IPPE) refined with Levenberg-Marquardt. Needs at least 4 corners
    that are not all on one line.
    """
    if len(det) < 4:
        raise BoardError(f"board pose needs at least 4 corners, got {len(det)}")
    obj = det.object_points.astype(np.float64)
    img = det.corners.astype(np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, camera_matrix, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise BoardError("solvePnP failed on the detected corners (collinear corners?)")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, camera_matrix, dist, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, camera_matrix, dist)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(rvec)[0]
    t[:3, 3] = tvec.reshape(3)
    return t, rms


def synthetic_view(board: BoardConfig, intr: Any, t_cam_board: np.ndarray, margin: float = 0.015,
                   background: int = 128) -> np.ndarray:
    """A gray image of the board seen by an ideal pinhole camera (plane homography, no renderer).

    ``intr`` is a :class:`calibration.intrinsics.Intrinsics`; the board image is
    sampled at about the camera's scale so the warp does not alias.
    """
    px_per_m = 1200.0
    sq = max(8, round(board.square_length * px_per_m))
    px_per_m = sq / board.square_length
    m = round(margin * px_per_m)
    img = board.image(px_per_m, margin_px=m)
    # board image pixel centre (u, v) -> board metres
    s = np.array([[1 / px_per_m, 0, (0.5 - m) / px_per_m], [0, 1 / px_per_m, (0.5 - m) / px_per_m], [0, 0, 1]])
    r, t = t_cam_board[:3, :3], t_cam_board[:3, 3]
    hmat = intr.camera_matrix @ np.column_stack([r[:, 0], r[:, 1], t]) @ s
    return cv2.warpPerspective(img, hmat, (intr.width, intr.height), flags=cv2.INTER_LINEAR,
                               borderValue=background)
