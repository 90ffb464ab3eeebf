"""On-rig collection over real ROS 2 (DDS, isolated domain).

The camera is a stand-in for the camera node (``cameras/<name>/image_raw`` +
``camera_info``) whose images are rendered from the MuJoCo board scene at the
arm's current pose, so the recorded session has ground truth. The arm is
either the real franka node with its sim backend (targets through the safety
filter, the ``home`` service) or, for a fast test, a stand-in that plays the
franka node's side of the contract (``target_pose`` in, ``ee_pose`` out,
``home``).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from calibration.handeye import calibrate_session, pose_error
from calibration.poses import PoseSetConfig, generate
from calibration.simulate import BoardScene, SimConfig, default_poses
from rig.geometry import quat_angle

pytestmark = [pytest.mark.ros, pytest.mark.render]


class StandInRig:
    """The camera renders the board scene at the arm's pose at 15 Hz. With ``arm=True`` the stand-in is the
    arm too (ee_pose follows target_pose, first order at 100 Hz); else it follows a real node's ee_pose."""

    def __init__(self, scene_cfg: SimConfig, camera: str = "wrist", arm: bool = True, namespace: str = "") -> None:
        self.cfg, self.camera, self.arm, self.namespace = scene_cfg, camera, arm, namespace
        self.pos, self.quat = np.array([0.5, 0.0, 0.4]), np.array([1.0, 0.0, 0.0, 0.0])
        self.target = None
        self.targets_received = 0
        self.home_calls = 0

    def connect(self) -> StandInRig:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        from std_srvs.srv import Trigger

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        n = self.node = rclpy.create_node("stand_in_rig", namespace=self.namespace or None, context=self.ctx)
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.PoseStamped, self.Image, self.CameraInfo = PoseStamped, Image, CameraInfo
        self.pub_img = n.create_publisher(Image, f"cameras/{self.camera}/image_raw", qos_profile_sensor_data)
        self.pub_info = n.create_publisher(CameraInfo, f"cameras/{self.camera}/camera_info",
                                           qos_profile_sensor_data)
        if self.arm:
            self.pub_ee = n.create_publisher(PoseStamped, "ee_pose", rel)
            n.create_subscription(PoseStamped, "target_pose", self._on_target, rel)
            n.create_service(Trigger, "home", self._on_home)
            n.create_timer(0.01, self._tick)
        else:
            n.create_subscription(PoseStamped, "ee_pose", self._on_ee, rel)
        n.create_timer(1 / 15, self._render)
        self.scene = None
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(n)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        return self

    def _spin(self) -> None:
        while self.ctx.ok():
            try:
                self.ex.spin_once(timeout_sec=0.05)
            except Exception:
                break
        if self.scene is not None:  # GL context belongs to this thread
            self.scene.close()

    def close(self) -> None:
        self.ctx.try_shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()

    def _on_target(self, msg) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self.target = (np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))
        self.targets_received += 1

    def _on_ee(self, msg) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self.pos, self.quat = np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])

    def _on_home(self, req, res):
        self.home_calls += 1
        self.target = (np.array([0.5, 0.0, 0.4]), np.array([1.0, 0.0, 0.0, 0.0]))
        res.success, res.message = True, "homed"
        return res

    def _tick(self) -> None:
        if self.target is not None:
            tp, tq = self.target
            self.pos = self.pos + 0.3 * (tp - self.pos)
            tq = tq if tq @ self.quat >= 0 else -tq
            q = self.quat + 0.3 * (tq - self.quat)
            self.quat = q / np.linalg.norm(q)
        msg = self.PoseStamped()
        msg.header.frame_id = "panda_link0"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in self.pos)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in self.quat)
        self.pub_ee.publish(msg)

    def _render(self) -> None:
        if self.scene is None:
            self.scene = BoardScene(self.cfg).connect()
        img = self.scene.render(self.pos, self.quat)
        h, w = img.shape[:2]
        m = self.Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=img.tobytes())
        m.header.frame_id = f"{self.camera}_optical_frame"
        self.pub_img.publish(m)
        self.pub_info.publish(self.CameraInfo(**self.scene.intrinsics.to_camera_info()))


def test_collect_records_a_session_that_solves_to_ground_truth(tmp_path):
    from calibration.collect_ros import CollectConfig, collect

    scene_cfg = SimConfig(mode="eye_in_hand")
    poses = PoseSetConfig(**{**default_poses(scene_cfg).__dict__, "n": 6, "seed": 11})
    cfg = CollectConfig(camera="wrist", mode="eye_in_hand", poses=poses, tolerance_mm=0.5, tolerance_deg=0.1,
                        settle_s=0.15, move_timeout_s=10.0)
    rig = StandInRig(scene_cfg).connect()
    try:
        session = collect(tmp_path / "s", cfg)
    finally:
        rig.close()
    assert len(session.samples) == 6 and rig.home_calls == 2 and rig.targets_received > 6
    assert (tmp_path / "s" / "images" / "005.png").is_file()
    res = calibrate_session(session)
    t_mm, r_deg = pose_error(res.extrinsic, BoardScene(scene_cfg).x)
    assert t_mm < 2.0 and r_deg < 0.2


def test_collect_without_a_rig_fails_clearly(tmp_path):
    from calibration.collect_ros import CollectConfig, CollectError, collect

    cfg = CollectConfig(camera="wrist", mode="eye_in_hand", input_timeout_s=1.0, home=False)
    with pytest.raises(CollectError, match="no ee_pose within 1.0 s.*franka node running"):
        collect(tmp_path / "s", cfg)


@pytest.mark.slow
def test_collect_through_the_franka_node_sim_backend(tmp_path):
    """The real franka node (sim backend, safety filter, home service) moves the arm; the collected session
    solves to the ground truth of the camera rendered at the arm's reported pose."""
    import uuid

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    from calibration.collect_ros import CollectConfig, collect
    from robot.nodes.franka_node import FrankaNode

    ns = f"/calib{uuid.uuid4().hex[:8]}"
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = FrankaNode("franka", namespace=ns, context=ctx, parameter_overrides=[
        rclpy.Parameter("backend", value="sim"), rclpy.Parameter("state_rate_hz", value=250.0)])
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)

    def spin() -> None:
        while ctx.ok():
            try:
                ex.spin_once(timeout_sec=0.05)
            except Exception:
                break

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    scene_cfg = SimConfig(mode="eye_in_hand")
    camera = None
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        camera = StandInRig(scene_cfg, arm=False, namespace=ns).connect()
        poses = PoseSetConfig(**{**default_poses(scene_cfg).__dict__, "n": 6, "seed": 2})
        cfg = CollectConfig(camera="wrist", mode="eye_in_hand", namespace=ns, poses=poses, settle_s=0.3,
                            move_timeout_s=15.0)
        session = collect(tmp_path / "s", cfg)
    finally:
        if camera is not None:
            camera.close()
        try:
            node.trigger_shutdown()
        except Exception:
            pass
        ctx.try_shutdown()
        thread.join(timeout=5)
        node.destroy_node()
    assert len(session.samples) == 6
    targets = generate(PoseSetConfig(**{**poses.__dict__, "mode": "eye_in_hand"}))
    for s, (p, q) in zip(session.samples, targets, strict=True):  # the arm really went there
        assert np.linalg.norm(s.position - p) < 2.5e-3 and np.degrees(quat_angle(s.quaternion, q)) < 0.6
    res = calibrate_session(session)
    t_mm, r_deg = pose_error(res.extrinsic, BoardScene(scene_cfg).x)
    assert t_mm < 2.0 and r_deg < 0.2
