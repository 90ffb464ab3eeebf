"""The rig spec: the one documented meaning of observations and actions.

Sim, ROS nodes, the policy and the episode store all build on a ``RigSpec``.
Each side that persists or loads data (checkpoints, episode stores) saves the
spec it was made with, and :func:`check_compatible` refuses a mismatch with a
message that names both sides and every difference.

Observation keys (all SI units, base frame unless named otherwise):

=========================  ========  =======  ==========================================
key                        shape     dtype    meaning
=========================  ========  =======  ==========================================
``state/ee_pos``           (3,)      float32  end-effector (TCP) position, m, base frame
``state/ee_quat``          (4,)      float32  TCP orientation, quaternion (x, y, z, w)
``state/gripper_width``    (1,)      float32  finger opening, m, 0 .. 0.08
``state/joint_pos``        (7,)      float32  arm joint angles, rad
``state/joint_vel``        (7,)      float32  arm joint velocities, rad/s
``state/ee_wrench``        (6,)      float32  estimated external wrench at TCP, N / N m
``images/<camera>``        (H, W, 3) uint8    rgb8 colour image of camera ``<camera>``
``depth/<camera>``         (H, W)    uint16   optional depth, mm (aligned to colour)
=========================  ========  =======  ==========================================

Action (``action``, (7,), float32, each component in [-1, 1]):

* ``[0:3]`` translation delta of the TCP target in the base frame, scaled by
  ``max_translation`` (m per control tick);
* ``[3:6]`` rotation delta as a rotation vector in the base frame, scaled by
  ``max_rotation`` (rad per control tick);
* ``[6]`` absolute gripper opening: -1 closed (0 m) .. +1 open (0.08 m).

A policy predicts chunks of ``chunk_horizon`` actions at ``control_hz``.
:meth:`ActionSpec.to_target` turns one action into the absolute TCP pose target
that the franka node streams to franky's ``CartesianImpedanceTracker``, and
:meth:`ActionSpec.from_target` is its inverse (used by the recorder, which
stores the command actually applied after the safety filter).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rig.geometry import quat_conj, quat_mul, quat_normalize, quat_to_rotvec, rotvec_to_quat

SPEC_VERSION = 1
GRIPPER_MAX_WIDTH = 0.08  # m, Franka Hand
#: the arm's base frame: every pose, target and wrench of the rig is in it
BASE_FRAME = "panda_link0"
#: the tool centre point frame
TCP_FRAME = "panda_hand_tcp"
#: the arm's joints, in the order of every joint vector of the spec (``state/joint_pos``, ``state/joint_vel``)
JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))

STATE_KEYS: dict[str, tuple[tuple[int, ...], str, str]] = {
    # key: (shape, unit, description)
    "state/ee_pos": ((3,), "m", "TCP position in the base frame"),
    "state/ee_quat": ((4,), "1", "TCP orientation, quaternion (x, y, z, w), base frame"),
    "state/gripper_width": ((1,), "m", "finger opening, 0 .. 0.08"),
    "state/joint_pos": ((7,), "rad", "arm joint angles"),
    "state/joint_vel": ((7,), "rad/s", "arm joint velocities"),
    "state/ee_wrench": ((6,), "N, N m", "estimated external wrench at the TCP, base frame"),
}
PROPRIO_KEYS = ("state/ee_pos", "state/ee_quat", "state/gripper_width")


class SpecError(ValueError):
    """Data that contradicts the rig spec."""


class SpecMismatch(SpecError):
    """Two specs (e.g. a checkpoint and the rig) disagree."""


@dataclass(frozen=True)
class ArraySpec:
    key: str
    shape: tuple[int, ...]
    dtype: str
    unit: str = ""
    description: str = ""

    def check(self, value: Any, *, finite: bool = True) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != tuple(self.shape):
            raise SpecError(f"{self.key}: expected shape {tuple(self.shape)}, got {arr.shape}")
        if arr.dtype != np.dtype(self.dtype):
            raise SpecError(f"{self.key}: expected dtype {self.dtype}, got {arr.dtype}")
        if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise SpecError(f"{self.key}: contains NaN or Inf")
        return arr


@dataclass(frozen=True)
class CameraSpec:
    name: str
    height: int = 128
    width: int = 128
    depth: bool = False
    fps: float = 30.0


@dataclass(frozen=True)
class ActionSpec:
    dim: int = 7
    max_translation: float = 0.02  # m per control tick at |a| = 1
    max_rotation: float = 0.1  # rad per control tick at |a| = 1
    gripper_max_width: float = GRIPPER_MAX_WIDTH
    chunk_horizon: int = 8
    control_hz: float = 10.0
    names: tuple[str, ...] = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")

    def check(self, action: Any) -> np.ndarray:
        a = np.asarray(action)
        if a.shape[-1:] != (self.dim,):
            raise SpecError(f"action: expected last dimension {self.dim}, got shape {a.shape}")
        if a.dtype.kind != "f":
            raise SpecError(f"action: expected a float array, got {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise SpecError("action: contains NaN or Inf")
        return a

    def gripper_to_width(self, g: float) -> float:
        return float((np.clip(g, -1.0, 1.0) + 1.0) * 0.5 * self.gripper_max_width)

    def width_to_gripper(self, width: float) -> float:
        return float(np.clip(2.0 * width / self.gripper_max_width - 1.0, -1.0, 1.0))

    def to_target(
        self, action: np.ndarray, ee_pos: np.ndarray, ee_quat: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Action -> (target position, target quaternion, gripper width)."""
        a = np.clip(self.check(action).astype(np.float64), -1.0, 1.0)
        pos = np.asarray(ee_pos, dtype=np.float64) + a[:3] * self.max_translation
        dq = rotvec_to_quat(a[3:6] * self.max_rotation)
        quat = quat_normalize(quat_mul(dq, ee_quat))
        return pos, quat, self.gripper_to_width(a[6])

    def from_target(
        self,
        target_pos: np.ndarray,
        target_quat: np.ndarray,
        gripper_width: float,
        ee_pos: np.ndarray,
        ee_quat: np.ndarray,
    ) -> np.ndarray:
        """(target, current pose) -> the normalised action, clipped to [-1, 1]."""
        dp = (np.asarray(target_pos) - np.asarray(ee_pos)) / self.max_translation
        dr = quat_to_rotvec(quat_mul(target_quat, quat_conj(ee_quat))) / self.max_rotation
        a = np.concatenate([dp, dr, [self.width_to_gripper(gripper_width)]])
        return np.clip(a, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class RigSpec:
    """What a rig observes and how it is commanded."""

    name: str = "panda"
    cameras: tuple[CameraSpec, ...] = (CameraSpec("front"), CameraSpec("wrist"))
    action: ActionSpec = field(default_factory=ActionSpec)
    version: int = SPEC_VERSION

    # ----------------------------------------------------------------- keys
    def state_specs(self) -> dict[str, ArraySpec]:
        return {
            k: ArraySpec(k, shape, "float32", unit, desc)
            for k, (shape, unit, desc) in STATE_KEYS.items()
        }

    def image_specs(self) -> dict[str, ArraySpec]:
        out = {}
        for c in self.cameras:
            out[f"images/{c.name}"] = ArraySpec(
                f"images/{c.name}", (c.height, c.width, 3), "uint8", "", f"rgb8 image of {c.name}"
            )
            if c.depth:
                out[f"depth/{c.name}"] = ArraySpec(
                    f"depth/{c.name}", (c.height, c.width), "uint16", "mm", f"depth of {c.name}"
                )
        return out

    def observation_specs(self) -> dict[str, ArraySpec]:
        return {**self.state_specs(), **self.image_specs()}

    def action_spec(self) -> ArraySpec:
        return ArraySpec("action", (self.action.dim,), "float32", "1", "normalised action")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def square_image_size(self) -> int | None:
        """The one square size all cameras share (what the sim renders: ``image_size``), or None where they share
        none (or there are no cameras)."""
        sizes = {(c.height, c.width) for c in self.cameras}
        if len(sizes) != 1:
            return None
        h, w = next(iter(sizes))
        return int(h) if h == w else None

    @property
    def proprio_dim(self) -> int:
        return sum(int(np.prod(STATE_KEYS[k][0])) for k in PROPRIO_KEYS)

    def proprio(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The proprioception vector policies take: ee_pos, ee_quat, gripper_width."""
        return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in PROPRIO_KEYS])

    # ----------------------------------------------------------- validation
    def check_observation(self, obs: Mapping[str, Any], *, require_all: bool = True) -> None:
        specs = self.observation_specs()
        if require_all:
            missing = [k for k in specs if k not in obs]
            if missing:
                raise SpecError(f"observation misses keys {missing} (rig spec {self.name!r})")
        for k, v in obs.items():
            if k in specs:
                specs[k].check(v)

    # -------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RigSpec:
        d = dict(d)
        cams = tuple(CameraSpec(**c) for c in d.pop("cameras", ()))
        act = d.pop("action", {})
        if "names" in act:
            act = {**act, "names": tuple(act["names"])}
        return cls(cameras=cams, action=ActionSpec(**act), **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RigSpec:
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------ comparing
    def diff(self, other: RigSpec) -> list[str]:
        """Human-readable differences, each as ``field: mine != theirs``."""
        return _diff(self.to_dict(), other.to_dict(), "")


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in a or k not in b:
                out.append(f"{p}: {a.get(k, '<absent>')!r} != {b.get(k, '<absent>')!r}")
            else:
                out.extend(_diff(a[k], b[k], p))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [x for i, (u, v) in enumerate(zip(a, b, strict=False)) for x in _diff(u, v, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def check_compatible(
    mine: RigSpec, theirs: RigSpec, mine_name: str = "rig", theirs_name: str = "checkpoint"
) -> None:
    """Raise :class:`SpecMismatch` naming both sides unless the specs agree."""
    diffs = mine.diff(theirs)
    if diffs:
        lines = "\n  ".join(diffs)
        raise SpecMismatch(
            f"rig spec mismatch between {mine_name} ({mine.name!r}) and {theirs_name} "
            f"({theirs.name!r}), shown as {mine_name} != {theirs_name}:\n  {lines}"
        )


def default_spec(image_size: int = 128, cameras: tuple[str, ...] = ("front", "wrist")) -> RigSpec:
    return RigSpec(cameras=tuple(CameraSpec(c, image_size, image_size) for c in cameras))
