"""The ROS env adapter: tick alignment, stale samples, actions -> targets, episode events."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from _ros_probe import Probe, Spinner
from geometry_msgs.msg import PoseStamped, WrenchStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, String
from std_srvs.srv import Trigger
from waiting import wait_for

from rig.spec import RigSpec, default_spec
from robot.backends.realsense import synthetic_recording
from robot.env import RosEnvConfig, RosRigEnv, StaleObservation
from robot.nodes.camera_node import CameraNode
from robot.ros.convert import image_to_numpy as decode_image
from robot.ros.convert import to_stamp as stamp
from robot.ros.qos import COMMAND_QOS, STATE_QOS


def test_decode_image_encodings_and_resize():
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    msg = Image(height=48, width=64, encoding="rgb8", step=192, data=rgb.tobytes())
    np.testing.assert_array_equal(decode_image(msg, None), rgb)
    small = decode_image(msg, (24, 32))
    assert small.shape == (24, 32, 3) and small.dtype == np.uint8
    bgr = Image(height=48, width=64, encoding="bgr8", step=192, data=rgb[..., ::-1].tobytes())
    np.testing.assert_array_equal(decode_image(bgr, None), rgb)
    d = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    dm = Image(height=48, width=64, encoding="16UC1", step=128, data=d.astype("<u2").tobytes())
    assert decode_image(dm, (24, 32)).dtype == np.uint16
    with pytest.raises(ValueError, match="'yuv422' is not supported"):
        decode_image(Image(height=1, width=1, encoding="yuv422", step=2, data=b"\0\0"), None)


class StateSource:
    """Publishes the franka node's state topics at 100 Hz (a stand-in with controllable staleness)."""

    def __init__(self, spinner: Spinner):
        self.node = rclpy.create_node("state_source", context=spinner.context)
        n = self.node
        self.pubs = {
            "joint_states": n.create_publisher(JointState, "joint_states", STATE_QOS),
            "ee_pose": n.create_publisher(PoseStamped, "ee_pose", STATE_QOS),
            "ee_wrench": n.create_publisher(WrenchStamped, "ee_wrench", STATE_QOS),
            "gripper": n.create_publisher(JointState, "gripper/state", STATE_QOS),
        }
        self.silent: set[str] = set()
        self.homed = 0
        self.pos = np.array([0.5, 0.0, 0.3])
        n.create_service(Trigger, "home", self._home)
        n.create_timer(0.01, self._tick)
        spinner.add(n, activate=False)

    def _home(self, req, res):
        self.homed += 1
        res.success, res.message = True, "homed"
        return res

    def _tick(self):
        t = stamp(time.time())
        js = JointState(name=[f"panda_joint{i}" for i in range(7, 0, -1)],  # reversed: order by name
                        position=[float(7 - i) for i in range(7)], velocity=[0.0] * 7, effort=[0.0] * 7)
        pose = PoseStamped()
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in self.pos)
        pose.pose.orientation.x, pose.pose.orientation.w = 1.0, 0.0
        w = WrenchStamped()
        w.wrench.force.z = -2.0
        g = JointState(name=["width"], position=[0.05])
        for key, msg in (("joint_states", js), ("ee_pose", pose), ("ee_wrench", w), ("gripper", g)):
            if key not in self.silent:
                msg.header.stamp = t
                self.pubs[key].publish(msg)


