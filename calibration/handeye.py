"""Hand-eye calibration: eye-in-hand and eye-to-hand, method choice by hold-out error.

Both modes are one equation. With ``G_i`` the recorded base -> gripper pose and
``C_i`` the board pose seen by the camera (``T_cam_board``)::

    C_i = X^-1 H_i Y,   H_i = G_i^-1 (eye_in_hand) or G_i (eye_to_hand)

* eye_in_hand: ``X = T_gripper_cam`` (the wrist camera on the hand),
  ``Y = T_base_board`` (the board fixed in the workspace);
* eye_to_hand: ``X = T_base_cam`` (a fixed camera), ``Y = T_gripper_board``
  (the board held by the hand).

``X`` is always the camera's optical frame (OpenCV: x right, y down, z forward)
in the parent frame. Methods: OpenCV's ``calibrateHandEye`` (Tsai, Park,
Horaud, Andreff, Daniilidis), ``calibrateRobotWorldHandEye`` (Shah, Li) and
``lm``, a Levenberg-Marquardt refinement of X and Y jointly over the corner
reprojection error of all images, started from Park's solution. The method is
chosen by k-fold hold-out: each sample is left out once, the method is solved
on the others, and the left-out sample is predicted through the robot pose
(its corners in px, and the camera pose it implies in mm and degrees). The
winner has the smallest sum of its hold-out reprojection RMS, median
translation and median rotation error, each relative to the median over the
methods. (Reprojection alone favours ``lm``, which treats the robot poses as
exact and, with pose noise, bends the rotation to fit them.)

Per-sample residuals: the camera pose each sample implies (``H_i Y C_i^-1``)
against the solution, as translation (mm) and rotation (degrees), and the
corner reprojection error (px).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from calibration.board import BoardError, board_pose, detect
from calibration.intrinsics import Intrinsics
from calibration.session import Session, check_mode

log = logging.getLogger(__name__)

HANDEYE_METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}
ROBOT_WORLD_METHODS = {
    "shah": cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH,
    "li": cv2.CALIB_ROBOT_WORLD_HAND_EYE_LI,
}
METHODS = (*HANDEYE_METHODS, *ROBOT_WORLD_METHODS, "lm")
MIN_SAMPLES = 4


class CalibrationError(ValueError):
    """A session that cannot be calibrated; the message says why and what to change."""


class DegenerateMotionError(CalibrationError):
    """The recorded robot motion does not determine the extrinsics (too little rotation diversity)."""


@dataclass
class Observation:
    """One usable sample: robot pose, board pose and the corners it came from."""

    index: int
    robot: np.ndarray  # G_i = T_base_gripper (4, 4)
    board: np.ndarray  # C_i = T_cam_board (4, 4)
    corners: np.ndarray  # (N, 2) px
    object_points: np.ndarray  # (N, 3) board frame, m
    pnp_rms: float = 0.0


@dataclass
class Thresholds:
    min_corners: int = 12  # fewer detected corners -> the sample is rejected
    max_pnp_rms: float = 1.0  # px; the board pose fits its own corners worse -> rejected
    outlier_px: float = 2.0  # hold-out reprojection above max(this, outlier_factor * median) -> rejected
    outlier_factor: float = 5.0
    fail_rotation_deg: float = 2.0  # largest relative rotation below this -> fail
    fail_axis_spread_deg: float = 1.0  # spread of rotation axes below this -> fail (one axis only)
    warn_rotation_deg: float = 15.0
    warn_axis_spread_deg: float = 5.0


@dataclass
class MethodScore:
    method: str
    holdout_reprojection_px: float = float("inf")  # RMS over all held-out corners
    holdout_translation_mm: float = float("inf")  # median over samples
    holdout_rotation_deg: float = float("inf")  # median over samples
    holdout_score: float = float("inf")  # the three above, each relative to the median over methods, summed
    error: str | None = None


@dataclass
class HandEyeResult:
    mode: str
    method: str
    extrinsic: np.ndarray  # X (4, 4): camera optical frame in the parent frame
    board: np.ndarray  # Y (4, 4): board in base (eye_in_hand) or gripper (eye_to_hand)
    per_sample: list[dict[str, Any]]
    scores: dict[str, MethodScore]
    rejected: list[dict[str, Any]]
    warnings: list[str]
    motion: dict[str, float]

    def summary(self) -> dict[str, float]:
        """Aggregate residuals: in-sample and hold-out, translation mm, rotation deg, reprojection px."""
        out: dict[str, float] = {}
        for key in ("translation_mm", "rotation_deg", "reprojection_px",
                    "holdout_translation_mm", "holdout_rotation_deg", "holdout_reprojection_px"):
            v = np.array([s[key] for s in self.per_sample], dtype=np.float64)
            out[f"{key}_median"] = float(np.median(v))
            out[f"{key}_max"] = float(np.max(v))
        return out


# ------------------------------------------------------------------ helpers
def inv(t: np.ndarray) -> np.ndarray:
    r, p = t[..., :3, :3], t[..., :3, 3]
    out = np.zeros_like(t)
    rt = np.swapaxes(r, -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, p)
    out[..., 3, 3] = 1.0
    return out


def _rt(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = np.asarray(t).reshape(3)
    return m


def rotation_angle_deg(r: np.ndarray) -> np.ndarray:
    c = (np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def pose_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(translation mm, rotation deg) between two poses."""
    return (float(np.linalg.norm(a[:3, 3] - b[:3, 3]) * 1e3),
            float(rotation_angle_deg(a[:3, :3].T @ b[:3, :3])))


