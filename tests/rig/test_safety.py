"""The safety filter: rejection, workspace clipping, rate limits, watchdog, gripper (no ROS)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safety_oracle import DOWN, DT, HOME

from rig.geometry import quat_angle, quat_mul, rotvec_to_quat
from rig.safety import (
    GRIPPER_MAX_FORCE,
    GRIPPER_MAX_SPEED,
    CommandRejected,
    SafetyConfig,
    SafetyFilter,
    apply_twist,
    validate_safety_config,
)

#: acceleration limits out of the way, for the tests of the other limits from rest
NO_ACC = {"max_linear_acceleration": 1e9, "max_angular_acceleration": 1e9}


def make(**overrides) -> SafetyFilter:
    f = SafetyFilter(dataclasses.replace(SafetyConfig(), **overrides), DT)
    f.reset(HOME, DOWN)
    return f


def test_step_moves_toward_target_and_reaches_it():
    f = make()
    goal = HOME + [0.02, -0.01, 0.01]
    f.set_target(goal, DOWN, now=0.0)
    for i in range(200):
        a = f.step(now=i * DT)
    np.testing.assert_allclose(a.pos, goal, atol=1e-9)
    assert not a.holding


def test_translation_step_limited_by_step_and_velocity():
    f = make(max_step_translation=0.003, max_linear_velocity=0.5, **NO_ACC)
    f.set_target(HOME + [0.2, 0, 0], DOWN, now=0.0)
    a = f.step(now=0.0)
    # 0.5 m/s * 2 ms = 1 mm < 3 mm step limit
    assert a.clipped
    assert np.linalg.norm(a.pos - HOME) == pytest.approx(0.001)
    # a long tick (e.g. a 20 ms hiccup) is still capped by the per-tick step
    b = f.step(now=0.02, dt=0.02)
    assert np.linalg.norm(b.pos - a.pos) == pytest.approx(0.003)


def test_rotation_step_limited():
    f = make(max_step_rotation=0.01, max_angular_velocity=1.5, **NO_ACC)
    goal_q = quat_mul(rotvec_to_quat([0, 0, 0.5]), DOWN)
    f.set_target(HOME, goal_q, now=0.0)
    a = f.step(now=0.0)
    assert float(quat_angle(a.quat, DOWN)) == pytest.approx(min(0.01, 1.5 * DT))


def test_target_outside_box_is_clipped():
    f = make(max_step_translation=0.05, max_linear_velocity=100.0, **NO_ACC)
    f.set_target([5.0, -5.0, -1.0], DOWN, now=0.0)
    for i in range(200):
        a = f.step(now=i * DT)
    lo, hi = SafetyConfig().workspace_min, SafetyConfig().workspace_max
    np.testing.assert_allclose(a.pos, [hi[0], lo[1], lo[2]], atol=1e-9)
    assert a.clipped


def test_orientation_clipped_to_tilt_cone():
    f = make(max_tilt=0.5, max_step_rotation=0.5, max_angular_velocity=1e3, **NO_ACC)
    far = quat_mul(rotvec_to_quat([1.2, 0, 0]), DOWN)
    f.set_target(HOME, far, now=0.0)
    for i in range(50):
        a = f.step(now=i * DT)
    assert float(quat_angle(a.quat, DOWN)) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize(
    "pos,quat",
    [
        ([np.nan, 0, 0], DOWN),
        ([0.4, np.inf, 0.2], DOWN),
        ([0.4, 0.0], DOWN),
        (HOME, [0, 0, 0, 0]),
        (HOME, [1, 0, 0]),
        (HOME, [np.nan, 0, 0, 1]),
        ("abc", DOWN),
    ],
)
def test_bad_targets_rejected_and_previous_target_kept(pos, quat):
    f = make()
    good = HOME + [0.01, 0, 0]
    f.set_target(good, DOWN, now=0.0)
    with pytest.raises(CommandRejected):
        f.set_target(pos, quat, now=0.001)
    assert f.rejected == 1
    for i in range(100):
        a = f.step(now=i * DT * 0.5)
    np.testing.assert_allclose(a.pos, good, atol=1e-9)
    assert np.all(np.isfinite(a.quat))


def test_watchdog_holds_when_targets_stop():
    f = make(watchdog_timeout=0.1)
    f.set_target(HOME + [0.2, 0, 0], DOWN, now=0.0)
    positions = [f.step(now=i * DT).pos for i in range(100)]  # 0.2 s
    assert f.stale and f.stale_holds == 1
    # moved during the first 0.1 s, then stopped where it was (not at the far target)
    moving = positions[49]
    np.testing.assert_allclose(positions[-1], positions[51], atol=1e-12)
    assert moving[0] > HOME[0] and positions[-1][0] < HOME[0] + 0.2 - 0.05
    a = f.step(now=1.0)
    assert a.holding
    # a fresh target releases the hold
    f.set_target(HOME, DOWN, now=1.0)
    assert not f.step(now=1.0).holding


def test_no_target_yet_holds_measured_pose():
    f = make()
    a = f.step(now=0.0)
    assert a.holding
    np.testing.assert_allclose(a.pos, HOME)


def test_hold_ignores_targets_until_released():
    f = make()
    f.set_hold(True)
    f.set_target(HOME + [0.1, 0, 0], DOWN, now=0.0)
    assert f.step(now=0.0).holding
    np.testing.assert_allclose(f.step(now=0.01).pos, HOME)
    f.set_hold(False)
    f.set_target(HOME + [0.1, 0, 0], DOWN, now=0.02)
    assert f.step(now=0.02).pos[0] > HOME[0]


def test_start_outside_box_holds_without_moving():
    f = make()
    outside = np.array([0.1, 0.0, 0.7])
    f.reset(outside, DOWN)
    for i in range(10):
        a = f.step(now=i * DT)
    np.testing.assert_allclose(a.pos, outside)


def test_gripper_clipped_and_rejected():
    f = make()
    g = f.gripper(0.5, 5.0, 500.0)
    assert (g.width, g.speed, g.force) == (0.08, GRIPPER_MAX_SPEED, GRIPPER_MAX_FORCE) and g.clipped
    assert g.grasp
    g = f.gripper(-1.0, 0.05, 0.0)
    assert g.width == 0.0 and not g.grasp
    for bad in ((np.nan, 0.1, 0.0), (0.04, np.inf, 0.0), (0.04, 0.1, -np.inf)):
        with pytest.raises(CommandRejected):
            f.gripper(*bad)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("workspace_min", [0.0, 0.0], "safety.workspace_min"),
        ("workspace_min", [0.9, 0.0, 0.0], "below workspace_max"),
        ("max_tilt", 0.0, "safety.max_tilt"),
        ("max_step_translation", -1.0, "safety.max_step_translation"),
        ("watchdog_timeout", float("nan"), "safety.watchdog_timeout"),
        ("nominal_quat", [0, 0, 0, 0], "safety.nominal_quat"),
        ("gripper_max", 0.2, "gripper_max"),
    ],
)
def test_bad_config_names_the_key(field, value, match):
    with pytest.raises(ValueError, match=match):
        validate_safety_config(dataclasses.replace(SafetyConfig(), **{field: value}))


def test_apply_twist_base_and_ee_frame():
    p, q = apply_twist(HOME, DOWN, [0.1, 0, 0], [0, 0, 0], scale=0.5)
    np.testing.assert_allclose(p, HOME + [0.05, 0, 0])
    # TCP pointing down (rotated pi about x): TCP +z is base -z
    p, q = apply_twist(HOME, DOWN, [0, 0, 0.1], [0, 0, 0], scale=1.0, ee_frame=True)
    np.testing.assert_allclose(p, HOME + [0, 0, -0.1], atol=1e-12)
    with pytest.raises(CommandRejected):
        apply_twist(HOME, DOWN, [np.nan, 0, 0], [0, 0, 0])


# ------------------------------------------------------------- property test
finite = st.floats(-2.0, 2.0, allow_nan=False)
anything = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")))
junk_pose = st.tuples(st.lists(anything, min_size=2, max_size=4), st.lists(anything, min_size=3, max_size=5))
near = st.floats(-0.01, 0.01)  # small moves (the final approach to a target)
valid_pose = st.tuples(st.lists(finite, min_size=3, max_size=3), st.lists(finite, min_size=4, max_size=4))
# small moves relative to the applied pose (marked by a None quaternion slot)
small_pose = st.tuples(st.lists(near, min_size=3, max_size=3), st.lists(near, min_size=3, max_size=3), st.none())
command = st.tuples(
    st.one_of(valid_pose, small_pose, small_pose, junk_pose),
    st.floats(0.0, 0.05),  # time to the next command
    st.integers(1, 30),  # control ticks until then
)
unit3 = st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command, min_size=5, max_size=40), st.floats(0.05, 1.0), st.floats(0.001, 0.01), unit3, unit3)
def test_property_no_applied_command_outside_limits(commands, watchdog, dt_jitter, start_u, start_r):
    """Thousands of random commands (over all examples): none is applied outside the limits."""
    cfg = dataclasses.replace(SafetyConfig(), watchdog_timeout=watchdog)
    f = SafetyFilter(cfg, DT)
    lo, hi = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
    # start anywhere in the workspace, tilted anywhere in the cone
    tilt = (np.array(start_r) - 0.5) * 2 * cfg.max_tilt / math.sqrt(3)
    f.reset(lo + np.array(start_u) * (hi - lo), quat_mul(rotvec_to_quat(tilt), DOWN))
    prev_p, prev_q = f.applied_pose
    now = 0.0
    for pose, gap, ticks in commands:
        if len(pose) == 3:  # relative to the applied pose
            p0, q0 = f.applied_pose
            pos, quat = (p0 + pose[0]).tolist(), quat_mul(rotvec_to_quat(pose[1]), q0).tolist()
        else:
            pos, quat = pose
        try:
            f.set_target(pos, quat, now)
        except CommandRejected:
            assert not (
                len(pos) == 3 and len(quat) == 4 and np.all(np.isfinite(pos + quat)) and np.linalg.norm(quat) > 1e-6
            )
        for k in range(ticks):
            dt = dt_jitter if k % 2 else DT
            now += dt
            a = f.step(now, dt)
            assert np.all(np.isfinite(a.pos)) and np.all(np.isfinite(a.quat))
            assert np.all(a.pos >= lo - 1e-12) and np.all(a.pos <= hi + 1e-12)
            assert float(quat_angle(a.quat, DOWN)) <= cfg.max_tilt + 1e-9
            step_t = float(np.linalg.norm(a.pos - prev_p))
            assert step_t <= min(cfg.max_step_translation, cfg.max_linear_velocity * dt) + 1e-12
            step_r = float(quat_angle(a.quat, prev_q))
            assert step_r <= min(cfg.max_step_rotation, cfg.max_angular_velocity * dt) + 1e-7
            assert abs(np.linalg.norm(a.quat) - 1.0) < 1e-9
            if now - a.target_stamp > watchdog or math.isnan(a.target_stamp):
                assert a.holding and step_t == 0.0
            prev_p, prev_q = a.pos, a.quat
        now += gap
