"""ROS messages to and from numpy, and the rig's frame and joint names (re-exported from :mod:`rig.spec`, where they are defined once).

* stamps: :func:`to_stamp` (seconds -> builtin_interfaces/Time), :func:`stamp_seconds`,
  :func:`header_time` (a message's header stamp, or now when the publisher left it zero);
* images: :func:`image_to_numpy` (the one decoder: rgb8, bgr8, mono8, 16UC1/mono16, every
  field checked against the data), :func:`resize` (the one resizer) and :func:`numpy_to_image`;
* poses, wrenches, twists: :func:`pose_to_numpy` / :func:`fill_pose`, :func:`wrench_to_numpy` /
  :func:`fill_wrench`, :func:`twist_to_numpy`;
* joints: :func:`joints_to_numpy` (by name, :data:`JOINT_NAMES`), :func:`gripper_width`.

A malformed message raises :class:`ConversionError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

# the arm's base frame, its TCP frame and its joint names are defined once, in the rig spec
from rig.spec import BASE_FRAME, JOINT_NAMES, TCP_FRAME

__all__ = [
    "BASE_FRAME",
    "TCP_FRAME",
    "JOINT_NAMES",
    "GRIPPER_JOINT",
    "IMAGE_ENCODINGS",
    "ConversionError",
    "to_stamp",
    "stamp_seconds",
    "header_time",
    "image_to_numpy",
    "numpy_to_image",
    "resize",
    "pose_to_numpy",
    "fill_pose",
    "pose_stamped",
    "wrench_to_numpy",
    "fill_wrench",
    "twist_to_numpy",
    "joints_to_numpy",
    "gripper_width",
    "finite",
]

#: the name of the gripper's one "joint" (its opening width, m) in gripper JointStates
GRIPPER_JOINT = "width"
#: encoding -> (bytes per channel, channels) of the images the decoder takes
IMAGE_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (1, 3), "bgr8": (1, 3), "mono8": (1, 1), "16UC1": (2, 1), "mono16": (2, 1),
}


class ConversionError(ValueError):
    """A message that does not convert; the text names the field and what was expected."""


def _short(v: Any, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------------- stamps
def to_stamp(t: float) -> Any:
    """A builtin_interfaces/Time from seconds since the epoch (finite, >= 0)."""
    from builtin_interfaces.msg import Time

    if not (math.isfinite(t) and t >= 0.0):
        raise ConversionError(f"stamp {t!r}: must be a finite time >= 0 s")
    sec = int(t)
    return Time(sec=sec, nanosec=min(999_999_999, int((t - sec) * 1e9)))


def stamp_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def header_time(msg: Any, now: float | None = None) -> float:
    """The message's header stamp in seconds, or ``now`` (wall clock by default) when it is zero."""
    t = stamp_seconds(msg.header.stamp)
    if t > 0:
        return t
    return time.time() if now is None else now


