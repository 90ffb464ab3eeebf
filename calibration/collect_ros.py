"""On-rig collection over ROS 2 (the only calibration module that imports rclpy).

For each generated safe pose the collector publishes ``target_pose`` (so the
franka node's safety filter applies) at ``publish_hz`` until ``ee_pose`` has
stayed within the tolerance and still (``still_mm``, ``still_deg``: images and
poses in sync, no motion blur) for ``settle_s``, then takes the first
``cameras/<name>/image_raw`` frame received after the arm settled, and records
it with the ``ee_pose`` measured at that time into a session directory (see
:mod:`calibration.session`). Intrinsics come from ``cameras/<name>/camera_info``.
A pose the arm does not reach within ``move_timeout_s`` is skipped with a
warning (the safety filter may have clipped it); the ``home`` service is called
before and after. The session is flushed after every sample.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.board import BoardConfig
from calibration.intrinsics import Intrinsics
from calibration.poses import PoseSetConfig, generate
from calibration.session import Session, SessionWriter, check_mode
from rig.geometry import quat_angle
from rig.safety import SafetyConfig
from robot.ros.convert import BASE_FRAME, TCP_FRAME

log = logging.getLogger(__name__)


class CollectError(RuntimeError):
    """The rig did not deliver what collection needs (no ee_pose, no images, arm not moving)."""


@dataclass
class CollectConfig:
    camera: str = "wrist"
    mode: str = "eye_in_hand"
    namespace: str = ""
    board: BoardConfig = field(default_factory=BoardConfig)
    poses: PoseSetConfig = field(default_factory=PoseSetConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    tolerance_mm: float = 2.0
    tolerance_deg: float = 0.5
    settle_s: float = 0.5
    still_mm: float = 0.2  # ee_pose must stay this still over settle_s (images and poses in sync, no blur)
    still_deg: float = 0.05
    move_timeout_s: float = 20.0
    input_timeout_s: float = 10.0  # waiting for the first ee_pose / camera_info / image
    image_timeout_s: float = 3.0  # waiting for a fresh image after settling
    publish_hz: float = 20.0
    home: bool = True
    base_frame: str = BASE_FRAME
    gripper_frame: str = TCP_FRAME


def image_to_numpy(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8) -> RGB or gray uint8 array (:func:`robot.ros.convert.image_to_numpy`)."""
    from robot.ros.convert import image_to_numpy as decode

    try:
        img = decode(msg, mono_as_rgb=False)
    except ValueError as e:
        raise CollectError(f"{e}; publish rgb8, bgr8 or mono8") from None
    if img.dtype != np.uint8:
        raise CollectError(f"image encoding {msg.encoding!r} is not supported; publish rgb8, bgr8 or mono8")
    return img


