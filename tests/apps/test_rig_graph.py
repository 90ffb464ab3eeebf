"""The whole simulated rig: `rig-up rig=sim` in a terminal, and the env adapter against the graph."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String

sys.path.insert(0, str(Path(__file__).parents[1] / "robot"))  # the shared ROS probe helpers
from _ros_probe import Probe  # noqa: E402
from waiting import wait_for  # noqa: E402

from apps.bringup import Graph, compose_rig
from rig.spec import default_spec
from robot.env import RosEnvConfig, RosRigEnv
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.render]

SMALL_CAMERAS = [f"rig.cameras.cameras.{i}.{k}={v}" for i in (0, 1) for k, v in
                 (("width", 64), ("height", 48), ("fps", 15.0))]

# every topic of docs/interfaces.md that the rig publishes on its own (events and instructions come from people)
TOPICS = {
    "joint_states": (JointState, STATE_QOS),
    "ee_pose": (PoseStamped, STATE_QOS),
    "ee_wrench": (WrenchStamped, STATE_QOS),
    "gripper/state": (JointState, STATE_QOS),
    "command_applied": (PoseStamped, STATE_QOS),
    "cameras/front/image_raw": (Image, SENSOR_QOS),
    "cameras/front/camera_info": (CameraInfo, SENSOR_QOS),
    "cameras/wrist/image_raw": (Image, SENSOR_QOS),
    "cameras/wrist/camera_info": (CameraInfo, SENSOR_QOS),
    "teleop/twist": (TwistStamped, COMMAND_QOS),
    "teleop/intervening": (Bool, LATCHED_QOS),
    "/diagnostics": (DiagnosticArray, 10),
}


def _pos(msg: PoseStamped) -> np.ndarray:
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


def test_rig_up_in_a_terminal_publishes_the_graph_and_moves_the_arm(tmp_path: Path):
    master, slave = pty.openpty()
    probe = Probe()
    for topic, (ty, qos) in TOPICS.items():
        probe.subscribe(topic, ty, qos)
    probe.subscribe("episode/event", String, COMMAND_QOS)
    probe.subscribe("gripper/command_applied", JointState, STATE_QOS)
    gripper_pub = probe.publisher("gripper/command", JointState, COMMAND_QOS)
    target_pub = probe.publisher("target_pose", PoseStamped, COMMAND_QOS)
    rig_log = (tmp_path / "rig-up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.bringup", "rig=sim", "duration=120", *SMALL_CAMERAS],
        stdin=slave, stdout=rig_log, stderr=subprocess.STDOUT, cwd=tmp_path,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: all(probe.got(t) for t in TOPICS), timeout=60), \
            f"silent topics: {[t for t in TOPICS if not probe.got(t)]}"
        img = probe.got("cameras/front/image_raw")[-1]
        assert (img.encoding, img.width, img.height) == ("rgb8", 64, 48)
        def reporting():
            return {s.name.split(":")[0] for a in probe.got("/diagnostics") for s in a.status}

        assert wait_for(lambda: {"/franka", "/cameras", "/teleop"} <= reporting(), timeout=10), reporting()
        # command a target 5 cm away: the sim arm gets there through the safety filter
        start = _pos(probe.got("ee_pose")[-1])
        ref = probe.got("ee_pose")[-1]
        goal = start + np.array([0.05, 0.0, -0.03])
        tgt = PoseStamped()
        tgt.header.frame_id = "panda_link0"
        tgt.pose.orientation = ref.pose.orientation
        tgt.pose.position.x, tgt.pose.position.y, tgt.pose.position.z = (float(v) for v in goal)

        def close_enough():
            tgt.header.stamp = probe.node.get_clock().now().to_msg()
            target_pub.publish(tgt)  # streamed, as a policy does (the franka node has a watchdog)
            return np.linalg.norm(_pos(probe.got("ee_pose")[-1]) - goal) < 0.01

        assert wait_for(close_enough, timeout=20, period=0.05), (_pos(probe.got("ee_pose")[-1]), goal)
        # a gripper command is applied and the fingers move
        gripper_pub.publish(JointState(name=["width"], position=[0.02], velocity=[0.1], effort=[0.0]))
        applied = wait_for(lambda: probe.got("gripper/command_applied"), timeout=10)
        assert applied and applied[-1].position[0] == pytest.approx(0.02)
        assert wait_for(lambda: probe.got("gripper/state")[-1].position[0] < 0.03, timeout=10)
        # the operator's keyboard in the rig-up terminal: a success event
        os.write(master, b"y")
        assert wait_for(lambda: "success" in [m.data for m in probe.got("episode/event")], timeout=10)
        proc.send_signal(signal.SIGINT)
        # every node stops its threads with a timeout; on a loaded 2-core machine that can add up
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        sig = ""
        if code is None:  # the signal masks say whether SIGINT was blocked or ignored; USR1 dumps stacks
            sig = "".join(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines(True)
                          if line.startswith(("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd")))
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2.0)
        assert code == 0, f"rig-up did not exit cleanly on Ctrl-C ({code}):\n{sig}" + \
            (tmp_path / "rig-up.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()
        rig_log.close()
        os.close(master)
        os.close(slave)


def test_env_adapter_round_trip_against_the_sim_graph(tmp_path: Path):
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    store = tmp_path / "episodes.zarr"
    graph = Graph(compose_rig(["rig.teleop.device=none", *SMALL_CAMERAS, f"record_path={store}", "task=reach"]),
                  context=ctx).start()
    # in one process the camera node renders the franka node's SimRig (no second physics copy)
    assert graph.nodes["cameras"].sim.rig is graph.nodes["franka"].sim_rig is not None
    spinner = threading.Thread(target=graph.spin, daemon=True)
    spinner.start()
    spec = default_spec(32)
    env = RosRigEnv(spec, RosEnvConfig(max_obs_age=0.3, wait_timeout=5.0, max_episode_steps=8))
    try:
        with env:
            obs, info = env.reset()
            assert env.observation_space.contains(obs) and obs["images/front"].shape == (32, 32, 3)
            x0 = obs["state/ee_pos"].copy()
            for _ in range(8):
                obs, r, term, trunc, info = env.step(np.array([1.0, 0, 0, 0, 0, 0, 1.0], np.float32))
                assert info["obs_age"] <= 0.3
            assert trunc and not term  # max_episode_steps
            # 8 ticks of +2 cm along x commanded (the impedance controller lags, more so on a loaded machine)
            dx, dy, dz = obs["state/ee_pos"] - x0
            assert dx > 0.01 and dx > 3 * max(abs(dy), abs(dz)), (dx, dy, dz)
            # the observation is the spec's: the same keys, shapes and dtypes the sim envs give
            spec.check_observation(obs)
            obs, _ = env.reset()
            assert np.linalg.norm(obs["state/ee_pos"] - x0) < 0.02  # home brought it back
            # a reward classifier says success on the 3rd tick: the env announces it
            ticks = iter(range(100))
            env.reward_fn = lambda o: 1.0 if next(ticks) >= 2 else 0.0
            for _ in range(3):
                obs, r, term, trunc, info = env.step(np.zeros(7, np.float32))
            assert term and info["is_success"]
        # the recorder on the graph labelled both episodes from the env's events
        from flywheel.data import EpisodeStore

        def records():
            return EpisodeStore(store, "r").records

        assert wait_for(lambda: len(records()) == 2, timeout=10), records()
        assert [(rec.success, rec.task) for rec in records()] == [(False, "reach"), (True, "reach")]
    finally:
        ctx.try_shutdown()
        spinner.join(timeout=5)
        graph.close()
