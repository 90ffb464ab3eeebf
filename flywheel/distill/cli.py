"""`flywheel-distill`: distil into the generalist with RLDG or iRe-VLA (hydra app, ``key=value`` overrides).

    # RLDG: fine-tune a checkpoint on the successful RL rollouts of PegInsert in the store
    flywheel-distill method=rldg parent=outputs/ckpt store=outputs/flywheel/store tasks=[PandaRig/PegInsert-v0]
    # the human-demo baseline: the same, on human demos
    flywheel-distill method=rldg source=human parent=... store=... tasks=[...]
    # a compact G0 (policy.compact, recognised from its checkpoint): train the head on cached encoder
    # features (features/ next to the store unless sft.feature_root=DIR), every 2nd frame as G0 was
    flywheel-distill method=rldg parent=outputs/bench/g0/g0_s2 store=outputs/bench/g0/store \
        tasks=[PandaRig/PegInsert-v0] sft.finetune=frozen sft.frame_stride=2 sft.lr=3e-4 sft.batch_size=128
    # iRe-VLA: stage 0 on expert demos, then (RL with the VLM frozen, SL of the whole model) per RL task
    flywheel-distill method=ire_vla workdir=outputs/ire ire.rl_tasks=[PandaRig/PegInsert-v0,PandaRig/LiftCube-Blue-v0]

Both run as resumable jobs in ``workdir`` (re-run the same command after a kill).
With ``registry=DIR`` the RLDG result is registered (not promoted) with its lineage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.distill.generalist import GeneralistConfig, SFTConfig
from flywheel.distill.ire_vla import IReVLAConfig
from flywheel.distill.rldg import RLDGConfig

log = logging.getLogger(__name__)
METHODS = ("rldg", "ire_vla")


@dataclass
class DistillConfig:
    method: str = "rldg"  # rldg | ire_vla
    workdir: str = "outputs/distill"
    store: str = ""  # episode store ("" -> <workdir>/store)
    # checkpoint to start from, vla or compact (ire_vla: "" trains stage 0 from generalist.backbone / a tiny one)
    parent: str = ""
    registry: str = ""  # rldg: register the result here with its lineage (parent must be registered)
    parent_id: str = ""  # the parent's id in the registry
    tasks: list[str] = field(default_factory=lambda: ["PandaRig/PegInsert-v0"])  # rldg: tasks to distil
    source: str = "rl"  # rldg: rl (RLDG) | human (the human-demo baseline)
    collection: str = ""  # rldg: only episodes of this collection ("" -> any)
    replay_collections: list[str] = field(default_factory=list)  # rldg: replay these (human) collections
    # ire_vla
    expert_tasks: list[str] = field(default_factory=lambda: ["PandaRig/LiftCube-Red-v0", "PandaRig/LiftCube-Green-v0"])
    unseen_tasks: list[str] = field(default_factory=lambda: ["PandaRig/LiftCube-Yellow-v0"])
    expert_demos: int = 30  # human-like demo attempts per expert task (0: use what the store holds)
    # the expert demos' collection, {task} filled in (a compact G0's store: "g0-human-{task}")
    expert_collection: str = "human/{task}"
    stage0_steps: int = 600
    stage2_steps: int = 400
    eval_episodes: int = 20
    human_noise: float = 1.0
    seed: int = 0
    progress: bool = True
    generalist: GeneralistConfig = field(default_factory=GeneralistConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rldg: RLDGConfig = field(default_factory=RLDGConfig)
    ire: IReVLAConfig = field(default_factory=IReVLAConfig)


def register() -> None:
    """Register ``flywheel_distill`` in hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="flywheel_distill", node=DistillConfig)


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    d.pop("progress", None)
    return json.loads(json.dumps(d, default=str))


def run_rldg(cfg: Any) -> dict[str, Any]:
    from flywheel.data import EpisodeStore
    from flywheel.distill import collect, rldg
    from flywheel.job import ResumableJob, Stage

    if not cfg.parent:
        raise ValueError("method=rldg needs parent=<checkpoint directory> (the generalist to fine-tune)")
    workdir = Path(cfg.workdir)
    store_path = Path(cfg.store) if cfg.store else workdir / "store"
    if cfg.source not in ("rl", "human"):
        raise ValueError(f"source={cfg.source!r}: use rl (RLDG) or human (the baseline)")

    def distill(ctx: Any) -> dict[str, Any]:
        with EpisodeStore(store_path, "r") as store:
            replay = collect.select(store, source="human", collection=list(cfg.replay_collections)) \
                if cfg.replay_collections else []
            sft = SFTConfig(**_plain(cfg.sft))
            ckpt, data = rldg.distill(cfg.parent, store, list(cfg.tasks), ctx.stage_dir("distill") / "sft", sft,
                                      RLDGConfig(**_plain(cfg.rldg)), source=cfg.source, replay_episodes=replay,
                                      collection=cfg.collection or None)
        return {"checkpoint": str(ckpt), "data": data}

    def register_model(ctx: Any) -> dict[str, Any]:
        out = ctx.output("distill")
        if not cfg.registry:
            return {"registered": False}
        from flywheel.registry import ModelRecord, ModelRegistry

        reg = ModelRegistry(cfg.registry)
        mid = f"{workdir.name}-{cfg.source}"
        if mid not in reg:
            reg.register(ModelRecord(mid, out["checkpoint"], parent=cfg.parent_id or None, data=out["data"],
                                     notes=f"flywheel-distill method=rldg source={cfg.source}"))
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
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r}: use one of {METHODS}")
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    from flywheel.iterate import _file_log

    _file_log(Path(cfg.workdir))
    return run_rldg(cfg) if cfg.method == "rldg" else run_ire_vla(cfg)


def main() -> None:
    import hydra

    register()
    hydra.main(version_base=None, config_name="flywheel_distill")(run)()
