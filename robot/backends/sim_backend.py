"""The MuJoCo twin of the arm: a :class:`sim.rig.SimRig` stepped in real time in its own thread.

The physics thread runs the rig's Cartesian impedance controller and physics at
the rig's timestep (2 ms), paced to the wall clock. The node never waits for
it: :meth:`SimBackend.command` and :meth:`SimBackend.gripper_command` leave the
latest target for the physics thread to apply before its next step, and
:meth:`SimBackend.read` returns the state snapshot taken after the last step.
:attr:`lock` guards the rig (held by the physics thread during a step); the
sim camera source takes it to read the scene between steps.

``home`` drives the TCP to the home joints' pose through the impedance
controller (the null-space posture task brings the joints home), like a real
move, instead of teleporting.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from rig.geometry import matrix_to_quat, quat_angle, quat_conj, quat_mul, quat_to_rotvec, rotvec_to_quat
from rig.safety import GripperCommand
from robot.backends.base import ArmState, Backend, ConnectionLost, GripperState

__all__ = ["SimBackend"]


class SimBackend(Backend):
    name = "sim"

    def __init__(
        self,
        *,
        translational_stiffness: float = 2000.0,
        rotational_stiffness: float = 150.0,
        damping_ratio: float = 1.0,
        home_joints: Any = None,
        objects: tuple = (),
        rig_kwargs: dict[str, Any] | None = None,
        home_speed: float = 0.25,
        rt_priority: int = 0,
    ):
        self._gains = (float(translational_stiffness), float(rotational_stiffness), float(damping_ratio))
        self._home_joints = None if home_joints is None else np.asarray(home_joints, dtype=np.float64)
        self._objects = tuple(objects)
        self._rig_kwargs = dict(rig_kwargs or {})
        self.home_speed = home_speed
        self.rt_priority = rt_priority  # > 0: the physics thread runs SCHED_FIFO (best effort)
        self.rig: Any = None
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = False
        self._snapshot: ArmState | None = None
        self._gripper = GripperState()
        self._pending_target: tuple[np.ndarray, np.ndarray] | None = None
        self._pending_gripper: GripperCommand | None = None
        self._gripper_cmd: GripperCommand | None = None
        self._error = ""
        self.overruns = 0  # physics steps that ran late by more than 20 ms (resynchronised)
        self.steps = 0
        self._t0: tuple[float, int] | None = (time.monotonic(), 0)  # for the real-time factor

    # --------------------------------------------------------------- life cycle
    @property
    def connected(self) -> bool:
        """Connected from connect() to close(); a dead physics thread shows in error() instead."""
        return self.rig is not None

    def connect(self) -> None:
        from sim.rig import SimRig

        self.close()
        kw = dict(self._rig_kwargs)
        if self._home_joints is not None:
            kw.setdefault("home_joints", tuple(self._home_joints))
        k_t, k_r, zeta = self._gains
        rig = SimRig(self._objects, translational_stiffness=k_t, rotational_stiffness=k_r,
                     damping_ratio=zeta, **kw)
        rig.connect()
        self.rig = rig
        self._start()

    def _start(self) -> None:
        self._error = ""
        with self.lock:
            self._snap()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="sim-physics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self.rig is not None:
            with self.lock:
                self.rig.close()
            self.rig = None

    # ------------------------------------------------------------------ physics
    def _snap(self) -> None:
        """State snapshot after a step (caller holds the lock)."""
        rig = self.rig
        d = rig.data
        self._snapshot = ArmState(
            stamp=time.time(),
            joint_pos=d.qpos[:7].copy(),
            joint_vel=d.qvel[:7].copy(),
            joint_effort=d.qfrc_actuator[:7].copy(),
            ee_pos=rig.ee_pos,
            ee_quat=matrix_to_quat(rig.ee_rot),
            ee_wrench=rig.ee_wrench(),
        )
        w = rig.gripper_width
        g = self._gripper
        cmd = self._gripper_cmd
        now = self._snapshot.stamp
        speed = (w - g.width) / (now - g.stamp) if g.stamp > 0 and now > g.stamp else 0.0
        # grasped: a grasp command whose fingers stopped before reaching the commanded width
        grasped = bool(cmd is not None and cmd.grasp and abs(speed) < 1e-3 and w > cmd.width + 2e-3)
        self._gripper = GripperState(now, w, speed, cmd.force if grasped else 0.0, grasped,
                                     abs(speed) > 1e-3, "", cmd)

    def _run(self) -> None:
        if self.rt_priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_priority))
            except (OSError, AttributeError):
                pass  # normal scheduling; the node logs the same failure for its control thread
        rig = self.rig
        dt = rig.timestep
        next_t = time.monotonic()
        try:
            while self._running:
                with self.lock:
                    target, self._pending_target = self._pending_target, None
                    if target is not None:
                        rig.set_cartesian_target(*target)
                    grip, self._pending_gripper = self._pending_gripper, None
                    if grip is not None:
                        rig.set_gripper(grip.width, grip.speed, grip.force)
                        self._gripper_cmd = grip
                    rig.step(1)
                    self.steps += 1
                    self._snap()
                next_t += dt
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.02:  # fell behind (e.g. a long render holding the lock): resynchronise
                    self.overruns += 1
                    next_t = time.monotonic()
        except Exception as e:  # reported through error(); the node reconnects
            self._error = f"sim physics thread died: {type(e).__name__}: {e}"
            self._running = False

    # ------------------------------------------------------------------ control
    def read(self) -> ArmState:
        snap = self._snapshot
        if not self.connected or snap is None:
            raise ConnectionLost("sim backend not connected")
        return snap

    def command(self, pos: np.ndarray, quat: np.ndarray) -> None:
        self._pending_target = (np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64))

    def set_impedance(self, translational: float, rotational: float, damping_ratio: float) -> None:
        self._gains = (float(translational), float(rotational), float(damping_ratio))
        if self.rig is not None:
            with self.lock:
                self.rig.set_impedance(*self._gains)

    def gripper_command(self, cmd: GripperCommand) -> None:
        self._pending_gripper = cmd

    def gripper_state(self) -> GripperState | None:
        return self._gripper

    def error(self) -> str:
        return self._error

    def diagnostics(self) -> dict[str, object]:
        now = time.monotonic()
        rtf = float("nan")
        if self.rig is not None and self._t0 is not None and now > self._t0[0]:
            rtf = (self.steps - self._t0[1]) * self.rig.timestep / (now - self._t0[0])
        self._t0 = (now, self.steps)
        return {"sim_steps": self.steps, "sim_overruns": self.overruns, "sim_realtime_factor": rtf}

    def recover(self) -> bool:
        """After the physics thread died (e.g. an unstable step): reset the arm home and restart it.

        The rig object stays the same, so a camera source sharing it keeps working.
        """
        if self.rig is None:
            return False
        if self._thread is not None and self._thread.is_alive():
            return True
        try:
            self._thread = None
            with self.lock:
                self.rig.reset()
            self._pending_target = None
            self._start()
            return True
        except Exception as e:
            self._error = f"sim restart failed: {type(e).__name__}: {e}"
            return False

    def home(self, joints: np.ndarray, timeout: float = 20.0) -> bool:
        if not self.connected or self._error:
            return False
        import mujoco

        joints = np.asarray(joints, dtype=np.float64)
        with self.lock:
            rig = self.rig
            d = mujoco.MjData(rig.model)
            d.qpos[:7] = joints
            mujoco.mj_kinematics(rig.model, d)
            site = rig.model.site("tcp").id
            goal_p = d.site_xpos[site].copy()
            goal_q = matrix_to_quat(d.site_xmat[site].reshape(3, 3))
            rig.home_joints = joints.copy()  # the null-space posture task pulls the joints here
        start = self.read()
        dist = float(np.linalg.norm(goal_p - start.ee_pos))
        duration = max(dist / self.home_speed, float(quat_angle(goal_q, start.ee_quat)) / 1.0, 0.2)
        r = quat_to_rotvec(quat_mul(goal_q, quat_conj(start.ee_quat)))
        t0 = time.monotonic()
        while (t := time.monotonic() - t0) < duration and not self._error:
            a = t / duration
            s = a * a * (3 - 2 * a)  # smoothstep
            self.command(start.ee_pos + s * (goal_p - start.ee_pos), quat_mul(rotvec_to_quat(s * r), start.ee_quat))
            time.sleep(0.01)
        self.command(goal_p, goal_q)
        while time.monotonic() - t0 < timeout and not self._error:
            st = self.read()
            if (np.linalg.norm(st.ee_pos - goal_p) < 0.005 and np.max(np.abs(st.joint_pos - joints)) < 0.1
                    and np.linalg.norm(st.joint_vel) < 0.05):
                return True
            time.sleep(0.02)
        return False
