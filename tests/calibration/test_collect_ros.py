"""On-rig collection over real ROS 2 (DDS, isolated domain) against a stand-in rig.

The stand-in plays the franka node's side of the contract (``target_pose`` in,
``ee_pose`` out, a ``home`` service) and the camera node's (``cameras/<name>/
image_raw`` + ``camera_info``), with images rendered from the MuJoCo board
scene at the arm's current pose, so the recorded session has ground truth.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from calibration.handeye import calibrate_session, pose_error
from calibration.poses import PoseSetConfig
from calibration.simulate import BoardScene, SimConfig, default_poses

pytestmark = [pytest.mark.ros, pytest.mark.render]


class StandInRig:
    """ee_pose follows target_pose (first order, 100 Hz); the camera renders the board scene at 15 Hz."""

    def __init__(self, scene_cfg: SimConfig, camera: str = "wrist") -> None:
        self.cfg, self.camera = scene_cfg, camera
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
        n = self.node = rclpy.create_node("stand_in_rig", context=self.ctx)
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.PoseStamped, self.Image, self.CameraInfo = PoseStamped, Image, CameraInfo
        self.pub_ee = n.create_publisher(PoseStamped, "ee_pose", rel)
        self.pub_img = n.create_publisher(Image, f"cameras/{self.camera}/image_raw", qos_profile_sensor_data)
        self.pub_info = n.create_publisher(CameraInfo, f"cameras/{self.camera}/camera_info",
                                           qos_profile_sensor_data)
        n.create_subscription(PoseStamped, "target_pose", self._on_target, rel)
        n.create_service(Trigger, "home", self._on_home)
        n.create_timer(0.01, self._tick)
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
    poses = PoseSetConfig(**{**default_poses(scene_cfg).__dict__, "n": 8, "seed": 11})
    cfg = CollectConfig(camera="wrist", mode="eye_in_hand", poses=poses, tolerance_mm=0.5, tolerance_deg=0.1,
                        settle_s=0.15, move_timeout_s=10.0)
    rig = StandInRig(scene_cfg).connect()
    try:
        session = collect(tmp_path / "s", cfg)
    finally:
        rig.close()
    assert len(session.samples) == 8 and rig.home_calls == 2 and rig.targets_received > 8
    assert (tmp_path / "s" / "images" / "007.png").is_file()
    res = calibrate_session(session)
    t_mm, r_deg = pose_error(res.extrinsic, BoardScene(scene_cfg).x)
    assert t_mm < 2.0 and r_deg < 0.2


def test_collect_without_a_rig_fails_clearly(tmp_path):
    from calibration.collect_ros import CollectConfig, CollectError, collect

    cfg = CollectConfig(camera="wrist", mode="eye_in_hand", input_timeout_s=1.0, home=False)
    with pytest.raises(CollectError, match="no ee_pose within 1.0 s.*franka node running"):
        collect(tmp_path / "s", cfg)
