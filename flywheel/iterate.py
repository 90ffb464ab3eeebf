"""`flywheel-iterate`: one flywheel iteration as a resumable job.

Stages (each recorded in ``<iteration dir>/job_state.json``; a killed job, re-run
with the same command, skips finished stages and resumes the running one):

1. ``bootstrap``  -- only while the registry has no generalist: record human-like
   demos on ``pretrain_tasks`` and pretrain the first generalist on them;
2. ``evaluate_current`` -- the current generalist on held-out seeds;
3. ``collect`` -- roll the generalist out with a (simulated) operator who
   intervenes; the episodes go to the store as ``source=policy``;
4. ``specialists`` -- train an RL specialist on each task where it fails
   (success below ``fail_below``), at most ``budget.max_specialists``;
5. ``collect_specialists`` -- roll the specialists out with cameras on
   (``source=rl``);
6. ``distill`` -- RLDG: fine-tune the generalist on the specialists' successes
   (plus a replay of earlier data);
7. ``evaluate_candidate`` -- the candidate on the same held-out seeds;
8. ``promote`` -- register the candidate with its lineage (parent, data, metrics)
   and promote it only if the promotion gate (:mod:`flywheel.gate`) finds a significant paired gain
   on the held-out seeds and no task dropping by more than ``gate.max_task_drop``;
9. ``report`` -- ``report.md`` + ``report.png`` with the before/after table.

    flywheel-iterate workdir=outputs/flywheel budget=demo
    flywheel-iterate workdir=outputs/flywheel budget=full tasks=[PandaRig/PegInsert-v0]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.cluster import ClusterConfig
from flywheel.distill.generalist import GeneralistConfig, SFTConfig
from flywheel.distill.rldg import RLDGConfig
from flywheel.distill.specialist import SpecialistConfig
from flywheel.evaluate import HELDOUT_SEED, load_results, save_results
from flywheel.gate import GateConfig, decide

log = logging.getLogger(__name__)


@dataclass
class BudgetConfig:
    """How much work each stage does (hydra group ``budget``: tiny | demo | demo_vla | full)."""

    name: str = "demo"
    pretrain_demos: int = 32  # human-like demos per pretraining task
    # SFT steps of the first generalist. A from-scratch tiny backbone needs >~1000 steps before its
    # vision path carries anything (measured: at 300 steps its loss equals that of a blind model)
    pretrain_steps: int = 1500
    eval_episodes: int = 16  # held-out episodes per task and evaluation
    policy_rollouts: int = 2  # generalist rollouts (with interventions) per task in `collect`
    max_specialists: int = 1
    specialist_generations: int = 6  # specialist.algo=sil: rollout -> refit generations
    specialist_env_steps: int = 3000  # specialist.algo=sac: online env steps
    rollouts: int = 80  # specialist rollouts per task
    distill_steps: int = 1500  # SFT steps of the distillation
    # specialist.algo=sac: train the target tasks' specialists in child processes from the job's start,
    # beside pretraining and the first evaluation (they need only the task); `specialists` waits for them
    early_specialists: bool = False


BUDGETS = {
    "tiny": BudgetConfig(name="tiny", pretrain_demos=2, pretrain_steps=4, eval_episodes=2, policy_rollouts=1,
                         specialist_generations=1, specialist_env_steps=20, rollouts=2, distill_steps=4),
    # the demo (flywheel-demo: a compact G0 from scratch, a HIL-SERL PegInsert specialist; docs/bench/demo.md)
    # (64 demo tries and 3000 steps: a G0 whose draw of human demos no longer decides the result; 16k env steps: the
    # specialist at 1.00 instead of 0.60, trained beside the longer bootstrap at no extra wall-clock)
    "demo": BudgetConfig(pretrain_demos=64, pretrain_steps=3000, eval_episodes=30, policy_rollouts=2,
                         specialist_env_steps=16_000, rollouts=100, distill_steps=1000, early_specialists=True),
    # the tiny-VLA demo's budget (generalist.kind=vla with budget=demo resolves to it: see resolve_budget)
    "demo_vla": BudgetConfig(name="demo_vla"),
    "full": BudgetConfig(name="full", pretrain_demos=100, pretrain_steps=3000, eval_episodes=100, policy_rollouts=20,
                         max_specialists=3, specialist_generations=12, specialist_env_steps=20_000, rollouts=100,
                         distill_steps=1500),
}


@dataclass
class IterateConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"budget": "demo"}])
    workdir: str = "outputs/flywheel"
    registry: str = ""  # "" -> <workdir>/registry
    tasks: list[str] = field(default_factory=lambda: ["PandaRig/PegInsert-v0"])  # tasks this iteration targets
    pretrain_tasks: list[str] = field(default_factory=lambda: ["PandaRig/LiftCube-Red-v0", "PandaRig/PegInsert-v0"])
    eval_tasks: list[str] = field(default_factory=list)  # [] -> tasks + pretrain_tasks
    fail_below: float = 0.9  # train a specialist where the generalist's success is below this
    gate: GateConfig = field(default_factory=GateConfig)  # promotion: paired significance + no task dropping
    human_noise: float = 1.0  # the scripted operator's noise (~1: human-like)
    seed: int = 0
    threads: int = 1  # torch CPU threads (1 is fastest on a shared/loaded CPU; raise it on a quiet machine)
    progress: bool = True
    device: str = "auto"  # evaluation and policy rollouts: auto (CUDA when present) | cpu | cuda; SFT: sft.device
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # cluster.kind=ray: evaluations on Ray workers
    generalist: GeneralistConfig = field(default_factory=GeneralistConfig)
    specialist: SpecialistConfig = field(default_factory=SpecialistConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rldg: RLDGConfig = field(default_factory=RLDGConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


def register() -> None:
    """Register ``flywheel_iterate`` and the ``budget`` group in hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, b in BUDGETS.items():
        cs.store(group="budget", name=name, node=b)
    cs.store(name="flywheel_iterate", node=IterateConfig)


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    d = {k: v for k, v in d.items() if k not in ("defaults", "progress", "threads")}
    return json.loads(json.dumps(d, default=str))


