"""The franka node's franky backend against franka-sim (the FCI protocol over MuJoCo) on loopback."""

from __future__ import annotations

import numpy as np
import pytest
from _franka_harness import DOWN, Harness
from std_srvs.srv import SetBool, Trigger

from rig.safety import SafetyConfig

pytestmark = [pytest.mark.ros, pytest.mark.fci, pytest.mark.slow, pytest.mark.timeout(180)]

LO, HI = np.array(SafetyConfig().workspace_min), np.array(SafetyConfig().workspace_max)


def franky_params(fsim, **extra):
    # softer than the rig's defaults: franka-sim shares this 2-core machine with the test (and with other
    # jobs); a starved 1 kHz loop holds torques for several ms, which stiff gains do not tolerate
    return {"backend": "franky", "host": fsim.host, "state_rate_hz": 250.0,
            "translational_stiffness": 800.0, "rotational_stiffness": 40.0, **extra}


@pytest.fixture
def node(franka_sim):
    h = Harness(franky_params(franka_sim), record=True)
    try:
        assert h.wait_for(lambda: h.last["ee_pose"], 15.0), "no ee_pose from the franky backend"
        yield h
    finally:
        h.close()


def move_to(h: Harness, goal, tol=0.01, timeout=10.0) -> bool:
    return bool(h.wait_for(lambda: np.linalg.norm(h.ee()[0] - goal) < tol, timeout, every=lambda: h.send_pose(goal)))


def test_targets_move_the_end_effector(node):
    for goal in (np.array([0.45, 0.05, 0.45]), np.array([0.40, -0.10, 0.35])):
        assert move_to(node, goal, tol=0.01), f"ee {node.ee()[0]} did not reach {goal}"
    pos, quat = node.ee()
    assert abs(abs(float(np.dot(quat, DOWN))) - 1.0) < 0.01, f"TCP not pointing down: {quat}"
    js = node.last["joint_states"]
    assert len(js.position) == 7 and len(js.velocity) == 7 and len(js.effort) == 7
    assert node.last["ee_pose"].header.frame_id == "panda_link0"
    _, _, values = node.wait_for(node.diag, 5.0)
    assert 0.0 < float(values["control_command_success_rate"]) <= 1.0


def test_gripper_moves_and_grasps(node):
    def width():
        return node.last["gripper/state"].position[0]

    node.send_gripper(0.05, speed=0.1)
    assert node.wait_for(lambda: abs(width() - 0.05) < 2e-3, 10.0), f"gripper at {width()}"
    applied = node.last["gripper/command_applied"]
    assert applied.position[0] == pytest.approx(0.05) and applied.effort[0] == 0.0
    # grasp: close with 20 N; franka-sim holds a 3 cm virtual object between the fingers
    node.send_gripper(0.0, speed=0.1, force=20.0)
    assert node.wait_for(lambda: node.last["gripper/state"].effort[0] == pytest.approx(20.0), 10.0)
    assert width() == pytest.approx(0.03, abs=2e-3)
    # out-of-range commands are clipped, NaN is refused
    node.send_gripper(0.5, speed=3.0, force=0.0)
    assert node.wait_for(lambda: node.last["gripper/command_applied"].position[0] == pytest.approx(0.08), 5.0)
    assert node.last["gripper/command_applied"].velocity[0] == pytest.approx(0.1)
    rejected = node.node.filter.rejected
    node.send_gripper(float("nan"))
    assert node.wait_for(lambda: node.node.filter.rejected > rejected, 5.0)
    assert node.wait_for(lambda: abs(width() - 0.08) < 2e-3, 10.0)


def test_nan_and_out_of_box_targets_never_reach_franky(node):
    assert move_to(node, np.array([0.45, 0.0, 0.40]))
    rec = node.recorder
    n0 = len(rec.recorded())
    for bad in ([np.nan, 0.0, 0.4], [0.45, np.inf, 0.4]):
        node.stream(lambda b=bad: node.send_pose(b), 0.3)
    node.send_pose([0.45, 0.0, 0.40], [0.0, 0.0, 0.0, 0.0])  # zero quaternion
    assert node.wait_for(lambda: node.node.filter.rejected >= 3, 5.0)
    # far outside the box: clipped, the arm stops at the boundary
    far = np.array([2.0, 0.0, 0.40])
    node.stream(lambda: node.send_pose(far), 2.5)
    cmds = rec.recorded()[n0:]
    assert cmds, "nothing was streamed"
    pos = np.array([c[0] for c in cmds])
    quat = np.array([c[1] for c in cmds])
    assert np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))
    assert np.all(pos >= LO - 1e-9) and np.all(pos <= HI + 1e-9)
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    assert steps.max() <= SafetyConfig().max_step_translation + 1e-9
    assert pos[-1][0] == pytest.approx(HI[0])
    assert node.wait_for(lambda: abs(node.ee()[0][0] - HI[0]) < 0.01, 5.0), node.ee()[0]
    level, _, values = node.wait_for(node.diag, 5.0)
    assert int(values["rejected"]) >= 3 and int(values["clipped"]) > 0


