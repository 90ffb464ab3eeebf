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

Limits (from :class:`robot.config.RobotConfig`, validated by :func:`validate_franky_limits`,
applied at every connect and shown by :meth:`FrankyBackend.diagnostics`): libfranka's
collision reflex thresholds (``Robot.set_collision_behavior``: per joint torque, per TCP
axis force/torque), the joint range franky's impedance tracker repels the arm from
(``lower_joint_limits`` / ``upper_joint_limits``), the largest TCP tracking error it
acts on (``translational_error_clip`` / ``rotational_error_clip``: this bounds the
force it commands when a target jumps or a contact holds the arm back), and the
homing speed (``relative_dynamics_factor`` of the joint motion).

Faults: a reflex or a communication-constraints violation ends the tracker's
motion; :meth:`error` then reports libfranka's message (the state still reads)
until :meth:`recover` (``recover_from_errors`` + a fresh tracker) clears it. A
network failure raises :class:`ConnectionLost`; the node closes the backend and
calls :meth:`connect` again every ``reconnect_period``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.geometry import pose_to_matrix, rotvec_to_quat
from rig.safety import GripperCommand
from robot.backends.base import ArmState, Backend, ConnectionLost, GripperState, GripperWorker

__all__ = ["FrankyBackend", "FrankyLimits", "HAND_TCP", "PANDA_JOINT_LOWER", "PANDA_JOINT_UPPER",
           "validate_franky_limits"]

#: flange -> Franka Hand TCP (NE_T_EE when the Desk has no end effector configured)
HAND_TCP = pose_to_matrix(np.array([0.0, 0.0, 0.1034]), rotvec_to_quat(np.array([0.0, 0.0, -np.pi / 4])))

GRASP_EPSILON_INNER = 0.005  # m: a grasp succeeds on an object down to width - 5 mm ...
GRASP_EPSILON_OUTER = 0.08  # m: ... and on anything wider (close with force until it stops)

#: the Panda's joint position limits (rad), Franka's datasheet
PANDA_JOINT_LOWER = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
PANDA_JOINT_UPPER = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
MAX_COLLISION_TORQUE = 100.0  # N m: a threshold above this would never fire (joint torques peak at 87)
MAX_COLLISION_FORCE = 150.0  # N (and N m about the TCP axes)


@dataclass(frozen=True)
class FrankyLimits:
    """What :class:`FrankyBackend` configures on franky at connect (defaults: the lab's, as in RobotConfig)."""

    collision_torque_thresholds: tuple[float, ...] = (20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0)  # N m per joint
    collision_force_thresholds: tuple[float, ...] = (20.0, 20.0, 20.0, 25.0, 25.0, 25.0)  # N x y z, N m rx ry rz
    joint_limits_lower: tuple[float, ...] = (-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8)  # rad
    joint_limits_upper: tuple[float, ...] = (2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8)  # rad
    max_tracking_error_translation: float = 0.03  # m
    max_tracking_error_rotation: float = 0.3  # rad
    home_joint_velocity_scale: float = 0.2  # fraction of the Panda's joint velocity limits
    home_joints: tuple[float, ...] = field(default=(0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785))

    @classmethod
    def of(cls, cfg: Any) -> FrankyLimits:
        """The limits of a RobotConfig (validated first: ValueError naming the parameter)."""
        validate_franky_limits(cfg)
        return cls(**{k: tuple(float(v) for v in getattr(cfg, k)) if isinstance(getattr(cfg, k), (list, tuple))
                      else float(getattr(cfg, k)) for k in cls.__dataclass_fields__})

    def summary(self) -> dict[str, str]:
        """For ``/diagnostics``."""
        fmt = lambda v: " ".join(f"{x:g}" for x in v)  # noqa: E731
        return {
            "collision_torque_thresholds_Nm": fmt(self.collision_torque_thresholds),
            "collision_force_thresholds_N": fmt(self.collision_force_thresholds),
            "joint_limits_lower_rad": fmt(self.joint_limits_lower),
            "joint_limits_upper_rad": fmt(self.joint_limits_upper),
            "max_tracking_error": f"{self.max_tracking_error_translation:g} m, {self.max_tracking_error_rotation:g} rad",
            "home_joint_velocity_scale": f"{self.home_joint_velocity_scale:g}",
        }


