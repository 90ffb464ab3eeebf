"""RL specialists for distillation, trained per task on state-only observations with privileged object state.

Three kinds (``algo``), a module each:

* ``sac`` (:mod:`.rl`) -- HIL-SERL exactly as ``flywheel-rl`` runs it (SAC + RLPD
  with the task's ``rl_task`` preset), seeded with human-like demos and
  corrected by a simulated intervener; resumes from its own checkpoint;
  ``rl_run=DIR`` uses a finished run instead. Sample-hungry: thousands of env steps.
* ``sil`` (:mod:`.sil`) -- self-imitation learning (Oh et al. 2018, in its
  simplest, success-filtered form): an MLP behaviour-cloned from human-like
  demos, then refitted on its own shortest successes. Cheap enough for the CPU demo.
* ``scripted`` (:mod:`.scripted`) -- no learning: the scripted operator at noise
  0 stands in for a converged specialist. Reports label it as such.

:func:`train` trains (or resumes) one; :func:`load_agent` gives its agent, which
acts deterministically for collection (:mod:`flywheel.distill.collect`), where the
recorded episode keeps the camera images the generalist trains on. Every
specialist rolls out through :mod:`flywheel.rollout`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flywheel.distill.specialist.rl import rl_overrides, rl_preset_for

__all__ = ["SpecialistConfig", "train", "load_agent", "rl_overrides", "rl_preset_for", "ALGOS"]

ALGOS = ("sil", "sac", "scripted")


@dataclass
class SpecialistConfig:
    algo: str = "sil"  # sil | sac | scripted
    # sac: HIL-SERL through flywheel-rl (its rl_task preset: arm dims, gripper, discount, network)
    env_steps: int = 3000  # sac: online env steps of RL
    rl_task: str = ""  # sac: the flywheel-rl preset; "" -> by task kind (peg_insert, lift_cube, else none)
    rl_run: str = ""  # sac: a finished flywheel-rl out_dir to use instead of training
    rl_overrides: list[str] = field(default_factory=list)  # sac: more flywheel-rl overrides
    checkpoint_every: int = 1000  # sac
    generations: int = 6  # sil: rollout -> refit generations
    rollouts_per_generation: int = 16  # sil
    exploration_noise: float = 0.05  # sil: Gaussian std on the translation dims (insertion needs ~1 mm)
    keep_best: int = 40  # sil: the shortest successes kept for refitting
    bc_steps: int = 1000  # sil: MLP fitting steps (first fit; later fits use half)
    hidden_dims: list[int] = field(default_factory=lambda: [128, 128])  # sil
    demos: int = 20  # human-like demos (sac: RLPD's demo buffer; sil: the first fit)
    demo_noise: float = 1.0
    intervene: bool = True  # sac: simulated operator corrections while training (HIL-SERL)
    eval_episodes: int = 20
    seed: int = 0


def config_dict(cfg: Any) -> dict[str, Any]:
    """A specialist config (dataclass or omegaconf) as a plain dict, for the specialist's record."""
    if hasattr(cfg, "__dataclass_fields__"):
        return asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def train(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the specialist of ``task`` with ``cfg.algo``; returns its record (see :func:`load_agent`)."""
    if cfg.algo == "sil":
        from flywheel.distill.specialist.sil import train_sil

        return train_sil(task, cfg, workdir, progress=progress)
    if cfg.algo == "sac":
        from flywheel.distill.specialist.rl import train_rl

        return train_rl(task, cfg, workdir, progress=progress)
    if cfg.algo == "scripted":
        from flywheel.distill.specialist.scripted import train_scripted

        return train_scripted(task, cfg)
    raise ValueError(f"specialist.algo={cfg.algo!r}: use one of {', '.join(ALGOS)}")


def load_agent(task: str, info: dict[str, Any]) -> Any:
    """The agent of a trained specialist (``info``: what :func:`train` returned)."""
    cfg = SpecialistConfig(**info["config"])
    if cfg.algo == "scripted":
        from flywheel.distill.specialist.scripted import ScriptedAgent

        return ScriptedAgent()
    if cfg.algo == "sil":
        from flywheel.distill.specialist.sil import SILAgent

        return SILAgent(Path(info["checkpoint"]), cfg)
    from flywheel.distill.specialist.rl import RLSpecialistAgent

    return RLSpecialistAgent(Path(info["checkpoint"]).parent)
