"""Task registry: every task variant, its group, and the gymnasium ids under ``PandaRig/``.

The three groups follow iRe-VLA: ``expert`` tasks have demonstrations, ``rl``
tasks are learned online, ``unseen`` tasks are held out (new colours, positions
and combinations) to measure generalisation. Gymnasium registration happens on
the first ``sim.make``/``sim.list_tasks`` call, not at import.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from sim.tasks import TaskDef

NAMESPACE = "PandaRig"
GROUPS = ("expert", "rl", "unseen")


def _lift(color: str, group: str, **params: Any) -> TaskDef:
    return TaskDef(f"{NAMESPACE}/LiftCube-{color.capitalize()}-v0", "lift", group,
                   f"pick up the {color} cube", color, params, max_episode_steps=60)


_DEFS: list[TaskDef] = [
    # expert tasks (demonstrations exist)
    _lift("red", "expert"),
    _lift("green", "expert"),
    TaskDef(f"{NAMESPACE}/PlaceCubeBin-Red-v0", "place", "expert", "put the red cube in the bin", "red",
            {"goal": "bin"}, max_episode_steps=100),
    TaskDef(f"{NAMESPACE}/PushCube-Blue-v0", "push", "expert", "push the blue cube onto the yellow circle",
            "blue", {"goal_color": "yellow"}, max_episode_steps=80),
    # RL tasks (learned online)
    TaskDef(f"{NAMESPACE}/PegInsert-v0", "insert", "rl", "insert the peg into the hole", "orange",
            max_episode_steps=50),
    _lift("blue", "rl"),
    TaskDef(f"{NAMESPACE}/PlaceCubeTarget-Green-v0", "place", "rl",
            "place the green cube on the orange circle", "green", {"goal": "target", "goal_color": "orange"},
            max_episode_steps=100),
    # held-out (unseen) tasks: new colours, combinations and positions
    _lift("yellow", "unseen"),
    TaskDef(f"{NAMESPACE}/PlaceCubeBin-Purple-v0", "place", "unseen", "put the purple cube in the bin",
            "purple", {"goal": "bin"}, max_episode_steps=100),
    TaskDef(f"{NAMESPACE}/PushCube-Red-Far-v0", "push", "unseen", "push the red cube onto the green circle",
            "red", {"goal_color": "green", "distance": (0.15, 0.2), "region": ((0.4, -0.15), (0.55, 0.15))},
            max_episode_steps=100),
]

TASKS: dict[str, TaskDef] = {t.task_id: t for t in _DEFS}


def get(task_id: str) -> TaskDef:
    if task_id not in TASKS:
        short = {t.split("/", 1)[1].rsplit("-v", 1)[0]: t for t in TASKS}
        if task_id in short:
            return TASKS[short[task_id]]
        raise KeyError(f"unknown sim task {task_id!r}; registered: {sorted(TASKS)}")
    return TASKS[task_id]


def register_envs() -> None:
    """Register every task as a gymnasium id (idempotent)."""
    for t in _DEFS:
        if t.task_id in gym.registry:
            continue
        gym.register(
            id=t.task_id,
            entry_point="sim.env:PandaRigEnv",
            kwargs={"task": t.task_id},
            max_episode_steps=t.max_episode_steps,
            additional_wrappers=(),
        )


def list_tasks(group: str | None = None) -> list[str]:
    """Registered task ids, optionally only one group (expert, rl, unseen)."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"group={group!r}: use one of {GROUPS}")
    register_envs()
    return [t.task_id for t in _DEFS if group is None or t.group == group]
