"""robot.ros.convert: the one image decoder, resizer, stamp, pose, wrench and joint conversion."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image, JointState

from robot.ros.convert import (
    JOINT_NAMES,
    ConversionError,
    fill_pose,
    fill_wrench,
    finite,
    gripper_width,
    header_time,
    image_to_numpy,
    joints_to_numpy,
    numpy_to_image,
    pose_stamped,
    pose_to_numpy,
    resize,
    stamp_seconds,
    to_stamp,
    twist_to_numpy,
    wrench_to_numpy,
)


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_round_trips_and_padded_rows():
    rgb = _rgb()
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(rgb)), rgb)
    bgr = Image(height=6, width=5, encoding="bgr8", step=15, data=rgb[..., ::-1].tobytes())
    np.testing.assert_array_equal(image_to_numpy(bgr), rgb)
    padded = np.zeros((6, 20), np.uint8)  # step 20 > width * 3 = 15: row padding is dropped
    padded[:, :15] = rgb.reshape(6, 15)
    msg = Image(height=6, width=5, encoding="rgb8", step=20, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)
    gray = rgb[..., 0].copy()
    mono = numpy_to_image(gray)
    assert mono.encoding == "mono8"
    np.testing.assert_array_equal(image_to_numpy(mono, mono_as_rgb=False), gray)
    np.testing.assert_array_equal(image_to_numpy(mono), np.repeat(gray[..., None], 3, axis=2))


def test_depth_in_either_byte_order_and_resized_nearest():
    d = np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 1000
    little = numpy_to_image(d)
    assert little.encoding == "16UC1"
    np.testing.assert_array_equal(image_to_numpy(little), d)
    big = Image(height=6, width=5, encoding="16UC1", is_bigendian=1, step=10, data=d.astype(">u2").tobytes())
    out = image_to_numpy(big)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, d)
    small = image_to_numpy(big, (3, 5))
    assert set(np.unique(small)) <= set(np.unique(d))  # nearest: no invented depths


def test_decoded_image_owns_its_memory():
    rgb = _rgb()
    msg = numpy_to_image(rgb)
    out = image_to_numpy(msg)
    assert out.flags.writeable and out.flags.c_contiguous
    out[:] = 0  # writing into the result never touches the message
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)


def test_resize_to_the_spec_size():
    img = _rgb(48, 64)
    assert resize(img, (24, 32)).shape == (24, 32, 3)
    assert resize(img, (48, 64)) is img


@pytest.mark.parametrize("msg, match", [
    (Image(height=2, width=2, encoding="yuv422", step=4, data=b"\0" * 8), "'yuv422' is not supported"),
    (Image(height=2, width=2, encoding="x" * 100_000, step=6, data=b"\0" * 12), "is not supported"),
    (Image(height=0, width=2, encoding="rgb8", step=6, data=b""), "must be > 0"),
    (Image(height=2, width=2, encoding="rgb8", step=5, data=b"\0" * 12), "step 5"),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=b"\0" * 11), "11 bytes"),
    (Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=b"\0" * 12), "12 bytes"),
    (Image(height=2, width=2, encoding="16UC1", step=3, data=b"\0" * 8), "step 3"),
])
def test_malformed_images_name_the_field(msg, match):
    with pytest.raises(ConversionError, match=match) as e:
        image_to_numpy(msg)
    assert len(str(e.value)) < 200  # a huge hostile field is not echoed


@settings(max_examples=300, deadline=None)
@given(
    enc=st.sampled_from(["rgb8", "bgr8", "mono8", "16UC1", "mono16", "rgba8", ""]),
    h=st.integers(0, 9), w=st.integers(0, 9), step=st.integers(0, 40), n=st.integers(0, 400),
    big=st.booleans(), size=st.none() | st.tuples(st.integers(1, 8), st.integers(1, 8)),
)
def test_any_image_message_decodes_to_its_shape_or_is_refused(enc, h, w, step, n, big, size):
    msg = Image(height=h, width=w, encoding=enc, is_bigendian=int(big), step=step, data=bytes(n))
    try:
        img = image_to_numpy(msg, size)
    except ConversionError:
        return
    hw = size if size is not None else (h, w)
    assert img.shape[:2] == tuple(hw)
    assert img.dtype == (np.uint16 if enc in ("16UC1", "mono16") else np.uint8)


def test_stamps():
    t = 1_700_000_000.25
    assert stamp_seconds(to_stamp(t)) == pytest.approx(t, abs=1e-6)
    assert to_stamp(0.9999999999).nanosec <= 999_999_999
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ConversionError, match="stamp"):
            to_stamp(bad)
    m = PoseStamped()
    assert header_time(m, now=5.0) == 5.0  # an unset stamp: the arrival time
    assert abs(header_time(m) - time.time()) < 1.0
    m.header.stamp = to_stamp(t)
    assert header_time(m) == pytest.approx(t, abs=1e-6)


def test_pose_wrench_twist():
    msg = pose_stamped([0.1, 0.2, 0.3], [0.0, 0.0, 0.0, 1.0], t=12.5)
    pos, quat = pose_to_numpy(msg)
    np.testing.assert_allclose(pos, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(quat, [0, 0, 0, 1])
    assert msg.header.frame_id == "panda_link0" and stamp_seconds(msg.header.stamp) == 12.5
    np.testing.assert_allclose(pose_to_numpy(fill_pose(PoseStamped().pose, [1, 2, 3], [1, 0, 0, 0]))[1], [1, 0, 0, 0])
    w = np.arange(6.0)
    np.testing.assert_allclose(wrench_to_numpy(fill_wrench(WrenchStamped(), w)), w)
    tw = TwistStamped()
    tw.twist.linear.x, tw.twist.angular.z = 1.0, -2.0
    lin, ang = twist_to_numpy(tw)
    assert lin[0] == 1.0 and ang[2] == -2.0


def test_joints_by_name_in_any_order_else_by_position():
    names = list(JOINT_NAMES)[::-1]
    msg = JointState(name=[*names, "extra"], position=[float(i) for i in range(8)], velocity=[0.5] * 8)
    pos, vel = joints_to_numpy(msg)
    np.testing.assert_array_equal(pos, [6, 5, 4, 3, 2, 1, 0])  # panda_joint1 is the 7th entry
    assert vel.shape == (7,)
    pos, vel = joints_to_numpy(JointState(position=[float(i) for i in range(7)]))  # unnamed: by order
    np.testing.assert_array_equal(pos, np.arange(7))
    np.testing.assert_array_equal(vel, np.zeros(7))  # no velocity: zeros


@pytest.mark.parametrize("msg, match", [
    (JointState(), "position has 0 entries"),
    (JointState(position=[0.0] * 3), "position has 3 entries"),
    (JointState(position=[0.0] * 7, velocity=[0.0] * 2), "velocity has 2 entries"),
])
def test_short_joint_states_are_refused(msg, match):
    with pytest.raises(ConversionError, match=match):
        joints_to_numpy(msg)


def test_gripper_width_and_finite():
    assert gripper_width(JointState(name=["width"], position=[0.04])) == 0.04
    with pytest.raises(ConversionError, match="position is empty"):
        gripper_width(JointState(name=["width"]))
    finite("ok", np.zeros(3), 1.0)
    with pytest.raises(ConversionError, match="ee_pose: NaN, Inf"):
        finite("ee_pose", np.zeros(3), np.array([np.nan]))
    with pytest.raises(ConversionError, match="beyond float32"):
        finite("joint_states", [1e308])  # finite in float64, Inf in the spec's float32
    finite("joint_states", [1e308], dtype=np.float64)
    with pytest.raises(ConversionError, match="image array"):
        numpy_to_image(np.zeros((2, 2, 4), np.uint8))
