"""A worker thread per camera: read frames, stamp them, count drops, reconnect.

:class:`CameraStream` owns one :class:`~robot.backends.realsense.CameraDevice`.
It opens the device (retrying every ``reconnect_period`` while it is missing),
reads frames in its own thread (librealsense's ``wait_for_frames`` blocks),
maps device timestamps to host time, counts dropped frames from the frame
counter, and treats an unplug or ``disconnect_after`` consecutive timeouts as a
disconnect: it closes the device and goes back to reconnecting. Each frame goes
to ``on_frame(frame, stamp)``; :meth:`stats` feeds the node's /diagnostics.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robot.backends.realsense import (
    CameraDevice,
    CameraError,
    DeviceDisconnected,
    DropCounter,
    Frame,
    FrameTimeout,
    TimestampMapper,
)

log = logging.getLogger(__name__)


@dataclass
class StreamStats:
    """A snapshot of one stream's health."""

    name: str
    connected: bool
    frames: int
    dropped: int
    disconnects: int
    opens: int
    rate_hz: float  # delivered frames per second over the last ~2 s
    last_stamp: float  # host time of the newest frame, 0 if none
    last_error: str


class CameraStream:
    def __init__(
        self,
        device: CameraDevice,
        on_frame: Callable[[Frame, float], None],
        fps: float,
        read_timeout: float = 1.0,
        disconnect_after: int = 3,
        reconnect_period: float = 1.0,
        logger: Any = None,
    ):
        """``logger``: anything with info/warning/error(str) (a ROS node's logger); default: python logging."""
        self.device = device
        self.log = logger if logger is not None else log
        self.on_frame = on_frame
        self.read_timeout = float(read_timeout)
        self.disconnect_after = int(disconnect_after)
        self.reconnect_period = float(reconnect_period)
        self.mapper = TimestampMapper()
        self.drops = DropCounter(fps)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._frames = 0
        self._disconnects = 0
        self._opens = 0
        self._last_stamp = 0.0
        self._last_error = ""
        self._open_error = ""
        self._arrivals: collections.deque[float] = collections.deque(maxlen=256)

    # ---------------------------------------------------------- life cycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.device.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.read_timeout + 2.0)
            self._thread = None
        self._close_device()

    # --------------------------------------------------------------- state
    def stats(self) -> StreamStats:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._arrivals if now - t <= 2.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
            return StreamStats(
                self.device.name, self._connected, self._frames, self.drops.dropped, self._disconnects,
                self._opens, rate, self._last_stamp, self._last_error,
            )

    # ---------------------------------------------------------------- loop
    def _run(self) -> None:
        timeouts = 0
        while not self._stop.is_set():
            if not self._connected and not self._try_open():
                self._stop.wait(self.reconnect_period)
                continue
            try:
                frame = self.device.read(self.read_timeout)
            except FrameTimeout as e:
                timeouts += 1
                self._set_error(str(e))
                if timeouts >= self.disconnect_after:
                    self._disconnect(f"{timeouts} consecutive frame timeouts: {e}")
                    timeouts = 0
                continue
            except DeviceDisconnected as e:
                self._disconnect(str(e))
                continue
            except Exception as e:  # a driver error: report, reconnect, keep the node alive
                self._disconnect(f"{type(e).__name__}: {e}")
                continue
            timeouts = 0
            stamp = self.mapper.map(frame, time.time())
            self.drops.update(frame.number, stamp)
            with self._lock:
                self._frames += 1
                self._last_stamp = stamp
                self._arrivals.append(time.monotonic())
            try:
                self.on_frame(frame, stamp)
            except Exception:
                self.log.error(f"camera {self.device.name}: publishing a frame failed:\n{traceback.format_exc()}")

    def _try_open(self) -> bool:
        try:
            self.device.open()
        except Exception as e:  # missing device or a driver error while opening: report, retry later
            msg = str(e) if isinstance(e, CameraError) else f"{type(e).__name__}: {e}"
            if msg != self._open_error:  # once per distinct error, not every retry
                self.log.error(f"{msg} (retrying every {self.reconnect_period:g} s)")
                self._open_error = msg
            self._set_error(msg)
            return False
        self._open_error = ""
        self.mapper.reset()
        self.drops.reset()
        with self._lock:
            self._connected = True
            self._opens += 1
            self._last_error = ""
        self.log.info(f"camera {self.device.name}: streaming")
        return True

    def _disconnect(self, why: str) -> None:
        self.log.warning(f"camera {self.device.name}: disconnected ({why}); reconnecting")
        with self._lock:
            self._disconnects += 1
            self._last_error = why
        self._close_device()

    def _close_device(self) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
        if was:
            try:
                self.device.close()
            except Exception as e:  # closing an unplugged device may fail; nothing to recover
                self.log.warning(f"camera {self.device.name}: close failed: {e}")

    def _set_error(self, msg: str) -> None:
        with self._lock:
            self._last_error = msg
