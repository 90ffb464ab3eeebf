"""The training loop of ``flywheel-vla-rl``: collect, learn, evaluate, checkpoint; resumable.

Each iteration: the engine collects ``groups_per_iter`` groups of ``group_size`` rollouts (the
process reward model shapes the rewards and supplies the progress when configured), the
algorithm updates on them, scalars go to TensorBoard (``tb/``) and the history. Every
``eval_every`` env steps (and at the start and the end) the policy is evaluated deterministically
on held-out seeds of every evaluation task. After every iteration ``checkpoint/`` is rewritten
atomically (policy, optimiser, engine RNG and seed counter, history); a run started again with the
same ``out_dir`` resumes from it. At the end: ``policy/`` (the policy the run hands on), ``curve.png``,
``report.md`` and ``results.json``.

``keep`` says which policy is handed on: ``best`` (the default) the one of the best held-out evaluation
(the mean over the evaluation tasks; the earliest of ties, so a run that never beats its start hands on
the start), snapshotted to ``best/`` whenever an evaluation beats every earlier one; ``last`` the policy
at the end of the budget. ``checkpoint/`` always holds the last (a longer budget resumes from it). The
evaluation that chose the best also measured it, so its success is optimistic: the promotion gate
evaluates a candidate again on its own seeds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from flywheel.registry import atomic_write_text
from flywheel.vla_rl.checkpoint import (
    META,
    WEIGHTS,
    optimizer_state,
    optimizer_tensors,
    policy_tensors,
    save_policy,
)
from flywheel.vla_rl.common import episode_stats
from flywheel.vla_rl.engine import RolloutEngine

log = logging.getLogger("flywheel.vla_rl")

TB_KEYS = ("success", "return", "episode_length", "success_length", "approx_kl", "kl_ref", "clip_frac",
           "groups_rejected", "kept_fraction", "value_loss", "pref_acc", "state_pref_acc", "state_pairs", "intervened",
           "anchor", "retain", "loss", "env_steps_per_s")
RETAIN_SEED = 900_000  # the retained states' seeds: below the held-out seeds, far above any run's training seeds


@dataclass
class TrainConfig:
    env_steps: int = 30_000  # the budget
    eval_every: int = 5_000  # env steps between held-out evaluations (0: start and end only)
    eval_episodes: int = 50
    final_eval_episodes: int = 100
    eval_seed: int = 1_000_000  # held-out seeds start here (training seeds count from the run seed)
    eval_tasks: list[str] = field(default_factory=list)  # [] -> the training tasks (add expert tasks: forgetting)
    # tasks whose reference behaviour is held (algo.retain_coef): the starting policy's deterministic decisions on
    # retain_episodes seeds of each, from RETAIN_SEED (neither training nor held-out seeds), collected once
    retain_tasks: list[str] = field(default_factory=list)
    retain_episodes: int = 8
    keep: str = "best"  # the policy handed on (policy/, the registry): best (held-out evaluation) | last
    progress: bool = True

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"train.keep={self.keep!r}: best (the best held-out evaluation's policy) or last")


class Trainer:
    def __init__(self, policy: Any, algo: Any, engine: RolloutEngine, cfg: TrainConfig, out_dir: str | Path | None,
                 *, prm: Any = None, prm_coef: float = 0.0, prm_gamma: float = 0.99,
                 run_info: dict[str, Any] | None = None) -> None:
        self.policy, self.algo, self.engine, self.cfg = policy, algo, engine, cfg
        self.out = None if out_dir is None else Path(out_dir)
        self.prm, self.prm_coef, self.prm_gamma = prm, prm_coef, prm_gamma
        self.run_info = dict(run_info or {})
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.rollout_s = 0.0
        self.update_s = 0.0
        self._writer: Any = None
        self.resumed = False
        coef = float(getattr(algo.cfg, "retain_coef", 0.0))
        if bool(cfg.retain_tasks) != (coef > 0):
            raise ValueError(f"train.retain_tasks={list(cfg.retain_tasks)} with algo.retain_coef={coef}: give both "
                             "(the tasks whose behaviour to hold and its weight) or neither")
        if cfg.retain_tasks and cfg.retain_episodes < 1:
            raise ValueError(f"train.retain_episodes={cfg.retain_episodes}: must be >= 1")

    # ------------------------------------------------------------------ logging
    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.out is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tb"))
        self._writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.close()

    # --------------------------------------------------------------- evaluation
    def evaluate(self, episodes: int) -> dict[str, Any]:
        """Deterministic success per task on held-out seeds (the same seeds every time)."""
        tasks = list(self.cfg.eval_tasks) or list(self.engine.tasks)
        rec, self.engine.recorder = self.engine.recorder, None
        per_task, lengths = {}, []
        try:
            for t in tasks:
                per_task[t], length = self.task_success(t, episodes)
                if length is not None:
                    lengths.append(length)
        finally:
            self.engine.recorder = rec
        out = {"env_steps": self.engine.env_steps, "iteration": self.iteration, "episodes": episodes,
               "success": float(np.mean(list(per_task.values()))), "per_task": per_task,
               "success_length": float(np.mean(lengths)) if lengths else None}
        self.evals.append(out)
        self._snapshot_if_best(out)
        self.scalar("eval/success", out["success"], self.engine.env_steps)
        for t, v in per_task.items():
            self.scalar(f"eval/success/{t.split('/')[-1]}", v, self.engine.env_steps)
        log.info("eval at %d env steps: success %.3f %s", self.engine.env_steps, out["success"], per_task)
        return out

    def task_success(self, task: str, episodes: int) -> tuple[float, float | None]:
        """(success rate, mean successful length or None) of the deterministic policy on ``task``'s held-out seeds."""
        seeds = list(range(self.cfg.eval_seed, self.cfg.eval_seed + episodes))
        b = self.engine.collect(episodes, group_size=1, deterministic=True, seeds=seeds, tasks=[task] * episodes,
                                count=False, assisted=False)
        length = float(b.length[b.success].float().mean()) if b.success.any() else None
        return float(b.success.float().mean()), length

    def collect_retained(self) -> None:
        """The reference policy's deterministic decisions on ``retain_tasks`` (the same seeds every time, so a
        resumed run holds the same states), handed to the algorithm; nothing recorded, no env steps counted."""
        eng, n = self.engine, int(self.cfg.retain_episodes)
        tasks = [t for t in self.cfg.retain_tasks for _ in range(n)]
        seeds = [RETAIN_SEED + i for _ in self.cfg.retain_tasks for i in range(n)]
        (rec, eng.recorder), (pol, eng.policy) = (eng.recorder, None), (eng.policy, self.algo.ref)
        try:
            b = eng.collect(len(tasks), group_size=1, deterministic=True, seeds=seeds, tasks=tasks, count=False,
                            assisted=False)
        finally:
            eng.recorder, eng.policy = rec, pol
        self.algo.set_retained(b.feats)
        log.info("retained states: %d decisions of the reference on %s (success %.2f)", len(b.feats),
                 list(self.cfg.retain_tasks), float(b.success.float().mean()))

    def best_eval(self) -> dict[str, Any]:
        """The evaluation with the highest success, the earliest of ties."""
        return max(self.evals, key=lambda e: (e["success"], -e["env_steps"]))

    def _snapshot_if_best(self, ev: dict[str, Any]) -> None:
        if self.out is None or self.cfg.keep != "best":
            return
        if self.best_eval() is not ev:
            return
        save_policy(self.policy, self.out / "best", {"env_steps": ev["env_steps"], "iteration": ev["iteration"],
                                                     "success": ev["success"], "episodes": ev["episodes"]})
        log.info("best held-out success so far (%.3f at %d env steps): snapshot in best/", ev["success"],
                 ev["env_steps"])

    def _restore_best(self) -> dict[str, Any]:
        """Load best/'s weights into the policy (the last's are in checkpoint/); returns the kept evaluation."""
        best = self.best_eval()
        if best is self.evals[-1]:
            return best
        meta = self.out / "best" / META
        saved = json.loads(meta.read_text())["meta"] if meta.is_file() else {}
        if saved.get("env_steps") != best["env_steps"]:  # a run started before best/ existed
            log.warning("keep=best: %s does not hold the policy of the best evaluation (%d env steps): handing on "
                        "the last", self.out / "best", best["env_steps"])
            return self.evals[-1]
        t = safetensors.torch.load_file(str(self.out / "best" / WEIGHTS))
        self.policy.load_state_dict(t, strict=False)
        log.info("keep=best: handing on the policy at %d env steps (held-out success %.3f; the last: %.3f)",
                 best["env_steps"], best["success"], self.evals[-1]["success"])
        return best

    # --------------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        cfg, eng = self.cfg, self.engine
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / "checkpoint" / "state.json").exists():
                self.load(self.out / "checkpoint")
                self.resumed = True
                log.info("resumed at iteration %d, %d env steps", self.iteration, eng.env_steps)
        if not self.evals:
            self.evaluate(cfg.eval_episodes)
        if cfg.retain_tasks:
            self.collect_retained()
        next_eval = (eng.env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
        acfg = self.algo.cfg
        from tqdm import tqdm

        bar = tqdm(total=cfg.env_steps, initial=min(eng.env_steps, cfg.env_steps), disable=not cfg.progress,
                   desc=f"{self.algo.name} env steps")
        while eng.env_steps < cfg.env_steps:
            t0 = time.perf_counter()
            if eng.recorder is not None:
                eng.recorder.iteration = self.iteration
            before = eng.env_steps
            batch = eng.collect(acfg.groups_per_iter, group_size=acfg.group_size)
            t1 = time.perf_counter()
            if self.prm is not None:
                batch.progress = self.prm.progress_of(batch)
                if self.prm_coef:
                    batch = self.prm.shape(batch, self.prm_coef, self.prm_gamma)
            stats = episode_stats(batch)
            if batch.intervened is not None:  # an operator took part: the share of decisions it corrected
                stats["intervened"] = float(batch.intervened.float().mean())
            stats.update(self.algo.update(batch))
            stats.update(self.algo.retain_stats())
            t2 = time.perf_counter()
            self.rollout_s += t1 - t0
            self.update_s += t2 - t1
            self.iteration += 1
            stats.update(env_steps=eng.env_steps, iteration=self.iteration, env_steps_per_s=batch.env_steps / (t1 - t0),
                         samples_trained=self.algo.samples_trained, samples_offered=self.algo.samples_offered)
            self.history.append(stats)
            for k in TB_KEYS:
                if k in stats:
                    self.scalar(f"train/{k}", stats[k], eng.env_steps)
            bar.update(eng.env_steps - before)
            bar.set_postfix(success=f"{stats['success']:.2f}")
            if next_eval is not None and eng.env_steps >= next_eval and eng.env_steps < cfg.env_steps:
                self.evaluate(cfg.eval_episodes)
                next_eval += cfg.eval_every
            if self.out is not None:
                self.save(self.out / "checkpoint")
        bar.close()
        final = self.evaluate(cfg.final_eval_episodes) if not self._final_done() else self.evals[-1]
        results = self.results(final)
        if self.out is not None:
            self.save(self.out / "checkpoint")
            kept = self._restore_best() if cfg.keep == "best" else final
            which = "best" if cfg.keep == "best" and kept is self.best_eval() else "last"
            results["kept"] = {"keep": which, "env_steps": kept["env_steps"], "success": kept["success"],
                               "episodes": kept["episodes"], "per_task": kept["per_task"]}
            save_policy(self.policy, self.out / "policy", {"algo": self.algo.name, "env_steps": eng.env_steps,
                                                           "final_success": final["success"],
                                                           "kept": results["kept"], **self.run_info})
            from flywheel.vla_rl.report import plot_curves, write_report

            plot_curves(self.history, self.evals, self.out / "curve.png", title=f"{self.algo.name}")
            write_report(self.out / "report.md", results, self.history, self.evals)
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=2, default=str))
        return results

    def _final_done(self) -> bool:
        return bool(self.evals) and self.evals[-1]["episodes"] == self.cfg.final_eval_episodes and \
            self.evals[-1]["env_steps"] == self.engine.env_steps

    def results(self, final: dict[str, Any]) -> dict[str, Any]:
        a, e = self.algo, self.engine
        saved = 1.0 - a.samples_trained / a.samples_offered if a.samples_offered else 0.0
        filtered = a.samples_filtered / a.samples_offered if a.samples_offered else 0.0
        rej = [h.get("groups_rejected", 0.0) for h in self.history]
        return {
            "algo": a.name, "tasks": list(e.tasks), "env_steps": e.env_steps, "iterations": self.iteration,
            "initial_eval": self.evals[0], "final_eval": final,
            "rollout_seconds": self.rollout_s, "update_seconds": self.update_s,
            "env_steps_per_s": e.env_steps / self.rollout_s if self.rollout_s else None,
            "groups_rejected_mean": float(np.mean(rej)) if rej else 0.0,
            "update_compute_saved": saved, "update_compute_saved_by_filtering": filtered,
            "update_compute_saved_by_early_stop": saved - filtered, "samples_trained": a.samples_trained, "samples_offered": a.samples_offered,
            "resumed": self.resumed, "evals": self.evals, **self.run_info,
        }

    # ------------------------------------------------------------- checkpoints
    def save(self, path: Path) -> None:
        from flywheel.vla_rl.checkpoint import _atomic_dir

        def write(tmp: Path) -> None:
            tensors = {f"policy/{k}": v for k, v in policy_tensors(self.policy).items()}
            opt_t, opt_meta = optimizer_tensors(self.algo.opt, "opt")
            tensors.update(opt_t)
            tensors["rng/torch"] = torch.get_rng_state()
            tensors["rng/algo"] = self.algo.gen.get_state()
            if self.prm is not None:
                tensors.update({f"prm/{k}": v.detach().cpu().clone() for k, v in self.prm.state_dict().items()})
            safetensors.torch.save_file(tensors, str(tmp / "state.safetensors"))
            st = {"iteration": self.iteration, "engine": self.engine.state(), "history": self.history,
                  "evals": self.evals, "opt": opt_meta, "samples_trained": self.algo.samples_trained,
                  "samples_offered": self.algo.samples_offered, "samples_filtered": self.algo.samples_filtered,
                  "rollout_s": self.rollout_s,
                  "update_s": self.update_s, "train_config": asdict(self.cfg)}
            (tmp / "state.json").write_text(json.dumps(st, default=_json_default))

        _atomic_dir(path, write)

    def load(self, path: Path) -> None:
        st = json.loads((path / "state.json").read_text())
        t = safetensors.torch.load_file(str(path / "state.safetensors"))
        self.policy.load_state_dict({k[7:]: v for k, v in t.items() if k.startswith("policy/")}, strict=False)
        self.algo.opt.load_state_dict(optimizer_state(t, st["opt"], "opt"))
        torch.set_rng_state(t["rng/torch"])
        self.algo.gen.set_state(t["rng/algo"])
        if self.prm is not None:
            self.prm.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("prm/")})
        self.engine.load_state(st["engine"])
        self.iteration, self.history, self.evals = int(st["iteration"]), st["history"], st["evals"]
        self.algo.samples_trained, self.algo.samples_offered = int(st["samples_trained"]), int(st["samples_offered"])
        self.algo.samples_filtered = int(st.get("samples_filtered", 0))  # runs saved before the split: all early stop
        self.rollout_s, self.update_s = float(st["rollout_s"]), float(st["update_s"])


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | Sequence):
        return list(o)
    return str(o)
