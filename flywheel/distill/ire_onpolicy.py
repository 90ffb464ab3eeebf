"""iRe-VLA stage 1 with on-policy RL (``method.stage1=ppo``, the paper's choice; any ``flywheel-vla-rl`` algorithm).

The parent's encoder stays frozen (the compact family's cached features) and its action head becomes the mean of
``flywheel-vla-rl``'s Gaussian chunk policy; the algorithm trains it for ``method.stage1_env_steps`` on the RL
task. Its rollouts are recorded to the iRe-VLA store under the collection ``ire/<round>/<task>/<algo>``, where
stage 2 finds the successes; the run (``<stage dir>/vla_rl``, resumed from there) exports the trained head as a
generalist checkpoint (``vla_rl/generalist``) for stage 2 and the evaluations. With ``method.intervene`` (the
default) the simulated operator corrects the rollouts (at most ``method.max_interventions`` takeovers per episode,
as the AWR stage, :func:`flywheel.distill.ire_vla.rl_stage`): its corrections are DPO's state pairs, or, for the
on-policy algorithms, out of their ratio terms and fitted after each update (:class:`flywheel.vla_rl.common.
Algorithm`); the assisted successes reach stage 2 as the AWR stage's do. ``method.intervene=false``: unassisted
(the sixteenth session's PPO stage 1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flywheel.distill import collect

log = logging.getLogger(__name__)


def check_stage1(name: str) -> str:
    """``method.stage1``: awr or an algorithm of ``flywheel-vla-rl`` (ppo, grpo, rloo, gspo, gfpo, dpo)."""
    from flywheel.vla_rl import ALGORITHMS

    ok = ["awr", *ALGORITHMS]
    if name not in ok:
        raise ValueError(f"method.stage1={name!r}: use one of {', '.join(ok)}")
    return name


def collection_name(stage_dir: str | Path, task: str, algo: str) -> str:
    return f"ire/{Path(stage_dir).name}/{task}/{algo}"


def onpolicy_stage(parent: str | Path, store: Any, task: str, out_dir: Path, cfg: Any, g: Any, seed: int = 0,
                   progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Stage 1 on ``task`` with ``cfg.stage1`` (ppo, grpo, rloo, ..., dpo): returns (generalist checkpoint, summary)."""
    from flywheel.distill.compact import is_compact
    from flywheel.vla_rl.cli import make_config, run

    final, summary_file = out_dir / "vla_rl" / "generalist", out_dir / "rl_stage.json"
    if summary_file.exists() and (final / "policy_config.json").exists():
        return final, json.loads(summary_file.read_text())
    if not is_compact(parent):
        raise ValueError(f"method.stage1={cfg.stage1}: on-policy stage 1 trains a compact generalist's head "
                         f"(policy/compact.py); {parent} is not one (use method.stage1=awr)")
    name = collection_name(out_dir, task, cfg.stage1)
    overrides = [f"policy={parent}", f"tasks=[{task}]", f"env_steps={int(cfg.stage1_env_steps)}",
                 f"exec_horizon={int(g.execute)}", f"out_dir={out_dir / 'vla_rl'}", f"seed={int(seed)}",
                 f"record_collection={name}", f"device={_device(cfg)}", f"train.progress={str(progress).lower()}",
                 "head.fixed_dims=[6]", "head.sample_executed=true",
                 # the job evaluates each stage itself: the run's own evaluations stay small
                 "train.eval_every=0", "train.eval_episodes=10", "train.final_eval_episodes=10", "train.keep=last",
                 *(["intervention.enabled=true", f"intervention.max_interventions={int(cfg.max_interventions)}"]
                   if cfg.intervene else []),
                 *list(cfg.stage1_overrides)]
    res = run(make_config(str(cfg.stage1), overrides), store=store)  # exports the trained head: ``final``
    eps = collect.select(store, task=task, source="rl", success=None, collection=name)
    summary = {"task": task, "algo": str(cfg.stage1), "env_steps": res["env_steps"],
               "history": res.get("evals", []), "episodes": eps,
               "successes": [i for i in eps if store.record(i).success]}
    summary_file.write_text(json.dumps(summary, indent=2, default=str))
    log.info("iRe-VLA stage 1 (%s) on %s: %d episodes, %d successes, held-out %s -> %s", cfg.stage1, task,
             len(eps), len(summary["successes"]), res["initial_eval"]["success"], res["final_eval"]["success"])
    return final, summary


def _device(cfg: Any) -> str:
    from policy.device import resolve_device

    return str(resolve_device(getattr(cfg, "device", "cpu")))