@pytest.mark.ros
def test_env_round_trip_over_dds(tmp_path):
    spec = RigSpec(cameras=default_spec(32, ("front",)).cameras)
    nodes = Spinner()
    state = StateSource(nodes)
    synthetic_recording(n=30, width=64, height=48).save(tmp_path / "front.npz")  # a recorded camera
    nodes.add(CameraNode("cameras", context=nodes.context, parameter_overrides=[
        rclpy.Parameter("backend", value="replay"), rclpy.Parameter("names", value=["front"]),
        rclpy.Parameter("serials", value=[str(tmp_path / "front.npz")])]))
    nodes.start()
    probe = Probe()
    probe.subscribe("target_pose", PoseStamped, COMMAND_QOS)
    probe.subscribe("gripper/command", JointState, COMMAND_QOS)
    probe.subscribe("episode/event", String, COMMAND_QOS)
    probe.subscribe("reward/probability", Float32, COMMAND_QOS)
    events = probe.publisher("episode/event", String, COMMAND_QOS)
    classifier_says = [0.0]
    env = RosRigEnv(spec, RosEnvConfig(max_obs_age=0.4, wait_timeout=3.0, max_episode_steps=50),
                    reward_fn=None, instruction="lift the cube")
    try:
        env.connect()
        obs, info = env.reset()
        assert state.homed == 1 and env.observation_space.contains(obs)
        assert set(obs) == set(spec.observation_specs())
        np.testing.assert_array_equal(obs["state/joint_pos"], np.arange(1, 8, dtype=np.float32))
        assert obs["images/front"].shape == (32, 32, 3) and info["obs_age"] <= 0.4
        assert wait_for(lambda: "start" in [m.data for m in probe.got("episode/event")])
        # an action becomes the absolute target through the spec
        a = np.array([1.0, -0.5, 0.0, 0.0, 0.0, 0.2, -1.0], np.float32)
        obs2, r, term, trunc, info = env.step(a)
        pos, quat, width = spec.action.to_target(a, obs["state/ee_pos"], obs["state/ee_quat"])
        tgt = wait_for(lambda: probe.got("target_pose"))[-1].pose
        np.testing.assert_allclose([tgt.position.x, tgt.position.y, tgt.position.z], pos, atol=1e-6)
        np.testing.assert_allclose([tgt.orientation.x, tgt.orientation.y, tgt.orientation.z, tgt.orientation.w],
                                   quat, atol=1e-6)
        grip = wait_for(lambda: probe.got("gripper/command"))[-1]
        assert grip.position[0] == pytest.approx(width) == 0.0 and grip.effort[0] > 0  # closed -> grasp
        assert not term and not trunc and not info["is_success"] and info["obs_age"] <= 0.4
        assert info["tick"] - env._tick <= 1e-9 and not info["intervening"]
        # the operator marks success on the teleop device
        events.publish(String(data="success"))
        for _ in range(30):  # the event arrives within a few ticks
            _, r, term, _, info = env.step(np.zeros(7, np.float32))
            if term:
                break
        assert term and info["is_success"] and r == 1.0 and "success" in info["events"]
        # a silent topic: the adapter waits, then names the topic and the limit
        state.silent.add("ee_wrench")
        env.cfg.wait_timeout = 0.3
        time.sleep(0.5)
        with pytest.raises(StaleObservation, match=r"'ee_wrench'.*max_obs_age=0.4"):
            env.step(np.zeros(7, np.float32))
        state.silent.clear()
        env.cfg.wait_timeout = 3.0
        # a reward classifier decides success and the env announces it on episode/event
        env.reward_fn = lambda o: classifier_says[0]
        env.reset()
        assert not env.step(np.zeros(7, np.float32))[2]
        classifier_says[0] = 0.9
        probe.clear()
        _, r, term, _, info = env.step(np.zeros(7, np.float32))
        assert term and info["is_success"] and r == pytest.approx(0.9)
        assert wait_for(lambda: "success" in [m.data for m in probe.got("episode/event")])
        # a stateful classifier reward (k frames in a row): reset at each episode, its belief shown to the operator

        class Streak:
            def __init__(self):
                self.resets, self.streak, self.probability = 0, 0, 0.0

            def reset(self):
                self.resets, self.streak = self.resets + 1, 0

            def __call__(self, obs):
                self.probability = 0.7
                self.streak += 1
                return float(self.streak >= 2)

        env.reward_fn = streak = Streak()
        streak.streak = 5  # left over from another episode
        env.reset()
        assert streak.resets == 1 and streak.streak == 0
        probe.clear()
        assert not env.step(np.zeros(7, np.float32))[2]  # one frame is not enough
        assert env.step(np.zeros(7, np.float32))[2]
        assert wait_for(lambda: probe.got("reward/probability"))[-1].data == pytest.approx(0.7)
    finally:
        env.close()
        probe.close()
        nodes.close()


