"""The one ROS 2 layer of the rig: everything a node, the env adapter or a collector needs from ROS.

* :mod:`robot.ros.qos`: the QoS profiles of the graph (sensor, state, command, latched);
* :mod:`robot.ros.params`: node parameters declared from and read back into dataclasses, validated;
* :mod:`robot.ros.diagnostics`: health on ``/diagnostics``, loop-period statistics;
* :mod:`robot.ros.convert`: messages to and from numpy (images, poses, wrenches, joints, stamps),
  and the frame and joint names, defined once;
* :mod:`robot.ros.lifecycle`: :class:`~robot.ros.lifecycle.RigNode`, the lifecycle base class with
  setup/start/stop/teardown hooks and guarded subscriptions, timers and services (a callback's
  error is caught, counted and reported on ``/diagnostics``, and the node goes on), and
  :func:`~robot.ros.lifecycle.run_lifecycle_node`, the body of every executable's ``main()``
  (SIGINT and SIGTERM stop it through its lifecycle), and
  :func:`~robot.ros.lifecycle.spin_in_background`, the thread that spins a private context's nodes.

Nothing here runs at import; the submodules import ``rclpy`` and the standard message packages only.
"""
