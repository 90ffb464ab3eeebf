"""``camera-node``: colour (+ aligned depth) images and CameraInfo of the rig's cameras.

Per camera ``<name>`` it publishes, with sensor-data QoS and frame
``<name>_optical_frame``:

* ``cameras/<name>/image_raw`` (sensor_msgs/Image, rgb8),
* ``cameras/<name>/camera_info`` (sensor_msgs/CameraInfo, the device's intrinsics),
* ``cameras/<name>/depth/image_raw`` (16UC1, mm, aligned to colour) when depth is on,

each stamped with the time the frame was measured (the device's hardware or
global time mapped to host time). Health (rate, drops, disconnects, the last
error) goes to ``/diagnostics``, one status per camera.

Backends (``backend`` parameter):

* ``realsense``: one pyrealsense2 pipeline per serial number in ``serials``;
  a missing serial is reported with the list of connected ones and retried,
  so plugging the camera in later just works;
* ``replay``: ``serials`` are paths of recordings (``Recording.save`` .npz)
  played at ``fps`` through the same code path (tests, offline debugging);
* ``sim``: renders the sim rig's cameras. Inside ``rig-up`` it shares the
  franka node's ``SimRig``; as its own process it builds a private rig and
  mirrors ``joint_states`` / ``gripper/state`` into it before each render.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, JointState

from robot.backends.camera_stream import CameraStream, StreamStats
from robot.backends.realsense import (
    CameraDevice,
    Frame,
    Intrinsics,
    RealSenseDevice,
    Recording,
    ReplayDevice,
    camera_info_fields,
)
from robot.backends.sim_camera import SimCamera, SimCameraSource
from robot.ros.convert import finite, gripper_width, joints_to_numpy, numpy_to_image, to_stamp
from robot.ros.diagnostics import ERROR, OK, WARN
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import declare_dataclass, read_dataclass, require
from robot.ros.qos import SENSOR_QOS, STATE_QOS

BACKENDS = ("sim", "realsense", "replay")


@dataclass
class CameraNodeParams:
    backend: str = "sim"  # sim | realsense | replay
    names: list[str] = field(default_factory=lambda: ["front", "wrist"])  # camera names (topic namespaces)
    serials: list[str] = field(default_factory=lambda: [""])  # realsense: serial numbers; replay: .npz paths
    widths: list[int] = field(default_factory=lambda: [640])  # colour width per camera (one value: all), px
    heights: list[int] = field(default_factory=lambda: [480])  # colour height per camera, px
    fps: list[float] = field(default_factory=lambda: [30.0])  # frame rate per camera
    depth: list[bool] = field(default_factory=lambda: [False])  # publish aligned depth per camera
    read_timeout: float = 1.0  # s to wait for a frame before counting a timeout
    disconnect_after: int = 3  # consecutive timeouts that count as a disconnect
    reconnect_period: float = 1.0  # s between attempts to (re)open a missing camera
    sim_visual: str = "primitive"  # own sim rig (separate process): primitive | mesh
    mirror_joint_states: bool = True  # own sim rig: pose it from joint_states before rendering


@dataclass(frozen=True)
class _Cam:
    name: str
    serial: str
    width: int
    height: int
    fps: float
    depth: bool


def cameras_from_params(p: CameraNodeParams) -> list[_Cam]:
    """Per-camera settings; lists of length 1 apply to every camera."""
    n = len(p.names)
    require(n > 0, "names", p.names, "list at least one camera")
    require(len(set(p.names)) == n, "names", p.names, "must be unique")
    cols = {}
    for key in ("serials", "widths", "heights", "fps", "depth"):
        v = list(getattr(p, key))
        require(len(v) in (1, n), key, v, f"give one value per camera ({n}: {p.names}) or a single value")
        cols[key] = v * n if len(v) == 1 else v
    cams = [_Cam(p.names[i], cols["serials"][i], cols["widths"][i], cols["heights"][i], cols["fps"][i],
                 cols["depth"][i]) for i in range(n)]
    for c in cams:
        require(c.width > 0 and c.height > 0, f"widths/heights[{c.name}]", (c.width, c.height), "must be > 0")
        require(0 < c.fps <= 240, f"fps[{c.name}]", c.fps, "must be in (0, 240]")
    return cams


class CameraNode(RigNode):
    def __init__(
        self,
        name: str = "cameras",
        rig: Any = None,
        rig_lock: Any = None,
        devices: dict[str, CameraDevice] | None = None,
        **kwargs: Any,
    ):
        """``rig``/``rig_lock``: a shared SimRig (rig-up); ``devices``: injected camera devices (tests)."""
        super().__init__(name, **kwargs)
        declare_dataclass(self, CameraNodeParams())
        self._shared_rig, self._rig_lock, self._injected = rig, rig_lock, devices
        self._own_rig: Any = None
        self.streams: dict[str, CameraStream] = {}
        self.sim: SimCameraSource | None = None
        self._info_cache: dict[str, tuple[Intrinsics, CameraInfo]] = {}
        self._mirror: dict[str, Any] = {}
        self._mirror_lock = threading.Lock()
        self._last_drops: dict[str, int] = {}

    # ---------------------------------------------------------- life cycle
    def setup(self) -> None:
        p = read_dataclass(self, CameraNodeParams)
        require(p.backend in BACKENDS, "backend", p.backend, f"must be one of {BACKENDS}")
        cams = cameras_from_params(p)
        if p.backend == "realsense" and self._injected is None:
            for c in cams:
                require(bool(c.serial), f"serials[{c.name}]", c.serial,
                        "set the RealSense serial number (rs-enumerate-devices lists them)")
        self.p, self.cams = p, cams
        self.pubs: dict[str, tuple[Any, Any, Any]] = {}
        for c in cams:
            base = f"cameras/{c.name}"
            self.pubs[c.name] = (
                self.make_publisher(Image, f"{base}/image_raw", SENSOR_QOS),
                self.make_publisher(CameraInfo, f"{base}/camera_info", SENSOR_QOS),
                self.make_publisher(Image, f"{base}/depth/image_raw", SENSOR_QOS) if c.depth else None,
            )
        self.diags = {c.name: self.make_diagnostics(f"camera {c.name}", hardware_id=c.serial or p.backend)
                      for c in cams}
        try:
            self._build_sources()
        except Exception as e:
            raise RuntimeError(f"camera backend {p.backend!r}: {e}") from e

    def _build_sources(self) -> None:
        p = self.p
        if p.backend == "sim" and self._injected is None:
            rig = self._shared_rig
            if rig is None:
                from sim.rig import SimRig  # lazily: only the sim backend needs MuJoCo

                rig = self._own_rig = SimRig(visual=p.sim_visual).connect()
                if p.mirror_joint_states:
                    self.guarded_subscription(JointState, "joint_states", self._on_joints, STATE_QOS)
                    self.guarded_subscription(JointState, "gripper/state", self._on_gripper, STATE_QOS)
            self.sim = SimCameraSource(
                rig, [SimCamera(c.name, c.width, c.height, c.fps, c.depth) for c in self.cams],
                self._publish, lock=self._rig_lock,
                before_render=self._apply_mirror if self._own_rig is not None else None,
                logger=self.get_logger(),
            )
            self.sim.check()
            return
        for c in self.cams:
            if self._injected is not None:
                dev = self._injected[c.name]
            elif p.backend == "replay":
                dev = ReplayDevice(c.name, Recording.load(c.serial), fps=c.fps, serial=c.serial)
            else:
                dev = RealSenseDevice(c.name, c.serial, c.width, c.height, c.fps, c.depth)
            self.streams[c.name] = CameraStream(
                dev, lambda f, s, n=c.name: self._publish(n, f, s), fps=c.fps,
                read_timeout=p.read_timeout, disconnect_after=p.disconnect_after,
                reconnect_period=p.reconnect_period, logger=self.get_logger(),
            )

    def start(self) -> None:
        for s in self.streams.values():
            s.start()
        if self.sim is not None:
            self.sim.start()
        self.guarded_timer(1.0, self._update_diagnostics)

    def stop(self) -> None:
        for s in self.streams.values():
            s.stop()
        if self.sim is not None:
            self.sim.stop()

    def teardown(self) -> None:
        if self._own_rig is not None:
            self._own_rig.close()
            self._own_rig = None

    # ------------------------------------------------------------- mirror
    def _on_joints(self, msg: JointState) -> None:
        q, _ = joints_to_numpy(msg)
        finite("joint_states position", q)
        with self._mirror_lock:
            self._mirror["q"] = q

    def _on_gripper(self, msg: JointState) -> None:
        w = gripper_width(msg)
        finite("gripper/state width", w)
        with self._mirror_lock:
            self._mirror["width"] = min(max(w, 0.0), 0.08)

    def _apply_mirror(self) -> None:
        with self._mirror_lock:
            q, w = self._mirror.get("q"), self._mirror.get("width")
        if q is not None:
            self._own_rig.reset(q, 0.08 if w is None else w)

    # ------------------------------------------------------------ publish
    def _camera_info(self, name: str, intr: Intrinsics) -> CameraInfo:
        cached = self._info_cache.get(name)
        if cached is None or cached[0] != intr:
            info = CameraInfo(**camera_info_fields(intr))
            cached = self._info_cache[name] = (intr, info)
        return cached[1]

    def _intrinsics(self, name: str, frame: Frame) -> Intrinsics:
        if self.sim is not None:
            cam = next(c for c in self.sim.cameras if c.name == name)
            return self.sim.intrinsics(cam)
        return self.streams[name].device.intrinsics

    def _publish(self, name: str, frame: Frame, t: float) -> None:
        img_pub, info_pub, depth_pub = self.pubs[name]
        msg = numpy_to_image(np.asarray(frame.color, np.uint8), frame_id=f"{name}_optical_frame")
        msg.header.stamp = to_stamp(t)
        img_pub.publish(msg)
        info = self._camera_info(name, self._intrinsics(name, frame))
        info.header = msg.header
        info_pub.publish(info)
        if depth_pub is not None and frame.depth is not None:
            d = numpy_to_image(np.asarray(frame.depth, np.uint16))
            d.header = msg.header
            depth_pub.publish(d)

    # -------------------------------------------------------- diagnostics
    def stats(self, name: str) -> StreamStats:
        return self.sim.stats(name) if self.sim is not None else self.streams[name].stats()

    def _update_diagnostics(self) -> None:
        for c in self.cams:
            s = self.stats(c.name)
            new_drops = s.dropped - self._last_drops.get(c.name, 0)
            self._last_drops[c.name] = s.dropped
            values = dict(rate_hz=s.rate_hz, target_hz=c.fps, frames=s.frames, dropped=s.dropped,
                          disconnects=s.disconnects, connected=s.connected, last_error=s.last_error)
            if not s.connected:
                self.diags[c.name].set(ERROR, f"not streaming: {s.last_error or 'connecting'}", **values)
            elif new_drops > 0:
                self.diags[c.name].set(WARN, f"dropped {new_drops} frames in the last second", **values)
            elif s.rate_hz < 0.8 * c.fps:
                self.diags[c.name].set(WARN, f"rate {s.rate_hz:.1f} Hz below {c.fps:g} Hz", **values)
            else:
                self.diags[c.name].set(OK, "streaming", **values)


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(lambda: CameraNode(), args)


if __name__ == "__main__":
    raise SystemExit(main())