@pytest.mark.ros
def test_reset_without_a_franka_node_is_a_clear_error():
    env = RosRigEnv(RigSpec(cameras=()), RosEnvConfig(connect_timeout=0.5))
    with env, pytest.raises(RuntimeError, match="service 'home' is not available: is franka-node running"):
        env.reset()
    with pytest.raises(RuntimeError, match="not connected"):
        env.step(np.zeros(7, np.float32))


def test_spaces_match_the_sim_envs():
    """RL actors and evaluation see the same observation and action on the rig as in sim."""
    import sim

    task = sim.list_tasks()[0]
    sim_env = sim.make(task, image_size=32)
    rig_env = RosRigEnv(default_spec(32))
    try:
        assert rig_env.observation_space == sim_env.observation_space
        assert rig_env.action_space == sim_env.action_space
    finally:
        sim_env.close()


@pytest.mark.parametrize("origin", ["measured", "commanded"])
def test_actions_step_from_the_action_origin_and_interventions_are_recorded_in_its_meaning(origin):
    """Measured (default, as in sim): from the measured pose; commanded: from ``command_applied`` (#17)."""
    q = np.array([1.0, 0.0, 0.0, 0.0])
    cfg = RosEnvConfig() if origin == "measured" else RosEnvConfig(action_origin="commanded")
    env = RosRigEnv(RigSpec(cameras=()), cfg)
    assert RosEnvConfig().action_origin == "measured"
    ob = env.observer
    for i in range(21):  # the command moves 1 cm per 0.1 s; the arm lags 4 mm behind
        t = 10.0 + i * 0.01
        ob.push("command", t, (np.array([0.4 + 0.1 * i * 0.01, 0.0, 0.3]), q))
        ob.push("ee_pose", t, (np.array([0.396 + 0.1 * i * 0.01, 0.0, 0.3]), q))
        ob.push("gripper", t, 0.04)
    ob.push("intervening", 10.0, True)
    pos, _ = env.action_origin(10.1)
    assert pos[0] == pytest.approx(0.41 if origin == "commanded" else 0.406)
    a = env._intervention(10.05, 10.15)["intervene_action"]  # 1 cm step (+ 4 mm lag, measured) / 2 cm
    assert a[0] == pytest.approx(0.5 if origin == "commanded" else 0.7, abs=1e-6)
    with pytest.raises(ValueError, match="action_origin 'target'"):
        RosRigEnv(RigSpec(cameras=()), RosEnvConfig(action_origin="target"))


@pytest.mark.ros
def test_the_reset_routines_api_moves_prompts_and_waits_for_the_operator():
    """What robot/reset.py uses: pose, move_to (a clear error when the arm does not get there), prompt, events."""
    nodes = Spinner()
    state = StateSource(nodes)
    nodes.start()
    probe = Probe()
    probe.subscribe("target_pose", PoseStamped, COMMAND_QOS)
    probe.subscribe("gripper/command", JointState, COMMAND_QOS)
    probe.subscribe("reset/prompt", String, COMMAND_QOS)
    events = probe.publisher("episode/event", String, COMMAND_QOS)
    env = RosRigEnv(RigSpec(cameras=()), RosEnvConfig(max_obs_age=0.4, wait_timeout=3.0))
    try:
        env.connect()
        assert wait_for(lambda: env.observer.latest("ee_pose") and env.observer.latest("gripper"))  # discovery
        pos, quat, width = env.pose()
        np.testing.assert_allclose(pos, state.pos)
        assert width == pytest.approx(0.05)
        env.move_to(pos + [0.0, 0.0, 0.005], quat, tolerance=0.01, timeout=2.0)  # already within tolerance
        with pytest.raises(RuntimeError, match=r"move_to \[0.5, 0.0, 0.2\] \(width 0.08\): the TCP is 0.100 m away"):
            env.move_to([0.5, 0.0, 0.2], quat, 0.08, tolerance=0.01, timeout=0.3)
        tgt = wait_for(lambda: probe.got("target_pose"))[-1].pose.position
        assert (tgt.x, tgt.y, tgt.z) == pytest.approx((0.5, 0.0, 0.2))
        assert wait_for(lambda: probe.got("gripper/command"))[-1].position[0] == pytest.approx(0.08)
        env.prompt("put it back")
        assert wait_for(lambda: [m.data for m in probe.got("reset/prompt")] == ["put it back"])
        assert env.wait_event(("reset", "abort"), timeout=0.2) is None
        wait_for(lambda: probe.node.count_subscribers("episode/event") > 0)
        events.publish(String(data="success"))  # not an answer: dropped
        events.publish(String(data="reset"))
        assert env.wait_event(("reset", "abort"), timeout=3.0) == "reset"
    finally:
        env.close()
        probe.close()
        nodes.close()


