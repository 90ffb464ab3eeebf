"""How far one Adam step moves a stochastic generalist head: the approximate KL of one policy-gradient step.

On real observations of a task (rendered with the generalist's cameras), the Gaussian chunk head over a
compact VLA checkpoint samples a chunk per observation, takes one Adam step on a policy-gradient loss with
random advantages, and reports the approximate KL (k3) between the policy before and after, for several
learning rates, for the head as built now (features normalised for the scale and value heads) and as it
was before the tenth session (``--legacy``: one linear scale head on the raw features); ``--per-module``
also steps each module alone at the smallest lr. See ``docs/bench/vla_rl.md``.

    MUJOCO_GL=egl .venv/bin/python benchmarks/vla_rl_step_kl.py \\
        --policy outputs/bench/ire_v3_mix/round2_sl/sft/checkpoints/step_001000 --task LiftCube-Blue --per-module
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="a compact VLA checkpoint")
    ap.add_argument("--task", default="LiftCube-Blue")
    ap.add_argument("--n", type=int, default=8, help="observations")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-7, 1e-6, 3e-6, 1e-5])
    ap.add_argument("--exec-horizon", type=int, default=4, help="sampled steps of the chunk (0: all)")
    ap.add_argument("--per-module", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from flywheel.vla_rl.checkpoint import build_policy
    from flywheel.vla_rl.engine import make_sim_vec
    from flywheel.vla_rl.policies import one_step_kl

    enc = {"type": "checkpoint", "path": args.policy}
    heads = {
        "now": {"kind": "gaussian", "fixed_dims": [6], "sampled_steps": args.exec_horizon},
        "legacy": {"kind": "gaussian", "fixed_dims": [6], "sampled_steps": args.exec_horizon,
                   "norm_features": False, "log_std_hidden": 0},
    }
    pols = {k: build_policy(h, enc) for k, h in heads.items()}
    cams = pols["now"].encoder.spec.cameras
    vec = make_sim_vec({"privileged_state": True, "cameras": tuple(c.name for c in cams),
                        "image_size": (cams[0].height, cams[0].width)})(args.task, args.n)
    obs, _ = vec.reset(seed=list(range(args.n)))
    instr = str(vec.get_attr("instruction")[0])
    feats = pols["now"].features({**obs, "instruction": [instr] * args.n})
    vec.close()
    a = feats.abs()
    print(f"features: {feats.shape[1]} values, mean |x| {float(a.mean()):.2f}, max {float(a.max()):.1f}, "
          f"sum |x| per sample {float(a.sum(1).mean()):.0f}")
    print("| head | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |")
    print("| --- |" + " --- |" * len(args.lrs))
    for k, pol in pols.items():
        print(f"| {k} | " + " | ".join(f"{one_step_kl(pol, feats, lr):.4g}" for lr in args.lrs) + " |")
    if args.per_module:
        lr = min(args.lrs)
        for k, pol in pols.items():
            groups: dict[str, list[str]] = {}
            for n, p in pol.named_parameters():
                if p.requires_grad:
                    groups.setdefault(n.rsplit(".", 1)[0], []).append(n)
            print(f"\n{k}: one step of each module alone at lr {lr:g}")
            for mod, names in groups.items():
                size = sum(int(np.prod(dict(pol.named_parameters())[n].shape)) for n in names)
                print(f"  {mod:48s} {size:9d} params  KL {one_step_kl(pol, feats, lr, names):.6f}")


if __name__ == "__main__":
    main()