def validate_franky_limits(cfg: Any, prefix: str = "") -> None:
    """Raise ValueError naming the parameter, its value and the fix, for bad franky limits in a RobotConfig."""

    def fail(key: str, value: Any, must: str) -> None:
        raise ValueError(f"{prefix}{key} = {value!r}: {must}")

    def vec(key: str, n: int, lo: float, hi: float, unit: str) -> list[float]:
        value = getattr(cfg, key)
        try:
            v = [float(x) for x in value]
        except (TypeError, ValueError, OverflowError):
            v = []
        if len(v) != n or not all(math.isfinite(x) and lo < x <= hi for x in v):
            fail(key, value, f"must be {n} numbers in ({lo:g}, {hi:g}] {unit}")
        return v

    def num(key: str, lo: float, hi: float, unit: str) -> None:
        value = getattr(cfg, key)
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            v = math.nan
        if not (lo < v <= hi):
            fail(key, value, f"must be in ({lo:g}, {hi:g}] {unit}")

    vec("collision_torque_thresholds", 7, 0.0, MAX_COLLISION_TORQUE, "N m (one per joint)")
    vec("collision_force_thresholds", 6, 0.0, MAX_COLLISION_FORCE, "N, N m (x y z, rx ry rz)")
    lower = vec("joint_limits_lower", 7, -math.inf, math.inf, "rad")
    upper = vec("joint_limits_upper", 7, -math.inf, math.inf, "rad")
    for i in range(7):
        if not (PANDA_JOINT_LOWER[i] <= lower[i] < upper[i] <= PANDA_JOINT_UPPER[i]):
            key = "joint_limits_lower" if not PANDA_JOINT_LOWER[i] <= lower[i] < upper[i] else "joint_limits_upper"
            fail(key, getattr(cfg, key), f"joint {i + 1}: need {PANDA_JOINT_LOWER[i]} <= lower ({lower[i]}) < upper "
                 f"({upper[i]}) <= {PANDA_JOINT_UPPER[i]} rad (the Panda's range)")
    home = getattr(cfg, "home_joints", None)
    if home is not None and len(home) == 7 and not all(lower[i] <= float(home[i]) <= upper[i] for i in range(7)):
        fail("home_joints", list(home), "must lie within joint_limits_lower .. joint_limits_upper")
    num("max_tracking_error_translation", 0.0, 0.2, "m")
    num("max_tracking_error_rotation", 0.0, 1.0, "rad")
    num("home_joint_velocity_scale", 0.0, 1.0, "(a fraction of the joint velocity limits)")


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
        limits: FrankyLimits | None = None,
        gripper_poll_period: float = 0.05,
    ):
        self.host = host
        self.realtime = realtime
        self._gains = (float(translational_stiffness), float(rotational_stiffness), float(damping_ratio))
        self.use_gripper = gripper
        self.limits = limits or FrankyLimits()
        validate_franky_limits(self.limits)
        self.home_dynamics = self.limits.home_joint_velocity_scale
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
                lim = self.limits  # libfranka's collision reflex (kept by the robot until the next connect)
                robot.set_collision_behavior(list(lim.collision_torque_thresholds), list(lim.collision_force_thresholds))
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
        lim = self.limits
        self._busy = True
        try:
            self._tracker = franky.CartesianImpedanceTracker(
                self._robot,
                translational_stiffness=k_t,
                rotational_stiffness=k_r,
                damping=self._damping(k_t, k_r, zeta),
                lower_joint_limits=np.asarray(lim.joint_limits_lower, dtype=np.float64),
                upper_joint_limits=np.asarray(lim.joint_limits_upper, dtype=np.float64),
                translational_error_clip=np.full(3, lim.max_tracking_error_translation),
                rotational_error_clip=np.full(3, lim.max_tracking_error_rotation),
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
                "gripper_commands": w.commands_sent if w is not None else 0, **self.limits.summary()}

    # ------------------------------------------------------------ recover / home
    def recover(self) -> bool:
        def recover(robot: Any) -> bool:
            try:
                robot.join_motion(timeout=1.0)
            except Exception:
                pass
            robot.recover_from_errors()
            self._error = ""
            return True

        return self._between_tracking("recovery", recover, stop_only_in_control=True)

    def home(self, joints: np.ndarray, timeout: float = 20.0) -> bool:
        import franky

        def home(robot: Any) -> bool:
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
            return bool(robot.join_motion(timeout=timeout))

        return self._between_tracking("homing", home, stop_only_in_control=False)

    def _between_tracking(self, what: str, act: Callable[[Any], bool], stop_only_in_control: bool) -> bool:
        """Stop the impedance tracker, ``act(robot)``, start a new tracker: False (and ``error()`` says
        "<what> failed: ...") when not connected or anything raises."""
        with self._op:
            robot = self._robot
            if robot is None or self._lost:
                return False
            self._busy = True
            try:
                tracker, self._tracker = self._tracker, None
                if tracker is not None and (not stop_only_in_control or robot.is_in_control):
                    try:
                        tracker.stop()
                    except Exception:
                        pass
                done = act(robot)
                self._start_tracker()
                return done
            except Exception as e:
                self._error = f"{what} failed: {type(e).__name__}: {e}"
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
