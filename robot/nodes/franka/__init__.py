"""The franka node's parts (no import-time side effects; nothing here imports ROS at package level).

* :mod:`robot.nodes.franka.mux`: the pure command multiplexer (arbitration, twist and pose
  integration into the :class:`rig.safety.SafetyFilter`, gripper selection; numpy only);
* :mod:`robot.nodes.franka.control`: the control and supervisor threads around a backend
  (reconnect, auto-recover, real-time priority) and the backend factory;
* :mod:`robot.nodes.franka.params`: parameter validation and descriptions;
* :mod:`robot.nodes.franka_node`: the ROS wiring (the lifecycle node and ``main``).
"""
