"""ROS 2 and hardware: configuration, the nodes, arm/camera/teleop backends (real and sim), the env adapter.

Importing ``robot`` starts nothing. The pure contract (spec, geometry, safety filter)
lives in :mod:`rig`.
"""
