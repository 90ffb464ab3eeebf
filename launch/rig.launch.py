"""``ros2 launch launch/rig.launch.py [overrides:="rig=lab rig.cameras.cameras.0.serial=..."]``.

Starts the same node graph as ``rig-up``, one process per node. The node list
comes from :func:`apps.bringup.graph` (this file holds no logic of its own);
``overrides`` are hydra overrides of the ``rig_up`` config, space separated.
``launch``/``launch_ros`` are imported only when ROS launches this file.
"""

from __future__ import annotations

import shlex

DEFAULT_OVERRIDES = "rig=sim"


def node_kwargs(overrides: str) -> list[dict]:
    """``launch_ros.actions.Node`` keyword arguments for each node of the graph."""
    from apps.bringup import launch_node_kwargs

    return launch_node_kwargs(shlex.split(overrides))


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    def nodes(context, *args, **kwargs):
        overrides = LaunchConfiguration("overrides").perform(context)
        return [Node(**kw) for kw in node_kwargs(overrides)]

    return LaunchDescription([
        DeclareLaunchArgument(
            "overrides", default_value=DEFAULT_OVERRIDES,
            description="hydra overrides of the rig_up config, e.g. 'rig=lab rig.cameras.cameras.0.serial=123'",
        ),
        OpaqueFunction(function=nodes),
    ])
