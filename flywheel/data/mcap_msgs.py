"""ROS 2 message schemas and message builders for the MCAP bags (:mod:`flywheel.data.mcap`).

The definitions are the ``.msg`` files of std_msgs, geometry_msgs and sensor_msgs that the rig's topics
use, in rosbag2's ``ros2msg`` layout, so Foxglove and ``ros2 bag`` open the bags without the ROS packages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rig.spec import BASE_FRAME

# ROS 2 message definitions (the .msg files of std_msgs, geometry_msgs and sensor_msgs), as rosbag2 stores them
_DEFS = {
    "builtin_interfaces/Time": "int32 sec\nuint32 nanosec\n",
    "std_msgs/Header": "builtin_interfaces/Time stamp\nstring frame_id\n",
    "geometry_msgs/Point": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Quaternion": "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    "geometry_msgs/Pose": "Point position\nQuaternion orientation\n",
    "geometry_msgs/Vector3": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Wrench": "Vector3 force\nVector3 torque\n",
    "geometry_msgs/PoseStamped": "std_msgs/Header header\nPose pose\n",
    "geometry_msgs/WrenchStamped": "std_msgs/Header header\nWrench wrench\n",
    "sensor_msgs/JointState": "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\n"
                              "float64[] effort\n",
    "sensor_msgs/Image": "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
                         "uint8 is_bigendian\nuint32 step\nuint8[] data\n",
    "std_msgs/Bool": "bool data\n",
    "std_msgs/String": "string data\n",
    "std_msgs/Float32": "float32 data\n",
}
_DEPS = {
    "std_msgs/Header": ["builtin_interfaces/Time"],
    "geometry_msgs/Pose": ["geometry_msgs/Point", "geometry_msgs/Quaternion"],
    "geometry_msgs/Wrench": ["geometry_msgs/Vector3"],
    "geometry_msgs/PoseStamped": ["std_msgs/Header", "geometry_msgs/Pose"],
    "geometry_msgs/WrenchStamped": ["std_msgs/Header", "geometry_msgs/Wrench"],
    "sensor_msgs/JointState": ["std_msgs/Header"],
    "sensor_msgs/Image": ["std_msgs/Header"],
}
SEP = "=" * 80


def msgdef(name: str) -> str:
    """The full definition of ``pkg/Name`` with its dependencies, in rosbag2's ``ros2msg`` layout."""
    seen: list[str] = []

    def walk(n: str) -> None:
        for d in _DEPS.get(n, []):
            if d not in seen:
                seen.append(d)
                walk(d)

    walk(name)
    return _DEFS[name] + "".join(f"{SEP}\nMSG: {d}\n{_DEFS[d]}" for d in seen)


def ros_type(name: str) -> str:
    """``sensor_msgs/Image`` -> ``sensor_msgs/msg/Image`` (the type name rosbag2 and Foxglove use)."""
    pkg, msg = name.split("/")
    return f"{pkg}/msg/{msg}"


def header(t_ns: int, frame: str = "") -> dict:
    return {"stamp": {"sec": t_ns // 1_000_000_000, "nanosec": t_ns % 1_000_000_000}, "frame_id": frame}


def pose(t_ns: int, pos: Any, quat: Any) -> dict:
    p, q = np.asarray(pos, float), np.asarray(quat, float)
    return {"header": header(t_ns, BASE_FRAME),
            "pose": {"position": dict(zip("xyz", p.tolist(), strict=True)),
                     "orientation": dict(zip("xyzw", q.tolist(), strict=True))}}


def joints(t_ns: int, names: list[str], pos: Any, vel: Any = (), effort: Any = ()) -> dict:
    return {"header": header(t_ns), "name": names, "position": np.asarray(pos, float).tolist(),
            "velocity": np.asarray(vel, float).tolist(), "effort": np.asarray(effort, float).tolist()}


def image(t_ns: int, img: np.ndarray, frame: str) -> dict:
    img = np.ascontiguousarray(img)
    depth = img.ndim == 2
    h, w = img.shape[:2]
    return {"header": header(t_ns, frame), "height": h, "width": w, "encoding": "16UC1" if depth else "rgb8",
            "is_bigendian": 0, "step": w * (2 if depth else 3),
            "data": img.astype("<u2" if depth else np.uint8).tobytes()}