@pytest.mark.ros
def test_the_operator_confirms_or_rejects_a_success_the_classifier_claims():
    """``review_timeout``: a claimed success is put to the operator on reset/prompt; their failure rejects it (no
    reward, truncated, not terminal, not announced), their success confirms it, silence leaves it standing
    (announced); the reward function hears each verdict."""
    from robot.ros.qos import LATCHED_QOS

    class Claims:  # a classifier that claims a success on every frame and hears the verdicts
        def __init__(self):
            self.verdicts: list[bool] = []

        def __call__(self, obs):
            return 1.0

        def verdict(self, success: bool) -> None:
            self.verdicts.append(success)

    answers = ["failure", "success"]
    nodes = Spinner()
    StateSource(nodes)
    nodes.start()
    probe = Probe()
    probe.subscribe("target_pose", PoseStamped, COMMAND_QOS)  # the franka node's inputs
    probe.subscribe("gripper/command", JointState, COMMAND_QOS)
    probe.subscribe("episode/event", String, COMMAND_QOS)
    prompts: list[str] = []
    events = probe.publisher("episode/event", String, COMMAND_QOS)

    def on_prompt(m: String) -> None:
        prompts.append(m.data)
        if m.data.startswith("The reward classifier") and answers:
            events.publish(String(data=answers.pop(0)))

    probe.node.create_subscription(String, "reset/prompt", on_prompt, LATCHED_QOS)
    claims = Claims()
    env = RosRigEnv(RigSpec(cameras=()), RosEnvConfig(max_obs_age=0.4, wait_timeout=3.0, review_timeout=5.0),
                    reward_fn=claims)
    try:
        env.connect()
        assert wait_for(lambda: env.observer.latest("ee_pose") and env.observer.latest("gripper"))  # discovery
        assert wait_for(lambda: events.get_subscription_count() >= probe.node.count_subscribers("episode/event") >= 2)
        env.reset()
        _, r, term, trunc, info = env.step(np.zeros(7, np.float32))  # rejected
        assert (r, term, trunc, info["review"], info["is_success"]) == (0.0, False, True, "reject", False)
        env.reset()
        _, r, term, trunc, info = env.step(np.zeros(7, np.float32))  # confirmed
        assert (r, term, trunc, info["review"], info["is_success"]) == (1.0, True, False, "confirm", True)
        assert claims.verdicts == [False, True]
        assert wait_for(lambda: prompts[-1] == "")  # the question withdrawn once answered
        # the env announced no success of its own: the operator's answers are the only success / failure events
        assert [m.data for m in probe.got("episode/event") if m.data != "start"] == ["failure", "success"]
        env.cfg.review_timeout = 0.3  # nobody answers: the claim stands, announced by the env
        env.reset()
        _, r, term, trunc, info = env.step(np.zeros(7, np.float32))
        assert (r, term, info["review"], info["is_success"]) == (1.0, True, "none", True)
        assert claims.verdicts == [False, True]
        assert wait_for(lambda: [m.data for m in probe.got("episode/event") if m.data != "start"][-1:] == ["success"]
                        and len([m for m in probe.got("episode/event") if m.data == "success"]) == 2)
    finally:
        env.close()
        probe.close()
        nodes.close()
