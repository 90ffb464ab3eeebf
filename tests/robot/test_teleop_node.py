"""teleop-node over real DDS: the keyboard through a pty (as over SSH), and a missing device."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import termios
import time

import pytest
import rclpy
from _ros_probe import Probe, Spinner
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from waiting import wait_for

from robot.nodes.teleop_node import TeleopNode
from robot.ros.qos import LATCHED_QOS

pytestmark = pytest.mark.ros


def _subscribe_all(probe: Probe) -> None:
    probe.subscribe("teleop/twist", TwistStamped)
    probe.subscribe("teleop/intervening", Bool, LATCHED_QOS)
    probe.subscribe("teleop/gripper", JointState)
    probe.subscribe("episode/event", String)
    probe.subscribe("/diagnostics", DiagnosticArray)


def test_keyboard_teleop_node_in_a_pty_publishes_operator_commands():
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    probe = Probe()
    _subscribe_all(probe)
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot.nodes.teleop_node", "--ros-args", "-p", "teleop.device:=keyboard",
         "-p", "teleop.rate_hz:=50.0", "-p", "teleop.translation_scale:=0.2"],
        stdin=slave, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert wait_for(lambda: len(probe.got("teleop/twist")) > 5, timeout=30), "teleop-node did not start"
        assert not probe.got("teleop/intervening")[-1].data
        # hold "w" (terminal auto-repeat: one byte every 30 ms), then close the gripper and mark success
        for _ in range(15):
            os.write(master, b"w")
            time.sleep(0.03)
        moving = wait_for(lambda: [m for m in probe.got("teleop/twist") if m.twist.linear.x > 0])
        assert moving and moving[-1].twist.linear.x == pytest.approx(0.2)
        assert moving[-1].header.frame_id == "panda_link0"
        assert wait_for(lambda: any(m.data for m in probe.got("teleop/intervening")))
        os.write(master, b"cy")
        grip = wait_for(lambda: probe.got("teleop/gripper"))
        assert list(grip[-1].position) == [0.0] and grip[-1].effort[0] > 0  # a grasp
        assert wait_for(lambda: [m.data for m in probe.got("episode/event")]) == ["success"]
        # released: the twist stops, and control returns to the policy after release_after
        assert wait_for(lambda: probe.got("teleop/twist")[-1].twist.linear.x == 0.0, timeout=3)
        assert wait_for(lambda: not probe.got("teleop/intervening")[-1].data, timeout=3)
        # Ctrl-C (SIGINT): a clean exit that gives the terminal back as it was
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert termios.tcgetattr(slave)[3] == before[3]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()
        os.close(master)
        os.close(slave)


def test_missing_device_is_a_clear_error_not_a_crash():
    probe = Probe()
    _subscribe_all(probe)
    nodes = Spinner()
    node = TeleopNode("teleop", context=nodes.context, parameter_overrides=[
        rclpy.Parameter("teleop.device", value="gamepad"), rclpy.Parameter("retry_period", value=0.2)])
    nodes.add(node)
    nodes.start()
    try:
        def errors():
            return [s for a in probe.got("/diagnostics") for s in a.status
                    if s.level == b"\x02" and "teleop" in s.name]

        err = wait_for(errors, timeout=10)
        assert err and "gamepad" in err[-1].message and "teleop.device=keyboard" in err[-1].message
        time.sleep(0.6)  # retries keep running quietly; the node keeps publishing "no operator"
        assert node.connected is False
        assert wait_for(lambda: probe.got("teleop/intervening")) and not probe.got("teleop/intervening")[-1].data
        n = len(probe.got("teleop/twist"))
        assert wait_for(lambda: len(probe.got("teleop/twist")) > n + 5)
    finally:
        nodes.close()
        probe.close()


def test_the_envs_reset_prompt_reaches_the_operators_terminal():
    """A reset routine's prompt on reset/prompt (latched) is held (and logged) by the teleop node; "" withdraws it."""
    probe = Probe()
    prompt = probe.publisher("reset/prompt", String, LATCHED_QOS)
    prompt.publish(String(data="put the cube back, then press b"))  # before the node is up: latched
    nodes = Spinner()
    node = TeleopNode("teleop", context=nodes.context,
                      parameter_overrides=[rclpy.Parameter("teleop.device", value="none")])
    nodes.add(node)
    nodes.start()
    try:
        assert wait_for(lambda: node.prompt == "put the cube back, then press b")
        prompt.publish(String(data=""))
        assert wait_for(lambda: node.prompt == "")
    finally:
        nodes.close()
        probe.close()