class Collector:
    """A ROS 2 node (own context and executor thread) that drives the arm and records a session."""

    def __init__(self, cfg: CollectConfig) -> None:
        check_mode(cfg.mode)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ee: tuple[float, np.ndarray, np.ndarray] | None = None  # (receive time, pos, quat)
        self._image: tuple[float, np.ndarray] | None = None
        self._info = None
        self._ctx = self._node = self._executor = self._thread = None

    # ----------------------------------------------------------- life cycle
    def connect(self) -> Collector:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CameraInfo, Image
        from std_srvs.srv import Trigger

        from robot.ros.lifecycle import spin_in_background
        from robot.ros.qos import COMMAND_QOS, SENSOR_QOS, STATE_QOS

        self._ctx = rclpy.Context()
        rclpy.init(context=self._ctx)
        self._node = rclpy.create_node("calibrate_handeye", namespace=self.cfg.namespace or None,
                                       context=self._ctx)
        base = f"cameras/{self.cfg.camera}"
        n = self._node
        self._pub = n.create_publisher(PoseStamped, "target_pose", COMMAND_QOS)
        n.create_subscription(PoseStamped, "ee_pose", self._on_ee, STATE_QOS)
        n.create_subscription(Image, f"{base}/image_raw", self._on_image, SENSOR_QOS)
        n.create_subscription(CameraInfo, f"{base}/camera_info", self._on_info, SENSOR_QOS)
        self._home = n.create_client(Trigger, "home")
        self._PoseStamped, self._Trigger = PoseStamped, Trigger
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(n)
        # close() ends the spin by dropping the context, before destroying the node
        self._thread = spin_in_background(self._executor, lambda: self._ctx is not None and self._ctx.ok(),
                                          "calibrate-handeye-ros")
        return self

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._node is not None:
            self._node.destroy_node()
        if ctx is not None:
            ctx.try_shutdown()
        self._node = self._executor = self._thread = None

    def __enter__(self) -> Collector:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ callbacks
    def _on_ee(self, msg) -> None:
        from robot.ros.convert import pose_to_numpy

        pos, quat = pose_to_numpy(msg)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
            log.warning("ee_pose with NaN or Inf ignored")
            return
        with self._cond:
            self._ee = (time.monotonic(), pos, quat)
            self._cond.notify_all()

    def _on_image(self, msg) -> None:
        try:
            img = image_to_numpy(msg)
        except CollectError as e:  # a bad frame: say so and wait for the next one
            log.warning("cameras/%s/image_raw: %s", self.cfg.camera, e)
            return
        with self._cond:
            self._image = (time.monotonic(), img)
            self._cond.notify_all()

    def _on_info(self, msg) -> None:
        with self._cond:
            self._info = msg

    # --------------------------------------------------------------- actions
    def _wait(self, what: str, pred, timeout: float):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred()
                if v is not None:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CollectError(what)
                self._cond.wait(min(left, 0.1))

    def wait_for_inputs(self) -> Intrinsics:
        t, ns, cam = self.cfg.input_timeout_s, self.cfg.namespace or "/", self.cfg.camera
        self._wait(f"no ee_pose within {t} s in namespace {ns!r}: is the franka node running?",
                   lambda: self._ee, t)
        self._wait(f"no cameras/{cam}/image_raw within {t} s: is the camera node running, is the camera "
                   f"name {cam!r} right?", lambda: self._image, t)
        info = self._wait(f"no cameras/{cam}/camera_info within {t} s", lambda: self._info, t)
        return Intrinsics.from_camera_info(info)

    def call_home(self, timeout: float = 60.0) -> None:
        if not self._home.wait_for_service(timeout_sec=5.0):
            raise CollectError("the franka node's home service is not available (pass --no-home to skip)")
        fut = self._home.call_async(self._Trigger.Request())
        deadline = time.monotonic() + timeout
        while not fut.done():
            if time.monotonic() > deadline:
                raise CollectError(f"home did not finish within {timeout} s")
            time.sleep(0.05)
        res = fut.result()
        if not res.success:
            raise CollectError(f"home failed: {res.message}")

    def _publish(self, pos: np.ndarray, quat: np.ndarray) -> None:
        from robot.ros.convert import fill_pose

        msg = self._PoseStamped()
        msg.header.frame_id = self.cfg.base_frame
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(fill_pose(msg, pos, quat))

    def move_to(self, pos: np.ndarray, quat: np.ndarray) -> bool:
        """Stream the target until ee_pose has been within tolerance and still for settle_s; False on timeout.

        ``self.last_move`` keeps how far the arm was from the target and how much it moved at the end.
        """
        cfg = self.cfg
        start = time.monotonic()
        window: list[tuple[float, np.ndarray, np.ndarray]] = []
        period = 1.0 / cfg.publish_hz
        self.last_move = "no ee_pose"
        while time.monotonic() - start < cfg.move_timeout_s:
            self._publish(pos, quat)
            with self._cond:
                ee = self._ee
            now = time.monotonic()
            if ee is not None:
                d_mm, d_deg = np.linalg.norm(ee[1] - pos) * 1e3, np.degrees(quat_angle(ee[2], quat))
                self.last_move = f"ee_pose {d_mm:.2f} mm / {d_deg:.3f} deg from the target"
                if d_mm > cfg.tolerance_mm or d_deg > cfg.tolerance_deg:
                    window.clear()
                else:
                    window.append((now, ee[1], ee[2]))
                    while len(window) > 1 and now - window[1][0] >= cfg.settle_s:
                        window.pop(0)  # keep one sample at least settle_s old: slow loops still settle
                    m_mm = max(np.linalg.norm(p - ee[1]) * 1e3 for _, p, _ in window)
                    m_deg = max(np.degrees(quat_angle(q, ee[2])) for _, _, q in window)
                    self.last_move += f", moving {m_mm:.2f} mm / {m_deg:.3f} deg within {cfg.settle_s} s"
                    if m_mm > cfg.still_mm or m_deg > cfg.still_deg:
                        window = window[-1:]
                    elif now - window[0][0] >= cfg.settle_s:
                        return True
            time.sleep(period)
        return False

    def capture(self, pos: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first image received after now, and the ee_pose at that time (target still streamed)."""
        t0 = time.monotonic()
        deadline = t0 + self.cfg.image_timeout_s
        while time.monotonic() < deadline:
            self._publish(pos, quat)  # keep the watchdog fed while waiting
            with self._cond:
                if self._image is not None and self._image[0] > t0 and self._ee is not None:
                    return self._image[1], self._ee[1].copy(), self._ee[2].copy()
                self._cond.wait(1.0 / self.cfg.publish_hz)
        raise CollectError(f"no fresh image on cameras/{self.cfg.camera}/image_raw within "
                           f"{self.cfg.image_timeout_s} s")

    def run(self, out_dir: str | Path, progress: bool = True) -> Session:
        cfg = self.cfg
        poses = generate(PoseSetConfig(**{**cfg.poses.__dict__, "mode": cfg.mode}), cfg.safety)
        intr = self.wait_for_inputs()
        session = Session(camera=cfg.camera, mode=cfg.mode, board=cfg.board, intrinsics=intr, source="rig",
                          base_frame=cfg.base_frame, gripper_frame=cfg.gripper_frame)
        writer = SessionWriter(out_dir, session)
        if cfg.home:
            self.call_home()
        it = poses
        if progress:
            from tqdm import tqdm

            it = tqdm(poses, desc=f"collect {cfg.camera}", unit="pose")
        try:
            for i, (pos, quat) in enumerate(it):
                if not self.move_to(pos, quat):
                    log.warning("pose %d not reached and still within %.0f s (%s; clipped by the safety "
                                "filter?): skipped", i, cfg.move_timeout_s, self.last_move)
                    continue
                img, p, q = self.capture(pos, quat)
                if img.shape[:2] != (intr.height, intr.width):
                    raise CollectError(f"image {img.shape[1]}x{img.shape[0]} differs from camera_info "
                                       f"{intr.width}x{intr.height}")
                writer.add(img, p, q, stamp=time.time())
        finally:
            if cfg.home:
                try:
                    self.call_home()
                except CollectError as e:
                    log.warning("home after collection failed: %s", e)
        return session


def collect(out_dir: str | Path, cfg: CollectConfig) -> Session:
    """Record a session on the rig (connect, run, close)."""
    with Collector(cfg) as c:
        return c.run(out_dir)