# ---------------------------------------------------------------------- images
def image_to_numpy(msg: Any, size: tuple[int, int] | None = None, *, mono_as_rgb: bool = True) -> np.ndarray:
    """sensor_msgs/Image -> an array the caller owns, resized to ``size`` = (H, W) if given.

    rgb8 and bgr8 give (H, W, 3) uint8 RGB; mono8 gives (H, W, 3) (``mono_as_rgb``) or (H, W)
    uint8; 16UC1/mono16 give (H, W) uint16. Raises :class:`ConversionError` on an unknown
    encoding or sizes that do not fit the data.
    """
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise ConversionError(f"image encoding {_short(enc)} is not supported: publish rgb8 "
                              "(or bgr8, mono8, 16UC1)")
    nbytes, ch = IMAGE_ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f"image height x width = {h} x {w}: both must be > 0")
    row = w * ch * nbytes
    if step < row:
        raise ConversionError(f"image step {step}: must be at least width * channels * bytes = {row} ({enc})")
    n = len(msg.data)
    if n < h * step:
        raise ConversionError(f"image data has {n} bytes: height * step = {h} * {step} = {h * step} needed")
    rows = np.frombuffer(msg.data, np.uint8, count=h * step).reshape(h, step)[:, :row]
    img: np.ndarray
    if nbytes == 2:
        img = np.ascontiguousarray(rows).view(">u2" if msg.is_bigendian else "<u2").reshape(h, w)
        img = img.astype(np.uint16)  # native byte order, and a copy
    else:
        img = rows.reshape(h, w, ch) if ch == 3 else rows.reshape(h, w)
        if enc == "bgr8":
            img = img[..., ::-1]
        elif ch == 1 and mono_as_rgb:
            img = np.repeat(img[..., None], 3, axis=2)
        img = np.array(img, copy=True, order="C")  # never a view of the message's buffer
    if size is not None:
        img = resize(img, size)
    return img


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` at (H, W) = ``size``: area averaging for colour, nearest for depth (uint16)."""
    h, w = int(size[0]), int(size[1])
    if img.shape[:2] == (h, w):
        return img
    import cv2

    interp = cv2.INTER_NEAREST if img.dtype == np.uint16 else cv2.INTER_AREA
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=interp))


def numpy_to_image(img: np.ndarray, t: float | None = None, frame_id: str = "") -> Any:
    """(H, W, 3) uint8 -> rgb8, (H, W) uint8 -> mono8, (H, W) uint16 -> 16UC1 sensor_msgs/Image."""
    from sensor_msgs.msg import Image

    a = np.asarray(img)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        enc, step, data = "rgb8", a.shape[1] * 3, np.ascontiguousarray(a)
    elif a.dtype == np.uint8 and a.ndim == 2:
        enc, step, data = "mono8", a.shape[1], np.ascontiguousarray(a)
    elif a.dtype == np.uint16 and a.ndim == 2:
        enc, step, data = "16UC1", a.shape[1] * 2, np.ascontiguousarray(a, dtype="<u2")
    else:
        raise ConversionError(f"image array {a.dtype} {a.shape}: expected (H, W, 3) uint8, (H, W) uint8 "
                              "or (H, W) uint16")
    msg = Image(height=a.shape[0], width=a.shape[1], encoding=enc, is_bigendian=0, step=step)
    msg.data = data.tobytes()
    if t is not None:
        msg.header.stamp = to_stamp(t)
    msg.header.frame_id = frame_id
    return msg


# --------------------------------------------------------- poses, wrenches, twists
def pose_to_numpy(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/Pose or PoseStamped -> (position (3,), quaternion xyzw (4,)), float64."""
    pose = getattr(msg, "pose", msg)
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])


def fill_pose(msg: Any, pos: Any, quat: Any) -> Any:
    """Write (pos, quat xyzw) into a Pose or PoseStamped in place; returns it."""
    pose = getattr(msg, "pose", msg)
    p, o = pose.position, pose.orientation
    p.x, p.y, p.z = (float(v) for v in pos)
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def pose_stamped(pos: Any, quat: Any, t: float | None = None, frame_id: str = BASE_FRAME) -> Any:
    """A geometry_msgs/PoseStamped at time ``t`` (now by default), in ``frame_id``."""
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.stamp = to_stamp(time.time() if t is None else t)
    msg.header.frame_id = frame_id
    return fill_pose(msg, pos, quat)


def wrench_to_numpy(msg: Any) -> np.ndarray:
    """geometry_msgs/Wrench or WrenchStamped -> (6,) [fx, fy, fz, tx, ty, tz], float64."""
    wr = getattr(msg, "wrench", msg)
    f, t = wr.force, wr.torque
    return np.array([f.x, f.y, f.z, t.x, t.y, t.z])


def fill_wrench(msg: Any, wrench: Any) -> Any:
    """Write a (6,) wrench into a Wrench or WrenchStamped in place; returns it."""
    wr = getattr(msg, "wrench", msg)
    f, t = wr.force, wr.torque
    f.x, f.y, f.z, t.x, t.y, t.z = (float(v) for v in wrench)
    return msg


def twist_to_numpy(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/Twist or TwistStamped -> (linear (3,), angular (3,)), float64."""
    tw = getattr(msg, "twist", msg)
    lin, ang = tw.linear, tw.angular
    return np.array([lin.x, lin.y, lin.z]), np.array([ang.x, ang.y, ang.z])


# ---------------------------------------------------------------------- joints
def joints_to_numpy(msg: Any, names: tuple[str, ...] = JOINT_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """sensor_msgs/JointState -> (positions, velocities) of ``names``, in that order, float64.

    Joints are picked by name when the message names them all, else by order (the first
    ``len(names)`` entries). A missing ``velocity`` gives zeros. Raises
    :class:`ConversionError` when positions (or given velocities) are too few.
    """
    n = len(names)
    msg_names = list(msg.name)
    if msg_names and all(j in msg_names for j in names):
        idx = [msg_names.index(j) for j in names]
    else:
        idx = list(range(n))
    pos = np.asarray(msg.position, np.float64)
    need = max(idx) + 1
    if pos.shape[0] < need:
        raise ConversionError(f"joint_states position has {pos.shape[0]} entries: {need} needed for {n} joints "
                              f"{names[0]}..{names[-1]}")
    vel = np.asarray(msg.velocity, np.float64)
    if vel.shape[0] == 0:
        vel = np.zeros(need)
    elif vel.shape[0] < need:
        raise ConversionError(f"joint_states velocity has {vel.shape[0]} entries: give {need} or none")
    return pos[idx], vel[idx]


def gripper_width(msg: Any) -> float:
    """A gripper JointState (``gripper/state``, ``gripper/command``...) -> its width ``position[0]`` (m)."""
    if len(msg.position) == 0:
        raise ConversionError("gripper JointState position is empty: expected [width in m]")
    return float(msg.position[0])


def finite(what: str, *arrays: Any, dtype: Any = np.float32) -> None:
    """Raise :class:`ConversionError` naming ``what`` unless every value of ``arrays`` is finite as ``dtype``.

    The default, float32 (the spec's state dtype), also refuses magnitudes that overflow it (e.g. 1e308).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        for a in arrays:
            if not np.all(np.isfinite(np.asarray(a, np.float64).astype(dtype))):
                raise ConversionError(f"{what}: NaN, Inf or beyond {np.dtype(dtype).name}")
