"""How far did RL move a generalist's head from where it started, task by task (issue #18's forgetting).

Rolls the starting generalist (``--start``) deterministically on each task's held-out seeds and, at every
decision, compares its action chunk's mean with each trained head's (``--trained``, generalist checkpoints
such as a ``flywheel-vla-rl`` run's ``generalist/``) on the same frozen features: the mean absolute difference
in normalised action units (the stats' std), split into the executed steps' arm dims, the executed steps'
gripper and the chunk's unexecuted steps. A head that learns one task from corrections and moves as far on the
tasks it already did forgets them (``docs/bench/vla_rl.md``).

    MUJOCO_GL=egl .venv/bin/python benchmarks/vla_rl_head_drift.py --start outputs/bench/g0v2/g0_v3 \\
        --trained RUN_A/dpo/seed0/generalist RUN_B/dpo/seed0/generalist \\
        --tasks LiftCube-Blue LiftCube-Red PushCube-Blue --out /tmp/drift.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def drift(start: str, trained: list[str], task: str, envs: int, decisions: int, exec_horizon: int,
          seed: int) -> list[dict[str, float]]:
    """Per trained head: mean |delta mean| over the start policy's own decisions on ``task``."""
    from flywheel.vla_rl.adapters import encoder_from_checkpoint
    from flywheel.vla_rl.engine import env_attr, make_sim_vec

    a = encoder_from_checkpoint(start)
    others = [encoder_from_checkpoint(t) for t in trained]
    cams = a.spec.cameras
    vec = make_sim_vec({"privileged_state": False, "cameras": tuple(c.name for c in cams),
                        "image_size": (cams[0].height, cams[0].width)})(task, envs)
    try:
        obs, _ = vec.reset(seed=list(range(seed, seed + envs)))
        instr = env_attr(vec, "instruction", task)
        diffs: list[list[torch.Tensor]] = [[] for _ in others]
        for _ in range(decisions):
            f = a.policy_features({**obs, "instruction": [instr] * envs})
            with torch.no_grad():
                m0 = a.policy_mean(f).reshape(envs, a.horizon, a.action_dim)
                for d, o in zip(diffs, others, strict=True):
                    d.append((o.policy_mean(f).reshape(envs, o.horizon, o.action_dim) - m0).abs())
            act = a.unnormalize_actions(m0).numpy()
            for j in range(exec_horizon):
                obs, *_ = vec.step(act[:, j])
    finally:
        vec.close()
    out = []
    for d in diffs:
        x = torch.cat(d).mean(0)  # (H, A)
        out.append({"arm": float(x[:exec_horizon, :-1].mean()), "gripper": float(x[:exec_horizon, -1].mean()),
                    "unexecuted": float(x[exec_horizon:].mean()) if exec_horizon < len(x) else 0.0})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--start", required=True, help="the starting generalist checkpoint")
    p.add_argument("--trained", nargs="+", required=True, help="trained generalist checkpoints to compare")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--envs", type=int, default=8, help="held-out episodes per task")
    p.add_argument("--decisions", type=int, default=15, help="decisions per episode")
    p.add_argument("--exec-horizon", type=int, default=4)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--out", default="", help="write the markdown table here too")
    args = p.parse_args()
    rows = ["| head | task | arm dims, executed steps | gripper, executed steps | unexecuted steps |",
            "| --- | --- | --- | --- | --- |"]
    for task in args.tasks:
        for t, r in zip(args.trained, drift(args.start, args.trained, task, args.envs, args.decisions,
                                            args.exec_horizon, args.seed), strict=True):
            rows.append(f"| {t} | {task} | {r['arm']:.2f} | {r['gripper']:.2f} | {r['unexecuted']:.2f} |")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
