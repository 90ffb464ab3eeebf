"""Pixel specialists: the frozen pretrained trunk runs once per frame, the buffers hold its features
(``agent.encoder=pretrained``), the head trains, checkpoints resume, and state-free runs fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.rl.app import compose, presets, run
from flywheel.rl.buffers import episodes_to_transitions
from flywheel.rl.encoders import obs_shapes_of, observation_layout, parse_state_deltas
from flywheel.rl.sac import SACConfig

TINY = ["progress=false", "env.image_size=32", "demos.num=1", "demos.noise=0.0", "agent.hidden_dims=[16]",
        "agent.batch_size=8", "learner.warmup_steps=10", "learner.eval_every=0", "role.final_eval_episodes=1",
        "learner.checkpoint_every=0"]


@pytest.fixture(scope="module")
def featurizer():
    from flywheel.rl.pretrained import ImageFeaturizer

    return ImageFeaturizer(block=10, image_size=32)


def test_feature_env_adds_the_trunks_features_of_each_camera(featurizer):
    import sim
    from flywheel.rl.pretrained import FeatureEnv

    env = FeatureEnv(sim.make("LiftCube-Blue", cameras=("front", "wrist"), image_size=32, privileged_state=False),
                     featurizer)
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space["features/front"].shape == featurizer.out_shape == (112, 2, 2)
        for cam in ("front", "wrist"):
            f = obs[f"features/{cam}"]
            assert f.dtype == np.float16 and f.shape == featurizer.out_shape
            np.testing.assert_array_equal(f, featurizer(obs[f"images/{cam}"][None])[0])
        assert not np.array_equal(obs["features/front"], obs["features/wrist"])
        obs2, *_ = env.step(np.zeros(7, np.float32))
        assert "features/wrist" in obs2 and "images/wrist" in obs2  # images stay for recorders and operators
        # the agent reads the features and proprio, never the images or privileged state
        cfg = SACConfig(**presets()["lift_cube_pixels"]["agent"])
        state_keys, image_keys = observation_layout(obs_shapes_of(env.observation_space), cfg)
        assert state_keys == ["state/ee_pos", "state/ee_quat", "state/gripper_width"]
        assert image_keys == ["features/front", "features/wrist"]
    finally:
        env.close()


def test_recorded_episodes_get_features_per_frame(featurizer):
    from flywheel.rl.pretrained import with_features

    rng = np.random.default_rng(0)
    ep = {"images/front": rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
          "state/ee_pos": np.zeros((4, 3), np.float32), "action": np.zeros((4, 7), np.float32),
          "reward": np.array([0, 0, 0, 1], np.float32)}
    (fep,) = with_features([ep], featurizer, ["images/front"])
    tr = episodes_to_transitions([fep], ["state/ee_pos", "features/front"])
    assert tr["obs/features/front"].shape == (3, 112, 2, 2) and tr["obs/features/front"].dtype == np.float16
    np.testing.assert_array_equal(tr["next_obs/features/front"][0], featurizer(ep["images/front"][1:2])[0])
    assert "obs/images/front" not in tr


@pytest.mark.slow
def test_pixel_preset_trains_on_cached_features_and_resumes(tmp_path):
    torch.set_num_threads(1)
    args = [f"out_dir={tmp_path}", "rl_task=lift_cube_pixels", *TINY]
    res = run(compose([*args, "total_steps=30"]))
    assert res["env_steps"] == 30 and res["update_calls"] == 21 and not res["resumed"]
    assert res["pretrained_encoder"].startswith("efficientnet-lite0-") and "-b10-32px" in res["pretrained_encoder"]
    ckpt = tmp_path / "checkpoint"
    for buf in ("online_buffer.npz", "demo_buffer.npz"):
        with np.load(ckpt / buf) as z:
            assert not [k for k in z.files if "images/" in k or "privileged" in k], buf
            f = z["data/obs/features/front"]
            assert f.dtype == np.float16 and f.shape[1:] == (112, 2, 2) and np.abs(f.astype(np.float32)).sum() > 0
    import safetensors.torch

    weights = safetensors.torch.load_file(str(ckpt / "agent.safetensors"))
    assert any(".features__front.keypoints." in k for k in weights)  # the trained head is saved
    assert not any("trunk" in k or "blocks." in k for k in weights)  # the frozen trunk is not
    res2 = run(compose([*args, "total_steps=40"]))
    assert res2["resumed"] and res2["env_steps"] == 40 and res2["update_calls"] == 31
    # as a distillation teacher it acts on a plain camera env's observations (the trunk resizes them)
    import sim
    from flywheel.distill.specialist.rl import RLSpecialistAgent

    teacher = RLSpecialistAgent(tmp_path)
    env = sim.make("LiftCube-Blue", cameras=("front", "wrist"), image_size=48, privileged_state=False)
    try:
        obs, _ = env.reset(seed=0)
        assert not any(k.startswith("features/") for k in obs)
        a = teacher.act(obs)
        assert a.shape == (7,) and np.isfinite(a).all()
    finally:
        env.close()


def test_state_deltas_on_privileged_state_fail_clearly_without_it(tmp_path):
    # the state preset with privileged state turned off: its state keys and deltas name state/privileged
    with pytest.raises(KeyError, match=r"privileged_state=false drops state/privileged.*lift_cube_pixels"):
        run(compose([f"out_dir={tmp_path}", "rl_task=lift_cube", "env.privileged_state=false", *TINY]))
    shapes = {"state/ee_pos": ((3,), "float32")}
    with pytest.raises(KeyError, match=r"state/privileged\[0:3\].*privileged_state=false"):
        parse_state_deltas(["state/privileged[0:3]-state/ee_pos[0:3]"], ["state/ee_pos"], shapes)


def test_pretrained_encoder_needs_the_feature_env():
    shapes = {"state/ee_pos": ((3,), "float32"), "images/front": ((32, 32, 3), "uint8")}
    with pytest.raises(KeyError, match="features/front.*FeatureEnv"):
        observation_layout(shapes, SACConfig(encoder="pretrained"))
    import sim
    from flywheel.rl.pretrained import FeatureEnv

    env = sim.make("LiftCube-Blue", cameras=(), privileged_state=False)
    try:
        with pytest.raises(KeyError, match=r"needs camera images.*env.cameras"):
            FeatureEnv(env, None)  # type: ignore[arg-type]
    finally:
        env.close()


@pytest.mark.parametrize("name", ["peg_insert_pixels", "lift_cube_pixels"])
def test_pixel_presets_read_proprio_and_features_only(name, tmp_path):
    from flywheel.rl.build import build_agent, make_env

    cfg = compose([f"out_dir={tmp_path}", f"rl_task={name}", "env.image_size=32"])
    assert not cfg.env.privileged_state and list(cfg.env.cameras) == ["front", "wrist"]
    env = make_env(cfg)
    try:
        agent = build_agent(cfg, env)
        assert agent.image_keys == ["features/front", "features/wrist"]
        assert all(k.startswith("state/") and k != "state/privileged" for k in agent.state_keys)
        assert agent.cfg.state_deltas == []
        assert agent.encoder.shift == 0.5  # the cached maps are augmented in critic updates (docs/bench/rl.md)
    finally:
        env.close()


@pytest.mark.slow
def test_networked_actor_sends_features_to_the_learner(tmp_path):
    import threading

    from flywheel.rl.actor import Actor
    from flywheel.rl.build import build_agent, learner_config, make_env, make_intervener
    from flywheel.rl.learner import Learner
    from flywheel.rl.loops import run_actor, serve
    from flywheel.rl.transport import ActorEndpoint, LearnerEndpoint, TransportConfig, free_ports

    torch.set_num_threads(1)
    cfg = compose([f"out_dir={tmp_path}", "rl_task=lift_cube_pixels", *TINY])
    p1, p2 = free_ports(2)
    tcfg = TransportConfig(transitions_port=p1, weights_port=p2, token="s3cret", queue_size=8)
    learner_env, actor_env = make_env(cfg), make_env(cfg)
    learner = Learner(build_agent(cfg, learner_env), learner_config(cfg))
    errors: list[BaseException] = []

    def actor_main() -> None:
        try:
            with ActorEndpoint(tcfg, "actor0") as ep:
                actor = Actor(actor_env, build_agent(cfg, actor_env), intervener=make_intervener(cfg, actor_env))
                run_actor(actor, ep, 30, send_every=10, wait_for_weights_s=5, progress=False)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    try:
        with LearnerEndpoint(tcfg) as ep:
            t = threading.Thread(target=actor_main)
            t.start()
            serve(learner, ep, total_steps=30, weights_period_s=0.2, idle_timeout_s=60, progress=False)
            t.join(60)
    finally:
        learner_env.close()
        actor_env.close()
    assert not errors
    assert learner.env_steps == 30 and learner.update_calls == 20
    f = learner.online.data["obs/features/wrist"][:30]
    assert f.dtype == np.float16 and np.abs(f.astype(np.float32)).sum() > 0
    assert not [k for k in learner.online.data if "images/" in k]


def test_pretrained_layout_takes_the_configured_cameras_features():
    shapes = {"state/ee_pos": ((3,), "float32"), "features/front": ((112, 2, 2), "float16"),
              "features/wrist": ((112, 2, 2), "float16")}
    assert observation_layout(shapes, SACConfig(encoder="pretrained"))[1] == ["features/front", "features/wrist"]
    cfg = SACConfig(encoder="pretrained", image_keys=["images/wrist"])
    assert observation_layout(shapes, cfg)[1] == ["features/wrist"]
    with pytest.raises(KeyError, match="needs camera images.*env.cameras"):
        observation_layout({"state/ee_pos": ((3,), "float32")}, SACConfig(encoder="pretrained"))
