"""The observer: time-indexed buffers, the spec observation at a tick, per-topic age, commanded actions."""

from __future__ import annotations

import numpy as np
import pytest

from rig.geometry import quat_mul, rotvec_to_quat
from rig.spec import CameraSpec, RigSpec
from robot.ros.observer import ObservationUnavailable, Observer, TimeBuffer, stream_topic

Q0 = np.array([1.0, 0.0, 0.0, 0.0])
SPEC = RigSpec(cameras=(CameraSpec("front", 16, 16), CameraSpec("wrist", 8, 8, depth=True)))


def test_time_buffer_latest_at_or_before_sorted_and_pruned():
    b = TimeBuffer(keep_s=1.0)
    for t in (1.0, 2.0, 4.0, 3.0):  # one out of order
        b.push(t, f"v{t:g}")
    assert b.at(3.5) == (3.0, "v3") and b.at(4.0) == (4.0, "v4") and b.at(0.5) is None
    assert b.latest() == (4.0, "v4")
    for i in range(1500):  # 3 s at 500 Hz: at most 2 * keep_s of it stays
        b.push(10 + i * 0.002, i)
    assert len(b) <= 1001 and b.at(13.0) == (pytest.approx(12.998), 1499) and b.at(10.5) is None
    b.clear()
    assert b.latest() is None and len(b) == 0


def _state(ob: Observer, t: float, x: float = 0.4, skip: tuple[str, ...] = ()) -> None:
    values = {
        "joint_states": (np.full(7, t), np.zeros(7)),
        "ee_pose": (np.array([x, 0.0, 0.3]), Q0),
        "ee_wrench": np.arange(6.0),
        "gripper": 0.04,
        "images/front": np.full((48, 64, 3), 7, np.uint8),  # any size: resized to the spec's
        "images/wrist": np.full((8, 8, 3), 9, np.uint8),
        "depth/wrist": np.full((8, 8), 500, np.uint16),
    }
    for k, v in values.items():
        if k not in skip:
            ob.push(k, t, v)


def test_observe_takes_the_latest_sample_at_or_before_the_tick_with_ages():
    ob = Observer(SPEC, max_age=0.25)
    for i in range(10):
        _state(ob, 1.0 + 0.01 * i, x=0.4 + 0.01 * i)
    _state(ob, 2.0, x=9.0)  # after the tick: never used for it
    o = ob.observe(1.055)
    SPEC.check_observation(o.obs)
    assert set(o.obs) == set(SPEC.observation_specs())
    assert o.obs["state/ee_pos"][0] == pytest.approx(0.45) and o.obs["state/joint_pos"][0] == pytest.approx(1.05)
    assert o.obs["images/front"].shape == (16, 16, 3) and o.obs["depth/wrist"].dtype == np.uint16
    assert o.ages["ee_pose"] == pytest.approx(0.005) and o.age == pytest.approx(0.005)
    assert o.obs["state/gripper_width"].dtype == np.float32 and o.obs["state/ee_wrench"][5] == 5.0


def test_missing_and_stale_streams_name_the_topic():
    ob = Observer(SPEC, max_age=0.1)
    _state(ob, 1.0, skip=("ee_wrench",))
    with pytest.raises(ObservationUnavailable, match=r"'ee_wrench' from topic 'ee_wrench': no sample yet") as e:
        ob.observe(1.0)
    assert e.value.kind == "missing" and e.value.age is None
    ob.push("ee_wrench", 1.0, np.zeros(6))
    with pytest.raises(ObservationUnavailable, match=r"'joint_states'.*0\.300 s old.*max_age=0.1") as e:
        ob.observe(1.3)
    assert e.value.kind == "stale" and e.value.age == pytest.approx(0.3)
    with pytest.raises(ObservationUnavailable, match="clock skew of 0.500 s"):
        ob.observe(0.5)  # every sample is stamped after the tick
    assert stream_topic("images/front") == "cameras/front/image_raw"
    assert stream_topic("depth/wrist") == "cameras/wrist/depth/image_raw"
    assert stream_topic("command") == "command_applied"


