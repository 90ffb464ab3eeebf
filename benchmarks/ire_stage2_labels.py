"""What iRe-VLA's stage 2 is trained on, and how the result is executed: PegInsert's diagnosis (#18).

Two experiments over a finished iRe-VLA job's store (no new RL), each evaluated on the same held-out seeds at
every ``--execute`` value given (actions of each chunk executed before inferring again):

* ``stage2``: round ``--round``'s stage 2 again from that job's stage-1 head, on the expert demos plus the stage-1
  rollouts of ``--collections`` (suffixes of ``ire/round<r>_rl/<task>/``: ``ppo``, ``rloo``, ``iter0`` ...), with
  ``--labels successes`` (every step of the successes, the paper's) or ``operator`` (the operator's steps of every
  assisted rollout: ``method.stage2_rl_labels=operator``), the RL share split per episode or per labelled step
  (``--weighting``: ``method.stage2_rl_weighting``); the job's own stage-2 settings otherwise;
* ``clone``: RLDG's recipe from the job's parent (1000 steps, lr 3e-4, batch 128, 30% replay of the store's human
  demos) on 50 successful episodes of the scripted operator at ``--noise`` (recorded into the store once).

    .venv/bin/python benchmarks/ire_stage2_labels.py stage2 --job outputs/bench/ire_s21_ppo --labels operator \\
        --collections ppo --execute 1 4 --out outputs/bench/vla_rl_s22/r1_operator_ppo
    .venv/bin/python benchmarks/ire_stage2_labels.py clone --job outputs/bench/ire_s21_ppo --noise 0 \\
        --execute 1 4 --out outputs/bench/vla_rl_s22/clone_scripted0
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["stage2", "clone"])
    ap.add_argument("--job", required=True, help="a finished iRe-VLA workdir (its config, store and stage-1 heads)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--labels", default="operator", choices=["successes", "operator"])
    ap.add_argument("--weighting", default="episode", choices=["episode", "step"],
                    help="stage2: method.stage2_rl_weighting (the RL share split per episode or per labelled step)")
    ap.add_argument("--collections", nargs="+", default=None, help="stage2: default: the job's own stage 1")
    ap.add_argument("--noise", type=float, default=0.0, help="clone: the scripted operator's noise")
    ap.add_argument("--execute", type=int, nargs="+", default=[1])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--tasks", nargs="*", default=None, help="evaluated tasks (default: the round's + the expert)")
    ap.add_argument("--sft-seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from omegaconf import OmegaConf

    from flywheel.data import EpisodeStore
    from flywheel.distill import collect, ire_vla, rldg
    from flywheel.distill.generalist import SFTConfig, env_kwargs, evaluate, finetune
    from flywheel.evaluate import save_results

    job = json.loads((Path(args.job) / "job_state.json").read_text())
    cfg = job["config"]
    m, g = OmegaConf.create(cfg["method"]), OmegaConf.create(cfg["generalist"])
    task = list(m.rl_tasks)[args.round - 1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    expert_colls = [str(m.expert_collection).format(task=t) for t in m.expert_tasks]
    if args.what == "stage2":
        m.stage2_rl_labels, m.stage2_rl_weighting = args.labels, args.weighting
        sft = SFTConfig(**{**cfg["sft"], "steps": int(m.stage2_steps), "seed": args.sft_seed})
        names = ([f"ire/round{args.round}_rl/{task}/{c}" for c in args.collections] if args.collections else
                 ire_vla.stage1_collections([task], str(m.stage1), int(m.rl_iterations)))
        parent = job["stages"][f"round{args.round}_rl"]["output"]["checkpoint"]
        with EpisodeStore(cfg["store"], "r") as s:
            rl = ire_vla.stage2_episodes(s, names, args.labels)
            expert = collect.select(s, task=list(m.expert_tasks), source="human", collection=expert_colls)
            logging.info("stage 2 from %s: %d expert demos, %d stage-1 episodes of %s (%s)", parent, len(expert),
                         len(rl), names, args.labels)
            ckpt = ire_vla.sl_stage(parent, s, expert, rl, out / "sft", sft, m)
        data = {"parent": parent, "collections": names, "labels": args.labels, "weighting": args.weighting,
                "rl_episodes": len(rl)}
    else:
        parent = cfg["parent"]
        coll = f"scripted{args.noise:g}/{task}"
        sft = SFTConfig(**{**cfg["sft"], "steps": 1000, "lr": 3e-4, "batch_size": 128, "seed": args.sft_seed})
        with EpisodeStore(cfg["store"], "a") as s:
            env = collect.make_env(task, privileged_state=False, **env_kwargs(g, parent))
            seed = 700_000  # apart from training (0...) and held-out (1 000 000...) seeds
            try:
                while len(collect.select(s, task=task, collection=coll)) < 50:
                    collect.record_rollouts(s, env, collect.ExpertAgent(env, args.noise, seed), range(seed, seed + 10),
                                            source="policy", collection=coll, progress=False)
                    seed += 10
            finally:
                env.close()
            new = collect.select(s, task=task, collection=coll)[:50]
            tried = collect.select(s, task=task, collection=coll, success=None)
            replay = collect.select(s, source="human", collection=[  # G0's demos of every task of the job
                str(m.expert_collection).format(task=t) for t in [*m.expert_tasks, *m.rl_tasks]])
            eps, w = rldg.mix_weights(new, replay, 0.3)
            ckpt = finetune(parent, s, eps, out / "sft", sft, weights=w)
            data = {"parent": parent, "noise": args.noise, "episodes": len(new), "attempts": len(tried),
                    "steps": sum(s.record(i).length for i in new), "replay": len(replay)}
    tasks = args.tasks if args.tasks is not None else [task, *(m.expert_tasks if args.what == "stage2" else [])]
    results = {}
    for ex in args.execute:
        g.execute = ex
        res = evaluate(ckpt, tasks, args.episodes, g, progress=False, device="cpu")
        save_results(res, out / f"results_execute{ex}.json")
        results[ex] = {t: r.rate for t, r in res.items()}
        logging.info("execute %d: %s", ex, results[ex])
    print(json.dumps({"checkpoint": str(ckpt), **data, "success": results}, indent=1))


if __name__ == "__main__":
    main()