class Iteration:
    """The stages of one iteration over a workdir (store, registry, iteration directories)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.root = Path(cfg.workdir)
        self.store_path = self.root / "store"
        from flywheel.registry import ModelRegistry

        self.registry = ModelRegistry(cfg.registry or self.root / "registry")
        self.eval_tasks = list(dict.fromkeys(list(cfg.eval_tasks) or [*cfg.tasks, *cfg.pretrain_tasks]))
        self._spec = None
        self._early: dict[str, Any] = {}  # task -> SpecialistProcess started before its stage

    # ------------------------------------------------------------ helpers
    def iteration_dir(self) -> Path:
        """The unfinished iteration's directory, or a new one."""
        its = sorted((self.root / "iterations").glob("iter_*"))
        for d in its:
            state = d / "job_state.json"
            if state.exists() and "report" not in json.loads(state.read_text())["stages"]:
                return d
            if not state.exists():
                return d
        return self.root / "iterations" / f"iter_{len(its) + 1:03d}"

    def spec(self) -> Any:
        if self._spec is None:
            from flywheel.distill.collect import make_env
            from flywheel.distill.generalist import env_kwargs

            env = make_env(self.cfg.tasks[0], privileged_state=False, **env_kwargs(self.cfg.generalist))
            self._spec = env.unwrapped.rig_spec
            env.close()
        return self._spec

    def store(self, mode: str = "a") -> Any:
        from flywheel.data import EpisodeStore
        from flywheel.distill.generalist import generalist_kind

        # the compact G0's recipe trains on JPEG frames (its live frames take the same round trip:
        # policy image_codec); the tiny VLA's 32 px frames are kept lossless
        codec = "jpeg" if generalist_kind(self.cfg.generalist) == "compact" else "png"
        return EpisodeStore(self.store_path, mode, spec=self.spec(), image_codec=codec)

    def _eval(self, ckpt: str, out: Path) -> dict[str, Any]:
        from flywheel.distill.generalist import evaluate

        f = out / "results.json"
        if not f.exists():
            res = evaluate(ckpt, self.eval_tasks, int(self.cfg.budget.eval_episodes), self.cfg.generalist,
                           seed=HELDOUT_SEED, progress=self.cfg.progress, device=getattr(self.cfg, "device", "auto"),
                           cluster=self._cluster())
            save_results(res, f)
        res = load_results(f)
        return {"results": str(f), "success": {t: r.rate for t, r in res.items()},
                "mean_success": float(np.mean([r.rate for r in res.values()]))}

    def _cluster(self) -> ClusterConfig:
        c = getattr(self.cfg, "cluster", None)
        cl = c if isinstance(c, ClusterConfig) else ClusterConfig(**_plain(c)) if c is not None else ClusterConfig()
        cl.validate()
        return cl

    # ------------------------------------------------------------- stages
    def bootstrap(self, ctx: Any) -> dict[str, Any]:
        from flywheel.data.codecs import frames_codec
        from flywheel.distill import collect, compact
        from flywheel.distill.generalist import (
            ensure_backbone,
            env_kwargs,
            finetune,
            new_generalist,
            store_stats,
        )
        from flywheel.registry import ModelRecord

        cur = self.registry.current
        if cur is not None:
            return {"model": cur.id, "path": cur.path, "pretrained": False}
        cfg, d = self.cfg, ctx.stage_dir("bootstrap")
        t0, secs = time.time(), {}
        with self.store() as store:
            for t in cfg.pretrain_tasks:
                env = collect.make_env(t, privileged_state=False, **env_kwargs(cfg.generalist))
                try:
                    collect.record_rollouts(store, env, collect.ExpertAgent(env, cfg.human_noise, cfg.seed),
                                            range(int(cfg.budget.pretrain_demos)), source="human",
                                            collection=f"human/{t}", progress=cfg.progress)
                finally:
                    env.close()
            eps = collect.select(store, task=list(cfg.pretrain_tasks), source="human",
                                 collection=[f"human/{t}" for t in cfg.pretrain_tasks])
            if not eps:
                raise RuntimeError(f"no successful human demos of {list(cfg.pretrain_tasks)}: raise budget.pretrain_demos")
            secs["collect"], t0 = time.time() - t0, time.time()
            backbone = ensure_backbone(cfg.generalist, self.root)
            out = d / "sft"
            sft = SFTConfig(**{**_plain(cfg.sft), "steps": int(cfg.budget.pretrain_steps)})
            parent: Any = out if (out / "checkpoints").exists() else None
            if parent is None or not any((out / "checkpoints").glob("step_*")):
                parent = new_generalist(cfg.generalist, store.spec, backbone, store_stats(store, eps),
                                        image_codec=frames_codec(store))
                if compact.is_compact(parent) and sft.finetune == "frozen":  # encode every frame once, timed
                    compact.feature_cache(parent, store, sft).build(eps, progress=False)
                    secs["features"], t0 = time.time() - t0, time.time()
            else:
                from flywheel.distill.generalist import final_checkpoint

                parent = final_checkpoint(out)
            ckpt = finetune(parent, store, eps, out, sft)
            secs["train"] = time.time() - t0
        model_id = "g0"
        self.registry.register(ModelRecord(model_id, str(ckpt), None, data={
            "human_episodes": len(eps), "tasks": list(cfg.pretrain_tasks), "sft_steps": sft.steps,
            "collections": [f"human/{t}" for t in cfg.pretrain_tasks]}, notes="pretrained on human-like demos"))
        self.registry.promote(model_id, "first generalist")
        return {"model": model_id, "path": str(ckpt), "pretrained": True, "human_episodes": len(eps),
                "seconds": {k: round(v, 1) for k, v in secs.items()}}

    def evaluate_current(self, ctx: Any) -> dict[str, Any]:
        cur = self.registry.current
        assert cur is not None
        return {"model": cur.id, "path": cur.path, **self._eval(cur.path, ctx.stage_dir("evaluate_current"))}

    def collect_policy(self, ctx: Any) -> dict[str, Any]:
        import policy
        import sim
        from flywheel.distill import collect
        from flywheel.distill.generalist import env_kwargs
        from flywheel.evaluate import ChunkedPolicy

        cfg, cur = self.cfg, ctx.output("evaluate_current")
        n = int(cfg.budget.policy_rollouts)
        out: dict[str, Any] = {}
        if n <= 0:
            return out
        from policy.device import resolve_device

        pol = policy.load(cur["path"], device=resolve_device(getattr(cfg, "device", "auto"), "device"))
        with self.store() as store:
            for t in cfg.tasks:
                env = collect.make_env(t, privileged_state=False, **env_kwargs(cfg.generalist))
                try:
                    interv = sim.SimulatedIntervener(env, sim.expert(env, noise=0.3, seed=cfg.seed))
                    st = collect.record_rollouts(
                        store, env, ChunkedPolicy(pol, env.unwrapped.instruction, cfg.generalist.execute),
                        range(10_000, 10_000 + n), source="policy", collection=f"{ctx.workdir.name}/policy/{t}",
                        policy_version=cur["model"], intervener=interv, progress=cfg.progress)
                finally:
                    env.close()
                out[t] = st.to_dict()
        return out

    def specialists(self, ctx: Any) -> dict[str, Any]:
        from flywheel.distill.specialist import train

        cfg = self.cfg
        before = ctx.output("evaluate_current")["success"]
        failing = sorted([t for t in cfg.tasks if before.get(t, 0.0) < cfg.fail_below], key=lambda t: before.get(t, 0.0))
        chosen = failing[: int(cfg.budget.max_specialists)]
        for t in set(self._early) - set(chosen):  # started early, not needed after all
            self._early.pop(t).stop()
        out = {}
        for t in chosen:
            if cfg.specialist.algo == "sac":  # in a child process (no hydra app around flywheel-rl's)
                out[t] = self._specialist_process(t, ctx.workdir).wait()
            else:
                out[t] = train(t, self._specialist_cfg(), ctx.stage_dir("specialists") / t.replace("/", "_"),
                               progress=cfg.progress)
        return {"tasks": chosen, "specialists": out}

    def _specialist_cfg(self) -> SpecialistConfig:
        return SpecialistConfig(**{**_plain(self.cfg.specialist), "env_steps": int(self.cfg.budget.specialist_env_steps),
                                   "generations": int(self.cfg.budget.specialist_generations)})

    def _specialist_process(self, task: str, it_dir: Path) -> Any:
        from dataclasses import asdict

        from flywheel.distill.specialist.background import SpecialistProcess

        if task not in self._early:
            wd = it_dir / "specialists" / task.replace("/", "_")
            self._early[task] = SpecialistProcess(task, asdict(self._specialist_cfg()), wd).start()
        return self._early[task]

    def start_early_specialists(self, it_dir: Path) -> None:
        """budget.early_specialists with specialist.algo=sac: start the target tasks' specialists now."""
        cfg = self.cfg
        state = it_dir / "job_state.json"
        done = json.loads(state.read_text())["stages"] if state.exists() else {}
        if cfg.specialist.algo != "sac" or not bool(cfg.budget.early_specialists) or "specialists" in done:
            return
        for t in list(cfg.tasks)[: int(cfg.budget.max_specialists)]:
            self._specialist_process(t, it_dir)

    def close(self) -> None:
        for p in self._early.values():
            p.stop()

    def collect_specialists(self, ctx: Any) -> dict[str, Any]:
        from flywheel.distill import collect
        from flywheel.distill.generalist import env_kwargs
        from flywheel.distill.specialist import load_agent

        cfg = self.cfg
        spec = ctx.output("specialists")["specialists"]
        out = {}
        with self.store() as store:
            for t, info in spec.items():
                agent = load_agent(t, info)
                env = collect.make_env(t, privileged_state=True, **env_kwargs(cfg.generalist))
                if hasattr(agent, "bind"):
                    agent.bind(env)
                try:
                    # a scripted stand-in is no RL: its rollouts are tagged source=policy, not rl
                    source = "policy" if info["algo"] == "scripted" else "rl"
                    st = collect.record_rollouts(store, env, agent, range(20_000, 20_000 + int(cfg.budget.rollouts)),
                                                 source=source, collection=f"{ctx.workdir.name}/specialist/{t}",
                                                 policy_version=f"specialist/{info['algo']}/{t}", progress=cfg.progress)
                finally:
                    env.close()
                out[t] = st.to_dict()
        return out

    def distill(self, ctx: Any) -> dict[str, Any]:
        from flywheel.distill import collect, rldg

        cfg, cur = self.cfg, ctx.output("evaluate_current")
        tasks = [t for t, s in ctx.output("collect_specialists").items() if s["successes"] > 0]
        if not tasks:
            return {"skipped": "no specialist succeeded: nothing to distil"}
        with self.store("r") as store:
            parent = self.registry.get(cur["model"])
            replay = collect.select(store, source=["human", "rl", "policy"], collection=parent.data.get("collections"))
            sft = SFTConfig(**{**_plain(cfg.sft), "steps": int(cfg.budget.distill_steps)})
            rcfg = RLDGConfig(**{**_plain(cfg.rldg), "episodes_per_task": int(cfg.budget.rollouts)})
            ckpt, data = rldg.distill(cur["path"], store, tasks, ctx.stage_dir("distill") / "sft", sft, rcfg,
                                      source=["rl", "policy"], replay_episodes=replay,
                                      collection=[f"{ctx.workdir.name}/specialist/{t}" for t in tasks])
        data["collections"] = list(parent.data.get("collections", [])) + [
            f"{ctx.workdir.name}/specialist/{t}" for t in tasks]
        return {"checkpoint": str(ckpt), "data": data}

    def evaluate_candidate(self, ctx: Any) -> dict[str, Any]:
        d = ctx.output("distill")
        if "checkpoint" not in d:
            return {"skipped": d.get("skipped", "no candidate")}
        return {"path": d["checkpoint"], **self._eval(d["checkpoint"], ctx.stage_dir("evaluate_candidate"))}

    def promote(self, ctx: Any) -> dict[str, Any]:
        from flywheel.registry import ModelRecord

        cfg, before, after = self.cfg, ctx.output("evaluate_current"), ctx.output("evaluate_candidate")
        if "path" not in after:
            return {"promoted": False, "reason": after.get("skipped", "no candidate")}
        cand_id = f"{ctx.workdir.name}-rldg"
        decision = decide(load_results(before["results"]), load_results(after["results"]), GateConfig(**_gate(cfg)))
        better, reason = decision.promote, decision.reason
        if cand_id not in self.registry:
            self.registry.register(ModelRecord(
                cand_id, after["path"], parent=before["model"], data=ctx.output("distill")["data"],
                metrics={"success": after["success"], "mean_success": after["mean_success"],
                         "parent_success": before["success"], "eval_episodes": int(cfg.budget.eval_episodes),
                         "eval_seed": HELDOUT_SEED}, notes="RLDG distillation"))
        cur = self.registry.current
        if better and (cur is None or cur.id != cand_id):
            self.registry.promote(cand_id, reason)
        return {"candidate": cand_id, "promoted": bool(better), "reason": reason, "gate": decision.to_dict(),
                "gate_table": decision.table()}

    def report(self, ctx: Any) -> dict[str, Any]:
        from flywheel.iterate_report import write_iteration_report

        return write_iteration_report(ctx, self.registry, self.cfg.budget)

    def stages(self) -> list[Any]:
        from flywheel.job import Stage

        return [Stage("bootstrap", self.bootstrap), Stage("evaluate_current", self.evaluate_current),
                Stage("collect", self.collect_policy), Stage("specialists", self.specialists),
                Stage("collect_specialists", self.collect_specialists), Stage("distill", self.distill),
                Stage("evaluate_candidate", self.evaluate_candidate), Stage("promote", self.promote),
                Stage("report", self.report)]


