"""The calibration result file: the camera's pose that the camera node and the configs read.

One YAML per camera (``calibrate-handeye solve ... --out``)::

    calibration_id: wrist-20261121T081500Z-3f2a1c   # goes into rig.calibration_id and episode metadata
    camera: wrist
    mode: eye_in_hand
    parent_frame: panda_hand_tcp     # eye_in_hand: the TCP frame; eye_to_hand: panda_link0
    child_frame: wrist_optical_frame # OpenCV optical frame: x right, y down, z forward
    translation: [x, y, z]           # m, child origin in the parent frame
    quaternion_xyzw: [x, y, z, w]    # child orientation in the parent frame
    method: lm                       # chosen by hold-out error
    date: '2026-11-21T08:15:00Z'
    residuals: {...}                 # summary + per-sample translation_mm, rotation_deg, reprojection_px
    methods: {...}                   # hold-out error of every method tried
    samples: {total, used, rejected: [{index, reason}]}
    motion: {max_rotation_deg, axis_spread_deg}
    warnings: [...]
    intrinsics: {...}                # camera_info fields the calibration used
    board: {...}
    session: /path/to/session        # solve it again with `calibrate-handeye solve`
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from calibration.handeye import HandEyeResult, pose_error
from calibration.session import Session, utc_now
from rig.geometry import matrix_to_quat, pose_to_matrix, quat_normalize

REQUIRED = ("calibration_id", "camera", "parent_frame", "child_frame", "translation", "quaternion_xyzw")


class ExtrinsicsError(ValueError):
    """A calibration file that is missing or malformed."""


@dataclass(frozen=True)
class Extrinsics:
    calibration_id: str
    camera: str
    parent_frame: str
    child_frame: str
    translation: tuple[float, float, float]
    quaternion_xyzw: tuple[float, float, float, float]
    mode: str = ""
    method: str = ""
    date: str = ""

    def matrix(self) -> np.ndarray:
        """T_parent_child (4x4)."""
        return pose_to_matrix(np.asarray(self.translation), np.asarray(self.quaternion_xyzw))


def _clean(v: Any) -> Any:
    """numpy -> plain Python for safe YAML."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def result_document(result: HandEyeResult, session: Session, date: str | None = None) -> dict[str, Any]:
    """The YAML document for a solved session (with the ground-truth error for sim sessions)."""
    date = date or utc_now()
    pos, quat = result.extrinsic[:3, 3], matrix_to_quat(result.extrinsic[:3, :3])
    digest = hashlib.sha1(
        f"{session.camera}{date}{np.round(pos, 6).tolist()}{np.round(quat, 6).tolist()}".encode()
    ).hexdigest()[:6]
    stamp = date.replace("-", "").replace(":", "")
    doc: dict[str, Any] = {
        "calibration_id": f"{session.camera}-{stamp}-{digest}",
        "camera": session.camera,
        "mode": result.mode,
        "parent_frame": session.gripper_frame if result.mode == "eye_in_hand" else session.base_frame,
        "child_frame": f"{session.camera}_optical_frame",
        "translation": pos,
        "quaternion_xyzw": quat,
        "method": result.method,
        "date": date,
        "residuals": {**result.summary(), "per_sample": result.per_sample},
        "methods": {m: {k: getattr(s, k) for k in ("holdout_score", "holdout_reprojection_px",
                                                   "holdout_translation_mm", "holdout_rotation_deg", "error")}
                    for m, s in result.scores.items()},
        "samples": {"total": len(session.samples), "used": len(result.per_sample), "rejected": result.rejected},
        "motion": result.motion,
        "warnings": result.warnings,
        "intrinsics": session.intrinsics.to_camera_info(),
        "board": session.board.to_dict(),
        "session": str(session.path) if session.path else "",
    }
    if session.ground_truth:
        gt = pose_to_matrix(np.asarray(session.ground_truth["translation"]),
                            np.asarray(session.ground_truth["quaternion_xyzw"]))
        t_mm, r_deg = pose_error(result.extrinsic, gt)
        doc["ground_truth_error"] = {"translation_mm": t_mm, "rotation_deg": r_deg}
    return _clean(doc)


def save(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_clean(doc), sort_keys=False))
    return path


def load(path: str | Path) -> Extrinsics:
    """Read the camera pose from a calibration YAML (what the camera node and configs need)."""
    path = Path(path)
    if not path.is_file():
        raise ExtrinsicsError(f"calibration file {path} does not exist; make it with `calibrate-handeye solve`")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ExtrinsicsError(f"{path}: not valid YAML: {e}") from e
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ExtrinsicsError(f"{path}: missing keys {missing} (needs {list(REQUIRED)})")
    t = np.asarray(doc["translation"], np.float64).reshape(-1)
    q = np.asarray(doc["quaternion_xyzw"], np.float64).reshape(-1)
    if t.shape != (3,) or q.shape != (4,) or not (np.isfinite(t).all() and np.isfinite(q).all()):
        raise ExtrinsicsError(f"{path}: translation needs 3 and quaternion_xyzw 4 finite numbers")
    try:
        q = quat_normalize(q)
    except ValueError as e:
        raise ExtrinsicsError(f"{path}: quaternion_xyzw: {e}") from e
    return Extrinsics(str(doc["calibration_id"]), str(doc["camera"]), str(doc["parent_frame"]),
                      str(doc["child_frame"]), tuple(float(v) for v in t), tuple(float(v) for v in q),
                      str(doc.get("mode", "")), str(doc.get("method", "")), str(doc.get("date", "")))
