"""Hand-eye solving on synthetic observations of the sim geometry (projected corners, no rendering)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.handeye import (
    METHODS,
    CalibrationError,
    DegenerateMotionError,
    calibrate,
    motion_diversity,
    pose_error,
    solve,
)
from calibration.poses import PoseSetConfig, generate
from calibration.simulate import SimConfig, default_poses

MODES = ("eye_in_hand", "eye_to_hand")


@pytest.mark.parametrize("mode", MODES)
def test_every_method_recovers_exact_extrinsics(mode, synthetic):
    obs, intr, x, y = synthetic(mode, n=12)
    for m in METHODS:
        xs, ys = solve(m, obs, intr, mode)
        t_mm, r_deg = pose_error(xs, x)
        assert t_mm < 0.05 and r_deg < 0.005, (m, t_mm, r_deg)
        assert pose_error(ys, y)[0] < 0.05, m


@pytest.mark.parametrize("mode", MODES)
def test_noisy_corners_choose_a_method_by_holdout_and_report_residuals(mode, synthetic):
    obs, intr, x, _ = synthetic(mode, n=16, pixel_noise=0.3)
    res = calibrate(obs, intr, mode)
    t_mm, r_deg = pose_error(res.extrinsic, x)
    assert t_mm < 1.5 and r_deg < 0.15
    # the chosen method has the smallest hold-out error among those that ran
    ran = {m: s for m, s in res.scores.items() if s.error is None}
    assert set(ran) == set(METHODS)
    assert res.method == min(ran, key=lambda m: ran[m].holdout_score)
    med_px = np.median([s.holdout_reprojection_px for s in ran.values()])
    med_mm = np.median([s.holdout_translation_mm for s in ran.values()])
    med_deg = np.median([s.holdout_rotation_deg for s in ran.values()])
    s = ran[res.method]
    assert s.holdout_score == pytest.approx(s.holdout_reprojection_px / med_px + s.holdout_translation_mm / med_mm
                                            + s.holdout_rotation_deg / med_deg)
    assert len(res.per_sample) == 16 and res.rejected == []
    s = res.per_sample[0]
    for key in ("translation_mm", "rotation_deg", "reprojection_px", "holdout_translation_mm",
                "holdout_rotation_deg", "holdout_reprojection_px"):
        assert np.isfinite(s[key]) and s[key] >= 0
    # pixel noise of 0.3 px shows in the reprojection residuals, not as gross errors
    assert 0.1 < res.summary()["reprojection_px_median"] < 1.0


def test_refinement_beats_closed_form_under_pixel_noise(synthetic):
    obs, intr, x, _ = synthetic("eye_in_hand", n=16, pixel_noise=0.5, seed=4)
    lm = pose_error(solve("lm", obs, intr, "eye_in_hand")[0], x)[0]
    park = pose_error(solve("park", obs, intr, "eye_in_hand")[0], x)[0]
    assert lm < park


def test_error_grows_gracefully_with_pose_noise(synthetic):
    errs = []
    for mm, deg in ((0.0, 0.0), (0.5, 0.05), (2.0, 0.2)):
        obs, intr, x, _ = synthetic("eye_to_hand", n=20, pixel_noise=0.2, pose_noise_mm=mm, pose_noise_deg=deg)
        errs.append(pose_error(calibrate(obs, intr, "eye_to_hand").extrinsic, x))
    assert errs[0][0] < errs[2][0] < 15.0 and errs[2][1] < 1.0


def _poses(mode: str, **kw):
    cfg = SimConfig(mode=mode, n_poses=10)
    return generate(PoseSetConfig(**{**default_poses(cfg).__dict__, **kw}))


@pytest.mark.parametrize(
    "kw, what",
    [
        ({"max_tilt_deg": 0.0, "yaw_range_deg": 0.0}, "pure translation"),
        ({"max_tilt_deg": 0.0, "yaw_range_deg": 40.0}, "rotation about one axis"),
    ],
)
def test_degenerate_motion_fails_with_a_clear_message(kw, what, synthetic):
    poses = _poses("eye_to_hand", **kw)
    obs, intr, _, _ = synthetic("eye_to_hand", poses=poses)
    m = motion_diversity([o.robot for o in obs])
    assert m["axis_spread_deg"] < 1.0, what
    with pytest.raises(DegenerateMotionError, match="degenerate motion.*two or more non-parallel axes"):
        calibrate(obs, intr, "eye_to_hand")


def test_weak_motion_warns_but_solves(synthetic):
    poses = _poses("eye_to_hand", max_tilt_deg=4.0, yaw_range_deg=4.0)
    obs, intr, _, _ = synthetic("eye_to_hand", poses=poses)
    res = calibrate(obs, intr, "eye_to_hand")
    assert any("weak motion" in w for w in res.warnings)


def test_inconsistent_samples_are_rejected_as_outliers(synthetic):
    obs, intr, x, _ = synthetic("eye_in_hand", n=16, pixel_noise=0.2)
    for i, dx in ((5, 0.05), (9, 0.01)):  # the board was bumped / the pose is stale
        obs[i].robot = obs[i].robot.copy()
        obs[i].robot[:3, 3] += [dx, 0.0, 0.0]
    res = calibrate(obs, intr, "eye_in_hand")
    # the gross one first; the smaller one shows once the median is no longer inflated by it
    assert [r["index"] for r in res.rejected] == [5, 9] and "outlier" in res.rejected[0]["reason"]
    assert len(res.per_sample) == 14
    assert pose_error(res.extrinsic, x)[0] < 1.5


def test_too_few_samples_and_unknown_methods_are_refused(synthetic):
    obs, intr, _, _ = synthetic("eye_in_hand", n=3)
    with pytest.raises(CalibrationError, match="only 3 usable samples"):
        calibrate(obs, intr, "eye_in_hand")
    obs, intr, _, _ = synthetic("eye_in_hand", n=6)
    with pytest.raises(CalibrationError, match="unknown methods"):
        calibrate(obs, intr, "eye_in_hand", methods=("tsai", "magic"))
