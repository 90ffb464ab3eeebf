"""`flywheel-distill`: distil into the generalist with RLDG or iRe-VLA (hydra app, ``key=value`` overrides).

    # RLDG: fine-tune a checkpoint on the successful RL rollouts of PegInsert in the store
    flywheel-distill method=rldg parent=outputs/ckpt store=outputs/flywheel/store method.tasks=[PandaRig/PegInsert-v0]
    # the human-demo baseline: the same, on human demos
    flywheel-distill method=rldg method.source=human parent=... store=... method.tasks=[...]
    # a compact G0 (policy.compact, recognised from its checkpoint): train the head on cached encoder
    # features (features/ next to the store unless sft.feature_root=DIR), every 2nd frame as G0 was
    flywheel-distill method=rldg parent=outputs/bench/g0/g0_s2 store=outputs/bench/g0/store \
        method.tasks=[PandaRig/PegInsert-v0] sft.finetune=frozen sft.frame_stride=2 sft.lr=3e-4 sft.batch_size=128
    # iRe-VLA: stage 0 on expert demos, then (RL with the VLM frozen, SL of the whole model) per RL task
    flywheel-distill method=ire_vla workdir=outputs/ire method.rl_tasks=[PandaRig/PegInsert-v0,PandaRig/LiftCube-Blue-v0]

``method`` picks a config group, one per method, holding that method's fields only
(``method.<field>=``: :class:`RLDGMethod`, :class:`IReVLAMethod`); the shared settings are on
top. Both run as resumable jobs in ``workdir`` (re-run the same command after a kill; a workdir
started before the method group existed is resumed too, its saved config upgraded).
With ``method.registry=DIR`` the RLDG result is registered (not promoted) with its lineage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flywheel.distill.generalist import GeneralistConfig, SFTConfig
from flywheel.distill.ire_vla import IReVLAConfig
from flywheel.distill.rldg import RLDGConfig

log = logging.getLogger(__name__)


@dataclass
class RLDGMethod(RLDGConfig):
    """``method=rldg``: fine-tune ``parent`` on the successful episodes of ``tasks`` (RLDGConfig's fields too)."""

    name: str = "rldg"
    tasks: list[str] = field(default_factory=lambda: ["PandaRig/PegInsert-v0"])  # tasks to distil
    source: str = "rl"  # rl (RLDG) | human (the human-demo baseline)
    collection: str = ""  # only episodes of this collection ("" -> any)
    replay_collections: list[str] = field(default_factory=list)  # replay these (human) collections
    registry: str = ""  # register the result here with its lineage (parent must be registered)
    parent_id: str = ""  # the parent's id in the registry


@dataclass
class IReVLAMethod(IReVLAConfig):
    """``method=ire_vla``: the iRe-VLA job's task groups, demos and budgets (IReVLAConfig's fields too)."""

    name: str = "ire_vla"
    expert_tasks: list[str] = field(default_factory=lambda: ["PandaRig/LiftCube-Red-v0", "PandaRig/LiftCube-Green-v0"])
    unseen_tasks: list[str] = field(default_factory=lambda: ["PandaRig/LiftCube-Yellow-v0"])
    expert_demos: int = 30  # human-like demo attempts per expert task (0: use what the store holds)
    # the expert demos' collection, {task} filled in (a compact G0's store: "g0-human-{task}")
    expert_collection: str = "human/{task}"
    stage0_steps: int = 600
    stage2_steps: int = 400
    eval_episodes: int = 20
    human_noise: float = 1.0


METHODS: dict[str, type] = {"rldg": RLDGMethod, "ire_vla": IReVLAMethod}
# the config before the method group: these keys were on top, and each method's own settings in a group
_OLD_KEYS = ("tasks", "source", "collection", "replay_collections", "registry", "parent_id", "expert_tasks",
             "unseen_tasks", "expert_demos", "expert_collection", "stage0_steps", "stage2_steps", "eval_episodes",
             "human_noise")
_OLD_GROUPS = {"rldg": "rldg", "ire_vla": "ire"}
MOVED = {**{k: f"method.{k}" for k in _OLD_KEYS}, "rldg.": "method.", "ire.": "method."}


@dataclass
class DistillConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"method": "rldg"}])
    method: Any = None  # the config group: rldg | ire_vla
    workdir: str = "outputs/distill"
    store: str = ""  # episode store ("" -> <workdir>/store)
    # checkpoint to start from, vla or compact (ire_vla: "" trains stage 0 from generalist.backbone / a tiny one)
    parent: str = ""
    seed: int = 0
    progress: bool = True
    generalist: GeneralistConfig = field(default_factory=GeneralistConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)