def _project_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def _hs(obs: list[Observation], mode: str) -> np.ndarray:
    g = np.stack([o.robot for o in obs])
    return inv(g) if mode == "eye_in_hand" else g


def _exp(x: np.ndarray) -> np.ndarray:
    """se(3)-ish increment: rotation vector + translation."""
    return _rt(cv2.Rodrigues(np.asarray(x[:3], np.float64).reshape(3, 1))[0], x[3:6])


# ----------------------------------------------------------- motion check
def motion_diversity(robot_poses: list[np.ndarray] | np.ndarray) -> dict[str, float]:
    """How much the gripper rotated: the largest relative rotation and the spread of rotation axes.

    ``axis_spread_deg`` is the RMS size (degrees) of the relative rotation vectors
    along their second principal direction: near zero when every motion turns
    about one axis (or none), which leaves the extrinsics undetermined.
    """
    r = np.stack([np.asarray(p)[:3, :3] for p in robot_poses])
    n = len(r)
    if n < 2:
        return {"max_rotation_deg": 0.0, "axis_spread_deg": 0.0}
    iu, ju = np.triu_indices(n, 1)
    rel = np.einsum("nij,nkj->nik", r[ju], r[iu])  # R_j R_i^T, base frame
    vecs = np.stack([cv2.Rodrigues(m)[0].reshape(3) for m in rel])
    s = np.linalg.svd(np.degrees(vecs), compute_uv=False) / np.sqrt(len(vecs))
    return {"max_rotation_deg": float(rotation_angle_deg(rel).max()), "axis_spread_deg": float(s[1])}


def check_motion(robot_poses: list[np.ndarray], th: Thresholds) -> tuple[dict[str, float], list[str]]:
    """Raise :class:`DegenerateMotionError` on a hopeless motion set; return warnings for a weak one."""
    m = motion_diversity(robot_poses)
    hint = ("record poses that tilt the gripper about at least two different axes by 15-30 degrees "
            "(e.g. `calibrate-handeye collect --max-tilt-deg 25 --yaw-range-deg 40`)")
    if m["max_rotation_deg"] < th.fail_rotation_deg or m["axis_spread_deg"] < th.fail_axis_spread_deg:
        raise DegenerateMotionError(
            f"degenerate motion: the gripper rotated at most {m['max_rotation_deg']:.2f} deg with an axis "
            f"spread of {m['axis_spread_deg']:.2f} deg (need >= {th.fail_rotation_deg} and "
            f">= {th.fail_axis_spread_deg}); hand-eye calibration needs rotations about two or more "
            f"non-parallel axes: {hint}"
        )
    warnings = []
    if m["max_rotation_deg"] < th.warn_rotation_deg or m["axis_spread_deg"] < th.warn_axis_spread_deg:
        warnings.append(
            f"weak motion: largest relative rotation {m['max_rotation_deg']:.1f} deg, axis spread "
            f"{m['axis_spread_deg']:.1f} deg (want >= {th.warn_rotation_deg} and >= "
            f"{th.warn_axis_spread_deg}); the result may be inaccurate: {hint}"
        )
    return m, warnings


