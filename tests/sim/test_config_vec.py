"""Hydra task group, overrides, domain randomisation and vectorised envs."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from robot.config import compose
from sim.config import TaskConfig, env_kwargs, register


def test_task_group_composes_and_builds_an_env():
    register()
    cfg = compose("task/PegInsert", ["task.image_size=32", "task.cameras=[wrist]"]).task
    assert cfg.task_id == "PandaRig/PegInsert-v0"
    kw = env_kwargs(cfg)
    assert kw["cameras"] == ("wrist",) and kw["image_size"] == 32
    env = sim.make(cfg.task_id, **kw)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["images/wrist"].shape == (32, 32, 3) and "images/front" not in obs
    finally:
        env.close()
    with pytest.raises(Exception, match="NoSuchTask"):
        compose("task/NoSuchTask")


def test_overrides_control_rate_depth_privileged_state():
    env = sim.make("LiftCube-Red", cameras=("front",), image_size=(24, 32), depth=True, control_hz=20.0,
                   privileged_state=True, max_episode_steps=3)
    try:
        u = env.unwrapped
        assert u.n_substeps == 25 and u.rig_spec.action.control_hz == 20.0
        obs, _ = env.reset(seed=0)
        assert obs["images/front"].shape == (24, 32, 3)
        assert obs["depth/front"].shape == (24, 32) and obs["depth/front"].dtype == np.uint16
        assert obs["state/privileged"].shape == (4,)
        np.testing.assert_allclose(obs["state/privileged"][:3], u.task.body_pos("target_cube"), atol=1e-6)
        for _ in range(3):
            *_, trunc, _ = env.step(np.zeros(7, np.float32))
        assert trunc  # max_episode_steps override
    finally:
        env.close()
    with pytest.raises(ValueError, match="integer"):
        sim.make("LiftCube-Red", cameras=(), control_hz=7.0)
    with pytest.raises(ValueError, match="camera 'top'"):
        sim.make("LiftCube-Red", cameras=("top",))


def test_domain_randomisation_changes_scene_per_seed_and_nominal_is_fixed():
    env = sim.make("LiftCube-Red", cameras=())
    try:
        m = env.unwrapped.rig.model
        env.reset(seed=0)
        f0, l0, c0 = m.geom_friction[:, 0].copy(), m.light_diffuse.copy(), m.cam_pos.copy()
        env.reset(seed=1)
        assert not np.allclose(f0, m.geom_friction[:, 0])
        assert not np.allclose(l0, m.light_diffuse) and not np.allclose(c0, m.cam_pos)
    finally:
        env.close()
    nominal = dict(object_poses=False, color_jitter=0.0, light_jitter=0.0, camera_jitter=0.0,
                   friction_range=[1.0, 1.0])
    env = sim.make("LiftCube-Red", cameras=(), randomization=nominal)
    try:
        p = [env.reset(seed=s)[0]["state/ee_pos"] for s in (0, 1)]
        np.testing.assert_array_equal(p[0], p[1])
        assert TaskConfig().randomization.object_poses
    finally:
        env.close()


@pytest.mark.render
def test_async_vector_env_renders_after_the_parent_rendered():
    """Workers are spawned: a fork after the parent's EGL context would deadlock on render."""
    env = sim.make("LiftCube-Red", cameras=("front",), image_size=16)
    env.reset(seed=0)  # the parent now holds an EGL context
    venv = sim.make_vec("LiftCube-Red", num_envs=2, vectorization_mode="async", cameras=("wrist",),
                        image_size=16)
    try:
        obs, _ = venv.reset(seed=[0, 1])
        assert obs["images/wrist"].shape == (2, 16, 16, 3)
        obs, *_ = venv.step(np.zeros((2, 7), np.float32))
        assert obs["images/wrist"].any()
    finally:
        venv.close()
        env.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env(mode):
    venv = sim.make_vec("LiftCube-Red", num_envs=2, vectorization_mode=mode, cameras=())
    try:
        obs, info = venv.reset(seed=[0, 1])
        assert obs["state/ee_pos"].shape == (2, 3)
        assert not np.allclose(obs["state/ee_pos"][0], obs["state/ee_pos"][1])
        obs, r, term, trunc, info = venv.step(np.zeros((2, 7), np.float32))
        assert r.shape == (2,) and info["is_success"].shape == (2,)
    finally:
        venv.close()


def test_colour_jitter_does_not_accumulate_over_resets():
    env = sim.make("PlaceCubeBin-Red", cameras=())
    try:
        m = env.unwrapped.rig.model
        env.reset(seed=0)
        first = m.geom_rgba.copy()
        for s in range(1, 30):
            env.reset(seed=s)
        env.reset(seed=0)
        np.testing.assert_allclose(m.geom_rgba, first)
    finally:
        env.close()
