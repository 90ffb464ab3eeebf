"""The franka node with the sim backend (MuJoCo SimRig in-process) over real DDS on loopback."""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from _franka_harness import DOWN, Harness
from rclpy.lifecycle import TransitionCallbackReturn
from std_srvs.srv import SetBool, Trigger

from robot.config import RobotConfig
from robot.nodes.franka_node import FrankaNode, validate_robot_config
from robot.ros.params import ParameterError

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

SIM = {"backend": "sim", "state_rate_hz": 250.0}


@pytest.fixture
def sim():
    h = Harness(SIM)
    try:
        assert h.wait_for(lambda: h.last["ee_pose"], 10.0), "no ee_pose from the sim backend"
        yield h
    finally:
        h.close()


def test_sim_node_moves_the_arm_to_a_commanded_target(sim):
    start, _ = sim.ee()
    goal = start + np.array([0.08, 0.05, -0.06])
    reached = sim.wait_for(lambda: np.linalg.norm(sim.ee()[0] - goal) < 0.005, 8.0,
                           every=lambda: sim.send_pose(goal))
    assert reached, f"ee {sim.ee()[0]} did not reach {goal}"
    js = sim.last["joint_states"]
    assert list(js.name) == [f"panda_joint{i}" for i in range(1, 8)] and len(js.position) == 7
    np.testing.assert_allclose(sim.applied(), goal, atol=1e-6)
    # the sim rig is exposed for a camera node sharing the scene
    assert sim.node.sim_rig is not None and sim.node.sim_lock is not None
    level, msg, values = sim.wait_for(sim.diag, 5.0)
    assert values["backend"] == "sim" and values["connected"] == "True"
    assert int(values["sim_steps"]) > 0 and "sim_realtime_factor" in values


def test_teleop_intervention_wins_over_the_policy(sim):
    start, _ = sim.ee()
    policy_goal = start + np.array([0.0, 0.1, 0.0])
    sim.intervene(True)
    assert sim.wait_for(lambda: sim.node._intervening, 5.0)
    # policy targets are ignored while the operator intervenes; the operator's twist (+x) is applied
    sim.stream(lambda: (sim.send_pose(policy_goal), sim.send_teleop_twist([0.1, 0, 0])), 1.0)
    pos, _ = sim.ee()
    assert pos[0] > start[0] + 0.05, f"teleop twist not applied: {pos} from {start}"
    assert abs(pos[1] - start[1]) < 0.01, f"policy target leaked through: {pos}"
    assert sim.node.ignored > 0
    # the operator's gripper command wins too; the policy's is ignored
    sim.send_gripper(0.02, teleop=True)
    sim.send_gripper(0.07)
    assert sim.wait_for(lambda: abs(sim.last["gripper/state"].position[0] - 0.02) < 2e-3, 5.0)
    # operator lets go: the policy's targets count again
    sim.intervene(False)
    assert sim.wait_for(lambda: not sim.node._intervening, 5.0)
    here, _ = sim.ee()
    goal = here + np.array([0.0, 0.05, 0.0])
    assert sim.wait_for(lambda: np.linalg.norm(sim.ee()[0] - goal) < 0.005, 8.0, every=lambda: sim.send_pose(goal))


def test_twist_delta_mode_in_the_tcp_frame():
    with Harness({**SIM, "twist_mode": "delta"}) as h:
        assert h.wait_for(lambda: h.last["ee_pose"], 10.0)
        start, _ = h.ee()
        # the TCP points down: +z in the TCP frame is -z in the base frame; five 1 cm deltas
        for _ in range(5):
            h.send_twist([0, 0, 0.01], frame="panda_hand_tcp")
        goal = start + np.array([0, 0, -0.05])
        assert h.wait_for(lambda: np.linalg.norm(h.ee()[0] - goal) < 0.004, 6.0), f"{h.ee()[0]} vs {goal}"
        # an unknown frame is rejected, not guessed
        before = h.node.filter.rejected
        h.send_twist([0, 0, 0.01], frame="camera_link")
        assert h.wait_for(lambda: h.node.filter.rejected > before, 5.0)


