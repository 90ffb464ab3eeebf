"""Hydra ``task`` config group: which sim task an app runs and how it is rendered/randomised.

``register()`` stores one option per registered task under group ``task``,
named by the short task name (``task=LiftCube-Red``); apps call it explicitly
(nothing is registered at import). ``env_kwargs(cfg)`` turns a composed
``TaskConfig`` into ``sim.make`` overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RandomizationConfig:
    """Domain randomisation applied at every reset (all off gives the nominal scene)."""

    object_poses: bool = True  # the task's reset distribution; False: fixed nominal poses
    color_jitter: float = 0.04  # +- per RGB channel around each object's colour
    light_jitter: float = 0.15  # relative +- on light intensities
    camera_jitter: float = 0.005  # m, +- on the front camera position
    friction_range: list[float] = field(default_factory=lambda: [0.8, 1.2])  # scale on all contact friction


@dataclass
class TaskConfig:
    task_id: str = "PandaRig/LiftCube-Red-v0"
    image_size: int = 128  # square images for learning; the camera nodes render 640x480 themselves
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    depth: bool = False
    control_hz: float = 10.0
    physics_hz: float = 500.0
    max_episode_steps: int | None = None  # None: the task's default
    privileged_state: bool = False  # add "state/privileged" (object and goal poses) for state-only RL
    visual: str = "primitive"  # primitive (fast) | mesh (gym-hil Panda meshes)
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)


def env_kwargs(cfg: Any) -> dict[str, Any]:
    """``sim.make(cfg.task_id, **env_kwargs(cfg))`` for a TaskConfig (dataclass or DictConfig)."""
    if not isinstance(cfg, TaskConfig):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_object(cfg) if OmegaConf.is_config(cfg) else TaskConfig(**dict(cfg))
    d = asdict(cfg)
    d.pop("task_id")
    if d["max_episode_steps"] is None:
        d.pop("max_episode_steps")
    d["cameras"] = tuple(d["cameras"])
    return d


def register() -> None:
    """Store every registered task as an option of hydra group ``task`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from sim.registry import TASKS

    cs = ConfigStore.instance()
    for task_id in TASKS:
        short = task_id.split("/", 1)[1].rsplit("-v", 1)[0]
        cs.store(group="task", name=short, node=TaskConfig(task_id=task_id))
