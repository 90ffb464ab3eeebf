"""``franka-node``: the arm and hand on ROS 2 (a lifecycle node), behind the safety filter.

Backends (parameter ``backend``): ``franky`` (the real FCI at ``host``, or
franka-sim on loopback) and ``sim`` (the MuJoCo :class:`sim.rig.SimRig`,
in-process, physics stepped in real time in its own thread).

Threads: the executor (main) thread runs subscriptions and services; a control
thread runs at ``state_rate_hz`` (500 Hz default): read the backend state, step
the :class:`rig.safety.SafetyFilter` on the latest command, stream the
applied TCP target to the backend (franky's ``CartesianImpedanceTracker``), and
publish ``joint_states``, ``ee_pose``, ``ee_wrench``, ``gripper/state`` and
``command_applied``; a supervisor thread connects and reconnects the backend
(every ``reconnect_period``), recovers from robot errors when ``auto_recover``
is set, and publishes health on ``/diagnostics``. The gripper runs in the
backend's own worker so the control loop never waits for it.

Commands in (relative names): ``target_pose`` (absolute TCP pose, base frame),
``target_twist`` (``twist_mode`` velocity: m/s and rad/s, integrated each tick;
delta: a displacement per message; ``frame_id`` ``panda_link0``/empty for the
base frame, ``panda_hand_tcp`` for the TCP frame), ``gripper/command``
(sensor_msgs/JointState: width, speed, force; force > 0 grasps). While
``teleop/intervening`` is True the node applies ``teleop/twist`` (base-frame
velocity) and ``teleop/gripper`` and ignores the other command topics.
Services: ``recover``, ``home`` (std_srvs/Trigger), ``hold`` (std_srvs/SetBool).

Parameters: one per field of :class:`robot.config.RobotConfig` (``safety.*`` for
the filter), plus ``autostart``; the impedance gains change live, the rest at the
next ``configure``.

Lifecycle: ``configure`` validates parameters (a bad value fails with a message
naming it) and builds the backend (the sim backend starts here, so a camera node
can share :attr:`FrankaNode.sim_rig` / :attr:`FrankaNode.sim_lock`);
``activate`` starts the control and supervisor threads (the franky backend
connects there, retrying until the FCI answers); ``deactivate`` stops them
(the arm holds); ``cleanup`` closes the backend (:class:`robot.ros.lifecycle.RigNode`
hooks; SIGINT and SIGTERM shut the node down through them). Every subscription and
service callback is guarded: a message that raises is counted (``callback_errors``
on ``/diagnostics``) and the node goes on; a refused command counts in ``rejected`` (the
reason in ``last_rejection``). A command is fresh for the watchdog from the earlier of its
header stamp and its arrival (stamps more than ``safety.max_clock_skew`` ahead, or already
stale, are refused). The franky backend's limits (collision thresholds, joint range,
tracking-error clip) are validated at configure and shown on ``/diagnostics``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger

from rig.safety import CommandRejected, SafetyFilter, apply_twist, validate_safety_config
from robot.backends.base import Backend, ConnectionLost
from robot.backends.franky_backend import FrankyLimits, validate_franky_limits
from robot.config import RobotConfig
from robot.ros.convert import BASE_FRAME, GRIPPER_JOINT, JOINT_NAMES, TCP_FRAME, stamp_seconds, to_stamp
from robot.ros.diagnostics import ERROR, OK, WARN, Diagnostics, PeriodStats
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import ParameterError, declare_dataclass, read_dataclass, require
from robot.ros.qos import COMMAND_QOS, STATE_QOS

__all__ = ["FrankaNode", "validate_robot_config", "make_backend", "main"]



#: what validate_robot_config() accepts, shown by ``ros2 param describe``
CONSTRAINTS = {
    "backend": "sim | franky",
    "state_rate_hz": "in [1, 2000] Hz",
    "translational_stiffness": "in (0, 5000] N/m",
    "rotational_stiffness": "in (0, 500] N m/rad",
    "damping_ratio": "in (0, 3]; 1 = critical",
    "gripper_speed": "in (0, 0.1] m/s",
    "gripper_force": "in [0, 70] N",
    "home_joints": "7 joint angles, rad",
    "reconnect_period": "> 0 s",
    "twist_mode": "velocity | delta",
    "rt_priority": "0, or a SCHED_FIFO priority in 1..98",
    "safety.workspace_min": "[x, y, z] m, below workspace_max",
    "safety.max_tilt": "in (0, pi/2] rad",
    "safety.max_step_translation": "in (0, 0.05] m per tick",
    "safety.max_step_rotation": "in (0, 0.5] rad per tick",
    "safety.gripper_min": "0 <= gripper_min < gripper_max <= 0.08 m",
}


#: descriptions of the RobotConfig fields that carry no trailing comment in robot/config.py
DESCRIPTIONS = {
    "state_rate_hz": "control loop rate: state publishing, safety filter and target streaming (Hz)",
    "home_joints": "joint angles the home service moves to (rad)",
    "safety.workspace_max": "workspace box of the TCP position, upper corner [x, y, z] (m, base frame)",
    "safety.gripper_min": "smallest gripper width commanded (m)",
    "safety.gripper_max": "largest gripper width commanded (m)",
}


def validate_robot_config(cfg: RobotConfig) -> None:
    """Raise :class:`ParameterError` naming the parameter, its value and the fix."""
    require(cfg.backend in ("sim", "franky"), "backend", cfg.backend, "must be 'sim' or 'franky'")
    require(cfg.backend != "franky" or bool(cfg.host.strip()), "host", cfg.host,
            "must be the FCI address (e.g. 172.16.0.2, or 127.0.0.1 for franka-sim)")
    require(math.isfinite(cfg.state_rate_hz) and 1.0 <= cfg.state_rate_hz <= 2000.0, "state_rate_hz",
            cfg.state_rate_hz, "must be in [1, 2000] Hz")
    require(math.isfinite(cfg.translational_stiffness) and 0.0 < cfg.translational_stiffness <= 5000.0,
            "translational_stiffness", cfg.translational_stiffness, "must be in (0, 5000] N/m")
    require(math.isfinite(cfg.rotational_stiffness) and 0.0 < cfg.rotational_stiffness <= 500.0,
            "rotational_stiffness", cfg.rotational_stiffness, "must be in (0, 500] N m/rad")
    require(math.isfinite(cfg.damping_ratio) and 0.0 < cfg.damping_ratio <= 3.0, "damping_ratio",
            cfg.damping_ratio, "must be in (0, 3] (1 = critical damping)")
    require(math.isfinite(cfg.gripper_speed) and 0.0 < cfg.gripper_speed <= 0.1, "gripper_speed",
            cfg.gripper_speed, "must be in (0, 0.1] m/s")
    require(math.isfinite(cfg.gripper_force) and 0.0 <= cfg.gripper_force <= 70.0, "gripper_force",
            cfg.gripper_force, "must be in [0, 70] N")
    require(len(cfg.home_joints) == 7 and all(math.isfinite(x) for x in cfg.home_joints), "home_joints",
            list(cfg.home_joints), "must be 7 finite joint angles in rad")
    require(math.isfinite(cfg.reconnect_period) and cfg.reconnect_period > 0.0, "reconnect_period",
            cfg.reconnect_period, "must be a positive number of seconds")
    require(cfg.twist_mode in ("velocity", "delta"), "twist_mode", cfg.twist_mode, "must be 'velocity' or 'delta'")
    require(0 <= cfg.rt_priority <= 98, "rt_priority", cfg.rt_priority,
            "must be 0 (normal scheduling) or a SCHED_FIFO priority in 1..98")
    try:
        validate_safety_config(cfg.safety, prefix="safety.")
        validate_franky_limits(cfg)
    except ValueError as e:
        raise ParameterError(f"parameter {e}") from None


def make_backend(cfg: RobotConfig) -> Backend:
    """The backend a (validated) RobotConfig names; nothing connects yet."""
    if cfg.backend == "franky":
        from robot.backends.franky_backend import FrankyBackend

        return FrankyBackend(
            cfg.host,
            realtime=cfg.realtime,
            translational_stiffness=cfg.translational_stiffness,
            rotational_stiffness=cfg.rotational_stiffness,
            damping_ratio=cfg.damping_ratio,
            gripper=cfg.gripper,
            limits=FrankyLimits.of(cfg),
        )
    from robot.backends.sim_backend import SimBackend

    return SimBackend(
        translational_stiffness=cfg.translational_stiffness,
        rotational_stiffness=cfg.rotational_stiffness,
        damping_ratio=cfg.damping_ratio,
        home_joints=cfg.home_joints,
        rt_priority=max(0, cfg.rt_priority - 1),
    )


def set_thread_priority(priority: int) -> str:
    """Make the calling thread SCHED_FIFO at ``priority`` (0: leave it); returns '' or why it failed."""
    if priority <= 0:
        return ""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return ""
    except (OSError, AttributeError) as e:
        return f"cannot run the control thread SCHED_FIFO at priority {priority} ({e}); needs CAP_SYS_NICE " \
               "or an rtprio limit (/etc/security/limits.conf); running with normal scheduling"


class _Latency:
    """Rolling command-to-backend latencies (s)."""

    def __init__(self, n: int = 2000):
        self._d: deque[float] = deque(maxlen=n)

    def add(self, v: float) -> None:
        self._d.append(v)

    def summary(self) -> dict[str, float]:
        if not self._d:
            return {"p50_ms": float("nan"), "p99_ms": float("nan")}
        a = np.fromiter(self._d, float)
        return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3)}


class FrankaNode(RigNode):
    """See the module docstring. ``backend_factory(cfg) -> Backend`` overrides :func:`make_backend`."""

    def __init__(self, node_name: str = "franka", *, backend_factory=None, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        declare_dataclass(self, RobotConfig(), descriptions=DESCRIPTIONS, constraints=CONSTRAINTS)
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="configure and activate at start (false: wait for a lifecycle manager)"))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._backend_factory = backend_factory or make_backend
        self.cfg: RobotConfig | None = None
        self.backend: Backend | None = None
        self.filter: SafetyFilter | None = None
        #: the sim backend's rig and its lock, for a camera node sharing the scene (None otherwise)
        self.sim_rig: Any = None
        self.sim_lock: Any = None
        self._pubs: dict[str, Any] = {}
        self.diag: Diagnostics | None = None
        self._lock = threading.Lock()  # filter + command state
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reset_state()

    def _reset_state(self) -> None:
        rate = self.cfg.state_rate_hz if self.cfg is not None else 500.0
        self.stats = PeriodStats(window=max(1000, int(rate * 10)))  # the last 10 s of control ticks
        self.latency = _Latency()
        self._intervening = False
        self._twist: tuple[np.ndarray, np.ndarray, bool, float] | None = None  # lin, ang, ee_frame, t
        self._pending_stamp: float | None = None
        self._busy = ""  # "homing" / "recovering": the control loop only publishes state
        self._connected = False
        self._lost_reason = "not connected yet"
        self._robot_error = ""
        self._last_connect_try = -1e9
        self._last_recover_try = -1e9
        self.reconnects = 0
        self.recoveries = 0
        self.ignored = 0  # commands dropped by the arbitration rule or a hold
        self.state: Any = None  # latest ArmState
        self._need_reset = True

    # ---------------------------------------------------------------- lifecycle
    def setup(self) -> None:
        cfg = read_dataclass(self, RobotConfig)
        validate_robot_config(cfg)  # a ParameterError fails configure, naming the parameter
        self.cfg = cfg
        self._reset_state()
        self.filter = SafetyFilter(cfg.safety, 1.0 / cfg.state_rate_hz)
        try:
            self.backend = self._backend_factory(cfg)
        except Exception as e:
            raise RuntimeError(f"cannot build the {cfg.backend!r} backend: {type(e).__name__}: {e}") from e
        if cfg.backend == "sim":
            try:
                self.backend.connect()
                self._connected = True
            except Exception as e:
                raise RuntimeError(f"cannot start the sim rig: {type(e).__name__}: {e}") from e
            self.sim_rig = getattr(self.backend, "rig", None)
            self.sim_lock = getattr(self.backend, "lock", None)

        p = self.make_publisher
        self._pubs = {
            "joint_states": p(JointState, "joint_states", STATE_QOS),
            "ee_pose": p(PoseStamped, "ee_pose", STATE_QOS),
            "ee_wrench": p(WrenchStamped, "ee_wrench", STATE_QOS),
            "gripper_state": p(JointState, "gripper/state", STATE_QOS),
            "command_applied": p(PoseStamped, "command_applied", STATE_QOS),
            "gripper_applied": p(JointState, "gripper/command_applied", STATE_QOS),
        }
        # every callback is guarded: a message that raises is counted and reported, the node goes on
        s = self.guarded_subscription
        s(PoseStamped, "target_pose", self._on_target_pose, COMMAND_QOS)
        s(TwistStamped, "target_twist", self._on_target_twist, COMMAND_QOS)
        s(JointState, "gripper/command", self._on_gripper, COMMAND_QOS)
        s(Bool, "teleop/intervening", self._on_intervening, COMMAND_QOS)
        s(TwistStamped, "teleop/twist", self._on_teleop_twist, COMMAND_QOS)
        s(JointState, "teleop/gripper", self._on_teleop_gripper, COMMAND_QOS)
        self.guarded_service(Trigger, "recover", self._srv_recover)
        self.guarded_service(Trigger, "home", self._srv_home)
        self.guarded_service(SetBool, "hold", self._srv_hold)
        # published by the supervisor thread (every 0.5 s and at once on errors), not by an executor timer
        self.diag = self.make_diagnostics("franka", hardware_id=f"{cfg.backend}:{cfg.host}", period=None)
        self.diag.set(WARN, "configured", backend=cfg.backend)
        self._make_msgs()
        self.get_logger().info(f"configured: backend={cfg.backend} rate={cfg.state_rate_hz:g} Hz")

    def start(self) -> None:
        self._stop.clear()
        self._need_reset = True
        self._threads = [
            threading.Thread(target=self._control_loop, name="franka-control", daemon=True),
            threading.Thread(target=self._supervise, name="franka-supervisor", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop the control and supervisor threads (the arm holds where it is)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10.0)
        self._threads = []

    def teardown(self) -> None:
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception as e:
                self.get_logger().warning(f"closing the backend: {e}")
            self.backend = None
        self.sim_rig = self.sim_lock = None
        self._pubs, self.diag = {}, None  # destroyed by RigNode

    LIVE_PARAMETERS = ("translational_stiffness", "rotational_stiffness", "damping_ratio")

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        """Gains change live (validated); every other parameter applies at the next configure."""
        live = {p.name: p.value for p in params if p.name in self.LIVE_PARAMETERS}
        if self.cfg is None or not live:
            return SetParametersResult(successful=True)
        try:
            new = dataclasses.replace(self.cfg, **{k: float(v) for k, v in live.items()})
            validate_robot_config(new)
        except (ParameterError, TypeError, ValueError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.cfg = new
        if self.backend is not None:
            self.backend.set_impedance(new.translational_stiffness, new.rotational_stiffness, new.damping_ratio)
        self.get_logger().info(f"impedance: {new.translational_stiffness:g} N/m, {new.rotational_stiffness:g} "
                               f"N m/rad, damping ratio {new.damping_ratio:g}")
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- commands
    def _on_intervening(self, msg: Bool) -> None:
        with self._lock:
            if bool(msg.data) != self._intervening:
                self._intervening = bool(msg.data)
                self._twist = None
                self._pending_stamp = None
                # the new command source starts from a still arm where it is now
                if self.filter is not None and self.filter.ready and not self._need_reset:
                    p, q = self.filter.applied_pose
                    try:
                        self.filter.set_target(p, q, time.monotonic())
                    except CommandRejected:  # counted; the watchdog holds the arm anyway
                        pass

    def _frame_is_ee(self, frame_id: str) -> bool | None:
        f = frame_id.lstrip("/")
        if f in ("", BASE_FRAME):
            return False
        if f == TCP_FRAME:
            return True
        return None

    def _reject(self, what: str, why: str) -> None:
        if self.filter is not None:
            self.filter.rejected += 1
            self.filter.last_rejection = f"{what}: {why}"[:200]
        self.get_logger().warning(f"{what} rejected: {why}", throttle_duration_sec=1.0)

    @staticmethod
    def _times(msg_stamp: Any) -> tuple[float, float | None]:
        """(now, when the sender stamped the message) on the filter's monotonic clock; None: no stamp.

        The header stamp is wall-clock time: its age (wall now - stamp) is carried over to the
        monotonic clock, so a message delayed in the network is as old to the watchdog as it is.
        """
        now = time.monotonic()
        t = stamp_seconds(msg_stamp)
        return now, (now - (time.time() - t) if t > 0 else None)

    def _on_target_pose(self, msg: PoseStamped) -> None:
        if self._intervening:
            self.ignored += 1
            return
        if msg.header.frame_id.lstrip("/") not in ("", BASE_FRAME):
            self._reject("target_pose", f"frame_id {msg.header.frame_id[:40]!r}: send targets in {BASE_FRAME!r}")
            return
        p, o = msg.pose.position, msg.pose.orientation
        self._set_target([p.x, p.y, p.z], [o.x, o.y, o.z, o.w], msg.header.stamp)

    def _set_target(self, pos: Any, quat: Any, msg_stamp: Any) -> None:
        f = self.filter
        if f is None or not f.ready:
            self.ignored += 1
            return
        with self._lock:
            if f.holding or self._need_reset or not self._connected:  # a reset would clear it
                self.ignored += 1
                return
            try:
                f.set_target(pos, quat, *self._times(msg_stamp))
            except CommandRejected as e:
                self.get_logger().warning(f"target rejected: {e}", throttle_duration_sec=1.0)
                return
            self._twist = None
            t = stamp_seconds(msg_stamp)
            self._pending_stamp = t if t > 0 else time.time()

    def _twist_of(self, msg: TwistStamped, what: str) -> tuple[np.ndarray, np.ndarray, bool] | None:
        ee = self._frame_is_ee(msg.header.frame_id)
        if ee is None:
            self._reject(what, f"frame_id {msg.header.frame_id[:40]!r}: use {BASE_FRAME!r} or {TCP_FRAME!r}")
            return None
        lin = np.array([msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z])
        ang = np.array([msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z])
        if not (np.all(np.isfinite(lin)) and np.all(np.isfinite(ang))):
            self._reject(what, "NaN or Inf")
            return None
        return lin, ang, ee

    def _on_target_twist(self, msg: TwistStamped) -> None:
        if self._intervening:
            self.ignored += 1
            return
        tw = self._twist_of(msg, "target_twist")
        if tw is None:
            return
        if self.cfg is not None and self.cfg.twist_mode == "delta":
            self._apply_delta(*tw, msg.header.stamp)
        else:
            self._set_velocity(*tw, msg.header.stamp, "target_twist")

    def _on_teleop_twist(self, msg: TwistStamped) -> None:
        if not self._intervening:
            return
        tw = self._twist_of(msg, "teleop/twist")
        if tw is not None:
            self._set_velocity(*tw, msg.header.stamp, "teleop/twist")

    def _set_velocity(self, lin: np.ndarray, ang: np.ndarray, ee: bool, msg_stamp: Any, what: str) -> None:
        with self._lock:
            if self.filter is None or self.filter.holding:
                self.ignored += 1
                return
            if self.filter.ready:  # one tick of it must integrate, or the control loop would fail on it
                p, q = self.filter.applied_pose
                try:
                    apply_twist(p, q, lin, ang, self.filter.dt, ee)
                except (CommandRejected, ValueError, OverflowError) as e:
                    self._reject(what, f"{type(e).__name__}: {e}")
                    return
            now, sent = self._times(msg_stamp)
            if sent is not None and not (now - self.filter.cfg.watchdog_timeout <= sent <= now + self.filter.cfg.max_clock_skew):
                self._reject(what, f"header stamp {sent - now:+.3f} s from now: stale or in the future")
                return
            self._twist = (lin, ang, ee, now if sent is None else min(now, sent))
            t = stamp_seconds(msg_stamp)
            self._pending_stamp = t if t > 0 else time.time()

    def _apply_delta(self, lin: np.ndarray, ang: np.ndarray, ee: bool, msg_stamp: Any) -> None:
        f = self.filter
        if f is None or not f.ready:
            return
        with self._lock:
            if f.holding:
                self.ignored += 1
                return
            base = f.target if f.target is not None else f.applied_pose
            try:
                pos, quat = apply_twist(base[0], base[1], lin, ang, 1.0, ee)
                f.set_target(pos, quat, *self._times(msg_stamp))
            except CommandRejected as e:
                self._reject("target_twist", str(e))
                return
            self._twist = None
            t = stamp_seconds(msg_stamp)
            self._pending_stamp = t if t > 0 else time.time()

    def _on_gripper(self, msg: JointState) -> None:
        if self._intervening:
            self.ignored += 1
            return
        self._gripper(msg, "gripper/command")

    def _on_teleop_gripper(self, msg: JointState) -> None:
        if self._intervening:
            self._gripper(msg, "teleop/gripper")

    def _gripper(self, msg: JointState, what: str) -> None:
        if self.filter is None or self.backend is None or self.cfg is None:
            return
        if not msg.position:
            self._reject(what, "position[0] (the width in m) is missing")
            return
        speed = msg.velocity[0] if msg.velocity else self.cfg.gripper_speed
        if math.isfinite(speed) and speed <= 0.0:  # unset (0): the configured speed; NaN is rejected below
            speed = self.cfg.gripper_speed
        force = msg.effort[0] if msg.effort else 0.0
        try:
            cmd = self.filter.gripper(msg.position[0], speed, force)
        except CommandRejected as e:
            self.get_logger().warning(f"{what} rejected: {e}", throttle_duration_sec=1.0)
            return
        if self.filter.holding:
            self.ignored += 1
            return
        self.backend.gripper_command(cmd)
        out = self._gripper_applied_msg
        out.header.stamp = self.get_clock().now().to_msg()
        out.position, out.velocity, out.effort = [cmd.width], [cmd.speed], [cmd.force]
        self._pubs["gripper_applied"].publish(out)

    # ----------------------------------------------------------------- services
    def _srv_hold(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        with self._lock:
            if self.filter is not None:
                self.filter.set_hold(bool(req.data))
            self._twist = None
        res.success = True
        res.message = "holding the current pose" if req.data else "released: following targets"
        self.get_logger().info(res.message)
        return res

    def _srv_recover(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        res.success, res.message = self._recover("requested")
        return res

    def _srv_home(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        b, cfg = self.backend, self.cfg
        if b is None or cfg is None or not self._connected:
            res.success, res.message = False, f"not connected: {self._lost_reason}"
            return res
        self._busy = "homing"
        self._publish_diag()
        try:
            ok = b.home(np.asarray(cfg.home_joints))
        finally:
            self._need_reset = True
            self._busy = ""
        res.success = bool(ok)
        res.message = "homed" if ok else f"homing failed: {b.error() or 'timeout'}"
        return res

    def _recover(self, why: str) -> tuple[bool, str]:
        b = self.backend
        if b is None or not self._connected:
            return False, f"not connected: {self._lost_reason}"
        self._busy = "recovering"
        try:
            ok = b.recover()
        finally:
            self._need_reset = True
            self._busy = ""
        self.recoveries += int(ok)
        msg = "recovered" if ok else f"recovery failed: {b.error()}"
        (self.get_logger().info if ok else self.get_logger().error)(f"{msg} ({why})")
        if ok:
            self._robot_error = ""
        return ok, msg

    # -------------------------------------------------------------- control loop
    def _make_msgs(self) -> None:
        self._js = JointState(name=list(JOINT_NAMES))
        self._pose = PoseStamped()
        self._pose.header.frame_id = BASE_FRAME
        self._wrench = WrenchStamped()
        self._wrench.header.frame_id = BASE_FRAME
        self._gs = JointState(name=[GRIPPER_JOINT])
        self._applied = PoseStamped()
        self._applied.header.frame_id = BASE_FRAME
        self._gripper_applied_msg = JointState(name=[GRIPPER_JOINT])

    def _control_loop(self) -> None:
        assert self.cfg is not None
        why = set_thread_priority(self.cfg.rt_priority)
        if why:
            self.get_logger().warning(why)
        period = 1.0 / self.cfg.state_rate_hz
        next_t = time.monotonic()
        last = None
        while not self._stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            next_t += period
            if now > next_t:  # over a period late: drop the missed ticks rather than burst to catch up
                next_t = now + period
            dt = now - last if last is not None else period
            last = now
            try:
                self._tick(now, dt)
            except Exception as e:  # never let the loop die; report and carry on
                if not self.context.ok():  # shutting down (Ctrl-C): stop quietly
                    return
                self._robot_error = f"control loop: {type(e).__name__}: {e}"
                self.get_logger().error(self._robot_error, throttle_duration_sec=1.0)
            self.stats.tick(now)

    def _tick(self, now: float, dt: float) -> None:
        b, f = self.backend, self.filter
        if b is None or f is None or not self._connected:
            return
        try:
            s = b.read()
        except ConnectionLost as e:
            self._on_lost(str(e))
            return
        self.state = s
        err = "" if self._busy else b.error()
        if err and err != self._robot_error:
            self._robot_error = err
            self.get_logger().error(f"robot error: {err}")
            self._publish_diag()
        applied = None
        if not self._busy and not err:
            with self._lock:
                if self._need_reset:
                    f.reset(s.ee_pos, s.ee_quat)
                    self._need_reset = False
                    self._twist = None
                tw = self._twist
                if tw is not None:
                    if now - tw[3] <= f.cfg.watchdog_timeout:
                        p, q = f.applied_pose
                        try:  # a rejection is counted, never raised: the arm holds
                            pos, quat = apply_twist(p, q, tw[0], tw[1], dt, tw[2])
                        except CommandRejected as e:
                            self._reject("twist", str(e))
                            self._twist = None
                        else:
                            try:
                                f.set_target(pos, quat, now, stamp=tw[3])
                            except CommandRejected:  # counted by the filter
                                self._twist = None
                    else:
                        self._twist = None
                applied = f.step(now, dt)
                pending, self._pending_stamp = self._pending_stamp, None
            b.command(applied.pos, applied.quat)
            if pending is not None:
                self.latency.add(time.time() - pending)
        elif err:
            self._need_reset = True
        self._publish_state(s, applied)

    def _publish_state(self, s: Any, applied: Any) -> None:
        t = to_stamp(s.stamp)
        js = self._js
        js.header.stamp = t
        js.position = s.joint_pos.tolist()
        js.velocity = s.joint_vel.tolist()
        js.effort = s.joint_effort.tolist()
        self._pubs["joint_states"].publish(js)
        ps = self._pose
        ps.header.stamp = t
        p, o = ps.pose.position, ps.pose.orientation
        p.x, p.y, p.z = (float(v) for v in s.ee_pos)
        o.x, o.y, o.z, o.w = (float(v) for v in s.ee_quat)
        self._pubs["ee_pose"].publish(ps)
        w = self._wrench
        w.header.stamp = t
        fw, tw = w.wrench.force, w.wrench.torque
        fw.x, fw.y, fw.z, tw.x, tw.y, tw.z = (float(v) for v in s.ee_wrench)
        self._pubs["ee_wrench"].publish(w)
        g = self.backend.gripper_state() if self.backend is not None else None
        if g is not None and g.stamp > 0:
            gs = self._gs
            gs.header.stamp = to_stamp(g.stamp)
            gs.position, gs.velocity, gs.effort = [g.width], [g.speed], [g.force]
            self._pubs["gripper_state"].publish(gs)
        if applied is not None:
            a = self._applied
            a.header.stamp = t
            p, o = a.pose.position, a.pose.orientation
            p.x, p.y, p.z = (float(v) for v in applied.pos)
            o.x, o.y, o.z, o.w = (float(v) for v in applied.quat)
            self._pubs["command_applied"].publish(a)

    def _on_lost(self, why: str) -> None:
        if self._connected:
            self._connected = False
            self._lost_reason = why
            self.get_logger().error(f"backend lost: {why}; reconnecting every {self.cfg.reconnect_period:g} s")
            self._publish_diag()

    # ---------------------------------------------------------------- supervisor
    def _supervise(self) -> None:
        cfg = self.cfg
        assert cfg is not None
        set_thread_priority(max(0, cfg.rt_priority - 1))  # light work; must not hold the GIL for long
        next_diag = 0.0
        while not self._stop.wait(0.05):
            now = time.monotonic()
            b = self.backend
            if b is None:
                continue
            if not self._connected and now - self._last_connect_try >= cfg.reconnect_period:
                self._last_connect_try = now
                self._try_connect(b)
            elif (self._connected and self._robot_error and cfg.auto_recover and not self._busy
                  and now - self._last_recover_try >= cfg.reconnect_period):
                self._last_recover_try = now
                self._recover("auto_recover")
            if now >= next_diag:
                next_diag = now + 0.5
                self._publish_diag()

    def _try_connect(self, b: Backend) -> None:
        try:
            b.close()
            b.connect()
        except Exception as e:
            why = f"{type(e).__name__}: {e}" if not isinstance(e, ConnectionLost) else str(e)
            if why != self._lost_reason:
                self.get_logger().warning(f"connect failed: {why}")
            self._lost_reason = why
            return
        self.sim_rig = getattr(b, "rig", None)
        self.sim_lock = getattr(b, "lock", None)
        with self._lock:
            self._need_reset = True
            self._twist = None
        self._robot_error = ""
        self._connected = True
        self.reconnects += 1
        self.get_logger().info(f"connected to the {b.name} backend")
        self._publish_diag()

    def _publish_diag(self) -> None:
        d, f, cfg = self.diag, self.filter, self.cfg
        if d is None or f is None or cfg is None:
            return
        st = self.stats.summary()
        lat = self.latency.summary()
        if not self._connected:
            level, msg = ERROR, f"disconnected: {self._lost_reason}"
        elif self._robot_error:
            level, msg = ERROR, f"robot error: {self._robot_error}"
        elif self._busy:
            level, msg = WARN, self._busy
        elif f.holding:
            level, msg = OK, "holding (hold service)"
        elif f.stale:
            level, msg = OK, "holding (no fresh command)"
        else:
            level, msg = OK, "running"
        g = self.backend.gripper_state() if self.backend is not None else None
        d.set(
            level, msg,
            backend=cfg.backend, connected=self._connected, requested_rate_hz=cfg.state_rate_hz,
            rate_hz=st["rate_hz"], period_p50_ms=st["p50_ms"], period_p99_ms=st["p99_ms"],
            period_max_ms=st["max_ms"], cmd_latency_p50_ms=lat["p50_ms"], cmd_latency_p99_ms=lat["p99_ms"],
            rejected=f.rejected, last_rejection=f.last_rejection, clipped=f.clipped, stale_holds=f.stale_holds,
            ignored=self.ignored,
            intervening=self._intervening, hold=f.holding, reconnects=self.reconnects,
            recoveries=self.recoveries, robot_error=self._robot_error,
            last_disconnect=self._lost_reason if not self._connected else "",
            gripper_width=g.width if g is not None else float("nan"),
            gripper_error=g.error if g is not None else "",
            **(self.backend.diagnostics() if self.backend is not None else {}),
        )
        d.publish_now()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``franka-node`` (``ros2 run``-style: ``franka-node --ros-args -p backend:=franky``).

    With ``rt_priority`` > 0 the executor thread (subscriptions, services) runs SCHED_FIFO one level
    below the control thread too: in this process it serves only this node, and a normal-priority
    thread holding the GIL would otherwise stall the control thread whenever the machine is busy.
    """

    def raise_executor_priority(node: FrankaNode) -> None:
        if node.cfg is not None and node.cfg.rt_priority > 1:
            set_thread_priority(node.cfg.rt_priority - 1)

    return run_lifecycle_node(lambda: FrankaNode(), args, before_spin=raise_executor_priority)


if __name__ == "__main__":
    raise SystemExit(main())
