"""iRe-VLA over two rounds in sim: success on expert, RL-trained and unseen tasks after every stage.

Runs ``flywheel-distill method=ire_vla`` (a resumable job) with a CPU-sized budget and prints its
table (mean held-out success per task group after each stage). Re-run the same command after a kill.

    .venv/bin/python benchmarks/distill_ire_vla.py           # ~25 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/distill_ire_vla.py --quick   # a few minutes
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="outputs/bench/ire_vla")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args, extra = ap.parse_known_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import logging

    import torch

    from flywheel.distill.cli import compose, run

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    q = args.quick
    overrides = [
        "method=ire_vla", f"workdir={args.workdir}",
        "method.expert_tasks=[PandaRig/LiftCube-Red-v0,PandaRig/LiftCube-Green-v0]",
        "method.rl_tasks=[PandaRig/PegInsert-v0,PandaRig/LiftCube-Blue-v0]",
        "method.unseen_tasks=[PandaRig/LiftCube-Yellow-v0]",
        f"method.expert_demos={4 if q else 40}", f"method.stage0_steps={20 if q else 1500}",
        f"method.stage2_steps={10 if q else 1000}", f"method.eval_episodes={2 if q else 20}",
        f"method.rl_iterations={1 if q else 2}", f"method.episodes_per_iteration={2 if q else 32}",
        f"method.head_updates={10 if q else 300}", "method.max_interventions=4",
        *extra,
    ]
    cfg = compose(overrides)
    run(cfg)
    print("command: .venv/bin/python benchmarks/distill_ire_vla.py " + " ".join(os.sys.argv[1:]))


if __name__ == "__main__":
    main()