def test_optional_streams_give_zeros_and_unknown_streams_are_refused():
    ob = Observer(RigSpec(cameras=()), optional=("joint_states", "ee_wrench"))
    _state(ob, 1.0, skip=("joint_states", "ee_wrench", "images/front", "images/wrist", "depth/wrist"))
    o = ob.observe(1.0)
    assert not o.obs["state/joint_pos"].any() and not o.obs["state/ee_wrench"].any()
    assert set(o.ages) == {"ee_pose", "gripper"}
    with pytest.raises(KeyError, match="unknown stream 'command'"):
        ob.push("command", 1.0, (np.zeros(3), Q0))  # commands=False: no command streams
    with pytest.raises(ValueError, match="only joint_states and ee_wrench may be optional"):
        Observer(SPEC, optional=("ee_pose",))


def test_commanded_action_is_the_commands_step_not_the_tracking_lag():
    spec = RigSpec(cameras=())
    ob = Observer(spec, commands=True)
    for i in range(201):  # 1 kHz: the command moves 0.1 m/s in x and 0.5 rad/s about z; the arm lags 8 mm behind
        t = 1.0 + i * 0.001
        cmd = np.array([0.4 + 0.1 * (t - 1.0), 0.0, 0.3])
        ob.push("command", t, (cmd, quat_mul(rotvec_to_quat([0, 0, 0.5 * (t - 1.0)]), Q0)))
        ob.push("ee_pose", t, (cmd - [0.008, 0, 0], Q0))
        ob.push("gripper", t, 0.05)
    a = ob.commanded_action(1.05, 1.15)
    np.testing.assert_allclose(a[:6], [0.5, 0, 0, 0, 0, 0.5], atol=1e-6)  # 1 cm and 0.05 rad per 0.1 s tick
    assert a[6] == pytest.approx(spec.action.width_to_gripper(0.05))  # no gripper command: the measured width
    ob.push("gripper_command", 1.1, 0.0)
    assert ob.commanded_action(1.05, 1.15)[6] == -1.0
    assert not ob.intervening(1.1)
    ob.push("intervening", 1.1, True)
    assert ob.intervening(1.1) and not ob.intervening(1.05)
    with pytest.raises(ObservationUnavailable, match="'command'"):
        ob.commanded_action(0.5, 0.6)
    # measured origin: the command at the end relative to the measured pose at the start (step + 8 mm lag)
    np.testing.assert_allclose(ob.commanded_action(1.05, 1.15, origin="measured")[:3], [0.9, 0, 0], atol=1e-6)
    # the arm's orientation stays at Q0: the command's 0.075 rad about z at 1.15 s is all offset
    assert ob.commanded_action(1.05, 1.15, origin="measured")[5] == pytest.approx(0.75, abs=1e-5)
    with pytest.raises(ValueError, match="origin 'target'"):
        ob.commanded_action(1.05, 1.15, origin="target")


def test_command_windows_start_at_the_policys_targets_unless_the_operator_intervenes():
    ob = Observer(RigSpec(cameras=()), commands=True)
    x = 0.4
    for i in range(400):  # 1 kHz: a target every 0.1 s (at 1.0x0 s), ramped in over 40 ms, then at rest
        t = 1.0 + i * 0.001
        phase = i % 100
        if phase == 0:
            ob.push("target", t, (np.array([x + 0.01, 0.0, 0.3]), Q0))
        if 0 < phase <= 40:
            x += 0.01 / 40
        ob.push("command", t, (np.array([x, 0.0, 0.3]), Q0))
    ob.push("gripper_command", 1.0, 0.08)
    assert ob.boundary(1.12, 0.1) == pytest.approx(1.2 - 1e-6)  # the next target after the tick
    assert ob.boundary(1.21, 0.05) == 1.21  # none within the horizon
    np.testing.assert_allclose(ob.commanded_action(1.12, 1.22, snap=0.1)[0], 0.5, atol=1e-9)  # one whole step
    assert ob.commanded_action(1.12, 1.22)[0] == pytest.approx(0.5 * 20 / 40 + 0.5 * 20 / 40)
    # measured origin, the arm 3 mm behind its command: the window starts at the target (1.2 s), where the arm
    # was at 1.2 s - 1 ms; it ends with the command there (the target reached), so the policy's 0.5 + 0.15
    for i in range(400):
        t = 1.0 + i * 0.001
        ob.push("ee_pose", t, (ob.streams["command"].at(t)[1][0] - [0.003, 0, 0], Q0))
    np.testing.assert_allclose(ob.commanded_action(1.12, 1.22, snap=0.1, origin="measured")[0], 0.65, atol=1e-6)
    ob.push("intervening", 1.0, True)  # the operator's twist: windows stay at the ticks
    assert ob.boundary(1.12, 0.1) == 1.12