# ------------------------------------------------------------------ solving
def _estimate_y(x: np.ndarray, hs: np.ndarray, cs: np.ndarray) -> np.ndarray:
    ys = np.linalg.inv(hs) @ x @ cs
    return _rt(_project_so3(ys[:, :3, :3].mean(axis=0)), ys[:, :3, 3].mean(axis=0))


def estimate_board(x: np.ndarray, obs: list[Observation], mode: str) -> np.ndarray:
    """The board pose Y (in base or gripper) that extrinsics X imply, averaged over the observations."""
    return _estimate_y(x, _hs(obs, mode), np.stack([o.board for o in obs]))


def _closed_form(method: str, hs: np.ndarray, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if method in HANDEYE_METHODS:
        a = inv(hs)
        r, t = cv2.calibrateHandEye(list(a[:, :3, :3]), list(a[:, :3, 3]), list(cs[:, :3, :3]),
                                    list(cs[:, :3, 3]), method=HANDEYE_METHODS[method])
        x = _rt(r, t)
        return x, _estimate_y(x, hs, cs)
    if method in ROBOT_WORLD_METHODS:
        r_bw, t_bw, r_gc, t_gc = cv2.calibrateRobotWorldHandEye(
            list(cs[:, :3, :3]), list(cs[:, :3, 3]), list(hs[:, :3, :3]), list(hs[:, :3, 3]),
            method=ROBOT_WORLD_METHODS[method])
        return inv(_rt(r_gc, t_gc)), inv(_rt(r_bw, t_bw))
    raise CalibrationError(f"unknown method {method!r}; choose from {METHODS}")


class _Reprojection:
    """Stacked corners of a set of observations, in undistorted normalised coordinates."""

    def __init__(self, obs: list[Observation], intr: Intrinsics, mode: str) -> None:
        self.hs = _hs(obs, mode)
        self.sample = np.concatenate([np.full(len(o.corners), i) for i, o in enumerate(obs)])
        self.pts = np.concatenate([o.object_points for o in obs])
        pix = np.concatenate([o.corners for o in obs]).reshape(-1, 1, 2)
        self.norm = cv2.undistortPoints(pix, intr.camera_matrix, intr.dist).reshape(-1, 2)
        self.f = float(np.sqrt(intr.camera_matrix[0, 0] * intr.camera_matrix[1, 1]))

    def residuals(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = inv(x)[None] @ self.hs @ y[None]  # C_i predicted
        p = np.einsum("nij,nj->ni", m[self.sample, :3, :3], self.pts) + m[self.sample, :3, 3]
        z = np.maximum(p[:, 2:3], 1e-6)
        return ((p[:, :2] / z - self.norm) * self.f).reshape(-1)


def refine_lm(x: np.ndarray, y: np.ndarray, obs: list[Observation], intr: Intrinsics, mode: str,
              iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the corner reprojection error of all images over X and Y (12 dof)."""
    rp = _Reprojection(obs, intr, mode)

    def apply(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x @ _exp(d[:6]), y @ _exp(d[6:])

    r0 = rp.residuals(x, y)
    cost, lam, eps, converged = float(r0 @ r0), 1e-3, 1e-7, False
    for _ in range(iterations):
        jac = np.empty((r0.size, 12))
        for k in range(12):
            d = np.zeros(12)
            d[k] = eps
            jac[:, k] = (rp.residuals(*apply(d)) - r0) / eps
        jtj, jtr = jac.T @ jac, jac.T @ r0
        improved = False
        for _ in range(10):
            step = -np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), jtr)
            xn, yn = apply(step)
            rn = rp.residuals(xn, yn)
            cn = float(rn @ rn)
            if cn < cost:
                x, y, r0, lam, improved = xn, yn, rn, max(lam / 10, 1e-9), True
                converged = cost - cn < 1e-10 * cost
                cost = cn
                break
            lam *= 10
        if not improved or converged:
            break
    return x, y


def solve(method: str, obs: list[Observation], intr: Intrinsics, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Solve one method on a set of observations -> (X, Y)."""
    if len(obs) < 3:
        raise CalibrationError(f"{method}: needs >= 3 samples, got {len(obs)}")
    hs, cs = _hs(obs, mode), np.stack([o.board for o in obs])
    if method == "lm":
        x, y = _closed_form("park", hs, cs)
        x, y = refine_lm(x, y, obs, intr, mode)
    else:
        x, y = _closed_form(method, hs, cs)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise CalibrationError(f"{method}: the solver returned NaN/Inf")
    return x, y


def residuals(x: np.ndarray, y: np.ndarray, obs: list[Observation], intr: Intrinsics,
              mode: str) -> list[tuple[float, float, float]]:
    """Per sample: (translation mm, rotation deg) of the camera pose it implies vs X, and reprojection px."""
    out = []
    hs = _hs(obs, mode)
    for o, h in zip(obs, hs, strict=True):
        t_mm, r_deg = pose_error(x, h @ y @ inv(o.board))
        c = inv(x) @ h @ y
        proj, _ = cv2.projectPoints(o.object_points, cv2.Rodrigues(c[:3, :3])[0], c[:3, 3],
                                    intr.camera_matrix, intr.dist)
        px = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - o.corners) ** 2, axis=1))))
        out.append((t_mm, r_deg, px))
    return out


