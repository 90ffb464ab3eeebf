"""The MuJoCo twin of the rig: SimRig, the task suite, scripted experts and operators.

Public API (imports are lazy so ``import sim`` stays cheap and side-effect free)::

    sim.list_tasks(group=None) -> list[str]      (also registers the gymnasium ids)
    sim.make(task_id, **overrides) -> gymnasium.Env
    sim.make_vec(task_id, num_envs, vectorization_mode="sync", **overrides)
    sim.expert(env, noise=0.0, seed=None) -> ScriptedExpert (reset(), act(obs))
    sim.SimulatedIntervener(env, expert, ...) (reset(), step(obs, policy_action))
    sim.rig.SimRig, sim.assets.panda_mjcf_path()
"""

from __future__ import annotations

from typing import Any

__all__ = ["list_tasks", "make", "make_vec", "expert", "SimulatedIntervener", "task_info", "register_envs"]


def register_envs() -> None:
    """Register the ``PandaRig/*`` gymnasium ids (for plain ``gymnasium.make``; ``sim.make`` does it)."""
    from sim.registry import register_envs as _re

    _re()


def list_tasks(group: str | None = None) -> list[str]:
    """Registered task ids (``PandaRig/...``), optionally one group: expert, rl or unseen."""
    from sim.registry import list_tasks as _lt

    return _lt(group)


def task_info(task_id: str) -> dict[str, Any]:
    """Registry metadata of a task: id, kind, group, instruction, colour, max_episode_steps."""
    from dataclasses import asdict

    from sim.registry import get

    return asdict(get(task_id))


def make(task_id: str, **overrides: Any):
    """A gymnasium env for ``task_id`` (full id or short name like ``LiftCube-Red``).

    Overrides go to :class:`sim.env.PandaRigEnv` (``cameras=()``, ``image_size``,
    ``control_hz``, ``randomization``...) and ``max_episode_steps``.
    """
    import gymnasium as gym

    from sim.registry import get, register_envs

    register_envs()
    return gym.make(get(task_id).task_id, **overrides)


def make_vec(task_id: str, num_envs: int = 2, vectorization_mode: str = "sync",
             vector_kwargs: dict | None = None, **overrides: Any):
    """A gymnasium vector env (``sync`` or ``async``) of ``num_envs`` copies of the task.

    ``async`` workers start with the ``spawn`` context by default: a process
    forked after the parent made an EGL context deadlocks when it renders.
    """
    import gymnasium as gym

    from sim.registry import get, register_envs

    register_envs()
    vk = dict(vector_kwargs or {})
    if vectorization_mode == "async":
        vk.setdefault("context", "spawn")
    return gym.make_vec(get(task_id).task_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                        vector_kwargs=vk, **overrides)


def expert(env, noise: float = 0.0, seed: int | None = None):
    """A scripted operator for ``env``: noise 0 is near perfect, ~1 is human-like."""
    from sim.experts import ScriptedExpert

    return ScriptedExpert(env, noise=noise, seed=seed)


def __getattr__(name: str):
    if name == "SimulatedIntervener":
        from sim.intervener import SimulatedIntervener

        return SimulatedIntervener
    if name in ("rig", "assets", "env", "tasks", "registry", "config", "model", "experts", "intervener"):
        import importlib

        return importlib.import_module(f"sim.{name}")
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
