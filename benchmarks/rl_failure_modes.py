"""Why a lift specialist fails: its held-out episodes sorted by how far they got.

Loads a `flywheel-rl` run directory (its `results.json` config and `checkpoint/agent.safetensors`), runs the
deterministic policy on held-out seeds of its sim lift task (LiftCube-*), and watches the task's own state:

| outcome | meaning |
| --- | --- |
| success | the sim's success test passed |
| never reached | the TCP never came within `--reach` (xy) of the target cube |
| reached, never closed | it came close but the gripper stayed open |
| closed and missed | it closed without holding the target (too high, off in xy or yaw) |
| grasped a distractor | it held another cube and never the target |
| grasped, not lifted | it held the target but never lifted it to the success height |

For each outcome: the count, the mean |cube yaw relative to the gripper| at the closest approach (the cube's
symmetry folds it into +-45 degrees) and the mean TCP height when the gripper first closed.

    MUJOCO_GL=egl .venv/bin/python benchmarks/rl_failure_modes.py outputs/bench/rl_pix_blue4 --episodes 50
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

OUTCOMES = ("success", "never reached", "reached, never closed", "closed and missed", "grasped a distractor",
            "grasped, not lifted")


def classify(ep: dict) -> str:
    """One episode's outcome from what :class:`Watcher` saw."""
    if ep["success"]:
        return "success"
    if "target_cube" in ep["grasped"]:
        return "grasped, not lifted"
    if ep["grasped"]:
        return "grasped a distractor"
    if ep["closed_z"] is not None and ep["reached"]:
        return "closed and missed"
    if not ep["reached"]:
        return "never reached"
    return "reached, never closed"


class Watcher:
    """Per step: which cubes are held, the closest xy approach to the target, the gripper's first closing."""

    def __init__(self, task, reach: float, closed_width: float):
        self.task, self.reach, self.closed_width = task, reach, closed_width
        self.names = ["target_cube"] + [f"distractor{i}" for i in range(int(task.n_distractors))]
        self.start()

    def start(self) -> None:
        self.grasped: set[str] = set()
        self.dmin, self.yaw, self.closed_z = np.inf, None, None

    def __call__(self, step) -> None:
        t = self.task
        self.grasped |= {n for n in self.names if t.grasped(n)}
        d = float(np.linalg.norm(t.body_pos("target_cube")[:2] - t.rig.ee_pos[:2]))
        if d < self.dmin:
            self.dmin, self.yaw = d, float(np.degrees(t.yaw_in_gripper("target_cube")))
        if self.closed_z is None and t.rig.gripper_width < self.closed_width:
            self.closed_z = float(t.rig.ee_pos[2])

    def episode(self, success: bool) -> dict:
        return {"success": bool(success), "grasped": sorted(self.grasped), "reached": self.dmin < self.reach,
                "dmin": self.dmin, "yaw": self.yaw, "closed_z": self.closed_z}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path, help="a flywheel-rl out_dir (results.json + checkpoint/)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1_000_000, help="first held-out seed (the final eval's)")
    ap.add_argument("--reach", type=float, default=0.015, help="xy distance (m) that counts as reached")
    ap.add_argument("--closed-width", type=float, default=0.07, help="gripper width (m) below which it closed")
    ap.add_argument("--out", type=Path, default=None, help="write the episodes and the table as JSON")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from flywheel.rl.actor import Actor, SACActing
    from flywheel.rl.app import upgrade_config
    from flywheel.rl.build import build_agent, make_env
    from flywheel.rl.learner import load_agent_weights
    from flywheel.rollout import run_episodes

    results = args.run_dir / "results.json"
    weights = args.run_dir / "checkpoint" / "agent.safetensors"
    for p in (results, weights):
        if not p.exists():
            raise SystemExit(f"{p} is missing: pass a finished flywheel-rl out_dir")
    cfg = OmegaConf.create(upgrade_config(json.loads(results.read_text())["config"]))
    torch.set_num_threads(int(cfg.torch_threads))
    env = make_env(cfg)
    agent = build_agent(cfg, env)
    load_agent_weights(agent, weights.parent)
    task = env.unwrapped.task
    if not hasattr(task, "n_distractors"):
        raise SystemExit(f"{cfg.env.task} is not a lift task: this breakdown knows LiftCube-* only")
    watch = Watcher(task, args.reach, args.closed_width)
    acting = SACActing(agent, deterministic=True, action_spec=Actor(env, agent).action_spec)
    eps = []
    for seed in tqdm(range(args.seed, args.seed + args.episodes), desc="episodes"):
        watch.start()
        ep = run_episodes(env, acting, [seed], on_step=[acting.executed, watch])[0]
        eps.append({"seed": seed, **watch.episode(ep.success)})
    env.close()

    by: dict[str, list[dict]] = defaultdict(list)
    for e in eps:
        by[classify(e)].append(e)
    print(f"\n{args.run_dir} ({cfg.env.task}, {len(eps)} held-out episodes from seed {args.seed})\n")
    print("| outcome | episodes | mean abs(yaw) at the closest approach (deg) | TCP z when first closed (m) |")
    print("| --- | --- | --- | --- |")
    table = []
    for o in OUTCOMES:
        es = by.get(o, [])
        yaws = [abs(e["yaw"]) for e in es if e["yaw"] is not None]
        zs = [e["closed_z"] for e in es if e["closed_z"] is not None]
        row = {"outcome": o, "episodes": len(es), "yaw": float(np.mean(yaws)) if yaws else None,
               "closed_z": float(np.mean(zs)) if zs else None}
        table.append(row)
        yaw = "-" if row["yaw"] is None else f"{row['yaw']:.1f}"
        z = "-" if row["closed_z"] is None else f"{row['closed_z']:.3f}"
        print(f"| {o} | {len(es)} | {yaw} | {z} |")
    if args.out:
        args.out.write_text(json.dumps({"episodes": eps, "table": table}, indent=2))


if __name__ == "__main__":
    main()
