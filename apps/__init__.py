"""The composition root: the one place that wires the rig's ROS nodes, the policy node and
the flywheel's recorder into one graph (``rig-up``, ``launch/rig.launch.py``).

Nothing in ``rig``, ``robot``, ``sim``, ``policy``, ``flywheel`` or ``calibration`` imports
this package.
"""
