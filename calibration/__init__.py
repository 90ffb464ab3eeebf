"""Camera calibration for the rig: ChArUco boards, intrinsics, hand-eye solving and validation.

Modules (import what you need; nothing heavy or ROS-related runs at import):

* :mod:`calibration.board` -- the board definition, true-scale PDF, detection, board pose;
* :mod:`calibration.intrinsics` -- camera_info / RealSense intrinsics, calibration from views;
* :mod:`calibration.session` -- the recorded session directory format;
* :mod:`calibration.poses` -- generated safe calibration poses;
* :mod:`calibration.handeye` -- eye-in-hand / eye-to-hand solving, method choice by hold-out;
* :mod:`calibration.extrinsics` -- the result YAML the camera node and configs read;
* :mod:`calibration.drift` -- has a stored calibration drifted? (fresh solve vs stored);
* :mod:`calibration.simulate` -- MuJoCo-rendered sessions with ground truth;
* :mod:`calibration.collect_ros` -- on-rig collection over ROS 2 (the only rclpy user);
* :mod:`calibration.cli` -- the ``calibrate-handeye`` command.
"""
