"""RealSense cameras behind a small device interface, plus a replay twin.

The camera node talks to a :class:`CameraDevice`: ``open()``, ``read(timeout)``
-> :class:`Frame`, ``close()`` and ``intrinsics``. :class:`RealSenseDevice` is
the pyrealsense2 implementation (one device by serial number, colour at a chosen
resolution and rate, optional depth aligned to colour, global time on);
:class:`ReplayDevice` plays back recorded or rendered frames through the same
interface, including frame-number gaps (drops) and unplug/replug, so the node's
logic (timestamp mapping, CameraInfo, drop and disconnect detection, reconnect)
is tested without a physical camera.

Times: :class:`TimestampMapper` turns a frame's device timestamp into host
(ROS) time. RealSense reports one of three domains: ``global`` (device clock
already mapped to host time by librealsense), ``system`` (host time when the
frame arrived) and ``hardware`` (the device's own clock, with an unknown offset
that the mapper estimates and tracks).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class CameraError(RuntimeError):
    """A camera problem the node reports on /diagnostics."""


class CameraNotFound(CameraError):
    """The requested device is not connected."""


class DeviceDisconnected(CameraError):
    """The device went away while streaming."""


class FrameTimeout(CameraError):
    """No frame arrived within the timeout (device still listed)."""


# --------------------------------------------------------------------- data
@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the colour stream (pixels)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "plumb_bob"  # ROS distortion model name
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera at another resolution (sim cameras, resized images)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, self.model, self.coeffs
        )

    @classmethod
    def from_fovy(cls, width: int, height: int, fovy_deg: float) -> Intrinsics:
        """Ideal pinhole with square pixels from a vertical field of view (MuJoCo cameras)."""
        f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2.0)
        return cls(width, height, float(f), float(f), (width - 1) / 2.0, (height - 1) / 2.0)


def camera_info_fields(intr: Intrinsics) -> dict[str, Any]:
    """The sensor_msgs/CameraInfo fields for ``intr`` (K, D, R, P row-major)."""
    k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    return {
        "width": int(intr.width),
        "height": int(intr.height),
        "distortion_model": intr.model,
        "d": [float(c) for c in intr.coeffs],
        "k": [float(v) for v in k],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


@dataclass
class Frame:
    """One colour (+ aligned depth) sample as the device delivered it."""

    color: np.ndarray  # (H, W, 3) uint8, rgb
    timestamp: float  # seconds, in ``domain``
    domain: str = "system"  # hardware | global | system
    number: int = -1  # device frame counter; -1 when unknown
    depth: np.ndarray | None = None  # (H, W) uint16, mm, aligned to colour


class CameraDevice(Protocol):
    """What the camera node needs from a camera."""

    name: str

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame: ...

    def close(self) -> None: ...

    @property
    def intrinsics(self) -> Intrinsics: ...


# ----------------------------------------------------------------- time/drops
class TimestampMapper:
    """Device timestamps -> host time (seconds since the epoch).

    ``global`` and ``system`` stamps are already host time. For ``hardware``
    stamps the offset ``host - device`` is estimated as the minimum over a
    sliding window of recent frames (the minimum removes transport latency
    jitter; the window follows clock drift). A device clock that jumps
    backwards or disagrees with host time by more than ``reset_threshold``
    (a reconnect, a firmware reset) restarts the estimate.
    """

    def __init__(self, window: int = 100, reset_threshold: float = 0.5):
        self.window = int(window)
        self.reset_threshold = float(reset_threshold)
        self._offsets: collections.deque[float] = collections.deque(maxlen=self.window)
        self._last: tuple[float, float] | None = None  # (device, host) of the previous hardware frame
        self.resets = 0

    def reset(self) -> None:
        self._offsets.clear()
        self._last = None

    def map(self, frame: Frame, host_now: float) -> float:
        if frame.domain in ("global", "system"):
            return float(frame.timestamp)
        if frame.domain != "hardware":
            raise CameraError(f"unknown timestamp domain {frame.domain!r}: expected hardware, global or system")
        dev = float(frame.timestamp)
        if self._last is not None:
            d_dev, d_host = dev - self._last[0], host_now - self._last[1]
            if d_dev < 0 or abs(d_dev - d_host) > self.reset_threshold:
                self._offsets.clear()
                self.resets += 1
        self._last = (dev, host_now)
        self._offsets.append(host_now - dev)
        return dev + min(self._offsets)


class DropCounter:
    """Counts frames lost between deliveries, from frame numbers (or times when numbers are absent)."""

    def __init__(self, fps: float):
        self.period = 1.0 / float(fps)
        self.dropped = 0
        self._last_number: int | None = None
        self._last_time: float | None = None

    def reset(self) -> None:
        self._last_number = self._last_time = None

    def update(self, number: int, stamp: float) -> int:
        """Register a frame; return how many frames were lost just before it."""
        lost = 0
        if number >= 0 and self._last_number is not None and number > self._last_number:
            lost = number - self._last_number - 1
        elif number < 0 and self._last_time is not None:
            lost = max(0, int(round((stamp - self._last_time) / self.period)) - 1)
        self._last_number = number if number >= 0 else None
        self._last_time = stamp
        self.dropped += lost
        return lost


# ----------------------------------------------------------------- RealSense
_RS_DISTORTION = {
    "brown_conrady": "plumb_bob",
    "modified_brown_conrady": "plumb_bob",
    "inverse_brown_conrady": "plumb_bob",
    "none": "plumb_bob",
    "kannala_brandt4": "equidistant",
    "ftheta": "equidistant",
}
_RS_DOMAIN = {"hardware_clock": "hardware", "global_time": "global", "system_time": "system"}


def connected_serials() -> list[str]:
    """Serial numbers of the RealSense devices on this host."""
    import pyrealsense2 as rs

    from_ctx = rs.context().query_devices()
    return [d.get_info(rs.camera_info.serial_number) for d in from_ctx]


class RealSenseDevice:
    """One RealSense camera by serial number (pyrealsense2 pipeline)."""

    def __init__(
        self,
        name: str,
        serial: str,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        depth: bool = False,
        global_time: bool = True,
    ):
        self.name, self.serial = name, str(serial)
        self.width, self.height, self.fps, self.depth = int(width), int(height), int(fps), bool(depth)
        self.global_time = global_time
        self._pipe: Any = None
        self._align: Any = None
        self._intr: Intrinsics | None = None
        self._depth_to_mm = 1.0

    @property
    def intrinsics(self) -> Intrinsics:
        if self._intr is None:
            raise CameraError(f"camera {self.name!r}: intrinsics are known only after open()")
        return self._intr

    def open(self) -> None:
        import pyrealsense2 as rs

        serials = connected_serials()
        if self.serial not in serials:
            listed = ", ".join(serials) if serials else "none"
            raise CameraNotFound(
                f"camera {self.name!r}: RealSense serial {self.serial!r} is not connected "
                f"(connected serials: {listed}); set it to one of them (rig.cameras.cameras.<i>.serial, or "
                "-p serials:=[...] for camera-node) "
                "or check the USB 3 cable"
            )
        cfg = rs.config()
        cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        if self.depth:
            cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        pipe = rs.pipeline()
        try:
            profile = pipe.start(cfg)
        except RuntimeError as e:
            raise CameraError(
                f"camera {self.name!r} ({self.serial}): cannot stream colour {self.width}x{self.height} "
                f"@ {self.fps} fps{' + depth' if self.depth else ''}: {e}"
            ) from e
        dev = profile.get_device()
        for sensor in dev.query_sensors():
            if self.global_time and sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1.0)
        if self.depth:
            scale = dev.first_depth_sensor().get_depth_scale()  # m per unit
            self._depth_to_mm = scale * 1000.0
            self._align = rs.align(rs.stream.color)
        vp = profile.get_stream(rs.stream.color).as_video_stream_profile()
        i = vp.get_intrinsics()
        self._intr = Intrinsics(
            i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, _RS_DISTORTION.get(i.model.name, "plumb_bob"),
            tuple(float(c) for c in i.coeffs),
        )
        self._pipe = pipe

    def read(self, timeout: float) -> Frame:
        if self._pipe is None:
            raise CameraError(f"camera {self.name!r}: read() before open()")
        try:
            frames = self._pipe.wait_for_frames(int(timeout * 1000))
        except RuntimeError as e:
            if self.serial not in connected_serials():
                raise DeviceDisconnected(f"camera {self.name!r} ({self.serial}) was unplugged") from e
            raise FrameTimeout(f"camera {self.name!r}: no frame within {timeout:.2f} s ({e})") from e
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        out = Frame(
            color=np.asanyarray(color.get_data()).copy(),
            timestamp=color.get_timestamp() / 1000.0,
            domain=_RS_DOMAIN.get(color.get_frame_timestamp_domain().name, "system"),
            number=int(color.get_frame_number()),
        )
        if self._align is not None:
            d = np.asanyarray(frames.get_depth_frame().get_data())
            out.depth = d.copy() if self._depth_to_mm == 1.0 else (d * self._depth_to_mm).astype(np.uint16)
        return out

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            try:
                pipe.stop()
            except RuntimeError:
                pass  # already stopped by an unplug


# -------------------------------------------------------------------- replay
@dataclass
class Recording:
    """Frames recorded from (or rendered for) one camera."""

    intrinsics: Intrinsics
    frames: list[Frame] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        """An .npz (no pickles): colour, depth, timestamps, numbers, domain, intrinsics."""
        i = self.intrinsics
        arrays = {
            "color": np.stack([f.color for f in self.frames]),
            "timestamp": np.array([f.timestamp for f in self.frames], np.float64),
            "number": np.array([f.number for f in self.frames], np.int64),
            "domain": np.array([f.domain for f in self.frames]),
            "intrinsics": np.array([i.width, i.height, i.fx, i.fy, i.cx, i.cy], np.float64),
            "model": np.array(i.model),
            "coeffs": np.array(i.coeffs, np.float64),
        }
        if all(f.depth is not None for f in self.frames):
            arrays["depth"] = np.stack([f.depth for f in self.frames])
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        with np.load(path, allow_pickle=False) as z:
            w, h, fx, fy, cx, cy = z["intrinsics"]
            intr = Intrinsics(int(w), int(h), fx, fy, cx, cy, str(z["model"]), tuple(z["coeffs"].tolist()))
            depth = z["depth"] if "depth" in z else None
            frames = [
                Frame(z["color"][k], float(z["timestamp"][k]), str(z["domain"][k]), int(z["number"][k]),
                      None if depth is None else depth[k])
                for k in range(len(z["timestamp"]))
            ]
        return cls(intr, frames)


class ReplayDevice:
    """Plays a :class:`Recording` through the :class:`CameraDevice` interface.

    ``realtime`` paces reads at ``fps``; ``loop`` restarts at the end (frame
    numbers and device timestamps keep increasing, as a live device's would).
    ``unplug()``/``replug()`` simulate a cable pull: reads raise
    :class:`DeviceDisconnected` and ``open()`` raises :class:`CameraNotFound`
    until replugged. Every ``open()`` restarts the frame counter and the device
    clock, as real hardware does.
    """

    def __init__(
        self,
        name: str,
        recording: Recording,
        fps: float = 30.0,
        realtime: bool = True,
        loop: bool = True,
        serial: str = "replay",
    ):
        if not recording.frames:
            raise CameraError(f"camera {name!r}: the replay recording has no frames")
        self.name, self.serial, self.rec = name, serial, recording
        self.fps, self.realtime, self.loop = float(fps), realtime, loop
        self.plugged = True
        self.opened = False
        self.opens = 0
        self._k = 0
        self._epoch = 0
        self._next_time = 0.0
        self._host0 = 0.0

    @property
    def intrinsics(self) -> Intrinsics:
        return self.rec.intrinsics

    def unplug(self) -> None:
        self.plugged = False

    def replug(self) -> None:
        self.plugged = True

    def open(self) -> None:
        if not self.plugged:
            raise CameraNotFound(
                f"camera {self.name!r}: serial {self.serial!r} is not connected (connected serials: none)"
            )
        self.opened, self.opens = True, self.opens + 1
        self._k, self._epoch = 0, 0  # a fresh session restarts the counter and clock, as hardware does
        self._next_time = time.monotonic()
        self._host0 = time.time()

    def read(self, timeout: float) -> Frame:
        if not self.opened:
            raise CameraError(f"camera {self.name!r}: read() before open()")
        if not self.plugged:
            raise DeviceDisconnected(f"camera {self.name!r} ({self.serial}) was unplugged")
        n = len(self.rec.frames)
        if self._k >= n:
            if not self.loop:
                time.sleep(timeout)
                raise FrameTimeout(f"camera {self.name!r}: replay finished")
            self._k, self._epoch = 0, self._epoch + 1
        if self.realtime:
            wait = self._next_time - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                raise FrameTimeout(f"camera {self.name!r}: no frame within {timeout:.2f} s")
            if wait > 0:
                time.sleep(wait)
            self._next_time = max(self._next_time + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        src = self.rec.frames[self._k]
        self._k += 1
        span_frames = (self.rec.frames[-1].number - self.rec.frames[0].number + 1) if src.number >= 0 else 0
        span_time = span_frames / self.fps if span_frames else n / self.fps
        frame = Frame(
            src.color,
            src.timestamp + self._epoch * span_time,
            src.domain,
            src.number + self._epoch * span_frames if src.number >= 0 else -1,
            src.depth,
        )
        if frame.domain == "system":  # host arrival time, as librealsense would stamp it
            frame.timestamp = time.time()
        elif frame.domain == "global":  # device clock mapped to host time, from when it was opened
            frame.timestamp = self._host0 + frame.timestamp - self.rec.frames[0].timestamp
        return frame

    def close(self) -> None:
        self.opened = False


def record(device: CameraDevice, n: int, timeout: float = 2.0) -> Recording:
    """Capture ``n`` frames of a device (e.g. a RealSense on the rig) for later replay.

    ``record(RealSenseDevice("front", "123456"), 90).save("front.npz")``, then
    ``camera-node --ros-args -p backend:=replay -p names:=[front] -p serials:=[front.npz]``.
    """
    device.open()
    try:
        frames = [device.read(timeout) for _ in range(int(n))]
        return Recording(device.intrinsics, frames)
    finally:
        device.close()


def synthetic_recording(
    n: int = 30,
    width: int = 64,
    height: int = 48,
    fps: float = 30.0,
    domain: str = "hardware",
    depth: bool = False,
    skip: Sequence[int] = (),
    t0: float = 1000.0,
) -> Recording:
    """A small rendered recording: gradient frames whose top-left pixel encodes the frame number.

    ``skip`` lists frame numbers the "device" dropped (absent from the recording).
    """
    frames = []
    yy, xx = np.mgrid[0:height, 0:width]
    for k in range(n):
        if k in skip:
            continue
        img = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                        np.full_like(xx, (k * 8) % 256)], -1).astype(np.uint8)
        img[0, 0] = (k % 256, k // 256 % 256, 0)
        d = (np.full((height, width), 500 + k, np.uint16)) if depth else None
        frames.append(Frame(img, t0 + k / fps, domain, k, d))
    f = 0.5 * width / np.tan(np.deg2rad(69.0) / 2.0)  # a D435-like 69 deg horizontal FOV
    intr = Intrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2, "plumb_bob",
                      (0.01, -0.02, 0.0, 0.0, 0.003))
    return Recording(intr, frames)
