"""The ``sac`` specialist: HIL-SERL exactly as ``flywheel-rl`` runs it, and its agent acting on camera envs.

Training is a ``flywheel-rl role=local`` run (:func:`flywheel.rl.app.run`) in
``<workdir>/rl`` with the task's ``rl_task`` preset (controlled arm dims, gripper
critic, discount), seeded with human-like demos and corrected by a simulated
intervener; it resumes from its own checkpoint when killed. ``rl_run=DIR`` uses a
finished run instead (e.g. one trained on the GPU machine).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def rl_preset_for(task: str) -> str:
    """The ``flywheel-rl`` task preset (``rl_task``) for a sim task id: its arm dims, gripper and discount."""
    name = task.split("/")[-1]
    if name.startswith("PegInsert"):
        return "peg_insert"
    if name.startswith("LiftCube"):
        return "lift_cube"
    if name.startswith("PlaceCube"):
        return "place_cube"
    return "none"


def rl_overrides(task: str, cfg: Any, out_dir: Path) -> list[str]:
    """The ``flywheel-rl`` command line (hydra overrides) that trains this specialist."""
    preset = cfg.rl_task or rl_preset_for(task)
    return [f"rl_task={preset}", f"env.task={task}", f"out_dir={out_dir}", f"total_steps={int(cfg.env_steps)}",
            f"seed={int(cfg.seed)}", f"demos.num={int(cfg.demos)}", f"demos.noise={float(cfg.demo_noise)}",
            f"intervention.enabled={str(bool(cfg.intervene)).lower()}",
            f"learner.checkpoint_every={int(cfg.checkpoint_every)}", "learner.eval_every=0",
            f"role.final_eval_episodes={int(cfg.eval_episodes)}", "progress=false", *list(cfg.rl_overrides)]


def train_rl(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """HIL-SERL (``flywheel-rl``, role=local) on the task's state-only sim env; resumes a killed run.

    ``cfg.rl_run`` names a finished ``flywheel-rl`` run to use as the specialist instead of training one.
    """
    from flywheel.distill.specialist import config_dict

    run_dir = Path(cfg.rl_run) if cfg.rl_run else Path(workdir) / "rl"
    results = run_dir / "results.json"
    if not results.exists():
        if cfg.rl_run:
            raise FileNotFoundError(f"specialist.rl_run={cfg.rl_run}: no results.json there (not a finished "
                                    "flywheel-rl run)")
        from flywheel.rl.app import compose, run

        overrides = rl_overrides(task, cfg, run_dir)
        log.info("specialist %s: flywheel-rl %s", task, " ".join(overrides))
        run(compose(overrides))
    res = _results(run_dir)
    return {"task": task, "algo": "sac", "env_steps": res["env_steps"], "episodes": res["episodes"],
            "intervention_rate": res["intervention_rate"], "eval_success_rate": res["final_eval"]["success_rate"],
            "eval_episodes": int(res["config"]["role"]["final_eval_episodes"]),
            "checkpoint": str(run_dir / "checkpoint"), "config": config_dict(cfg)}


def _results(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``results.json``, its config in the current form (a run from before the role and
    algo groups is read too)."""
    from flywheel.rl.app import upgrade_config

    res = json.loads((run_dir / "results.json").read_text())
    return {**res, "config": upgrade_config(res["config"])}


class RLSpecialistAgent:
    """A trained ``flywheel-rl`` agent, acting deterministically on the state keys of a (camera) env."""

    def __init__(self, run_dir: str | Path):
        from omegaconf import OmegaConf

        from flywheel.rl.actor import SACActing
        from flywheel.rl.build import build_agent, make_env
        from flywheel.rl.learner import load_agent_weights

        run_dir = Path(run_dir)
        rl_cfg = OmegaConf.create(_results(run_dir)["config"])
        env = make_env(rl_cfg)  # the observation space the agent was built for
        try:
            self.agent = build_agent(rl_cfg, env)
        finally:
            env.close()
        self._featurizer = None  # a pixel specialist (agent.encoder=pretrained) adds the trunk's features itself
        if self.agent.cfg.encoder == "pretrained":
            from flywheel.rl.build import featurizer

            self._featurizer = featurizer(rl_cfg)
        load_agent_weights(self.agent, run_dir / "checkpoint")
        self.agent.eval()
        self._acting = SACActing(self.agent, deterministic=True)

    def reset(self) -> None:
        self._acting.reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self._featurizer is not None:
            from flywheel.rl.pretrained import add_features, image_key

            obs = add_features(obs, self._featurizer, [image_key(k) for k in self.agent.image_keys])
        a = self._acting.act(obs)
        self._acting.grip = float(a[6])  # its own gripper command stays in force
        return a
