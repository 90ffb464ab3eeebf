"""Simulated cameras: render a :class:`sim.rig.SimRig`'s cameras at their rates.

One worker thread renders every camera (one GL context, so EGL stays happy),
each at its own rate, stamping a frame with the host time at which the scene
was read. A render that misses its slot skips ahead; the skipped slots count
as dropped frames, reported like a real camera's.

The rig may be stepped by another thread (the franka node's physics thread in
``rig-up``): under ``lock`` the source only copies the poses (``qpos``, mocap)
into its own ``MjData`` (microseconds), then computes kinematics and renders
from that snapshot outside the lock, so physics never waits for a render.
``before_render`` lets a camera node running in its own process pose its
private rig from mirrored ``joint_states`` first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.backends.camera_stream import StreamStats
from robot.backends.realsense import DropCounter, Frame, Intrinsics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimCamera:
    name: str
    width: int = 640
    height: int = 480
    fps: float = 30.0
    depth: bool = False


class SimCameraSource:
    def __init__(
        self,
        rig: Any,
        cameras: list[SimCamera],
        on_frame: Callable[[str, Frame, float], None],
        lock: Any = None,
        before_render: Callable[[], None] | None = None,
        logger: Any = None,
    ):
        self.rig, self.cameras, self.on_frame = rig, list(cameras), on_frame
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.before_render = before_render
        self.log = logger if logger is not None else log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drops = {c.name: DropCounter(c.fps) for c in self.cameras}
        self._frames = dict.fromkeys(self._drops, 0)
        self._last = dict.fromkeys(self._drops, 0.0)
        self._arrivals: dict[str, list[float]] = {c.name: [] for c in self.cameras}
        self._error = ""
        self._stat_lock = threading.Lock()
        self._snap: Any = None
        self._renderers: dict[tuple[int, int, bool], Any] = {}

    def intrinsics(self, cam: SimCamera) -> Intrinsics:
        """Ideal pinhole from the MuJoCo camera's vertical field of view."""
        fovy = float(self.rig.model.cam_fovy[self.rig.model.camera(cam.name).id])
        return Intrinsics.from_fovy(cam.width, cam.height, fovy)

    def _renderer(self, cam: SimCamera, depth: bool) -> Any:
        import mujoco

        key = (cam.height, cam.width, depth)
        r = self._renderers.get(key)
        if r is None:
            r = mujoco.Renderer(self.rig.model, height=cam.height, width=cam.width)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_FOG):
                r.scene.flags[flag] = False
            if depth:
                r.enable_depth_rendering()
            self._renderers[key] = r
        return r

    def _snapshot(self) -> float:
        """Copy the scene's poses under the lock; return the host time they belong to."""
        import mujoco

        m, d = self.rig.model, self.rig.data
        if self._snap is None:
            self._snap = mujoco.MjData(m)
        with self.lock:
            if self.before_render is not None:
                self.before_render()
            self._snap.qpos[:] = d.qpos
            self._snap.mocap_pos[:] = d.mocap_pos
            self._snap.mocap_quat[:] = d.mocap_quat
            t = time.time()
        mujoco.mj_kinematics(m, self._snap)
        mujoco.mj_camlight(m, self._snap)
        return t

    def _render(self, cam: SimCamera) -> tuple[Any, Any]:
        r = self._renderer(cam, False)
        r.update_scene(self._snap, camera=cam.name)
        rgb = r.render().copy()
        depth = None
        if cam.depth:
            rd = self._renderer(cam, True)
            rd.update_scene(self._snap, camera=cam.name)
            depth = np.clip(rd.render() * 1000.0, 0, 65535).astype(np.uint16)  # m -> mm
        return rgb, depth

    def check(self) -> None:
        """Fail early, naming the camera and the ones the model has, if a name is wrong."""
        names = self.rig.camera_names()
        missing = [c.name for c in self.cameras if c.name not in names]
        if missing:
            raise KeyError(f"sim cameras {missing} are not in the sim rig (it has {list(names)})")

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sim-cameras", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def stats(self, name: str) -> StreamStats:
        now = time.monotonic()
        with self._stat_lock:
            recent = [t for t in self._arrivals[name] if now - t <= 2.0]
            rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
            return StreamStats(name, self._thread is not None and not self._error, self._frames[name],
                               self._drops[name].dropped, 0, 1, rate, self._last[name], self._error)

    def _run(self) -> None:
        try:  # warm up (GL context, renderers) before the schedule starts, so start-up is not a drop
            self._snapshot()
            for c in self.cameras:
                self._render(c)
        except Exception as e:
            self._error = str(e)
        t0 = time.monotonic()
        slot = dict.fromkeys(self._drops, 0)  # index of the next frame slot per camera
        while not self._stop.is_set():
            due = {c.name: t0 + slot[c.name] / c.fps for c in self.cameras}
            wait = min(due.values()) - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            now = time.monotonic()
            ready = [c for c in self.cameras if due[c.name] <= now]
            try:
                stamp = self._snapshot()
                shots = [(c, *self._render(c)) for c in ready]
            except Exception as e:  # a broken scene: report on /diagnostics, try again next slot
                if str(e) != self._error:
                    self.log.error(f"sim cameras: rendering failed:\n{traceback.format_exc()}")
                self._error = str(e)
                for c in ready:
                    slot[c.name] += 1
                continue
            self._error = ""
            for c, rgb, depth in shots:
                n = slot[c.name]
                self._drops[c.name].update(n, stamp)
                with self._stat_lock:
                    self._frames[c.name] += 1
                    self._last[c.name] = stamp
                    arr = self._arrivals[c.name]
                    arr.append(time.monotonic())
                    del arr[:-128]
                try:
                    self.on_frame(c.name, Frame(rgb, stamp, "system", n, depth), stamp)
                except Exception as e:  # e.g. the ROS context went away during shutdown
                    if self._stop.is_set():
                        return
                    self.log.warning(f"sim cameras: publishing {c.name} failed: {e}")
                # the next slot after now: slots missed while rendering are dropped frames
                slot[c.name] = max(n + 1, int((time.monotonic() - t0) * c.fps))
        for r in self._renderers.values():  # GL resources belong to this thread
            r.close()
        self._renderers.clear()
