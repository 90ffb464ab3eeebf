"""Structured (hydra) configuration of the rig: one source of truth.

Groups registered here (``register()``):

* ``rig``: ``sim`` (MuJoCo twin, default) and ``lab`` (the real Panda + RealSense);
* ``robot``: ``sim``, ``franky``;
* ``cameras``: ``sim``, ``realsense``;
* ``teleop``: ``keyboard``, ``spacemouse``, ``gamepad``, ``none``.

Other packages register their own groups (``task`` in ``sim``, ``policy`` in
``policy``, jobs in ``flywheel``) with a ``register()`` of their own; nothing
is registered at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from rig.safety import SafetyConfig
from rig.spec import ActionSpec, CameraSpec, RigSpec


@dataclass
class RobotConfig:
    backend: str = "sim"  # sim | franky
    host: str = "172.16.0.2"  # FCI address (franky backend)
    realtime: bool = False  # False -> franky RealtimeConfig.Ignore
    state_rate_hz: float = 500.0
    translational_stiffness: float = 2000.0  # N/m
    rotational_stiffness: float = 150.0  # N m/rad
    damping_ratio: float = 1.0  # critical damping
    gripper_speed: float = 0.1  # m/s
    gripper_force: float = 20.0  # N
    home_joints: list[float] = field(
        default_factory=lambda: [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
    )
    reconnect_period: float = 1.0  # s between reconnection attempts
    auto_recover: bool = True  # recover from robot errors (reflexes) automatically, at most once per reconnect_period
    twist_mode: str = "velocity"  # target_twist meaning: velocity (m/s, rad/s) | delta (displacement per message)
    gripper: bool = True  # drive the Franka Hand (false: arm only)
    rt_priority: int = 0  # > 0: run the node's control thread SCHED_FIFO at this priority (needs CAP_SYS_NICE)
    # franky backend: libfranka's collision reflex stops the arm above this contact torque per joint (N m)
    collision_torque_thresholds: list[float] = field(default_factory=lambda: [20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0])
    # franky backend: ... and above this contact force / torque at the TCP (N x y z, N m rx ry rz)
    collision_force_thresholds: list[float] = field(default_factory=lambda: [20.0, 20.0, 20.0, 25.0, 25.0, 25.0])
    # franky backend: joint range the impedance tracker repels the arm from (within 0.1 rad), lower end (rad)
    joint_limits_lower: list[float] = field(default_factory=lambda: [-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8])
    # franky backend: ... upper end (rad)
    joint_limits_upper: list[float] = field(default_factory=lambda: [2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8])
    max_tracking_error_translation: float = 0.03  # m of TCP error the franky tracker acts on (bounds its force)
    max_tracking_error_rotation: float = 0.3  # rad of TCP error the franky tracker acts on (bounds its torque)
    home_joint_velocity_scale: float = 0.2  # franky homing speed, a fraction of the joint velocity limits
    safety: SafetyConfig = field(default_factory=SafetyConfig)


@dataclass
class CameraConfig:
    name: str = "front"
    serial: str = ""  # RealSense serial number (realsense backend)
    width: int = 640
    height: int = 480
    fps: float = 30.0
    depth: bool = False


@dataclass
class CamerasConfig:
    backend: str = "sim"  # sim | realsense
    cameras: list[CameraConfig] = field(
        default_factory=lambda: [CameraConfig(name="front"), CameraConfig(name="wrist")]
    )
    # the resolution policies and the store see (images are resized to it)
    policy_image_size: int = 128


@dataclass
class TeleopConfig:
    device: str = "keyboard"  # keyboard | spacemouse | gamepad | none
    rate_hz: float = 50.0
    translation_scale: float = 0.1  # m/s at full deflection
    rotation_scale: float = 0.5  # rad/s at full deflection
    tty_path: str = ""  # keyboard: terminal to read ("" = stdin), e.g. /dev/pts/3 of an SSH session
    release_after: float = 0.5  # s after the operator's last motion until control returns to the policy


@dataclass
class RigConfig:
    name: str = "sim"
    namespace: str = ""
    control_hz: float = 10.0
    chunk_horizon: int = 8
    max_translation: float = 0.02
    max_rotation: float = 0.1
    calibration_id: str = ""
    robot: RobotConfig = field(default_factory=RobotConfig)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)


def rig_spec_from_config(rig: Any) -> RigSpec:
    """The rig spec a rig config implies (cameras at the policy resolution)."""
    size = int(rig.cameras.policy_image_size)
    cams = tuple(CameraSpec(c.name, size, size, bool(c.depth), float(c.fps)) for c in rig.cameras.cameras)
    act = ActionSpec(
        max_translation=float(rig.max_translation),
        max_rotation=float(rig.max_rotation),
        chunk_horizon=int(rig.chunk_horizon),
        control_hz=float(rig.control_hz),
    )
    return RigSpec(name="panda", cameras=cams, action=act)


def _lab_rig() -> RigConfig:
    return RigConfig(
        name="lab",
        robot=RobotConfig(backend="franky", rt_priority=50),
        cameras=CamerasConfig(
            backend="realsense",
            cameras=[
                CameraConfig(name="front", serial=MISSING),
                CameraConfig(name="wrist", serial=MISSING),
            ],
        ),
        teleop=TeleopConfig(device="spacemouse"),
    )


def register() -> ConfigStore:
    """Register the rig groups in hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="rig", name="sim", node=RigConfig())
    cs.store(group="rig", name="lab", node=_lab_rig())
    cs.store(group="rig/robot", name="sim", node=RobotConfig())
    cs.store(group="rig/robot", name="franky", node=RobotConfig(backend="franky"))
    cs.store(group="rig/cameras", name="sim", node=CamerasConfig())
    cs.store(group="rig/cameras", name="realsense", node=_lab_rig().cameras)
    for dev in ("keyboard", "spacemouse", "gamepad", "none"):
        cs.store(group="rig/teleop", name=dev, node=TeleopConfig(device=dev))
    return cs


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


def compose(config_name: str, overrides: list[str] | None = None) -> Any:
    """Compose a registered config outside a hydra app (tests, notebooks).

    Callers register the groups they need first. An unknown group option fails
    with hydra's message that lists the valid names.
    """
    from hydra import compose as _compose
    from hydra import initialize

    with initialize(version_base=None, config_path=None):
        return _compose(config_name=config_name, overrides=list(overrides or []))
