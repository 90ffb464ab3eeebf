"""QoS profiles of the rig's graph, one per kind of traffic."""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

__all__ = ["SENSOR_QOS", "STATE_QOS", "COMMAND_QOS", "LATCHED_QOS"]

#: camera images and camera_info: best effort, keep the last 5
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
#: robot state at control rate (joint_states, ee_pose, ...): reliable, keep the last 10
STATE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: commands (targets, gripper commands, teleop): reliable, so per-message deltas are never lost
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: flags a late subscriber must see (e.g. teleop/intervening): reliable + transient local.
#: A VOLATILE subscriber (as the franka node uses) matches both latched and plain publishers.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