def _gate(cfg: Any) -> dict[str, Any]:
    g = cfg.gate
    return {k: float(getattr(g, k)) for k in ("alpha", "min_gain", "max_task_drop")}


def run_iteration(cfg: Any, stop_after: str | None = None) -> dict[str, Any]:
    """Run (or resume) one iteration; returns the job state."""
    import torch

    from flywheel.iterate_report import load_average
    from flywheel.job import ResumableJob

    torch.set_num_threads(max(1, int(cfg.threads)))
    resolve_budget(cfg)
    it = Iteration(cfg)
    d = it.iteration_dir()
    _file_log(d)
    log.info("flywheel iteration in %s (load average %s)", d, load_average())
    job = ResumableJob(d, it.stages(), config=_plain(cfg))
    job.load_state()  # a config that differs from the saved one fails here, before any child starts
    try:
        it.start_early_specialists(d)
        return job.run(stop_after=stop_after) | {"workdir": str(d)}
    finally:
        it.close()


def resolve_budget(cfg: Any) -> None:
    """``budget=demo`` with ``generalist.kind=vla``: the tiny VLA's demo budget (``demo_vla``) in every field
    left at the compact demo's value (a field set on the command line stays)."""
    from dataclasses import fields

    from flywheel.distill.generalist import generalist_kind

    if str(cfg.budget.name) != "demo" or generalist_kind(cfg.generalist) != "vla":
        return
    demo, vla = BUDGETS["demo"], BUDGETS["demo_vla"]
    for f in fields(BudgetConfig):
        if getattr(cfg.budget, f.name) == getattr(demo, f.name):
            setattr(cfg.budget, f.name, getattr(vla, f.name))


def _file_log(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (d / "job.log").resolve()
               for h in root.handlers):
        h = logging.FileHandler(d / "job.log")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def _app(cfg: Any) -> None:
    state = run_iteration(cfg)
    rep = state["stages"].get("report", {}).get("output", {}).get("report")
    print(f"iteration finished: {state['workdir']}; report: {rep}")


def main() -> None:
    import hydra

    register()
    hydra.main(version_base=None, config_name="flywheel_iterate")(_app)()


if __name__ == "__main__":
    main()
