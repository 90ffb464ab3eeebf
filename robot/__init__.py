"""The rig: spec, configuration, ROS 2 nodes, hardware and sim backends, safety filter.

Importing ``robot`` starts nothing; ``robot.spec``, ``robot.geometry`` and
``robot.safety`` are pure (no ROS, no torch).
"""
