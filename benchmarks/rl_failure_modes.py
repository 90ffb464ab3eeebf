"""Why a specialist or a generalist fails: its held-out episodes sorted by how far they got.

Loads a `flywheel-rl` run directory (its `results.json` config and `checkpoint/agent.safetensors`), or with
`--task` a generalist checkpoint (anything `policy.load` reads; a compact one names its cameras and image
size, as in the distillation jobs' evaluations, `--execute` steps of each chunk), runs the deterministic
policy on held-out seeds of the sim task and watches the task's own state. Lift tasks (LiftCube-*):

| outcome | meaning |
| --- | --- |
| success | the sim's success test passed |
| never reached | the TCP never came within `--reach` (xy) of the target cube |
| reached, never closed | it came close but the gripper stayed open |
| closed and missed | it closed without holding the target (too high, off in xy or yaw) |
| grasped a distractor | it held another cube and never the target |
| grasped, not lifted | it held the target but never lifted it to the success height |

with the mean |cube yaw relative to the gripper| at the closest approach (the cube's symmetry folds it into
+-45 degrees) and the mean TCP height when the gripper first closed. Insertion (PegInsert):

| outcome | meaning |
| --- | --- |
| success | the sim's success test passed |
| never over the hole | the peg's bottom never came within `--align` (xy) of the hole's centre |
| over the hole, not in | it came within `--align` but the bottom never went below the block's top |
| in the hole, not deep | the bottom went below the block's top over the hole, not to the success depth |

with the closest xy approach of the peg's bottom to the hole's centre (the hole leaves 1 mm per side) and
the peg's largest tilt (deg).

    MUJOCO_GL=egl .venv/bin/python benchmarks/rl_failure_modes.py outputs/bench/rl_pix_blue4 --episodes 50
    MUJOCO_GL=egl .venv/bin/python benchmarks/rl_failure_modes.py outputs/bench/rl_pix_peg --episodes 50
    MUJOCO_GL=egl .venv/bin/python benchmarks/rl_failure_modes.py outputs/bench/g0v2/g0_v3 \
        --task PandaRig/PegInsert-v0 --execute 4 --episodes 50              # a generalist
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


class LiftWatcher:
    """Per step: which cubes are held, the closest xy approach to the target, the gripper's first closing."""

    OUTCOMES = ("success", "never reached", "reached, never closed", "closed and missed", "grasped a distractor",
                "grasped, not lifted")
    COLUMNS = {"mean abs(yaw) at the closest approach (deg)": ("yaw", "{:.1f}", True),
               "TCP z when first closed (m)": ("closed_z", "{:.3f}", False)}

    def __init__(self, task, args: argparse.Namespace):
        self.task, self.reach, self.closed_width = task, args.reach, args.closed_width
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

    @staticmethod
    def classify(ep: dict) -> str:
        """One episode's outcome from what the watcher saw."""
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


class InsertWatcher:
    """Per step: the closest xy approach of the peg's bottom to the hole, how deep it went, the peg's tilt."""

    OUTCOMES = ("success", "never over the hole", "over the hole, not in", "in the hole, not deep")
    COLUMNS = {"closest xy of the peg's bottom to the hole (mm)": ("xy_mm", "{:.1f}", False),
               "largest peg tilt (deg)": ("tilt", "{:.1f}", False)}

    def __init__(self, task, args: argparse.Namespace):
        self.task, self.align = task, args.align
        self.start()

    def start(self) -> None:
        self.xy, self.zmin, self.tilt = np.inf, np.inf, 0.0

    def __call__(self, step) -> None:
        t = self.task
        b, h = t.peg_bottom(), t.hole_pos()
        xy = float(np.linalg.norm(b[:2] - h[:2]))
        self.xy = min(self.xy, xy)
        if xy < t.hole_half:  # the depth counts over the hole only (beside the block the bottom can go lower)
            self.zmin = min(self.zmin, float(b[2]))
        axis = t.rig.data.body("peg").xmat.reshape(3, 3)[:, 2]
        self.tilt = max(self.tilt, float(np.degrees(np.arccos(np.clip(abs(axis[2]), 0.0, 1.0)))))

    def episode(self, success: bool) -> dict:
        top = 2 * self.task.block_hz
        return {"success": bool(success), "xy_mm": 1000 * self.xy, "aligned": self.xy < self.align,
                "entered": self.zmin < top - 0.002, "depth_mm": 1000 * (top - self.zmin), "tilt": self.tilt}

    @staticmethod
    def classify(ep: dict) -> str:
        if ep["success"]:
            return "success"
        if ep["entered"]:
            return "in the hole, not deep"
        return "over the hole, not in" if ep["aligned"] else "never over the hole"


