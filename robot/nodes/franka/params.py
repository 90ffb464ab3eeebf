"""The franka node's parameters: what they accept (``ros2 param describe``), and their validation."""

from __future__ import annotations

import math

from rig.safety import validate_safety_config
from robot.backends.franky_backend import validate_franky_limits
from robot.config import RobotConfig
from robot.nodes.franka.mux import TWIST_MODES
from robot.ros.params import ParameterError, require

__all__ = ["CONSTRAINTS", "DESCRIPTIONS", "LIVE_PARAMETERS", "validate_robot_config"]

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

#: the parameters that change live (the impedance gains); the others apply at the next configure
LIVE_PARAMETERS = ("translational_stiffness", "rotational_stiffness", "damping_ratio")


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
    require(cfg.twist_mode in TWIST_MODES, "twist_mode", cfg.twist_mode, "must be 'velocity' or 'delta'")
    require(0 <= cfg.rt_priority <= 98, "rt_priority", cfg.rt_priority,
            "must be 0 (normal scheduling) or a SCHED_FIFO priority in 1..98")
    try:
        validate_safety_config(cfg.safety, prefix="safety.")
        validate_franky_limits(cfg)
    except ValueError as e:
        raise ParameterError(f"parameter {e}") from None
