"""`flywheel-demo` (run by ``make demo``): one flywheel iteration on the simulated rig, on a CPU.

What it does, all for real and from scratch (the pretrained encoders come from installed wheels):

1. records human-like demos (the noisy scripted operator) on LiftCube-Red and PegInsert, front +
   wrist cameras at 128 px, and pretrains G0, the compact VLA (:mod:`policy.compact`: frozen
   ImageNet EfficientNet-Lite0, MiniLM instruction, spatial-softmax + MLP head) on the frozen
   encoder's cached features of every 2nd frame (``benchmarks/generalist_g0.py``'s recipe);
2. evaluates it on held-out seeds; rolls it out with a simulated operator who intervenes;
3. trains a real RL specialist where the generalist fails (PegInsert): HIL-SERL, state-only,
   ``specialist.algo=sac`` (a ``flywheel-rl`` run with the task's preset), in a child process
   started with the job (``budget.early_specialists``) so it trains beside steps 1-2;
   rolls it out with the cameras on, and keeps its successes (``source=rl``);
4. distils them into the generalist (RLDG, on cached features, 30% replay of the demos),
   evaluates the candidate on the same held-out seeds, and promotes it only if the promotion
   gate finds a significant paired gain and no task dropping;
5. writes ``outputs/demo/iterations/iter_001/report.md`` (+ ``report.png``): the before/after table
   with 95% intervals, the RL task's change in points, the stage times and the load average.

It is the ``flywheel-iterate`` job with ``budget=demo`` in ``workdir=outputs/demo``:
progress bars, ``job.log``, and re-running continues a killed run. When the
iteration has finished, re-running prints its report again (delete the workdir,
or pass ``workdir=...``, to start over). Measured: ``docs/bench/demo.md``.

    flywheel-demo                               # ~10-15 minutes on a shared 2-core CPU
    flywheel-demo budget=tiny workdir=/tmp/fw   # a smoke test of the same path
    flywheel-demo generalist.kind=vla           # the earlier demo: a tiny random SmolVLM generalist
                                                # (32 px) and the scripted operator as the specialist

With ``generalist.kind=vla`` every setting below left at its compact default takes the tiny VLA's
(:data:`VLA_DEMO`; ``budget=demo`` becomes ``demo_vla``); a setting given on the command line stays.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.distill.generalist import GeneralistConfig, SFTConfig
from flywheel.distill.rldg import RLDGConfig
from flywheel.distill.specialist import SpecialistConfig
from flywheel.iterate import IterateConfig, run_iteration


@dataclass
class DemoConfig(IterateConfig):
    workdir: str = "outputs/demo"
    # G0: the compact VLA at 128 px, front + wrist, mlp head (docs/bench/generalist.md), re-planning after every
    # action (execute=1: insertion needs the closed loop; measured on the demo's own G0 and candidate,
    # docs/bench/demo.md: PegInsert 0.00 / 0.03 executing 4 of 8, 0.15 / 0.30 executing 1)
    generalist: GeneralistConfig = field(default_factory=lambda: GeneralistConfig(
        kind="compact", head="mlp", hidden_dim=512, image_size=128, execute=1))
    # HIL-SERL on PegInsert (rl_task=peg_insert by the task), budget.specialist_env_steps env steps
    specialist: SpecialistConfig = field(default_factory=lambda: SpecialistConfig(algo="sac"))
    # the G0 recipe: frozen encoder (cached features of every 2nd frame), AdamW 1e-3, batch 128
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(
        lr=1e-3, batch_size=128, finetune="frozen", frame_stride=2, warmup_steps=100, save_every=1000))
    rldg: RLDGConfig = field(default_factory=lambda: RLDGConfig(episodes_per_task=100))  # every success


# The tiny-VLA demo (generalist.kind=vla): its random backbone trains from scratch, so SFTConfig's rates
# (3e-3 head / 1e-3 backbone, measured to train its vision path: docs/bench/distill.md) and 32 px frames;
# the scripted operator at noise 0 stands in for a converged specialist (labelled so in the report).
VLA_DEMO: dict[str, dict[str, Any]] = {
    "generalist": {"head": "token_learner", "hidden_dim": 128, "image_size": 32},
    "specialist": {"algo": "scripted"},
    "sft": {"lr": 3e-3, "batch_size": 32, "finetune": "full", "frame_stride": 1, "warmup_steps": 50,
            "save_every": 500},
    "rldg": {"episodes_per_task": 80},
}


def apply_kind_defaults(cfg: Any) -> None:
    """``generalist.kind=vla``: every :data:`VLA_DEMO` setting still at its compact-demo default takes the
    tiny VLA's value (and ``budget=demo`` its ``demo_vla`` sizes, in :func:`flywheel.iterate.resolve_budget`)."""
    from flywheel.distill.generalist import generalist_kind

    if generalist_kind(cfg.generalist) != "vla":
        return
    compact = DemoConfig()
    for group, values in VLA_DEMO.items():
        for key, value in values.items():
            if getattr(getattr(cfg, group), key) == getattr(getattr(compact, group), key):
                setattr(getattr(cfg, group), key, value)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    from flywheel.iterate import register as register_iterate

    register_iterate()
    ConfigStore.instance().store(name="flywheel_demo", node=DemoConfig)


def run(cfg: Any) -> Path | None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    done = sorted(Path(cfg.workdir).glob("iterations/iter_*/report.md"))
    if done:
        print(f"the demo has finished already: {done[-1]}\n(delete {cfg.workdir} to run it again)\n")
        print(done[-1].read_text())
        return done[-1]
    t0 = time.time()
    apply_kind_defaults(cfg)
    state = run_iteration(cfg)
    report = Path(state["stages"]["report"]["output"]["report"])
    print(report.read_text())
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"demo finished in {time.time() - t0:.0f} s (this run, load average {load}); report: {report}")
    print(json.dumps({k: round(v["seconds"]) for k, v in state["stages"].items()}))
    return report


def main() -> None:
    import hydra

    register()
    hydra.main(version_base=None, config_name="flywheel_demo")(run)()
