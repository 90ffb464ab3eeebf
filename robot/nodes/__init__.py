"""ROS 2 nodes of the rig (console scripts franka-node, camera-node, teleop-node)."""