# ------------------------------------------------------------ observations
def observe(session: Session, th: Thresholds | None = None,
            images: list[np.ndarray] | None = None) -> tuple[list[Observation], list[dict[str, Any]]]:
    """Detect the board in every image of a session -> (usable observations, rejected samples with reasons)."""
    th = th or Thresholds()
    intr = session.intrinsics
    obs, rejected = [], []
    for i, s in enumerate(session.samples):
        im = images[i] if images is not None else session.image(i)
        if im.shape[:2] != (intr.height, intr.width):
            raise CalibrationError(
                f"image {s.image} is {im.shape[1]}x{im.shape[0]} but the intrinsics are for "
                f"{intr.width}x{intr.height}: record camera_info at the image resolution"
            )
        det = detect(im, session.board)
        if len(det) < th.min_corners:
            rejected.append({"index": i, "reason": f"{len(det)} corners < min_corners {th.min_corners}"})
            continue
        try:
            c, rms = board_pose(det, intr.camera_matrix, intr.dist)
        except BoardError as e:
            rejected.append({"index": i, "reason": str(e)})
            continue
        if rms > th.max_pnp_rms:
            rejected.append({"index": i, "reason": f"board pose reprojection {rms:.2f} px > {th.max_pnp_rms}"})
            continue
        obs.append(Observation(i, s.matrix(), c, det.corners, det.object_points, rms))
    return obs, rejected


# ---------------------------------------------------------------- selecting
def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = max(2, min(k, n))
    return [np.sort(perm[i::k]) for i in range(k)]


def cross_validate(method: str, obs: list[Observation], intr: Intrinsics, mode: str, folds: int = 5,
                   seed: int = 0) -> tuple[MethodScore, list[tuple[float, float, float]]]:
    """Hold-out residuals of one method: every sample predicted by a solution that did not see it."""
    per: list[tuple[float, float, float] | None] = [None] * len(obs)
    sq_px, n_px = 0.0, 0
    try:
        for test in _folds(len(obs), folds, seed):
            train = [o for i, o in enumerate(obs) if i not in set(test)]
            x, y = solve(method, train, intr, mode)
            held = [obs[i] for i in test]
            for i, r in zip(test, residuals(x, y, held, intr, mode), strict=True):
                per[i] = r
                sq_px += r[2] ** 2 * len(obs[i].corners)
                n_px += len(obs[i].corners)
    except (cv2.error, CalibrationError, np.linalg.LinAlgError) as e:
        return MethodScore(method, error=str(e).strip().splitlines()[-1][:200]), []
    res = [r for r in per if r is not None]
    arr = np.array(res)
    score = MethodScore(method, float(np.sqrt(sq_px / n_px)), float(np.median(arr[:, 0])),
                        float(np.median(arr[:, 1])))
    if not np.isfinite([score.holdout_reprojection_px, score.holdout_translation_mm]).all():
        score = MethodScore(method, error="non-finite hold-out error")
    return score, res


def _score(scores: dict[str, MethodScore], ok: list[str]) -> None:
    """Fill ``holdout_score``: hold-out px, mm and degrees, each relative to its median over the methods."""
    keys = ("holdout_reprojection_px", "holdout_translation_mm", "holdout_rotation_deg")
    med = {k: max(float(np.median([getattr(scores[m], k) for m in ok])), 1e-12) for k in keys}
    for m in ok:
        scores[m].holdout_score = sum(getattr(scores[m], k) / med[k] for k in keys)


