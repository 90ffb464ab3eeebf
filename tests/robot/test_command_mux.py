"""The franka node's command multiplexer without ROS: arbitration, twist modes, stale and rejected commands, hold."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.safety import SafetyConfig, SafetyFilter
from robot.nodes.franka.mux import CommandMux, Outcome, frame_is_ee

RATE = 500.0
DT = 1.0 / RATE
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
START = np.array([0.45, 0.0, 0.30])
WALL0 = 1.8e9  # the wall clock's epoch offset from the monotonic one (s)


class Clock:
    """A monotonic clock the test advances; the wall clock is it plus an epoch offset."""

    def __init__(self) -> None:
        self.t = 100.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t + WALL0


class Rig:
    """A mux over a real SafetyFilter, a fake clock, and an arm that is wherever the filter last put it."""

    def __init__(self, twist_mode: str = "velocity", cfg: SafetyConfig | None = None, ready: bool = True):
        self.clock = Clock()
        self.warnings: list[str] = []
        self.mux = CommandMux(SafetyFilter(cfg or SafetyConfig(), DT), twist_mode, gripper_speed=0.05,
                              warn=self.warnings.append, monotonic=self.clock.mono, wall=self.clock.wall)
        self.pos, self.quat = START.copy(), DOWN.copy()
        if ready:
            self.tick()  # the first tick resets the filter to the measured pose

    @property
    def filter(self) -> SafetyFilter:
        return self.mux.filter

    def tick(self, n: int = 1):
        t = None
        for _ in range(n):
            self.clock.t += DT
            t = self.mux.tick(self.pos, self.quat, self.clock.t, DT)
            self.pos, self.quat = t.applied.pos, t.applied.quat
        return t

    def stamp(self, age: float = 0.0) -> float:
        """A header stamp (wall clock) ``age`` s old."""
        return self.clock.wall() - age


# ------------------------------------------------------------------ arbitration
def test_policy_pose_is_followed_when_nobody_intervenes():
    r = Rig()
    goal = START + [0.05, 0.0, 0.0]
    assert r.mux.target_pose(goal, DOWN, "panda_link0", r.stamp()) is Outcome.ACCEPTED
    r.tick(50)
    assert r.pos[0] > START[0] + 0.005  # moving toward the goal, rate limited
    for _ in range(20):  # a stream of fresh targets reaches it
        r.mux.target_pose(goal, DOWN, "", r.stamp())
        r.tick(25)
    np.testing.assert_allclose(r.pos, goal, atol=1e-9)


def test_teleop_wins_while_intervening_and_the_policy_is_ignored():
    r = Rig()
    assert r.mux.set_intervening(True) and r.mux.intervening
    assert not r.mux.set_intervening(True)  # no change
    ignored = r.mux.ignored
    assert r.mux.target_pose(START + [0.0, 0.1, 0.0], DOWN, "", r.stamp()) is Outcome.IGNORED
    assert r.mux.target_twist([0.0, 0.1, 0.0], [0, 0, 0], "", r.stamp()) is Outcome.IGNORED
    assert r.mux.gripper(0.07) is None
    assert r.mux.ignored == ignored + 3
    for _ in range(100):  # the operator's +x velocity applies
        assert r.mux.teleop_twist([0.1, 0.0, 0.0], [0, 0, 0], "panda_link0", r.stamp()) is Outcome.ACCEPTED
        r.tick()
    assert r.pos[0] > START[0] + 0.005 and abs(r.pos[1] - START[1]) < 1e-9
    cmd = r.mux.teleop_gripper(0.02)
    assert cmd is not None and cmd.width == pytest.approx(0.02)


def test_teleop_commands_are_dropped_while_the_policy_drives():
    r = Rig()
    ignored, rejected = r.mux.ignored, r.filter.rejected
    assert r.mux.teleop_twist([0.1, 0, 0], [0, 0, 0], "", r.stamp()) is Outcome.DROPPED
    assert r.mux.teleop_gripper(0.02) is None
    assert not r.mux.velocity_active
    assert (r.mux.ignored, r.filter.rejected) == (ignored, rejected)  # not counted: not their turn
    r.tick(20)
    np.testing.assert_allclose(r.pos, START)


def test_switching_source_starts_from_a_still_arm_where_it_is():
    r = Rig()
    r.mux.target_twist([0.1, 0.0, 0.0], [0, 0, 0], "", r.stamp())
    r.tick(50)
    assert r.mux.velocity_active
    here = r.filter.applied_pose[0]
    r.mux.set_intervening(True)
    assert not r.mux.velocity_active
    tgt = r.filter.target
    assert tgt is not None
    np.testing.assert_allclose(tgt[0], here)  # the new source's target: the pose it is at
    r.tick(200)
    # it brakes (the acceleration limit) but does not run on: within the braking distance of 0.1 m/s
    assert np.linalg.norm(r.pos - here) < 0.1 ** 2 / (2 * SafetyConfig().max_linear_acceleration) + 0.001


# ------------------------------------------------------------------------ modes
def test_velocity_mode_integrates_the_twist_each_tick_and_stops_when_it_goes_stale():
    r = Rig()
    v = 0.05
    x0 = r.pos[0]
    for _ in range(100):
        r.mux.target_twist([v, 0.0, 0.0], [0, 0, 0], "", r.stamp())
        r.tick()
    moved = r.pos[0] - x0
    assert 0.002 < moved <= v * 100 * DT + 1e-9  # never faster than the twist
    np.testing.assert_allclose(r.pos[1:], START[1:], atol=1e-12)
    # no new twist: integrated while fresh, then dropped by the watchdog and the arm stops
    rejected = r.filter.rejected
    r.tick(int(SafetyConfig().watchdog_timeout * RATE) + 5)
    assert not r.mux.velocity_active
    assert r.filter.rejected == rejected  # going stale is a hold, not a rejection
    still = r.pos.copy()
    r.tick(50)
    np.testing.assert_allclose(r.pos, still)


def test_delta_mode_displaces_the_target_in_force_once_per_message_in_the_tcp_frame():
    r = Rig("delta")
    for _ in range(3):  # +z in the TCP frame is -z in the base frame (the TCP points down)
        assert r.mux.target_twist([0.0, 0.0, 0.01], [0, 0, 0], "panda_hand_tcp", r.stamp()) is Outcome.ACCEPTED
    tgt = r.filter.target
    assert tgt is not None
    np.testing.assert_allclose(tgt[0], START + [0.0, 0.0, -0.03], atol=1e-12)
    assert not r.mux.velocity_active
    for _ in range(10):  # keep it fresh: a zero delta re-sends the target in force
        r.mux.target_twist([0, 0, 0], [0, 0, 0], "", r.stamp())
        r.tick(25)
    np.testing.assert_allclose(r.pos, START + [0.0, 0.0, -0.03], atol=1e-9)


def test_velocity_in_the_tcp_frame_is_rotated_into_the_base_frame():
    r = Rig()
    for _ in range(50):
        r.mux.target_twist([0.0, 0.0, 0.05], [0, 0, 0], "/panda_hand_tcp", r.stamp())
        r.tick()
    assert r.pos[2] < START[2] - 0.001 and abs(r.pos[0] - START[0]) < 1e-9


def test_commands_before_the_first_state_or_during_a_reset_are_not_applied():
    r = Rig("delta", ready=False)
    assert r.mux.needs_reset
    assert r.mux.target_pose(START, DOWN, "", r.stamp()) is Outcome.IGNORED
    assert r.mux.target_twist([0.01, 0, 0], [0, 0, 0], "", r.stamp()) is Outcome.DROPPED
    r.tick()  # resets to the measured pose
    assert not r.mux.needs_reset
    assert r.mux.target_pose(START + [0.01, 0, 0], DOWN, "", r.stamp()) is Outcome.ACCEPTED
    r.mux.request_reset()  # after a reconnect, home or recovery: the target is gone at the next tick
    assert r.mux.target_pose(START + [0.02, 0, 0], DOWN, "", r.stamp()) is Outcome.IGNORED
    r.pos = START + [0.0, 0.05, 0.0]  # the arm was moved meanwhile (homing)
    t = r.tick()
    assert t.applied.holding and r.filter.target is None
    np.testing.assert_allclose(t.applied.pos, START + [0.0, 0.05, 0.0])


# ----------------------------------------------------------- rejected commands
@pytest.mark.parametrize("frame", ["camera_link", "world", "panda_link8"])
def test_an_unknown_frame_is_rejected_not_guessed(frame):
    for mode in ("velocity", "delta"):
        r = Rig(mode)
        n = r.filter.rejected
        assert r.mux.target_twist([0.0, 0.0, 0.01], [0, 0, 0], frame, r.stamp()) is Outcome.REJECTED
        assert r.filter.rejected == n + 1 and "frame_id" in r.filter.last_rejection
        assert r.mux.target_pose(START, DOWN, frame, r.stamp()) is Outcome.REJECTED
        assert r.filter.rejected == n + 2 and r.filter.last_rejection.startswith("target_pose: frame_id")
        assert r.warnings
    assert frame_is_ee("") is False and frame_is_ee("/panda_link0") is False and frame_is_ee("panda_hand_tcp")


@pytest.mark.parametrize("lin,ang,why", [
    ([math.nan, 0, 0], [0, 0, 0], "NaN or Inf"),
    ([0, 0, 0], [0, math.inf, 0], "NaN or Inf"),
    ([0, 0], [0, 0, 0], "3 numbers"),
    ("abc", [0, 0, 0], "3 numbers"),
    ([1e6, 0, 0], [0, 0, 0], "twist linear"),  # cannot integrate even one tick
    ([0, 0, 0], [1e5, 0, 0], "twist angular"),
])
def test_bad_twists_are_rejected_counted_once_and_the_arm_holds(lin, ang, why):
    r = Rig()
    n = r.filter.rejected
    assert r.mux.target_twist(lin, ang, "", r.stamp()) is Outcome.REJECTED
    r.mux.set_intervening(True)
    assert r.mux.teleop_twist(lin, ang, "", r.stamp()) is Outcome.REJECTED
    assert r.filter.rejected == n + 2 and why in r.filter.last_rejection
    assert not r.mux.velocity_active
    r.tick(20)
    np.testing.assert_allclose(r.pos, START)


@pytest.mark.parametrize("age", [1.0, -1.0], ids=["stale", "future"])
def test_stale_or_future_stamps_are_rejected_in_every_mode(age):
    for mode in ("velocity", "delta"):
        r = Rig(mode)
        n = r.filter.rejected
        assert r.mux.target_twist([0.01, 0, 0], [0, 0, 0], "", r.stamp(age)) is Outcome.REJECTED
        assert r.filter.rejected == n + 1  # counted once, also when the filter refused it (delta)
        assert r.filter.last_rejection.startswith("target_twist")
        assert r.mux.target_pose(START + [0.01, 0, 0], DOWN, "", r.stamp(age)) is Outcome.REJECTED
        assert r.filter.rejected == n + 2
        assert r.filter.target is None and not r.mux.velocity_active


def test_an_old_but_fresh_stamp_ages_the_command():
    r = Rig()
    timeout = SafetyConfig().watchdog_timeout
    r.mux.target_twist([0.05, 0, 0], [0, 0, 0], "", r.stamp(timeout - 0.05))  # 0.45 s old on arrival
    r.tick(10)
    assert r.mux.velocity_active
    r.tick(int(0.1 * RATE))  # stale 0.05 s later, not timeout s later
    assert not r.mux.velocity_active


def test_unstamped_commands_are_fresh_from_their_arrival():
    r = Rig()
    assert r.mux.target_twist([0.05, 0, 0], [0, 0, 0], "", 0.0) is Outcome.ACCEPTED
    r.tick(int(0.4 * RATE))
    assert r.mux.velocity_active


def test_a_rejected_pose_leaves_the_previous_target_in_force():
    r = Rig()
    goal = START + [0.03, 0, 0]
    r.mux.target_pose(goal, DOWN, "", r.stamp())
    for q in ([0, 0, 0, 0], [math.nan, 0, 0, 1], [1, 0, 0]):
        assert r.mux.target_pose(START, q, "", r.stamp()) is Outcome.REJECTED
    assert "quaternion" in r.filter.last_rejection
    tgt = r.filter.target
    assert tgt is not None
    np.testing.assert_allclose(tgt[0], goal)


# --------------------------------------------------------------------------- hold
def test_hold_ignores_every_command_until_released():
    r = Rig()
    r.mux.target_twist([0.05, 0, 0], [0, 0, 0], "", r.stamp())
    r.tick(20)
    r.mux.set_hold(True)
    assert r.mux.holding and not r.mux.velocity_active
    n = r.mux.ignored
    assert r.mux.target_pose(START + [0.05, 0, 0], DOWN, "", r.stamp()) is Outcome.IGNORED
    assert r.mux.target_twist([0.05, 0, 0], [0, 0, 0], "", r.stamp()) is Outcome.IGNORED
    assert r.mux.gripper(0.03) is None
    assert r.mux.ignored == n + 3
    t = r.tick(100)
    assert t.applied.holding
    here = r.pos.copy()
    r.tick(100)
    np.testing.assert_allclose(r.pos, here)
    r.mux.set_hold(False)
    assert r.mux.target_pose(START + [0.05, 0, 0], DOWN, "", r.stamp()) is Outcome.ACCEPTED


def test_hold_in_delta_mode_too():
    r = Rig("delta")
    r.mux.set_hold(True)
    assert r.mux.target_twist([0.01, 0, 0], [0, 0, 0], "", r.stamp()) is Outcome.IGNORED
    assert r.filter.target is None


# ------------------------------------------------------------------------ gripper
def test_gripper_commands_are_validated_clipped_and_given_defaults():
    r = Rig()
    cmd = r.mux.gripper(0.5, None, None)
    assert cmd is not None and cmd.width == pytest.approx(0.08) and cmd.clipped
    assert cmd.speed == pytest.approx(0.05) and cmd.force == 0.0 and not cmd.grasp  # the configured speed
    cmd = r.mux.gripper(0.02, 0.0, 30.0)  # speed 0: unset
    assert cmd is not None and cmd.speed == pytest.approx(0.05) and cmd.grasp
    n = r.filter.rejected
    assert r.mux.gripper(None) is None  # no width
    assert "position[0]" in r.filter.last_rejection
    assert r.mux.gripper(math.nan) is None and r.mux.gripper(0.02, math.nan) is None
    assert r.mux.gripper(0.02, None, math.inf) is None
    assert r.filter.rejected == n + 4


# -------------------------------------------------------------------- latency
def test_tick_hands_the_newest_accepted_stamp_over_once():
    r = Rig()
    s = r.stamp(0.01)
    r.mux.target_pose(START + [0.01, 0, 0], DOWN, "", s)
    assert r.tick().pending_stamp == s
    assert r.tick().pending_stamp is None
    r.mux.target_twist([0.01, 0, 0], [0, 0, 0], "", 0.0)  # unstamped: its arrival (wall clock)
    assert r.tick().pending_stamp == pytest.approx(r.clock.wall() - DT)


def test_a_bad_twist_mode_is_refused():
    with pytest.raises(ValueError, match="twist_mode"):
        CommandMux(SafetyFilter(SafetyConfig(), DT), "acceleration")


def test_the_mux_needs_no_ros():
    import subprocess

    code = ("import sys, robot.nodes.franka.mux; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch') or m.startswith('robot.ros')]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- totality
_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-0.2, 0.2))
_vec3 = st.lists(_number, min_size=3, max_size=3)
_frame = st.sampled_from(["", "panda_link0", "panda_hand_tcp", "camera"])
_age = st.one_of(st.just(None), st.floats(-2.0, 2.0), st.floats(allow_nan=True))
_op = st.one_of(
    st.tuples(st.just("pose"), _vec3, st.lists(_number, min_size=4, max_size=4), _frame, _age),
    st.tuples(st.just("twist"), _vec3, _vec3, _frame, _age),
    st.tuples(st.just("teleop"), _vec3, _vec3, _frame, _age),
    st.tuples(st.just("gripper"), _number, _number, _number, st.booleans()),
    st.tuples(st.just("intervene"), st.booleans()),
    st.tuples(st.just("hold"), st.booleans()),
    st.tuples(st.just("reset")),
    st.tuples(st.just("tick"), st.integers(1, 30)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["velocity", "delta"]), ops=st.lists(_op, max_size=25))
def test_any_command_sequence_keeps_the_arm_inside_the_workspace(mode, ops):
    r = Rig(mode)
    cfg = SafetyConfig()
    lo, hi = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
    prev = r.pos.copy()
    for op in ops:
        kind = op[0]
        if kind in ("pose", "twist", "teleop"):
            stamp = 0.0 if op[4] is None else r.stamp(op[4])
            call = {"pose": r.mux.target_pose, "twist": r.mux.target_twist, "teleop": r.mux.teleop_twist}[kind]
            assert isinstance(call(op[1], op[2], op[3], stamp), Outcome)
        elif kind == "gripper":
            cmd = (r.mux.teleop_gripper if op[4] else r.mux.gripper)(op[1], op[2], op[3])
            assert cmd is None or (cfg.gripper_min <= cmd.width <= cfg.gripper_max and math.isfinite(cmd.speed))
        elif kind == "intervene":
            r.mux.set_intervening(op[1])
        elif kind == "hold":
            r.mux.set_hold(op[1])
        elif kind == "reset":
            r.mux.request_reset()
        else:
            for _ in range(op[1]):
                r.tick()
                assert np.all(np.isfinite(r.pos)) and np.all(r.pos >= lo - 1e-9) and np.all(r.pos <= hi + 1e-9)
                assert np.linalg.norm(r.pos - prev) <= cfg.max_step_translation + 1e-9
                np.testing.assert_allclose(np.linalg.norm(r.quat), 1.0, atol=1e-9)
                prev = r.pos.copy()
