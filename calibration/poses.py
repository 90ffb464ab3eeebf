"""Generated sets of safe calibration poses (base -> TCP), shared by the rig collection and the sim.

* eye_in_hand: TCP positions on a spherical cap above a look-at point (the
  board), the TCP z axis (the wrist camera's viewing direction) aimed at it,
  with a random yaw about that axis;
* eye_to_hand: TCP positions in a box around a centre, the orientation a base
  orientation turned by random tilts about the TCP x/y axes and a yaw about z,
  so the held board stays facing the fixed camera.

Every pose is checked against the rig's safety limits (workspace box and
largest angle from the nominal orientation) with a margin, so the franka
node's safety filter never has to clip a calibration target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rig.geometry import matrix_to_quat, quat_angle, quat_mul, rotvec_to_quat
from rig.safety import SafetyConfig


class PoseGenerationError(ValueError):
    """No safe pose set matches the request."""


@dataclass
class PoseSetConfig:
    mode: str = "eye_in_hand"
    n: int = 20
    seed: int = 0
    # eye_in_hand: the point the camera looks at (the board centre), base frame, m
    look_at: list[float] = field(default_factory=lambda: [0.5, 0.0, 0.0])
    distance: list[float] = field(default_factory=lambda: [0.35, 0.50])  # m from look_at
    # eye_to_hand: centre and half-extent of the TCP positions, m; base orientation (x, y, z, w)
    center: list[float] = field(default_factory=lambda: [0.5, 0.0, 0.3])
    spread: list[float] = field(default_factory=lambda: [0.08, 0.12, 0.08])
    base_quat: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0, 0.0])
    max_tilt_deg: float = 25.0  # view direction from vertical (eye_in_hand) / tilt range (eye_to_hand)
    yaw_range_deg: float = 40.0  # +- yaw about the TCP z axis
    margin: float = 0.02  # m inside the workspace box; also 0.05 rad inside max_tilt


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Rotation (3x3) whose z axis points from ``eye`` to ``target`` and y axis is as close to -up as it gets
    (an OpenCV camera looking at the target, image upright)."""
    z = np.asarray(target, np.float64) - np.asarray(eye, np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, np.float64), z)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def is_safe(pos: np.ndarray, quat: np.ndarray, safety: SafetyConfig, margin: float = 0.02) -> bool:
    lo = np.asarray(safety.workspace_min) + margin
    hi = np.asarray(safety.workspace_max) - margin
    tilt = float(quat_angle(quat, np.asarray(safety.nominal_quat, np.float64)))
    return bool(np.all(pos >= lo) and np.all(pos <= hi) and tilt <= safety.max_tilt - 0.05)


def _eye_in_hand_pose(cfg: PoseSetConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(cfg.look_at, np.float64)
    theta = np.radians(cfg.max_tilt_deg) * np.sqrt(rng.uniform())
    phi = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(*cfg.distance)
    eye = target + d * np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    z = (target - eye) / d
    x0 = np.array([1.0, 0.0, 0.0]) - z[0] * z  # keep the nominal heading (TCP x along base x)
    x0 /= np.linalg.norm(x0)
    yaw = np.radians(rng.uniform(-cfg.yaw_range_deg, cfg.yaw_range_deg))
    x = np.cos(yaw) * x0 + np.sin(yaw) * np.cross(z, x0)
    return eye, matrix_to_quat(np.stack([x, np.cross(z, x), z], axis=1))


def _eye_to_hand_pose(cfg: PoseSetConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(cfg.center, np.float64) + rng.uniform(-1, 1, 3) * np.asarray(cfg.spread, np.float64)
    t = np.radians(cfg.max_tilt_deg)
    rv = np.array([rng.uniform(-t, t), rng.uniform(-t, t), np.radians(rng.uniform(-1, 1) * cfg.yaw_range_deg)])
    quat = quat_mul(np.asarray(cfg.base_quat, np.float64), rotvec_to_quat(rv))  # turn in the TCP frame
    return pos, quat / np.linalg.norm(quat)


def generate(cfg: PoseSetConfig, safety: SafetyConfig | None = None,
             max_tries: int = 10000) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cfg.n`` safe (position, quaternion xyzw) TCP poses in the base frame, reproducible by seed."""
    if cfg.mode not in ("eye_in_hand", "eye_to_hand"):
        raise PoseGenerationError(f"mode {cfg.mode!r} is not eye_in_hand or eye_to_hand")
    safety = safety or SafetyConfig()
    rng = np.random.default_rng(cfg.seed)
    make = _eye_in_hand_pose if cfg.mode == "eye_in_hand" else _eye_to_hand_pose
    out = []
    for _ in range(max_tries):
        pos, quat = make(cfg, rng)
        if is_safe(pos, quat, safety, cfg.margin):
            out.append((pos, quat))
            if len(out) == cfg.n:
                return out
    raise PoseGenerationError(
        f"only {len(out)} of {cfg.n} generated poses are inside the safety limits (workspace "
        f"{safety.workspace_min}..{safety.workspace_max}, max_tilt {safety.max_tilt} rad); move look_at/center "
        "into the workspace or reduce distance, spread, max_tilt_deg or yaw_range_deg"
    )