def calibrate(obs: list[Observation], intr: Intrinsics, mode: str, methods: tuple[str, ...] = METHODS,
              th: Thresholds | None = None, folds: int = 5, seed: int = 0,
              rejected: list[dict[str, Any]] | None = None) -> HandEyeResult:
    """Choose the best method by hold-out error, solve it on all samples and report residuals."""
    th = th or Thresholds()
    check_mode(mode)
    rejected = list(rejected or [])
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CalibrationError(f"unknown methods {unknown}; choose from {METHODS}")
    obs = list(obs)
    passes = 4  # up to three rounds of dropping outliers (a gross one inflates the median and hides the next)
    for attempt in range(passes):
        if len(obs) < MIN_SAMPLES:
            raise CalibrationError(
                f"only {len(obs)} usable samples (need >= {MIN_SAMPLES}, 15+ recommended); "
                f"rejected: {_fmt_rejected(rejected)}"
            )
        motion, warnings = check_motion([o.robot for o in obs], th)
        if len(obs) < 10:
            warnings.append(f"only {len(obs)} usable samples; 15+ give a more reliable result")
        scores, holdout = {}, {}
        for m in methods:
            scores[m], holdout[m] = cross_validate(m, obs, intr, mode, folds, seed)
        ok = [m for m in methods if scores[m].error is None]
        if not ok:
            raise CalibrationError(
                "every method failed: " + "; ".join(f"{m}: {scores[m].error}" for m in methods))
        _score(scores, ok)
        best = min(ok, key=lambda m: scores[m].holdout_score)
        px = np.array([r[2] for r in holdout[best]])
        limit = max(th.outlier_px, th.outlier_factor * float(np.median(px)))
        bad = [i for i in range(len(obs)) if px[i] > limit]
        if attempt == passes - 1 or not bad or len(obs) - len(bad) < MIN_SAMPLES:
            break
        for i in bad:
            rejected.append({"index": obs[i].index, "reason": f"outlier: hold-out reprojection {px[i]:.2f} px "
                             f"> {limit:.2f} (board or camera moved, or pose/image out of sync)"})
        obs = [o for i, o in enumerate(obs) if i not in bad]
    x, y = solve(best, obs, intr, mode)
    per_sample = []
    for o, r, h in zip(obs, residuals(x, y, obs, intr, mode), holdout[best], strict=True):
        per_sample.append({
            "index": o.index, "corners": len(o.corners), "pnp_rms_px": o.pnp_rms,
            "translation_mm": r[0], "rotation_deg": r[1], "reprojection_px": r[2],
            "holdout_translation_mm": h[0], "holdout_rotation_deg": h[1], "holdout_reprojection_px": h[2],
        })
    for w in warnings:
        log.warning(w)
    return HandEyeResult(mode, best, x, y, per_sample, scores, sorted(rejected, key=lambda r: r["index"]),
                         warnings, motion)


def calibrate_session(session: Session, methods: tuple[str, ...] = METHODS, th: Thresholds | None = None,
                      mode: str | None = None, folds: int = 5,
                      images: list[np.ndarray] | None = None) -> HandEyeResult:
    """Detect, reject poor samples, check the motion, choose a method and solve a recorded session."""
    th = th or Thresholds()
    mode = check_mode(mode or session.mode)
    if not session.samples:
        raise CalibrationError(f"session {session.path} has no samples")
    obs, rejected = observe(session, th, images)
    if len(obs) < MIN_SAMPLES:
        raise CalibrationError(
            f"only {len(obs)} of {len(session.samples)} images show the board ({session.board.describe()}) "
            f"well enough (>= {th.min_corners} corners, board pose error <= {th.max_pnp_rms} px); need >= "
            f"{MIN_SAMPLES}. Check that the board is in view and that the session's board config matches the "
            f"printed board. Rejected: {_fmt_rejected(rejected)}"
        )
    return calibrate(obs, session.intrinsics, mode, methods, th, folds, rejected=rejected)


def _fmt_rejected(rejected: list[dict[str, Any]], limit: int = 6) -> str:
    if not rejected:
        return "none"
    s = ", ".join(f"#{r['index']}: {r['reason']}" for r in rejected[:limit])
    return s + (f", ... ({len(rejected) - limit} more)" if len(rejected) > limit else "")
