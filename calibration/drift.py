"""Drift check: does a stored calibration still fit the rig?

A drifted camera mount is the rig's most common silent failure. Record a short
new session (``calibrate-handeye collect ... --no-solve``, 8-10 poses are
enough), then :func:`check_drift` solves it afresh and compares: the stored
extrinsics against the fresh ones (mm, degrees), and how well the stored ones
predict the new images (reprojection px, with the board pose re-estimated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.extrinsics import Extrinsics
from calibration.handeye import (
    METHODS,
    CalibrationError,
    HandEyeResult,
    Thresholds,
    calibrate_session,
    estimate_board,
    observe,
    pose_error,
    residuals,
)
from calibration.session import Session


@dataclass
class DriftReport:
    translation_mm: float  # stored vs fresh extrinsics
    rotation_deg: float
    stored_reprojection_px: float  # median over the new samples, stored extrinsics
    fresh_reprojection_px: float  # the same with the fresh solution
    fresh: HandEyeResult
    max_mm: float
    max_deg: float

    @property
    def drifted(self) -> bool:
        return self.translation_mm > self.max_mm or self.rotation_deg > self.max_deg

    def describe(self) -> str:
        verdict = "DRIFTED: recalibrate" if self.drifted else "ok"
        return (f"{verdict}: stored vs fresh {self.translation_mm:.2f} mm / {self.rotation_deg:.3f} deg (limits "
                f"{self.max_mm} mm / {self.max_deg} deg); reprojection on the new images: stored "
                f"{self.stored_reprojection_px:.2f} px, fresh {self.fresh_reprojection_px:.2f} px "
                f"({self.fresh.method})")


def check_drift(stored: Extrinsics, session: Session, max_mm: float = 2.0, max_deg: float = 0.2,
                methods: tuple[str, ...] = METHODS, th: Thresholds | None = None) -> DriftReport:
    """Compare a stored calibration with a fresh solve of ``session`` (same camera and mode)."""
    if stored.camera != session.camera:
        raise CalibrationError(f"the calibration is for camera {stored.camera!r}, the session recorded "
                               f"{session.camera!r}")
    if stored.parent_frame != session.parent_frame:
        raise CalibrationError(f"the calibration's parent frame {stored.parent_frame!r} differs from the "
                               f"session's {session.parent_frame!r} ({session.mode}): wrong mode or frames")
    th = th or Thresholds()
    fresh = calibrate_session(session, methods, th)
    obs, _ = observe(session, th)
    used = {s["index"] for s in fresh.per_sample}
    obs = [o for o in obs if o.index in used]
    x = stored.matrix()
    y = estimate_board(x, obs, session.mode)
    stored_px = float(np.median([r[2] for r in residuals(x, y, obs, session.intrinsics, session.mode)]))
    t_mm, r_deg = pose_error(x, fresh.extrinsic)
    return DriftReport(t_mm, r_deg, stored_px, fresh.summary()["reprojection_px_median"], fresh, max_mm, max_deg)