def watcher_for(task, args: argparse.Namespace):
    """The watcher that knows ``task``'s kind (a clear error for the others)."""
    if hasattr(task, "n_distractors"):
        return LiftWatcher(task, args)
    if hasattr(task, "peg_bottom"):
        return InsertWatcher(task, args)
    raise SystemExit(f"{type(task).__name__}: this breakdown knows lift (LiftCube-*) and insertion (PegInsert) tasks")


def specialist(run_dir: Path):
    """(env, deterministic agent, its step callbacks, task) of a finished flywheel-rl run."""
    import torch
    from omegaconf import OmegaConf

    from flywheel.rl.actor import Actor, SACActing
    from flywheel.rl.app import upgrade_config
    from flywheel.rl.build import build_agent, make_env
    from flywheel.rl.learner import load_agent_weights

    results = run_dir / "results.json"
    weights = run_dir / "checkpoint" / "agent.safetensors"
    for p in (results, weights):
        if not p.exists():
            raise SystemExit(f"{p} is missing: pass a finished flywheel-rl out_dir (or --task for a generalist)")
    cfg = OmegaConf.create(upgrade_config(json.loads(results.read_text())["config"]))
    torch.set_num_threads(int(cfg.torch_threads))
    env = make_env(cfg)
    agent = build_agent(cfg, env)
    load_agent_weights(agent, weights.parent)
    acting = SACActing(agent, deterministic=True, action_spec=Actor(env, agent).action_spec)
    return env, acting, [acting.executed], str(cfg.env.task)


def generalist(args: argparse.Namespace):
    """(env, chunked agent, no callbacks, task) of a generalist checkpoint, as the distillation jobs evaluate it."""
    import policy
    from flywheel.distill.collect import make_env
    from flywheel.distill.generalist import GeneralistConfig, env_kwargs
    from flywheel.evaluate import ChunkedPolicy

    pol = policy.load(args.run_dir, device="cpu")
    env = make_env(args.task, privileged_state=False, **env_kwargs(GeneralistConfig(), args.run_dir))
    return env, ChunkedPolicy(pol, env.unwrapped.instruction, execute=args.execute), [], args.task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path, help="a flywheel-rl out_dir (results.json + checkpoint/), or with --task "
                    "a generalist checkpoint")
    ap.add_argument("--task", default="", help="a generalist's sim task (run_dir is then its checkpoint)")
    ap.add_argument("--execute", type=int, default=4, help="a generalist's executed steps per chunk")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1_000_000, help="first held-out seed (the final eval's)")
    ap.add_argument("--reach", type=float, default=0.015, help="xy distance (m) that counts as reached")
    ap.add_argument("--closed-width", type=float, default=0.07, help="gripper width (m) below which it closed")
    ap.add_argument("--align", type=float, default=0.003, help="peg-to-hole xy distance (m) that counts as over it")
    ap.add_argument("--out", type=Path, default=None, help="write the episodes and the table as JSON")
    args = ap.parse_args()

    from tqdm import tqdm

    from flywheel.rollout import run_episodes

    env, acting, on_step, task_name = generalist(args) if args.task else specialist(args.run_dir)
    watch = watcher_for(env.unwrapped.task, args)
    eps = []
    for seed in tqdm(range(args.seed, args.seed + args.episodes), desc="episodes"):
        watch.start()
        ep = run_episodes(env, acting, [seed], on_step=[*on_step, watch])[0]
        eps.append({"seed": seed, **watch.episode(ep.success)})
    env.close()

    by: dict[str, list[dict]] = defaultdict(list)
    for e in eps:
        by[watch.classify(e)].append(e)
    print(f"\n{args.run_dir} ({task_name}, {len(eps)} held-out episodes from seed {args.seed})\n")
    print("| outcome | episodes | " + " | ".join(watch.COLUMNS) + " |")
    print("| --- " * (2 + len(watch.COLUMNS)) + "|")
    table = []
    for o in watch.OUTCOMES:
        es = by.get(o, [])
        row: dict = {"outcome": o, "episodes": len(es)}
        cells = []
        for key, fmt, absolute in watch.COLUMNS.values():
            vals = [abs(e[key]) if absolute else e[key] for e in es if e[key] is not None]
            row[key] = float(np.mean(vals)) if vals else None
            cells.append("-" if row[key] is None else fmt.format(row[key]))
        table.append(row)
        print(f"| {o} | {len(es)} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"episodes": eps, "table": table}, indent=2))


if __name__ == "__main__":
    main()
