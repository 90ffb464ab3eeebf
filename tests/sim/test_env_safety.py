"""The sim env runs the rig's SafetyFilter: workspace box, tilt cone and rate limits mean the same as on the rig."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from rig.geometry import matrix_to_quat, quat_angle
from rig.safety import SafetyConfig, SafetyFilter

TASK = "PandaRig/LiftCube-Red-v0"


def _env(**safety):
    return sim.make(TASK, cameras=(), safety=SafetyConfig(**safety))


def test_target_is_rate_limited_by_the_filter_velocity_limit():
    env = _env(max_linear_velocity=0.05)  # 5 mm per 0.1 s env step, a full action asks for 20 mm
    try:
        env.reset(seed=0)
        rig = env.unwrapped.rig
        before = rig.target_pos.copy()
        a = np.zeros(7, np.float32)
        a[0], a[6] = 1.0, 1.0
        env.step(a)
        moved = float(np.linalg.norm(rig.target_pos - before))
        assert 0.004 < moved <= 0.005 + 1e-9
    finally:
        env.close()


def test_orientation_stays_in_the_tilt_cone():
    cfg = SafetyConfig(max_tilt=0.3)
    env = sim.make(TASK, cameras=(), safety=cfg)
    try:
        env.reset(seed=0)
        rig = env.unwrapped.rig
        a = np.zeros(7, np.float32)
        a[3], a[6] = 1.0, 1.0  # keep rolling about x: 0.1 rad per step, 2 rad asked in all
        angles = []
        for _ in range(20):
            env.step(a)
            angles.append(float(quat_angle(rig.target_quat, np.asarray(cfg.nominal_quat))))
        assert max(angles) <= 0.3 + 1e-6
        assert angles[-1] > 0.29  # it did tilt, up to the cone
    finally:
        env.close()


def test_targets_outside_the_box_are_clipped_into_it():
    env = _env()
    try:
        env.reset(seed=0)
        rig = env.unwrapped.rig
        a = np.zeros(7, np.float32)
        a[2], a[6] = -1.0, 1.0  # down into the table and below the box
        for _ in range(40):
            env.step(a)
        lo = np.asarray(SafetyConfig().workspace_min)
        assert rig.target_pos[2] >= lo[2] - 1e-9
        assert rig.target_pos[2] == pytest.approx(lo[2], abs=1e-6)
    finally:
        env.close()


def test_commands_match_a_standalone_filter_fed_the_same_targets():
    """What the env applies is exactly what the franka node's filter would apply at the same rate."""
    env = _env()
    try:
        env.reset(seed=1)
        u = env.unwrapped
        rng = np.random.default_rng(0)
        ref = SafetyFilter(SafetyConfig(), u.safety_filter.dt)
        p, q = u.safety_filter.applied_pose
        ref.reset(p, q)
        for _ in range(5):
            a = rng.uniform(-1, 1, 7).astype(np.float32)
            pos, quat, _ = u.spec_rig.action.to_target(a, u.rig.ee_pos, matrix_to_quat(u.rig.ee_rot))
            now = u.rig.time
            env.step(a)
            ref.set_target(pos, quat, now)
            for i in range(u.filter_ticks):
                applied = ref.step(now + i * ref.dt, ref.dt)
            np.testing.assert_allclose(u.rig.target_pos, applied.pos, atol=1e-12)
            np.testing.assert_allclose(abs(np.dot(u.rig.target_quat, applied.quat)), 1.0, atol=1e-9)
    finally:
        env.close()


def test_filter_rate_must_fit_the_physics_and_control_rates():
    with pytest.raises(ValueError, match="filter_hz"):
        sim.make(TASK, cameras=(), filter_hz=300.0)
    with pytest.raises(ValueError, match="max_tilt"):
        _env(max_tilt=0.0)


def test_actions_step_from_the_measured_or_the_commanded_pose():
    for origin in ("measured", "commanded"):
        env = sim.make(TASK, cameras=(), action_origin=origin)
        try:
            env.reset(seed=0)
            u = env.unwrapped
            a = np.zeros(7, np.float32)
            a[0], a[6] = 1.0, 1.0
            env.step(a)
            first = u.rig.target_pos.copy()
            measured = u.rig.ee_pos.copy()
            env.step(a)
            base = first if origin == "commanded" else measured
            np.testing.assert_allclose(u.rig.target_pos[0], base[0] + 0.02, atol=1e-6)
        finally:
            env.close()
    with pytest.raises(ValueError, match="action_origin"):
        sim.make(TASK, cameras=(), action_origin="nope")
