"""`flywheel-demo` (run by ``make demo``): one short flywheel iteration on the simulated rig, on a CPU.

What it does, all for real and from scratch (nothing is downloaded or cached):

1. records human-like demos (the noisy scripted operator) on the pretraining tasks
   and pretrains a tiny generalist (a random tiny SmolVLM-architecture backbone
   plus the iRe-VLA action head) on them;
2. evaluates it on held-out seeds; rolls it out with a simulated operator who
   intervenes;
3. picks a specialist where the generalist fails -- by default the scripted
   operator at noise 0, a labelled stand-in for a converged RL specialist (a
   learned one, ``specialist.algo=sil`` or ``sac``, needs more CPU than a demo
   has to become reliable) -- rolls it out with the cameras on, and keeps its
   successes;
4. distils them into the generalist (RLDG), evaluates the candidate on the same
   held-out seeds, and promotes it only if it is better;
5. writes ``outputs/demo/iterations/iter_001/report.md`` (+ ``report.png``) with the
   before/after table.

It is the ``flywheel-iterate`` job with ``budget=demo`` in ``workdir=outputs/demo``:
progress bars, ``job.log``, and re-running continues a killed run. When the
iteration has finished, re-running prints its report again (delete the workdir,
or pass ``workdir=...``, to start over).

    flywheel-demo                        # ~5-10 minutes on a 2-core CPU
    flywheel-demo budget=tiny workdir=/tmp/fw   # a smoke test in about a minute
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.distill.generalist import SFTConfig
from flywheel.distill.rldg import RLDGConfig
from flywheel.distill.specialist import SpecialistConfig
from flywheel.iterate import IterateConfig, run_iteration


@dataclass
class DemoConfig(IterateConfig):
    workdir: str = "outputs/demo"
    specialist: SpecialistConfig = field(default_factory=lambda: SpecialistConfig(algo="scripted"))
    # The demo's backbone is random and trained from scratch: SFTConfig's learning rates (3e-3 head /
    # 1e-3 backbone) are the ones measured to train its vision path (40 PegInsert episodes, 1000 steps:
    # loss 0.07 against 0.21 for a model whose images were blanked).
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(save_every=500))
    rldg: RLDGConfig = field(default_factory=lambda: RLDGConfig(episodes_per_task=80))  # every rollout


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
    state = run_iteration(cfg)
    report = Path(state["stages"]["report"]["output"]["report"])
    print(report.read_text())
    print(f"demo finished in {time.time() - t0:.0f} s (this run); report: {report}")
    print(json.dumps({k: round(v["seconds"]) for k, v in state["stages"].items()}))
    return report


def main() -> None:
    import hydra

    register()
    hydra.main(version_base=None, config_name="flywheel_demo")(run)()
