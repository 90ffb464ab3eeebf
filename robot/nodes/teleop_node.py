"""``teleop-node``: the operator's device on the ROS graph.

Publishes, at ``rate_hz``:

* ``teleop/twist`` (geometry_msgs/TwistStamped, base frame ``panda_link0``):
  the operator's velocity, m/s and rad/s (device deflection times
  ``translation_scale`` / ``rotation_scale``);
* ``teleop/intervening`` (std_msgs/Bool, latched): True while the operator
  has control; the franka node then ignores every other command source;

and, when they happen, ``teleop/gripper`` (sensor_msgs/JointState as
``gripper/command``: close = grasp with ``gripper_force``, open = move to
0.08 m) and ``episode/event`` (std_msgs/String: start, success, failure,
reset, abort). The env's requests to the operator on ``reset/prompt`` (std_msgs/String, e.g. a reset
routine's "reset the scene, then confirm with reset") are logged where the operator looks.

Parameters are :class:`robot.config.TeleopConfig` (``device``: keyboard,
spacemouse, gamepad or none; ``tty_path`` for the keyboard) plus
``gripper_speed``/``gripper_force``/``retry_period``. A missing device is
logged once with the fix, reported as ERROR on ``/diagnostics`` and retried
every ``retry_period`` s (plugging it in later just works); the node neither
crashes nor respawns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from geometry_msgs.msg import TwistStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String

from rig.spec import GRIPPER_MAX_WIDTH
from robot.backends.teleop_devices import TeleopCommand, TeleopDevice, TeleopDeviceError, make_device
from robot.config import TeleopConfig
from robot.ros.convert import BASE_FRAME, to_stamp
from robot.ros.diagnostics import ERROR, OK, WARN
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.params import declare_dataclass, read_dataclass, require
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS


@dataclass
class TeleopNodeParams:
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    gripper_speed: float = 0.1  # m/s of operator gripper commands
    gripper_force: float = 20.0  # N, grasp force when the operator closes the gripper
    retry_period: float = 2.0  # s between attempts to open a missing device


class TeleopNode(RigNode):
    def __init__(self, name: str = "teleop", device: TeleopDevice | None = None, **kwargs):
        """``device`` replaces the one ``teleop.device`` names (tests, custom hardware)."""
        super().__init__(name, **kwargs)
        declare_dataclass(self, TeleopNodeParams())
        self._injected = device
        self.device: TeleopDevice | None = None
        self.connected = False
        self._last_error = ""
        self._next_try = 0.0
        self._intervening = False

    # ---------------------------------------------------------- life cycle
    def setup(self) -> None:
        p = read_dataclass(self, TeleopNodeParams)
        t = p.teleop
        require(t.device in ("keyboard", "spacemouse", "gamepad", "none"), "teleop.device", t.device,
                "must be keyboard, spacemouse, gamepad or none")
        require(t.rate_hz > 0, "teleop.rate_hz", t.rate_hz, "must be > 0")
        require(p.retry_period > 0, "retry_period", p.retry_period, "must be > 0")
        self.p = p
        if self._injected is not None:
            self.device = self._injected
        elif t.device != "none":
            self.device = make_device(t.device, tty_path=t.tty_path, release_after=t.release_after)
        self.pub_twist = self.make_publisher(TwistStamped, "teleop/twist", COMMAND_QOS)
        self.pub_gripper = self.make_publisher(JointState, "teleop/gripper", COMMAND_QOS)
        self.pub_intervening = self.make_publisher(Bool, "teleop/intervening", LATCHED_QOS)
        self.pub_event = self.make_publisher(String, "episode/event", COMMAND_QOS)
        self.guarded_subscription(String, "reset/prompt", self._on_prompt, LATCHED_QOS)
        self.prompt = ""  # the env's pending request to the operator (reset/prompt), "" when none
        self.diag = self.make_diagnostics("teleop", hardware_id=t.device)

    def start(self) -> None:
        self._publish_intervening(False)
        if self.device is None:
            self.diag.set(OK, "teleop.device=none: no operator device")
            return
        self._try_connect()
        self.guarded_timer(1.0 / self.p.teleop.rate_hz, self._tick)

    def stop(self) -> None:
        # also after a signal, when on_shutdown may not run: restores the tty
        if self.device is not None and self.connected:
            self.device.close()  # restores the terminal
            self.connected = False
            try:
                self._publish_intervening(False)
            except Exception:  # context already shut down
                pass

    # ---------------------------------------------------------------- loop
    def _try_connect(self) -> None:
        assert self.device is not None
        self._next_try = time.monotonic() + self.p.retry_period
        try:
            self.device.connect()
        except TeleopDeviceError as e:
            if str(e) != self._last_error:  # log once per distinct error, not every retry
                self.get_logger().error(f"{e} (retrying every {self.p.retry_period:g} s)")
                self._last_error = str(e)
            self.diag.set(ERROR, str(e))
            self.diag.publish_now()
            return
        self.connected, self._last_error = True, ""
        self.get_logger().info(f"teleop device {self.device.name!r} connected")
        self.diag.set(OK, f"{self.device.name} connected")

    def _tick(self) -> None:
        now = time.monotonic()
        if not self.connected:
            if now >= self._next_try:
                self._try_connect()
            if not self.connected:
                self._publish_command(TeleopCommand())
                return
        try:
            cmd = self.device.poll(now)
        except (OSError, TeleopDeviceError) as e:
            self.get_logger().error(f"teleop device {self.device.name!r} failed: {e}; reconnecting")
            self.diag.set(WARN, f"device lost: {e}")
            self.device.close()
            self.connected = False
            cmd = TeleopCommand()
        self._publish_command(cmd)

    def _publish_command(self, cmd: TeleopCommand) -> None:
        t = self.get_clock().now().nanoseconds * 1e-9
        msg = TwistStamped()
        msg.header.stamp, msg.header.frame_id = to_stamp(t), BASE_FRAME
        v = cmd.twist * self.p.teleop.translation_scale
        w = cmd.twist * self.p.teleop.rotation_scale
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(x) for x in v[:3])
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(x) for x in w[3:])
        self.pub_twist.publish(msg)
        self._publish_intervening(cmd.intervening)
        if cmd.gripper is not None:
            g = JointState()
            g.header.stamp = msg.header.stamp
            g.name = ["width"]
            close = cmd.gripper == "close"
            g.position = [0.0 if close else GRIPPER_MAX_WIDTH]
            g.velocity = [self.p.gripper_speed]
            g.effort = [self.p.gripper_force if close else 0.0]
            self.pub_gripper.publish(g)
        for ev in cmd.events:
            self.pub_event.publish(String(data=ev))
            self.get_logger().info(f"episode event: {ev[:40]!r}")
        if self.connected:
            self.diag.update(intervening=cmd.intervening)

    def _on_prompt(self, m: String) -> None:
        """Show the env's request (a reset routine's prompt) where the operator looks: the rig-up terminal."""
        if m.data and m.data != self.prompt:
            self.get_logger().warning(f"OPERATOR: {m.data[:300]}")
        self.prompt = m.data

    def _publish_intervening(self, value: bool) -> None:
        if value != self._intervening:
            self.get_logger().info("operator has control" if value else "control back to the policy")
        self._intervening = value
        self.pub_intervening.publish(Bool(data=bool(value)))


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(lambda: TeleopNode(), args)


if __name__ == "__main__":
    raise SystemExit(main())