def test_watchdog_holds_the_arm_when_targets_stop(franka_sim):
    with Harness(franky_params(franka_sim, **{"safety.watchdog_timeout": 0.3})) as h:
        assert h.wait_for(lambda: h.last["ee_pose"], 15.0)
        assert move_to(h, np.array([0.40, 0.0, 0.40])), (h.ee(), h.applied(), h.diag())
        # one far target, then silence: the arm moves for watchdog_timeout, then holds short of it
        h.send_pose([0.40, 0.30, 0.40])
        assert h.wait_for(lambda: h.node.filter.stale, 3.0)
        held = h.applied()
        assert held[1] < 0.25, f"watchdog did not stop the arm early: {held}"
        h.wait_for(lambda: False, 0.5)
        np.testing.assert_allclose(h.applied(), held, atol=1e-9)
        assert h.wait_for(lambda: np.linalg.norm(h.ee()[0] - held) < 0.01, 5.0)
        assert h.wait_for(lambda: (d := h.diag()) and "no fresh command" in d[1], 5.0)


def test_fci_server_killed_mid_motion_node_survives_and_reconnects(franka_sim):
    with Harness(franky_params(franka_sim, reconnect_period=0.5)) as h:
        assert h.wait_for(lambda: h.last["ee_pose"], 15.0)
        h.stream(lambda: h.send_pose([0.40, 0.10, 0.40]), 0.3)  # mid-motion
        franka_sim.kill()
        d = h.wait_for(lambda: h.diag_seen(lambda lvl, msg, v: lvl == 2 and "disconnected" in msg), 10.0)
        assert d, f"no ERROR on /diagnostics after the FCI went away: {h.diag()}"
        assert d[2]["connected"] == "False"
        n = h.counts["joint_states"]
        h.wait_for(lambda: False, 0.5)
        assert h.counts["joint_states"] - n < 5, "stale state published while disconnected"
        assert h.node.context.ok() and h.node._threads and all(t.is_alive() for t in h.node._threads)
        franka_sim.start()
        assert h.wait_for(lambda: (d := h.diag()) and d[2]["connected"] == "True" and int(d[2]["reconnects"]) >= 2,
                          30.0), f"did not reconnect: {h.diag()}"
        n = h.counts["joint_states"]
        assert h.wait_for(lambda: h.counts["joint_states"] > n + 50, 5.0)
        assert move_to(h, np.array([0.45, 0.0, 0.40])), "no motion after reconnecting"


def test_hold_home_and_recover_services(node):
    assert move_to(node, np.array([0.42, 0.08, 0.38]))
    assert node.call(SetBool, "hold", SetBool.Request(data=True)).success
    held = node.applied()
    node.stream(lambda: node.send_pose([0.42, -0.1, 0.38]), 0.5)
    np.testing.assert_allclose(node.applied(), held, atol=1e-9)
    assert node.ee()[0][1] > 0.06, f"moved toward a target sent during hold: {node.ee()[0]}"
    assert node.call(SetBool, "hold", SetBool.Request(data=False)).success
    res = node.call(Trigger, "home", Trigger.Request(), timeout=60.0)
    assert res.success, res.message
    js = np.array(node.last["joint_states"].position)
    np.testing.assert_allclose(js, [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785], atol=0.02)
    assert node.call(Trigger, "recover", Trigger.Request()).success
    assert move_to(node, np.array([0.40, 0.0, 0.45])), "no motion after home + recover"


def test_robot_error_is_reported_and_auto_recovered(franka_sim):
    with Harness(franky_params(franka_sim, reconnect_period=0.5)) as h:
        assert h.wait_for(lambda: h.last["ee_pose"], 15.0)
        assert move_to(h, np.array([0.42, 0.0, 0.42]))
        h.node.backend._robot.stop()  # aborts the running motion, as a reflex does
        err = h.wait_for(lambda: h.diag_seen(lambda lvl, msg, v: lvl == 2 and "robot error" in msg), 10.0)
        assert err, f"motion abort not reported: {h.diag()}"
        ok = h.wait_for(lambda: (d := h.diag()) and d[0] == 0 and int(d[2]["recoveries"]) >= 1, 15.0)
        assert ok, f"not auto-recovered: {h.diag()}"
        assert move_to(h, np.array([0.42, 0.08, 0.40])), "no motion after recovery"
