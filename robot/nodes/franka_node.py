"""``franka-node``: the arm and hand on ROS 2 (a lifecycle node), behind the safety filter.

Backends (parameter ``backend``): ``franky`` (the real FCI at ``host``, or
franka-sim on loopback) and ``sim`` (the MuJoCo :class:`sim.rig.SimRig`,
in-process, physics stepped in real time in its own thread).

This module is the ROS wiring (parameters, subscriptions, services, publishers,
diagnostics); the parts are in :mod:`robot.nodes.franka`: the pure command
multiplexer (:class:`~robot.nodes.franka.mux.CommandMux`: arbitration, twist and
pose integration into the :class:`rig.safety.SafetyFilter`, gripper selection), the
control loop (:class:`~robot.nodes.franka.control.ArmLoop`) and parameter validation.

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
import threading
import time
from typing import Any

from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger

from rig.safety import SafetyFilter
from robot.backends.base import ArmState, Backend
from robot.config import RobotConfig
from robot.nodes.franka.control import ArmLoop, make_backend, set_thread_priority
from robot.nodes.franka.mux import CommandMux
from robot.nodes.franka.params import CONSTRAINTS, DESCRIPTIONS, LIVE_PARAMETERS, validate_robot_config
from robot.ros.convert import BASE_FRAME, GRIPPER_JOINT, JOINT_NAMES, stamp_seconds, to_stamp
from robot.ros.diagnostics import ERROR, OK, WARN, Diagnostics
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import ParameterError, declare_dataclass, read_dataclass
from robot.ros.qos import COMMAND_QOS, STATE_QOS

__all__ = ["FrankaNode", "validate_robot_config", "make_backend", "set_thread_priority", "main"]


def _first(values: Any) -> float | None:
    """The first element of a message's number array, or None when it is empty."""
    return values[0] if len(values) else None


