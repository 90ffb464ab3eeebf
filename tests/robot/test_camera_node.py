"""camera-node over real DDS: replayed RealSense frames and the sim backend."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _ros_probe import Probe, Spinner  # noqa: I001
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, JointState
from waiting import wait_for  # noqa: I001

from robot.backends.realsense import ReplayDevice, synthetic_recording
from robot.nodes.camera_node import CameraNode
from robot.ros.qos import SENSOR_QOS

pytestmark = pytest.mark.ros


def _params(**kw):
    import rclpy

    return [rclpy.Parameter(k, value=v) for k, v in kw.items()]


def _diag(probe: Probe, camera: str):
    out = []
    for arr in probe.got("/diagnostics"):
        out += [s for s in arr.status if s.name.endswith(f"camera {camera}")]
    return out


def test_replayed_realsense_frames_are_published_with_intrinsics_and_health():
    rec = synthetic_recording(n=40, width=64, height=48, fps=30.0, domain="hardware", depth=True, skip=(5, 6))
    front = ReplayDevice("front", rec, fps=30.0)
    probe = Probe()
    for t, ty in [("cameras/front/image_raw", Image), ("cameras/front/camera_info", CameraInfo),
                  ("cameras/front/depth/image_raw", Image)]:
        probe.subscribe(t, ty, SENSOR_QOS)
    probe.subscribe("/diagnostics", DiagnosticArray)
    nodes = Spinner()
    node = CameraNode(
        "cameras", devices={"front": front}, context=nodes.context,
        parameter_overrides=_params(backend="realsense", names=["front"], serials=["123"], widths=[64],
                                    heights=[48], fps=[30.0], depth=[True], reconnect_period=0.1,
                                    read_timeout=0.2, disconnect_after=2),
    )
    nodes.add(node)
    nodes.start()
    try:
        assert wait_for(lambda: len(probe.got("cameras/front/image_raw")) >= 10)
        img = probe.got("cameras/front/image_raw")[-1]
        assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 48, 64, 192)
        assert img.header.frame_id == "front_optical_frame"
        pix = np.frombuffer(img.data, np.uint8).reshape(48, 64, 3)
        k = int(pix[0, 0, 0])  # the recording encodes its frame number in the first pixel
        np.testing.assert_array_equal(pix[1:], next(f for f in rec.frames if f.number == k).color[1:])
        info = wait_for(lambda: probe.got("cameras/front/camera_info"))[-1]
        np.testing.assert_allclose(np.reshape(info.k, (3, 3))[0], [rec.intrinsics.fx, 0, rec.intrinsics.cx])
        assert list(info.d) == list(rec.intrinsics.coeffs) and info.distortion_model == "plumb_bob"
        depth = wait_for(lambda: probe.got("cameras/front/depth/image_raw"))[-1]
        assert depth.encoding == "16UC1" and np.frombuffer(depth.data, "<u2").min() >= 500
        # hardware clock mapped to host time: recent, increasing
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in probe.got("cameras/front/image_raw")]
        assert np.all(np.diff(stamps) > 0) and abs(stamps[-1] - time.time()) < 1.0
        # the 2 dropped frames of the recording show up as a WARN with the count
        assert wait_for(lambda: any("dropped" in s.message for s in _diag(probe, "front")), timeout=5)
        # unplug: ERROR naming the problem, no frames; replug: streaming again
        front.unplug()
        assert wait_for(lambda: any(s.level == b"\x02" and "not connected" in s.message
                                    for s in _diag(probe, "front")), timeout=6)
        front.replug()
        probe.clear()
        assert wait_for(lambda: len(probe.got("cameras/front/image_raw")) >= 5, timeout=5)
        assert node.stats("front").disconnects == 1
    finally:
        nodes.close()
        probe.close()


@pytest.mark.render
def test_sim_backend_renders_at_the_rate_and_mirrors_joint_states():
    probe = Probe()
    probe.subscribe("cameras/front/image_raw", Image, SENSOR_QOS)
    probe.subscribe("cameras/wrist/camera_info", CameraInfo, SENSOR_QOS)
    probe.subscribe("cameras/wrist/depth/image_raw", Image, SENSOR_QOS)
    joints = probe.publisher("joint_states", JointState)
    nodes = Spinner()
    node = CameraNode("cameras", context=nodes.context, parameter_overrides=_params(
        backend="sim", names=["front", "wrist"], serials=[""], widths=[64], heights=[48], fps=[10.0],
        depth=[False, True]))
    nodes.add(node)
    nodes.start()
    try:
        assert wait_for(lambda: len(probe.got("cameras/front/image_raw")) >= 1, timeout=20)
        time.sleep(2.0)
        msgs = probe.got("cameras/front/image_raw")
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs]
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        # about the requested 10 Hz (loose bounds: the machine is shared), evenly stamped
        assert 5.0 <= rate <= 12.0, rate
        m = msgs[-1]
        assert (m.encoding, m.height, m.width) == ("rgb8", 48, 64)
        info = probe.got("cameras/wrist/camera_info")[-1]
        assert info.width == 64 and info.k[0] > 0 and info.k[2] == pytest.approx(31.5)
        depth = wait_for(lambda: probe.got("cameras/wrist/depth/image_raw"))[-1]
        d = np.frombuffer(depth.data, "<u2").reshape(48, 64)
        assert (depth.encoding, depth.header.frame_id) == ("16UC1", "wrist_optical_frame")
        assert 10 < np.median(d) < 3000  # mm: the wrist camera looks at the fingers / table
        before = np.frombuffer(m.data, np.uint8).reshape(48, 64, 3).astype(int)
        # mirror: a different arm pose shows up in the front image
        q = JointState(name=[f"panda_joint{i}" for i in range(1, 8)],
                       position=[0.8, 0.3, 0.0, -1.8, 0.0, 2.0, 0.785])
        for _ in range(5):
            joints.publish(q)
            time.sleep(0.1)
        probe.clear()
        assert wait_for(lambda: len(probe.got("cameras/front/image_raw")) >= 2)
        after = np.frombuffer(probe.got("cameras/front/image_raw")[-1].data, np.uint8).reshape(48, 64, 3)
        assert np.abs(after.astype(int) - before).mean() > 1.0
    finally:
        nodes.close()
        probe.close()


def test_bad_parameters_fail_configure_with_the_name():
    nodes = Spinner()
    try:
        node = CameraNode("cameras", context=nodes.context, parameter_overrides=_params(
            backend="realsense", names=["front", "wrist"], serials=["1", "2", "3"]))
        nodes.executor.add_node(node)
        from rclpy.lifecycle import TransitionCallbackReturn

        assert node.trigger_configure() != TransitionCallbackReturn.SUCCESS
        node2 = CameraNode("cameras2", context=nodes.context, parameter_overrides=_params(backend="kinect"))
        assert node2.trigger_configure() != TransitionCallbackReturn.SUCCESS
        nodes.nodes += [node, node2]
    finally:
        nodes.close()
