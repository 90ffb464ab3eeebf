"""The franka node's control loop without a node: ticks, robot errors, reconnect, auto-recover, home, logging."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from waiting import wait_for

from rig.safety import SafetyConfig, SafetyFilter
from robot.backends.base import ArmState, Backend, ConnectionLost
from robot.config import RobotConfig
from robot.nodes.franka.control import ArmLoop, Latency
from robot.nodes.franka.mux import CommandMux, Outcome

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
START = np.array([0.45, 0.0, 0.30])


class FakeArm(Backend):
    """An arm that is exactly where it was last commanded; faults on request."""

    name = "fake"

    def __init__(self) -> None:
        self.pos, self.quat = START.copy(), DOWN.copy()
        self.commands: list[np.ndarray] = []
        self.up = False
        self.fail_connect = 0  # refuse this many connects
        self.fault = ""  # robot error
        self.lost = False
        self.recover_ok = True
        self.connects = 0
        self.lock = threading.Lock()

    def connect(self) -> None:
        if self.fail_connect > 0:
            self.fail_connect -= 1
            raise OSError("no route to the FCI")
        self.up, self.lost = True, False
        self.connects += 1

    def close(self) -> None:
        self.up = False

    @property
    def connected(self) -> bool:
        return self.up

    def read(self) -> ArmState:
        if self.lost:
            raise ConnectionLost("UDP timeout")
        z = np.zeros(7)
        return ArmState(time.time(), z, z, z, self.pos.copy(), self.quat.copy(), np.zeros(6))

    def command(self, pos: np.ndarray, quat: np.ndarray) -> None:
        with self.lock:
            self.commands.append(np.array(pos))
        self.pos, self.quat = np.array(pos), np.array(quat)

    def set_impedance(self, translational: float, rotational: float, damping_ratio: float) -> None:
        pass

    def gripper_command(self, cmd) -> None:
        pass

    def gripper_state(self):
        return None

    def recover(self) -> bool:
        if self.recover_ok:
            self.fault = ""
        return self.recover_ok

    def home(self, joints: np.ndarray, timeout: float = 20.0) -> bool:
        self.pos = START + [0.0, 0.1, 0.0]
        return True

    def error(self) -> str:
        return self.fault


class Log:
    """Records (severity, text); refuses a second severity at one call site, as rclpy's logger does."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._sites: dict[tuple[str, int], str] = {}

    def _log(self, level: str, text: str, **kwargs) -> None:
        import sys

        f = sys._getframe(2)
        site = (f.f_code.co_filename, f.f_lineno)
        if self._sites.setdefault(site, level) != level:
            raise ValueError("Logger severity cannot be changed between calls.")
        self.lines.append((level, text))

    def info(self, text: str, **kwargs) -> None:
        self._log("info", text, **kwargs)

    def warning(self, text: str, **kwargs) -> None:
        self._log("warning", text, **kwargs)

    def error(self, text: str, **kwargs) -> None:
        self._log("error", text, **kwargs)


def make(cfg: RobotConfig | None = None):
    cfg = cfg or RobotConfig(state_rate_hz=200.0, reconnect_period=0.1)
    arm, log = FakeArm(), Log()
    published: list = []
    reports: list[int] = []
    mux = CommandMux(SafetyFilter(SafetyConfig(), 1.0 / cfg.state_rate_hz))
    loop = ArmLoop(arm, mux, cfg, publish_state=lambda s, a: published.append(a),
                   report=lambda: reports.append(1), log=log)
    return loop, arm, mux, log, published, reports


def test_a_tick_streams_the_filtered_command_and_publishes_it():
    loop, arm, mux, _, published, _ = make()
    t = time.monotonic()  # the mux stamps arrivals on this clock
    loop.tick(t, 0.005)  # not connected: nothing happens
    assert not published and not arm.commands
    loop.connect_now()
    loop.tick(t, 0.005)
    assert published[-1] is not None and published[-1].holding  # reset to the measured pose: holds
    np.testing.assert_allclose(arm.commands[-1], START)
    goal = START + [0.05, 0.0, 0.0]
    mux.target_pose(goal, DOWN, "", time.time())
    for _ in range(40):
        t += 0.005
        loop.tick(t, 0.005)
    assert START[0] < arm.pos[0] <= goal[0]
    steps = np.linalg.norm(np.diff(np.array(arm.commands), axis=0), axis=1)
    assert steps.max() <= SafetyConfig().max_step_translation + 1e-12
    assert np.isfinite(loop.latency.summary()["p50_ms"])  # the accepted target's latency was measured