def test_hold_service_ignores_targets_and_home_returns(sim):
    start, _ = sim.ee()
    assert sim.call(SetBool, "hold", SetBool.Request(data=True)).success
    sim.stream(lambda: sim.send_pose(start + [0.0, -0.08, 0.0]), 0.6)
    assert np.linalg.norm(sim.ee()[0] - start) < 0.003
    assert sim.call(SetBool, "hold", SetBool.Request(data=False)).success
    goal = start + np.array([0.05, 0.0, 0.0])
    assert sim.wait_for(lambda: np.linalg.norm(sim.ee()[0] - goal) < 0.005, 8.0, every=lambda: sim.send_pose(goal))
    res = sim.call(Trigger, "home", Trigger.Request())
    assert res.success, res.message
    assert np.linalg.norm(sim.ee()[0] - start) < 0.01
    assert sim.call(Trigger, "recover", Trigger.Request()).success


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("backend", "mock", "'backend'"),
        ("state_rate_hz", 0.0, "'state_rate_hz'"),
        ("twist_mode", "acceleration", "'twist_mode'"),
        ("safety.workspace_min", [0.9, 0.0, 0.0], "safety.workspace_min"),
        ("home_joints", [0.0, 1.0], "'home_joints'"),
    ],
)
def test_bad_parameters_fail_configure_with_a_clear_error(name, value, match):
    cfg = RobotConfig()
    if name.startswith("safety."):
        setattr(cfg.safety, name.split(".")[1], value)
    else:
        setattr(cfg, name, value)
    with pytest.raises(ParameterError, match=match):
        validate_robot_config(cfg)
    # and the node refuses to configure with it
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = FrankaNode("franka", namespace="/badparam", context=ctx,
                          parameter_overrides=[rclpy.Parameter(name, value=value)])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_wrong_parameter_type_is_a_clear_error():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = FrankaNode("franka", namespace="/badtype", context=ctx,
                          parameter_overrides=[rclpy.Parameter("state_rate_hz", value="fast")])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_quaternion_down_constant_matches_sim_home(sim):
    _, quat = sim.ee()
    assert abs(abs(float(np.dot(quat, DOWN))) - 1.0) < 1e-3


def test_physics_fault_is_reported_on_diagnostics_and_auto_recovered():
    with Harness({**SIM, "reconnect_period": 0.5}) as h:
        assert h.wait_for(lambda: h.last["ee_pose"], 10.0)
        rig = h.node.sim_rig
        step = rig.step

        def unstable(n: int = 1) -> None:
            rig.step = step
            raise RuntimeError("simulated instability")

        rig.step = unstable  # the physics thread dies on its next step
        err = h.wait_for(lambda: h.diag_seen(lambda lvl, msg, v: lvl == 2 and "simulated instability" in msg), 10.0)
        assert err, f"fault not reported: {h.diag()}"
        ok = h.wait_for(lambda: (d := h.diag()) and d[0] == 0 and d[2]["recoveries"] == "1", 10.0)
        assert ok, f"not auto-recovered: {h.diag()}"
        assert h.node.sim_rig is rig  # the same rig: a camera node sharing it keeps working
        here, _ = h.ee()
        goal = here + np.array([0.0, 0.05, 0.0])
        assert h.wait_for(lambda: np.linalg.norm(h.ee()[0] - goal) < 0.005, 8.0, every=lambda: h.send_pose(goal))


def test_impedance_gains_change_live_and_are_validated(sim):
    from rclpy.parameter import Parameter

    res = sim.node.set_parameters([Parameter("translational_stiffness", value=900.0)])
    assert res[0].successful
    assert sim.node.sim_rig.k_t == pytest.approx(900.0)
    res = sim.node.set_parameters([Parameter("rotational_stiffness", value=-5.0)])
    assert not res[0].successful and "rotational_stiffness" in res[0].reason
    assert sim.node.sim_rig.k_r == pytest.approx(150.0)


def test_franka_node_executable_publishes_and_exits_cleanly_on_ctrl_c():
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import rclpy
    from sensor_msgs.msg import JointState

    exe = Path(sys.executable).with_name("franka-node")
    ns = "/exe_test"
    proc = subprocess.Popen([str(exe), "--ros-args", "-r", f"__ns:={ns}", "-p", "state_rate_hz:=100.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("probe", namespace=ns, context=ctx)
        got = []
        node.create_subscription(JointState, "joint_states", got.append, 10)
        from rclpy.executors import SingleThreadedExecutor

        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        deadline = time.monotonic() + 60.0
        while len(got) < 20 and time.monotonic() < deadline and proc.poll() is None:
            ex.spin_once(timeout_sec=0.1)
        assert len(got) >= 20, f"no joint_states from franka-node: {proc.poll()}"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "Traceback" not in out and "context is invalid" not in out, out
        ex.shutdown()
        node.destroy_node()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctx.try_shutdown()
