"""The ``scripted`` specialist: the scripted operator at noise 0 stands in for a converged specialist (no learning)."""

from __future__ import annotations

from typing import Any

import numpy as np


def train_scripted(task: str, cfg: Any) -> dict[str, Any]:
    """Nothing to train: the record says so (not evaluated, no checkpoint)."""
    from flywheel.distill.specialist import config_dict

    return {"task": task, "algo": "scripted", "env_steps": 0, "eval_success_rate": float("nan"),
            "eval_episodes": 0, "checkpoint": "", "config": config_dict(cfg)}


class ScriptedAgent:
    """The scripted operator at noise 0, bound to the collection env with :meth:`bind` before acting."""

    def __init__(self) -> None:
        self.expert: Any = None

    def bind(self, env: Any) -> None:
        import sim

        self.expert = sim.expert(env, noise=0.0)

    def reset(self) -> None:
        if self.expert is not None:
            self.expert.reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self.expert is None:
            raise RuntimeError("the scripted specialist needs bind(env) before acting")
        return np.asarray(self.expert.act(obs), np.float32)