class FrankaNode(RigNode):
    """See the module docstring. ``backend_factory(cfg) -> Backend`` overrides :func:`make_backend`."""

    LIVE_PARAMETERS = LIVE_PARAMETERS

    def __init__(self, node_name: str = "franka", *, backend_factory=None, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        declare_dataclass(self, RobotConfig(), descriptions=DESCRIPTIONS, constraints=CONSTRAINTS)
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="configure and activate at start (false: wait for a lifecycle manager)"))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._backend_factory = backend_factory or make_backend
        self.cfg: RobotConfig | None = None
        self.backend: Backend | None = None
        self.mux: CommandMux | None = None
        self.loop: ArmLoop | None = None
        #: the sim backend's rig and its lock, for a camera node sharing the scene (None otherwise)
        self.sim_rig: Any = None
        self.sim_lock: Any = None
        self._pubs: dict[str, Any] = {}
        self.diag: Diagnostics | None = None

    # ------------------------------------------------------- views for tests
    @property
    def filter(self) -> SafetyFilter | None:
        return self.mux.filter if self.mux is not None else None

    @property
    def ignored(self) -> int:
        """Commands dropped by the arbitration rule or a hold."""
        return self.mux.ignored if self.mux is not None else 0

    @property
    def _intervening(self) -> bool:
        return self.mux is not None and self.mux.intervening

    @property
    def _threads(self) -> list[threading.Thread]:
        return self.loop.threads if self.loop is not None else []

    # ---------------------------------------------------------------- lifecycle
    def setup(self) -> None:
        cfg = read_dataclass(self, RobotConfig)
        validate_robot_config(cfg)  # a ParameterError fails configure, naming the parameter
        self.cfg = cfg
        log = self.get_logger()
        self.mux = CommandMux(SafetyFilter(cfg.safety, 1.0 / cfg.state_rate_hz), cfg.twist_mode, cfg.gripper_speed,
                              warn=lambda text: log.warning(text, throttle_duration_sec=1.0))
        try:
            self.backend = self._backend_factory(cfg)
        except Exception as e:
            raise RuntimeError(f"cannot build the {cfg.backend!r} backend: {type(e).__name__}: {e}") from e
        self.loop = ArmLoop(self.backend, self.mux, cfg, publish_state=self._publish_state,
                            report=self._publish_diag, log=log, alive=self.context.ok,
                            on_connect=self._on_connect)
        if cfg.backend == "sim":
            try:
                self.loop.connect_now()
            except Exception as e:
                raise RuntimeError(f"cannot start the sim rig: {type(e).__name__}: {e}") from e
            self._on_connect(self.backend)

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
        log.info(f"configured: backend={cfg.backend} rate={cfg.state_rate_hz:g} Hz")

    def start(self) -> None:
        if self.loop is not None:
            self.loop.start()

    def stop(self) -> None:
        """Stop the control and supervisor threads (the arm holds where it is)."""
        if self.loop is not None:
            self.loop.stop()

    def teardown(self) -> None:
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception as e:
                self.get_logger().warning(f"closing the backend: {e}")
            self.backend = None
        self.loop = None
        self.sim_rig = self.sim_lock = None
        self._pubs, self.diag = {}, None  # destroyed by RigNode

    def _on_connect(self, backend: Backend) -> None:
        self.sim_rig = getattr(backend, "rig", None)
        self.sim_lock = getattr(backend, "lock", None)

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        """Gains change live (validated); every other parameter applies at the next configure."""
        live = {p.name: p.value for p in params if p.name in self.LIVE_PARAMETERS}
        if self.cfg is None or not live:
            return SetParametersResult(successful=True)
        try:
            gains: dict[str, Any] = {k: float(v) for k, v in live.items()}
            new = dataclasses.replace(self.cfg, **gains)
            validate_robot_config(new)
        except (ParameterError, TypeError, ValueError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.cfg = new
        if self.backend is not None:
            self.backend.set_impedance(new.translational_stiffness, new.rotational_stiffness, new.damping_ratio)
        self.get_logger().info(f"impedance: {new.translational_stiffness:g} N/m, {new.rotational_stiffness:g} "
                               f"N m/rad, damping ratio {new.damping_ratio:g}")
        return SetParametersResult(successful=True)

    # ------------------------------------------- commands: messages -> the mux
    def _on_intervening(self, msg: Bool) -> None:
        if self.mux is not None:
            self.mux.set_intervening(bool(msg.data))

    def _on_target_pose(self, msg: PoseStamped) -> None:
        if self.mux is not None:
            p, o = msg.pose.position, msg.pose.orientation
            self.mux.target_pose([p.x, p.y, p.z], [o.x, o.y, o.z, o.w], msg.header.frame_id,
                                 stamp_seconds(msg.header.stamp))

    @staticmethod
    def _twist_args(msg: TwistStamped) -> tuple[list[float], list[float], str, float]:
        lin, ang = msg.twist.linear, msg.twist.angular
        return [lin.x, lin.y, lin.z], [ang.x, ang.y, ang.z], msg.header.frame_id, stamp_seconds(msg.header.stamp)

    def _on_target_twist(self, msg: TwistStamped) -> None:
        if self.mux is not None:
            self.mux.target_twist(*self._twist_args(msg))

    def _on_teleop_twist(self, msg: TwistStamped) -> None:
        if self.mux is not None:
            self.mux.teleop_twist(*self._twist_args(msg))

    def _on_gripper(self, msg: JointState) -> None:
        if self.mux is not None:
            self._send_gripper(self.mux.gripper(_first(msg.position), _first(msg.velocity), _first(msg.effort)))

    def _on_teleop_gripper(self, msg: JointState) -> None:
        if self.mux is not None:
            self._send_gripper(self.mux.teleop_gripper(_first(msg.position), _first(msg.velocity),
                                                       _first(msg.effort)))

    def _send_gripper(self, cmd: Any) -> None:
        if cmd is None or self.backend is None:
            return
        self.backend.gripper_command(cmd)
        out = self._gripper_applied_msg
        out.header.stamp = self.get_clock().now().to_msg()
        out.position, out.velocity, out.effort = [cmd.width], [cmd.speed], [cmd.force]
        self._pubs["gripper_applied"].publish(out)

    # ----------------------------------------------------------------- services
    def _srv_hold(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        if self.mux is not None:
            self.mux.set_hold(bool(req.data))
        res.success = True
        res.message = "holding the current pose" if req.data else "released: following targets"
        self.get_logger().info(res.message)
        return res

    def _srv_recover(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        if self.loop is None:
            res.success, res.message = False, "not configured"
        else:
            res.success, res.message = self.loop.recover("requested")
        return res

    def _srv_home(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        if self.loop is None or self.cfg is None:
            res.success, res.message = False, "not configured"
        else:
            res.success, res.message = self.loop.home(self.cfg.home_joints)
        return res

    # --------------------------------------------------------------- publishing
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

    def _publish_state(self, s: ArmState, applied: Any) -> None:
        """Called by the control thread every tick."""
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
            a.header.stamp = to_stamp(time.time())  # when it was sent: the state's stamp can be older (#17)
            p, o = a.pose.position, a.pose.orientation
            p.x, p.y, p.z = (float(v) for v in applied.pos)
            o.x, o.y, o.z, o.w = (float(v) for v in applied.quat)
            self._pubs["command_applied"].publish(a)

    def _publish_diag(self) -> None:
        """Health on /diagnostics (the supervisor every 0.5 s, and any thread at once on a change)."""
        d, m, loop, cfg = self.diag, self.mux, self.loop, self.cfg
        if d is None or m is None or loop is None or cfg is None:
            return
        f = m.filter
        st = loop.stats.summary()
        lat = loop.latency.summary()
        if not loop.connected:
            level, msg = ERROR, f"disconnected: {loop.lost_reason}"
        elif loop.robot_error:
            level, msg = ERROR, f"robot error: {loop.robot_error}"
        elif loop.busy:
            level, msg = WARN, loop.busy
        elif f.holding:
            level, msg = OK, "holding (hold service)"
        elif f.stale:
            level, msg = OK, "holding (no fresh command)"
        else:
            level, msg = OK, "running"
        b = loop.backend
        g = b.gripper_state()
        d.set(
            level, msg,
            backend=cfg.backend, connected=loop.connected, requested_rate_hz=cfg.state_rate_hz,
            rate_hz=st["rate_hz"], period_p50_ms=st["p50_ms"], period_p99_ms=st["p99_ms"],
            period_max_ms=st["max_ms"], cmd_latency_p50_ms=lat["p50_ms"], cmd_latency_p99_ms=lat["p99_ms"],
            rejected=f.rejected, last_rejection=f.last_rejection, clipped=f.clipped, stale_holds=f.stale_holds,
            ignored=m.ignored,
            intervening=m.intervening, hold=f.holding, reconnects=loop.reconnects,
            recoveries=loop.recoveries, robot_error=loop.robot_error,
            last_disconnect=loop.lost_reason if not loop.connected else "",
            gripper_width=g.width if g is not None else float("nan"),
            gripper_error=g.error if g is not None else "",
            **b.diagnostics(),
        )
        d.publish_now()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``franka-node`` (``ros2 run``-style: ``franka-node --ros-args -p backend:=franky``).

    With ``rt_priority`` > 0 the executor thread (subscriptions, services) runs SCHED_FIFO one level
    below the control thread too: in this process it serves only this node, and a normal-priority
    thread holding the GIL would otherwise stall the control thread whenever the machine is busy.
    """

    def raise_executor_priority(node: Any) -> None:
        cfg = getattr(node, "cfg", None)
        if cfg is not None and cfg.rt_priority > 1:
            set_thread_priority(cfg.rt_priority - 1)

    return run_lifecycle_node(lambda: FrankaNode(), args, before_spin=raise_executor_priority)


if __name__ == "__main__":
    raise SystemExit(main())