def register() -> None:
    """Register ``flywheel_distill`` and its ``method`` group in hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="flywheel_distill", node=DistillConfig)
    for name, node in METHODS.items():
        cs.store(group="method", name=name, node=node)


def check_overrides(overrides: list[str]) -> None:
    """Fail with the new key for a key of the old (union) form or a field of the other method."""
    from flywheel.overrides import check_overrides as check

    check("flywheel-distill", overrides, {"method": ("rldg", METHODS)}, MOVED)


def compose(overrides: list[str]) -> Any:
    """The app's config from a command line (checked, then composed by hydra) outside the hydra app."""
    from flywheel.overrides import compose_app

    return compose_app("flywheel_distill", check_overrides, register, overrides)


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a job's ``config``) in the current form; one from before the method group is converted,
    and method keys added since it was saved (``stage2_rl_fraction``...) get their defaults."""
    m = saved.get("method")
    if isinstance(m, dict):
        if m.get("name") not in METHODS:
            return saved
        return {**saved, "method": {**_defaults(m["name"]), **m}}
    if not isinstance(m, str):
        return saved
    name = m
    if name not in METHODS:
        raise ValueError(f"saved config: method={name!r} is not one of {list(METHODS)}")
    own = {f.name for f in fields(METHODS[name])}
    method = {**_defaults(name), **{k: v for k, v in saved.items() if k in own}, **saved.get(_OLD_GROUPS[name], {})}
    gone = {"method", *_OLD_KEYS, *_OLD_GROUPS.values()}
    return {**{k: v for k, v in saved.items() if k not in gone}, "method": method}


def _defaults(name: str) -> dict[str, Any]:
    """Method ``name``'s fields at their defaults, as a composed config holds them."""
    from dataclasses import asdict

    return {**asdict(METHODS[name]()), "name": name}


def _upgrade_saved_job(workdir: Path) -> None:
    """Rewrite a job state saved before the method group in the current form, so that the job resumes."""
    from flywheel.registry import atomic_write_text

    f = workdir / "job_state.json"
    if not f.exists():
        return
    state = json.loads(f.read_text())
    new = upgrade_config(state["config"]) if isinstance(state.get("config"), dict) else None
    if new is not None and new != state["config"]:
        state["config"] = new
        atomic_write_text(f, json.dumps(state, indent=2))
        log.info("%s: upgraded its saved config to the current form", f)


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    d.pop("progress", None)
    return json.loads(json.dumps(d, default=str))


def run_rldg(cfg: Any) -> dict[str, Any]:
    from flywheel.data import EpisodeStore
    from flywheel.distill import collect, rldg
    from flywheel.job import ResumableJob, Stage

    m = cfg.method
    if not cfg.parent:
        raise ValueError("method=rldg needs parent=<checkpoint directory> (the generalist to fine-tune)")
    workdir = Path(cfg.workdir)
    store_path = Path(cfg.store) if cfg.store else workdir / "store"
    if m.source not in ("rl", "human"):
        raise ValueError(f"method.source={m.source!r}: use rl (RLDG) or human (the baseline)")

    def distill(ctx: Any) -> dict[str, Any]:
        with EpisodeStore(store_path, "r") as store:
            replay = collect.select(store, source="human", collection=list(m.replay_collections)) \
                if m.replay_collections else []
            sft = SFTConfig(**_plain(cfg.sft))
            rcfg = RLDGConfig(**{f.name: m[f.name] for f in fields(RLDGConfig)})
            ckpt, data = rldg.distill(cfg.parent, store, list(m.tasks), ctx.stage_dir("distill") / "sft", sft,
                                      rcfg, source=m.source, replay_episodes=replay, collection=m.collection or None)
        return {"checkpoint": str(ckpt), "data": data}

    def register_model(ctx: Any) -> dict[str, Any]:
        out = ctx.output("distill")
        if not m.registry:
            return {"registered": False}
        from flywheel.registry import ModelRecord, ModelRegistry

        reg = ModelRegistry(m.registry)
        mid = f"{workdir.name}-{m.source}"
        if mid not in reg:
            reg.register(ModelRecord(mid, out["checkpoint"], parent=m.parent_id or None, data=out["data"],
                                     notes=f"flywheel-distill method=rldg method.source={m.source}"))
        return {"registered": True, "id": mid}

    state = ResumableJob(workdir, [Stage("distill", distill), Stage("register", register_model)],
                         config=_plain(cfg)).run()
    print(f"checkpoint: {state['stages']['distill']['output']['checkpoint']}")
    return state


def run_ire_vla(cfg: Any) -> dict[str, Any]:
    from flywheel.distill.ire_vla import build_job
    from flywheel.job import ResumableJob

    workdir = Path(cfg.workdir)
    store_path = Path(cfg.store) if cfg.store else workdir / "store"
    stages = build_job(cfg, workdir, store_path, progress=bool(cfg.progress))
    state = ResumableJob(workdir, stages, config=_plain(cfg)).run()
    print("\n".join(state["stages"]["report"]["output"]["table"]))
    print(f"report: {state['stages']['report']['output']['report']}")
    return state


def run(cfg: Any) -> dict[str, Any]:
    """Run the composed config's method as a resumable job in ``cfg.workdir``."""
    name = cfg.method.name if cfg.method is not None else None
    if name not in METHODS:
        raise ValueError(f"method={name!r}: use one of {list(METHODS)}")
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from flywheel.iterate import _file_log

    _file_log(workdir)
    _upgrade_saved_job(workdir)
    return run_rldg(cfg) if name == "rldg" else run_ire_vla(cfg)


def main() -> None:
    from flywheel.overrides import hydra_main

    hydra_main("flywheel_distill", check_overrides, register, run)
