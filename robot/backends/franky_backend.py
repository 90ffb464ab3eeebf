"""The real arm through franky (libfranka's 1 kHz loop in C++), or franka-sim on loopback.

:class:`FrankyBackend` streams filtered TCP targets to franky's
``CartesianImpedanceTracker`` (stiffness from the node's parameters; a damping
ratio of 1 is franky's critical damping), reads ``Robot.state`` for the
published state (``O_F_ext_hat_K`` is the estimated external wrench), and runs
the Franka Hand through ``franky.Gripper``'s async calls in a
:class:`~robot.backends.base.GripperWorker` thread so the control loop never
waits for the gripper.

Without a real-time kernel franky must connect with ``RealtimeConfig.Ignore``
(``realtime=False``, the default). When the Desk has no end effector
configured (``F_T_NE`` is the identity, as on franka-sim), the backend sets the
Franka Hand's TCP (10.34 cm along the flange z axis, turned -45 deg about it) so
poses mean the same TCP on the sim, franka-sim and the real rig.

Faults: a reflex or a communication-constraints violation ends the tracker's
motion; :meth:`error` then reports libfranka's message (the state still reads)
until :meth:`recover` (``recover_from_errors`` + a fresh tracker) clears it. A
network failure raises :class:`ConnectionLost`; the node closes the backend and
calls :meth:`connect` again every ``reconnect_period``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from rig.geometry import pose_to_matrix, rotvec_to_quat
from rig.safety import GripperCommand
from robot.backends.base import ArmState, Backend, ConnectionLost, GripperState, GripperWorker

__all__ = ["FrankyBackend", "HAND_TCP"]

#: flange -> Franka Hand TCP (NE_T_EE when the Desk has no end effector configured)
HAND_TCP = pose_to_matrix(np.array([0.0, 0.0, 0.1034]), rotvec_to_quat(np.array([0.0, 0.0, -np.pi / 4])))

GRASP_EPSILON_INNER = 0.005  # m: a grasp succeeds on an object down to width - 5 mm ...
GRASP_EPSILON_OUTER = 0.08  # m: ... and on anything wider (close with force until it stops)


class _Done:
    """A finished future (for a command that did not start)."""

    def __init__(self, ok: bool):
        self._ok = ok

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def get(self) -> bool:
        return self._ok


class FrankyBackend(Backend):
    name = "franky"

    def __init__(
        self,
        host: str,
        *,
        realtime: bool = False,
        translational_stiffness: float = 2000.0,
        rotational_stiffness: float = 150.0,
        damping_ratio: float = 1.0,
        gripper: bool = True,
        home_dynamics: float = 0.2,
        gripper_poll_period: float = 0.05,
    ):
        self.host = host
        self.realtime = realtime
        self._gains = (float(translational_stiffness), float(rotational_stiffness), float(damping_ratio))
        self.use_gripper = gripper
        self.home_dynamics = home_dynamics
        self.gripper_poll_period = gripper_poll_period
        self._robot: Any = None
        self._tracker: Any = None
        self._gripper: Any = None
        self._worker: GripperWorker | None = None
        self._op = threading.RLock()  # connect / recover / home / close
        self._busy = False  # the tracker is being replaced: command() is a no-op
        self._error = ""
        self._lost = ""
        self.gripper_error = ""
        self._success_rate = float("nan")  # libfranka's share of commands that arrived in time

    # --------------------------------------------------------------- life cycle
    @property
    def connected(self) -> bool:
        return self._robot is not None and not self._lost

    def connect(self) -> None:
        import franky

        with self._op:
            self.close()
            rt = franky.RealtimeConfig.Enforce if self.realtime else franky.RealtimeConfig.Ignore
            try:
                robot = franky.Robot(self.host, realtime_config=rt)
                if np.allclose(np.asarray(robot.state.F_T_NE.matrix), np.eye(4)):
                    robot.set_ee(HAND_TCP.flatten(order="F").tolist())
                if robot.has_errors:
                    robot.recover_from_errors()
            except Exception as e:
                raise ConnectionLost(f"cannot connect to the FCI at {self.host}: {type(e).__name__}: {e}") from e
            self._robot = robot
            self._lost = ""
            self._error = ""
            try:
                self._start_tracker()
            except Exception as e:
                self._error = f"could not start the impedance controller: {type(e).__name__}: {e}"
            if self.use_gripper:
                self._connect_gripper()

    def _connect_gripper(self) -> None:
        import franky

        try:
            self._gripper = franky.Gripper(self.host)
            self.gripper_error = ""
        except Exception as e:  # the arm works without the hand
            self._gripper = None
            self.gripper_error = f"cannot connect to the gripper at {self.host}: {type(e).__name__}: {e}"
            return
        g = self._gripper

        def execute(cmd: GripperCommand):
            if cmd.grasp:
                return g.grasp_async(cmd.width, cmd.speed, cmd.force, GRASP_EPSILON_INNER, GRASP_EPSILON_OUTER)
            return g.move_async(cmd.width, cmd.speed)

        def poll() -> tuple[float, bool]:
            s = g.state
            return float(s.width), bool(s.is_grasped)

        self._worker = GripperWorker(execute, poll, lambda: g.stop_async().wait(2.0), self.gripper_poll_period,
                                     name=f"gripper@{self.host}")
        self._worker.start()

    def close(self) -> None:
        with self._op:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
            self._gripper = None
            tracker, self._tracker = self._tracker, None
            if tracker is not None and not self._lost:
                try:
                    tracker.stop()
                except Exception:
                    pass
            self._robot = None
            self._lost = ""

    # ------------------------------------------------------------------ control
    def _start_tracker(self) -> None:
        import franky

        k_t, k_r, zeta = self._gains
        self._busy = True
        try:
            self._tracker = franky.CartesianImpedanceTracker(
                self._robot,
                translational_stiffness=k_t,
                rotational_stiffness=k_r,
                damping=self._damping(k_t, k_r, zeta),
            )
        finally:
            self._busy = False

    @staticmethod
    def _damping(k_t: float, k_r: float, zeta: float):
        import franky

        if abs(zeta - 1.0) < 1e-12:
            return franky.CRITICAL
        return np.array([zeta * 2 * np.sqrt(k_t)] * 3 + [zeta * 2 * np.sqrt(k_r)] * 3)

    def set_impedance(self, translational: float, rotational: float, damping_ratio: float) -> None:
        self._gains = (float(translational), float(rotational), float(damping_ratio))
        tracker = self._tracker
        if tracker is not None:
            tracker.set_gains(
                translational_stiffness=self._gains[0],
                rotational_stiffness=self._gains[1],
                damping=self._damping(*self._gains),
            )

    def command(self, pos: np.ndarray, quat: np.ndarray) -> None:
        import franky

        tracker = self._tracker
        if tracker is None or self._busy or self._error or self._lost:
            return
        tracker.set_target(franky.Affine(np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64)))

    def read(self) -> ArmState:
        robot = self._robot
        if robot is None:
            raise ConnectionLost(self._lost or "not connected")
        if self._lost:
            raise ConnectionLost(self._lost)
        try:
            s = robot.state
        except Exception as e:  # franky raises a bare RuntimeError("Net Exception") here
            self._lost = f"connection to {self.host} lost: {type(e).__name__}: {e}"
            raise ConnectionLost(self._lost) from e
        now = time.time()
        self._success_rate = s.control_command_success_rate
        if not self._busy and not self._error and not robot.is_in_control:
            self._check_motion(robot)  # sets error() (a reflex) or raises ConnectionLost
        ee = s.O_T_EE
        return ArmState(
            stamp=now,
            joint_pos=np.asarray(s.q, dtype=np.float64).reshape(7),
            joint_vel=np.asarray(s.dq, dtype=np.float64).reshape(7),
            joint_effort=np.asarray(s.tau_J, dtype=np.float64).reshape(7),
            ee_pos=np.asarray(ee.translation, dtype=np.float64).reshape(3),
            ee_quat=np.asarray(ee.quaternion, dtype=np.float64).reshape(4),
            ee_wrench=np.asarray(s.O_F_ext_hat_K, dtype=np.float64).reshape(6),
        )

    def _check_motion(self, robot: Any) -> None:
        """The tracker's motion ended: find out why (reflex, network, ...)."""
        import franky

        try:
            robot.poll_motion()
            msg = "the impedance controller stopped"
        except franky.NetworkException as e:
            self._lost = f"connection to {self.host} lost: {e}"
            raise ConnectionLost(self._lost) from e
        except Exception as e:  # ControlException carries libfranka's reflex description
            msg = f"{type(e).__name__}: {e}"
            if "Net" in str(e) or "network" in str(e).lower():
                self._lost = f"connection to {self.host} lost: {msg}"
                raise ConnectionLost(self._lost) from e
        self._error = msg

    def error(self) -> str:
        return self._lost or self._error

    def diagnostics(self) -> dict[str, object]:
        w = self._worker
        return {"control_command_success_rate": self._success_rate,
                "gripper_commands": w.commands_sent if w is not None else 0}

    # ------------------------------------------------------------ recover / home
    def recover(self) -> bool:
        with self._op:
            robot = self._robot
            if robot is None or self._lost:
                return False
            self._busy = True
            try:
                tracker, self._tracker = self._tracker, None
                if tracker is not None and robot.is_in_control:
                    try:
                        tracker.stop()
                    except Exception:
                        pass
                try:
                    robot.join_motion(timeout=1.0)
                except Exception:
                    pass
                robot.recover_from_errors()
                self._error = ""
                self._start_tracker()
                return True
            except Exception as e:
                self._error = f"recovery failed: {type(e).__name__}: {e}"
                return False
            finally:
                self._busy = False

    def home(self, joints: np.ndarray, timeout: float = 20.0) -> bool:
        import franky

        with self._op:
            robot = self._robot
            if robot is None or self._lost:
                return False
            self._busy = True
            try:
                tracker, self._tracker = self._tracker, None
                if tracker is not None:
                    try:
                        tracker.stop()
                    except Exception:
                        pass
                if robot.has_errors:
                    robot.recover_from_errors()
                self._error = ""
                robot.move(
                    franky.JointMotion(
                        np.asarray(joints, dtype=np.float64).tolist(),
                        relative_dynamics_factor=self.home_dynamics,
                    ),
                    asynchronous=True,
                )
                done = robot.join_motion(timeout=timeout)
                self._start_tracker()
                return bool(done)
            except Exception as e:
                self._error = f"homing failed: {type(e).__name__}: {e}"
                return False
            finally:
                self._busy = False

    # ------------------------------------------------------------------ gripper
    def gripper_command(self, cmd: GripperCommand) -> None:
        if self._worker is not None:
            self._worker.submit(cmd)

    def gripper_state(self) -> GripperState | None:
        if not self.use_gripper:
            return None
        if self._worker is None:
            return GripperState(error=self.gripper_error or "gripper not connected")
        return self._worker.state
