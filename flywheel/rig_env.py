"""The rig as the flywheel's env (``flywheel-rl env.kind=rig``, ``flywheel-eval env=rig``).

Both build :class:`robot.env.RosRigEnv` on a running ``rig-up`` graph (the lab rig, or ``rig=sim``: the same
code path) with a reset routine between episodes (:mod:`robot.reset`: none, scripted or operator) and, when a
reward classifier is given, the classifier as the env's success test (the env then announces ``success`` on
``episode/event``; otherwise the operator's success / failure events end episodes, and a timeout is a
failure; with ``review_timeout`` the operator confirms or rejects each success the classifier claims). The
``rig-up`` recorder node (``record_path=``) records every episode with its label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rig.spec import ActionSpec, CameraSpec, RigSpec
from robot.reset import ResetConfig, make_reset


def reset_config(values: Any) -> ResetConfig:
    """A :class:`ResetConfig` from a dataclass, a mapping or a hydra node."""
    if isinstance(values, ResetConfig):
        return values
    if hasattr(values, "_metadata"):  # an omegaconf node
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(values, resolve=True)
    return ResetConfig(**dict(values or {}))


def make_rig_env(spec: RigSpec, *, namespace: str = "", reset: Any = None, max_episode_steps: int = 200,
                 reward_fn: Callable[[Mapping[str, np.ndarray]], float] | None = None, instruction: str = "",
                 prefix: str = "reset", review_timeout: float = 0.0) -> Any:
    """A connected :class:`robot.env.RosRigEnv` with the reset routine of ``reset`` (errors name ``prefix.*``);
    ``review_timeout`` > 0: the reward function's successes are put to the operator first."""
    from robot.env import RosEnvConfig, RosRigEnv

    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps={max_episode_steps}: must be >= 1")
    routine = make_reset(reset_config(reset), prefix)
    env = RosRigEnv(spec, RosEnvConfig(namespace=namespace, max_episode_steps=int(max_episode_steps),
                                       review_timeout=float(review_timeout)),
                    task_reset=routine, reward_fn=reward_fn, instruction=instruction)
    return env.connect()


def rl_spec(e: Any) -> RigSpec:
    """The rig spec of ``flywheel-rl``'s ``env`` config: its cameras at ``image_size``, its ``control_hz``."""
    cams = tuple(CameraSpec(str(c), int(e.image_size), int(e.image_size)) for c in e.cameras)
    return RigSpec(cameras=cams, action=ActionSpec(control_hz=float(e.control_hz)))


def check_rl_on_rig(cfg: Any) -> None:
    """What ``flywheel-rl`` cannot do on the rig, refused naming the key and the fix."""
    e, role = cfg.env, getattr(cfg.role, "name", "local")
    if e.factory:
        raise ValueError(f"env.kind=rig with env.factory={e.factory!r}: the factory builds the env; give one of them")
    if e.privileged_state:
        raise ValueError("env.privileged_state=true with env.kind=rig: the rig has no object poses "
                         "(state/privileged is the simulator's); set env.privileged_state=false and take "
                         "state keys the rig has (rl_task=none, or agent.state_keys=[state/ee_pos,...])")
    if role in ("local", "actor") and cfg.intervention.enabled:
        raise ValueError("intervention.enabled=true with env.kind=rig: that is the simulated operator; on the rig "
                         "the operator intervenes with the teleop device (recorded by the env adapter): "
                         "set intervention.enabled=false")
    if role in ("local", "learner") and int(cfg.demos.num) > 0 and not cfg.demos.store:
        raise ValueError("demos.num>0 with env.kind=rig and no demos.store: the scripted demonstrator is the "
                         "simulator's; give demos.store=<the operator's episodes> or demos.num=0")
    if getattr(cfg.role, "record_to", ""):
        raise ValueError("role.record_to with env.kind=rig: the rig-up recorder node records every rig episode "
                         "(rig-up record_path=...); leave role.record_to empty")


def rl_rig_env(cfg: Any, reward_fn: Callable[[Mapping[str, np.ndarray]], float] | None = None,
               review_timeout: float = 0.0) -> Any:
    """``flywheel-rl``'s env on the rig (``env.kind=rig``), after :func:`check_rl_on_rig`."""
    check_rl_on_rig(cfg)
    e = cfg.env
    return make_rig_env(rl_spec(e), namespace=str(e.namespace), reset=e.reset,
                        max_episode_steps=int(e.max_episode_steps), reward_fn=reward_fn, prefix="env.reset",
                        review_timeout=review_timeout)