def test_a_robot_error_stops_streaming_until_recovered_then_restarts_from_the_measured_pose():
    loop, arm, mux, log, published, reports = make()
    loop.connect_now()
    loop.tick(1.0, 0.005)
    arm.fault = "cartesian_reflex"
    n = len(arm.commands)
    loop.tick(1.005, 0.005)
    assert loop.robot_error == "cartesian_reflex" and len(arm.commands) == n and published[-1] is None
    assert ("error", "robot error: cartesian_reflex") in log.lines and reports
    assert mux.needs_reset
    arm.pos = START + [0.0, 0.0, 0.05]  # the reflex left the arm elsewhere
    assert loop.recover("requested") == (True, "recovered")
    assert loop.robot_error == "" and loop.recoveries == 1
    loop.tick(1.010, 0.005)
    np.testing.assert_allclose(arm.commands[-1], START + [0.0, 0.0, 0.05])  # holds where it is now
    arm.recover_ok, arm.fault = False, "still broken"
    ok, msg = loop.recover("requested")  # a failure after a success: logged at error, no crash
    assert not ok and "still broken" in msg and log.lines[-1][0] == "error"


def test_commands_are_ignored_while_the_backend_is_lost():
    loop, arm, mux, log, _, reports = make()
    loop.connect_now()
    t = time.monotonic()
    loop.tick(t, 0.005)
    assert mux.target_pose(START + [0.01, 0, 0], DOWN, "", time.time()) is Outcome.ACCEPTED
    arm.lost = True
    n = len(arm.commands)
    loop.tick(t + 0.005, 0.005)
    assert not loop.connected and loop.lost_reason == "UDP timeout" and reports
    assert mux.target_pose(START + [0.01, 0, 0], DOWN, "", time.time()) is Outcome.IGNORED
    loop.tick(t + 0.010, 0.005)
    assert len(arm.commands) == n  # nothing streamed while disconnected
    assert ("error", "backend lost: UDP timeout; reconnecting every 0.1 s") in log.lines


def test_home_restarts_from_the_home_pose():
    loop, arm, mux, _, _, _ = make()
    assert loop.home([0.0] * 7) == (False, "not connected: not connected yet")
    loop.connect_now()
    loop.tick(1.0, 0.005)
    assert loop.home([0.0] * 7) == (True, "homed")
    assert loop.busy == "" and mux.needs_reset
    loop.tick(1.005, 0.005)
    np.testing.assert_allclose(arm.commands[-1], START + [0.0, 0.1, 0.0])


def test_the_threads_reconnect_a_lost_backend_and_auto_recover_a_fault():
    loop, arm, mux, log, published, _ = make()
    arm.fail_connect = 2  # the FCI answers at the third try
    loop.start()
    try:
        assert wait_for(lambda: loop.connected and len(arm.commands) > 10), log.lines
        assert loop.reconnects == 1 and ("warning", "connect failed: OSError: no route to the FCI") in log.lines
        assert loop.threads and all(t.is_alive() for t in loop.threads)
        arm.lost = True
        assert wait_for(lambda: not loop.connected)
        assert "UDP timeout" in loop.lost_reason
        assert wait_for(lambda: loop.connected and loop.reconnects == 2)
        arm.fault = "joint_reflex"
        assert wait_for(lambda: loop.recoveries == 1 and loop.robot_error == "")
        n = len(arm.commands)
        assert wait_for(lambda: len(arm.commands) > n + 10)  # streaming again
        assert loop.stats.count > 0
    finally:
        loop.stop()
    assert not loop.threads


def test_auto_recover_off_leaves_the_error_standing():
    loop, arm, _, _, _, _ = make(RobotConfig(state_rate_hz=200.0, reconnect_period=0.05, auto_recover=False))
    loop.connect_now()
    loop.start()
    try:
        arm.fault = "joint_reflex"
        assert wait_for(lambda: loop.robot_error == "joint_reflex")
        time.sleep(0.3)
        assert loop.recoveries == 0 and loop.robot_error == "joint_reflex"
    finally:
        loop.stop()


def test_an_exception_in_a_tick_is_reported_and_the_loop_goes_on():
    loop, arm, _, log, _, _ = make()
    loop.connect_now()
    arm.pos = np.array([np.nan, 0.0, 0.3])  # a broken reading: the filter refuses to reset to it
    loop.start()
    try:
        assert wait_for(lambda: loop.robot_error.startswith("control loop: CommandRejected"))
        arm.pos = START.copy()
        n = len(arm.commands)
        assert wait_for(lambda: len(arm.commands) > n + 5)
    finally:
        loop.stop()


def test_latency_summary():
    lat = Latency(n=3)
    assert np.isnan(lat.summary()["p50_ms"])
    for v in (0.001, 0.002, 0.003, 0.010):
        lat.add(v)
    assert lat.summary()["p50_ms"] == pytest.approx(3.0)
