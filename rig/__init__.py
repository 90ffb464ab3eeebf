"""The rig contract (numpy and the standard library only).

* :mod:`rig.spec`: the observation/action schema, frames and units, shared by sim,
  the ROS nodes, the policy and the episode store;
* :mod:`rig.geometry`: quaternion and pose helpers (x, y, z, w order);
* :mod:`rig.safety`: the safety filter between every command source and the arm, and
  its :class:`~rig.safety.SafetyConfig`.

Everything else in the project builds on this package; it imports nothing of theirs.
"""
