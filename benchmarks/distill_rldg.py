"""RLDG against human-demo fine-tuning, in sim, with 95% Wilson intervals over held-out episodes.

1. record human-like demos (the noisy scripted operator, noise 1) on every task and
   pretrain a tiny generalist G0 on them (multi-task);
2. take a HIL-SERL specialist per task (``--rl-run TASK=DIR``: a finished
   ``flywheel-rl`` run, e.g. from ``benchmarks/rl_hilserl.py``; otherwise one is
   trained here with ``--specialist-steps``) and roll it out with the cameras on
   (``--cluster ray --workers N``: on Ray workers; the store, written here in seed order,
   holds what the serial run writes);
3. fine-tune G0 two ways with the same steps, learning rates and replay (30% of
   each batch from G0's pretraining demos), on the **same number of successful
   episodes per task**: ``human`` (fresh successful human-like demos) and ``rldg``
   (the specialist's successful rollouts); optionally a third, ``scripted`` (the
   noise-0 scripted operator: clean data that is not RL, ``--scripted``);
4. evaluate every checkpoint on the same held-out seeds.

With ``--g0 CKPT --store DIR`` the generalist is a given checkpoint (the compact G0 of
``benchmarks/generalist_g0.py``) trained on that store's human-like demos: no pretraining here,
the new data goes into that store, the replay is G0's own demos (``--replay-collection``), and
compact fine-tuning runs on the frozen encoder's cached features. ``--seeds 0 1 2`` fine-tunes
every arm once per training seed (the spread goes in the summary).

Resumable (a ``flywheel.job`` in ``--workdir``): re-run the same command after a kill.

    .venv/bin/python benchmarks/distill_rldg.py \\
        --rl-run PandaRig/PegInsert-v0=outputs/bench/rl/peg_insert/full \\
        --rl-run PandaRig/LiftCube-Blue-v0=outputs/bench/rl/lift_cube/full
    .venv/bin/python benchmarks/distill_rldg.py --workdir outputs/bench/rldg_compact \\
        --g0 outputs/bench/g0v2/g0 --store outputs/bench/g0v2/store --tasks PandaRig/PegInsert-v0 \\
        --rl-run PandaRig/PegInsert-v0=outputs/bench/rldg/spec_peg --episodes 50 --ft-steps 1500 \\
        --lr 3e-4 --batch 128 --seeds 0 1 2
    .venv/bin/python benchmarks/distill_rldg.py --quick --workdir /tmp/rldg   # a smoke run, minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="outputs/bench/rldg")
    ap.add_argument("--tasks", nargs="+", default=["PandaRig/PegInsert-v0", "PandaRig/LiftCube-Blue-v0"])
    ap.add_argument("--rl-run", action="append", default=[], metavar="TASK=DIR",
                    help="a finished flywheel-rl run to use as the task's specialist")
    ap.add_argument("--specialist", default="sac", choices=["sac", "sil", "scripted"])
    ap.add_argument("--specialist-steps", type=int, default=30_000, help="sac: env steps when training here")
    ap.add_argument("--episodes", type=int, default=40, help="successful episodes per task in each arm")
    ap.add_argument("--pretrain-demos", type=int, default=40, help="human-like demo attempts per task for G0")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--ft-steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3, help="head learning rate (the tiny random backbone needs it)")
    ap.add_argument("--backbone-lr", type=float, default=1e-3)
    ap.add_argument("--replay", type=float, default=0.3, help="batch fraction replayed from G0's demos")
    ap.add_argument("--eval", type=int, default=100, help="held-out episodes per task and checkpoint")
    ap.add_argument("--scripted", action="store_true", help="also the noise-0 scripted arm (clean, not RL)")
    ap.add_argument("--match-steps", action="store_true",
                    help="also an RLDG arm with as many env steps per task as the human arm (RL episodes are shorter)")
    ap.add_argument("--g0", default="", help="a trained generalist checkpoint (e.g. the compact G0): no pretraining")
    ap.add_argument("--store", default="", help="with --g0: the store it was trained on (new data goes there too)")
    ap.add_argument("--replay-collection", nargs="*", default=None,
                    help="with --g0: the collections replayed (default: every human collection but the new demos)")
    ap.add_argument("--frame-stride", type=int, default=1, help="compact G0: train on every k-th frame's features")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds per arm")
    ap.add_argument("--cluster", default="local", choices=["local", "ray"],
                    help="specialist rollouts on Ray workers (the store is written here, in seed order)")
    ap.add_argument("--workers", type=int, default=2, help="--cluster ray: workers, one CPU each")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from flywheel.cluster import ClusterConfig, PolicySource, RayEpisodePool
    from flywheel.data import EpisodeStore
    from flywheel.distill import collect, rldg
    from flywheel.distill.generalist import (
        GeneralistConfig,
        SFTConfig,
        ensure_backbone,
        env_kwargs,
        evaluate,
        final_checkpoint,
        finetune,
        new_generalist,
        store_stats,
    )
    from flywheel.distill.specialist import SpecialistConfig, load_agent, train
    from flywheel.evaluate import HELDOUT_SEED, load_results, results_table, save_results, wilson_interval
    from flywheel.job import ResumableJob, Stage
    from policy.compact import checkpoint_family

    if bool(args.g0) != bool(args.store):
        raise SystemExit("--g0 and --store go together (the checkpoint and the store it was trained on)")

    if args.quick:
        args.episodes, args.pretrain_demos, args.pretrain_steps, args.ft_steps, args.eval = 2, 3, 20, 10, 3
        args.specialist_steps = min(args.specialist_steps, 300)
    tasks = list(args.tasks)
    runs = dict(r.split("=", 1) for r in args.rl_run)
    unknown = set(runs) - set(tasks)
    if unknown:
        raise SystemExit(f"--rl-run for {sorted(unknown)}: not in --tasks {tasks}")
    g = GeneralistConfig()
    if args.store:  # the env renders what the given store holds
        with EpisodeStore(args.store, "r") as s0:
            g.cameras, g.image_size = list(s0.spec.camera_names), int(s0.spec.cameras[0].height)
    wd = Path(args.workdir)
    n = int(args.episodes)

    compact = bool(args.g0) and checkpoint_family(args.g0) == "compact"

    def sft(steps: int, seed: int = 0) -> SFTConfig:
        return SFTConfig(steps=steps, lr=args.lr, backbone_lr=args.backbone_lr, warmup_steps=50, save_every=500,
                         batch_size=args.batch, seed=seed, finetune="frozen" if compact else "full",
                         frame_stride=args.frame_stride)

    holder: dict = {}

    def spec():
        if "spec" not in holder:
            env = collect.make_env(tasks[0], privileged_state=False, **env_kwargs(g, args.g0 or None))
            holder["spec"] = env.unwrapped.rig_spec
            env.close()
        return holder["spec"]

    def store(mode="a"):
        if args.store:
            return EpisodeStore(args.store, mode)
        return EpisodeStore(wd / "store", mode, spec=spec(), image_codec="png")

    def replay_episodes(s) -> list[int]:
        if not args.g0:
            return collect.select(s, source="human", collection=[f"human/{t}" for t in tasks])
        names = args.replay_collection
        if names is None:
            names = sorted({r.extra.get("collection", "") for r in s.records if r.source == "human"}
                           - {f"human-ft/{t}" for t in tasks})
        return collect.select(s, source="human", collection=list(names))

    def until_successes(s, env, agent, base: int, rate_hint: float, **kw):
        """Record seeds base, base+1, ... in rounds until ``n`` successes (or 6x the expected attempts)."""
        stats, start = [], base
        cap = base + max(8, math.ceil(6 * n / max(rate_hint, 0.05)))
        while start < cap:
            have = len(collect.select(s, collection=kw["collection"]))
            if have >= n:
                break
            k = max(2, math.ceil((n - have) / max(rate_hint, 0.05) * 1.2))
            stats.append(collect.record_rollouts(s, env, agent, range(start, min(start + k, cap)), **kw).to_dict())
            start += k
        return {"recorded": sum(x["episodes"] for x in stats), "successes": len(collect.select(
            s, collection=kw["collection"]))}

    def demos(ctx):
        out = {}
        with store() as s:
            for t in tasks:
                env = collect.make_env(t, privileged_state=False, **env_kwargs(g, args.g0 or None))
                try:
                    a = collect.ExpertAgent(env, 1.0, 0)
                    if not args.g0:  # G0's own demos (with --g0 they are in the given store already)
                        out[f"pre/{t}"] = collect.record_rollouts(s, env, a, range(args.pretrain_demos),
                                                                  source="human", collection=f"human/{t}").to_dict()
                    out[f"ft/{t}"] = until_successes(s, env, a, 50_000, 0.7, source="human",
                                                     collection=f"human-ft/{t}")
                finally:
                    env.close()
        return out

    def pretrain(ctx):
        if args.g0:
            return {"checkpoint": str(Path(args.g0).resolve()), "given": True}
        d = ctx.stage_dir("pretrain") / "sft"
        with store("r") as s:
            eps = collect.select(s, source="human", collection=[f"human/{t}" for t in tasks])
            parent = final_checkpoint(d) or new_generalist(g, s.spec, ensure_backbone(g, wd), store_stats(s, eps))
            ck = finetune(parent, s, eps, d, sft(args.pretrain_steps))
        return {"checkpoint": str(ck), "episodes": len(eps)}

    def specialists(ctx):
        out = {}
        for t in tasks:
            cfg = SpecialistConfig(algo=args.specialist, rl_run=runs.get(t, ""), env_steps=args.specialist_steps,
                                   eval_episodes=5 if args.quick else 100)
            out[t] = train(t, cfg, ctx.stage_dir("specialists") / t.replace("/", "_"))
        return out

    def specialist_pool(t: str, info: dict):
        """``--cluster ray``: Ray workers rolling the specialist of ``t``; otherwise nothing (serial)."""
        if args.cluster == "local":
            return contextlib.nullcontext()
        src = PolicySource(specialist=info, env="collect",
                           env_kwargs={**env_kwargs(g, args.g0 or None), "privileged_state": True})
        return RayEpisodePool(src, ClusterConfig(kind="ray", workers=args.workers))

    def specialist_agent(t: str, info: dict, env, pool):
        if pool is not None:
            return None  # the workers rebuild it
        agent = load_agent(t, info)
        if hasattr(agent, "bind"):
            agent.bind(env)
        return agent

    def rollouts(ctx):
        out = {}
        infos = ctx.output("specialists")
        with store() as s:
            for t in tasks:
                env = collect.make_env(t, privileged_state=True, **env_kwargs(g, args.g0 or None))
                try:
                    rate = infos[t].get("eval_success_rate")
                    with specialist_pool(t, infos[t]) as pool:
                        out[f"rl/{t}"] = until_successes(
                            s, env, specialist_agent(t, infos[t], env, pool), 60_000,
                            rate if rate == rate and rate else 0.5, source="rl", collection=f"specialist/{t}",
                            policy_version=f"specialist/{infos[t]['algo']}", pool=pool)
                    if args.scripted:
                        out[f"scripted/{t}"] = until_successes(
                            s, env, collect.ExpertAgent(env, 0.0, 0), 70_000, 0.95, source="policy",
                            collection=f"scripted/{t}", policy_version="scripted-noise0")
                finally:
                    env.close()
        return out

    arms = {"human": ("human", "human-ft"), "rldg": ("rl", "specialist")}

    def sfx(seed: int) -> str:  # seed 0 keeps the single-seed runs' stage names
        return "" if seed == 0 else f"_s{seed}"
    if args.scripted:
        arms["scripted"] = ("policy", "scripted")

    def counts(ctx):
        """Successful episodes per task for every arm: the smallest arm's count, so all arms get as many."""
        with store("r") as s:
            have = {t: {a: len(collect.select(s, task=t, source=src, collection=f"{c}/{t}"))
                        for a, (src, c) in arms.items()} for t in tasks}
        return {"available": have, "per_task": {t: min(n, *have[t].values()) for t in tasks}}

    def arm(name: str, seed: int):
        source, coll = arms[name]

        def run(ctx):
            per_task = ctx.output("counts")["per_task"]
            g0 = ctx.output("pretrain")["checkpoint"]
            with store("r") as s:
                replay = replay_episodes(s)
                new = []
                for t in tasks:
                    new += collect.select(s, task=t, source=source, collection=f"{coll}/{t}")[: per_task[t]]
                if not new:
                    return {"skipped": "no episodes"}
                eps, w = rldg.mix_weights(new, replay, args.replay)
                ck = finetune(g0, s, eps, ctx.stage_dir(f"ft_{name}{sfx(seed)}") / "sft", sft(args.ft_steps, seed),
                              weights=w)
                steps = sum(s.record(i).length for i in new)
            return {"checkpoint": str(ck), "episodes": len(new), "steps": steps}
        return run

    def evaluation(stage: str):
        def run(ctx):
            f = ctx.stage_dir(f"eval_{stage}") / "results.json"
            if "checkpoint" not in ctx.output(stage):
                return {"skipped": ctx.output(stage).get("skipped", "no checkpoint")}
            if not f.exists():
                save_results(evaluate(ctx.output(stage)["checkpoint"], tasks, args.eval, g, seed=HELDOUT_SEED,
                                      device="cpu"), f)
            return {"results": str(f)}
        return run

    def human_steps(s, t: str) -> int:
        per_task = holder["per_task"]
        return sum(s.record(i).length for i in collect.select(s, task=t, source="human",
                                                              collection=f"human-ft/{t}")[: per_task[t]])

    def rl_until_steps(s, t: str, target: int) -> list[int]:
        out, steps = [], 0
        for i in collect.select(s, task=t, source="rl", collection=[f"specialist/{t}", f"specialist-more/{t}"]):
            if steps >= target:
                break
            out.append(i)
            steps += s.record(i).length
        return out

    def rollouts_steps(ctx):
        """More specialist rollouts until its successes hold as many env steps as the human arm's episodes."""
        holder["per_task"] = ctx.output("counts")["per_task"]
        infos, out = ctx.output("specialists"), {}
        with store() as s:
            for t in tasks:
                target = human_steps(s, t)
                env = collect.make_env(t, privileged_state=True, **env_kwargs(g, args.g0 or None))
                try:
                    seed = 80_000
                    with specialist_pool(t, infos[t]) as pool:
                        agent = specialist_agent(t, infos[t], env, pool)
                        while sum(s.record(i).length for i in rl_until_steps(s, t, target)) < target \
                                and seed < 80_400:
                            collect.record_rollouts(s, env, agent, range(seed, seed + 20), source="rl",
                                                    collection=f"specialist-more/{t}",
                                                    policy_version=f"specialist/{infos[t]['algo']}", pool=pool)
                            seed += 20
                finally:
                    env.close()
                eps = rl_until_steps(s, t, target)
                out[t] = {"human_steps": target, "rl_episodes": len(eps), "rl_steps": sum(s.record(i).length for i in eps)}
        return out

    def ft_rldg_steps(seed: int):
        def run(ctx):
            holder["per_task"] = ctx.output("counts")["per_task"]
            with store("r") as s:
                replay = replay_episodes(s)
                new = [i for t in tasks for i in rl_until_steps(s, t, human_steps(s, t))]
                eps, w = rldg.mix_weights(new, replay, args.replay)
                ck = finetune(ctx.output("pretrain")["checkpoint"], s, eps,
                              ctx.stage_dir(f"ft_rldg_steps{sfx(seed)}") / "sft", sft(args.ft_steps, seed), weights=w)
                return {"checkpoint": str(ck), "episodes": len(new), "steps": sum(s.record(i).length for i in new)}
        return run

    stages = [Stage("demos", demos), Stage("pretrain", pretrain), Stage("specialists", specialists),
              Stage("rollouts", rollouts), Stage("counts", counts)]
    stages += [Stage(f"ft_{a}{sfx(sd)}", arm(a, sd)) for sd in args.seeds for a in arms]
    stages += [Stage("eval_pretrain", evaluation("pretrain"))]
    stages += [Stage(f"eval_ft_{a}{sfx(sd)}", evaluation(f"ft_{a}{sfx(sd)}")) for sd in args.seeds for a in arms]
    if args.match_steps:  # the steps-matched RLDG arm, once per fine-tuning seed too
        stages += [Stage("rollouts_steps", rollouts_steps)]
        stages += [Stage(f"ft_rldg_steps{sfx(sd)}", ft_rldg_steps(sd)) for sd in args.seeds]
        stages += [Stage(f"eval_ft_rldg_steps{sfx(sd)}", evaluation(f"ft_rldg_steps{sfx(sd)}")) for sd in args.seeds]
    t0 = time.time()
    # where the rollouts run does not change them: a run resumes with or without --cluster ray
    config = {k: v for k, v in vars(args).items()
              if k not in ("threads", "workdir", "match_steps", "cluster", "workers")}
    state = ResumableJob(wd, stages, config=config).run()
    out = state["stages"]

    def res(stage: str):
        o = out[f"eval_{stage}"]["output"]
        return load_results(o["results"]) if "results" in o else {}

    labels = {"human": "+ human demos", "rldg": f"+ RLDG ({args.specialist} specialist)",
              "scripted": "+ scripted noise-0 (clean, not RL)"}
    results = {"G0 (pretrained)": res("pretrain")}
    for sd in args.seeds:
        results.update({labels[a] + (f" (seed {sd})" if len(args.seeds) > 1 else ""): res(f"ft_{a}{sfx(sd)}")
                        for a in arms})
    if args.match_steps:
        for sd in args.seeds:
            results["+ RLDG, as many steps as human" + (f" (seed {sd})" if len(args.seeds) > 1 else "")] = \
                res(f"ft_rldg_steps{sfx(sd)}")
    table = results_table(results)
    seeds_table = {}  # per arm and task: every seed's rate, their mean and spread, the pooled rate and interval
    for a in [*arms, *(["rldg_steps"] if args.match_steps else [])]:
        for t in tasks:
            rs = [res(f"ft_{a}{sfx(sd)}").get(t) for sd in args.seeds]
            rs = [r for r in rs if r is not None]
            if not rs:
                continue
            k, m = sum(r.successes for r in rs), sum(r.episodes for r in rs)
            lo, hi = wilson_interval(k, m)
            seeds_table[f"{a} {t}"] = {"rates": [r.rate for r in rs], "mean": float(np.mean([r.rate for r in rs])),
                                       "std": float(np.std([r.rate for r in rs])), "pooled": k / m,
                                       "pooled_ci": [lo, hi], "episodes": m}
    if len(args.seeds) > 1:
        table += "\n\n| arm | task | per seed | mean ± std | pooled [95% CI] |\n| --- | --- | --- | --- | --- |\n"
        table += "\n".join(f"| {k.split(' ')[0]} | {k.split(' ')[1].split('/')[-1]} | "
                            f"{', '.join(f'{r:.2f}' for r in v['rates'])} | {v['mean']:.2f} ± {v['std']:.2f} | "
                            f"{v['pooled']:.2f} [{v['pooled_ci'][0]:.2f}, {v['pooled_ci'][1]:.2f}] (n={v['episodes']}) |"
                            for k, v in seeds_table.items())
    first = sfx(args.seeds[0])  # the gap and data columns of the first seed (seed 0's stages need not be here)
    human, rl = res(f"ft_human{first}"), res(f"ft_rldg{first}")
    summary = {
        "table": table, "episodes_per_task": out["counts"]["output"],
        "specialists": {t: {k: v for k, v in s.items() if k in ("algo", "eval_success_rate", "eval_episodes",
                                                                   "env_steps", "intervention_rate")}
                        for t, s in out["specialists"]["output"].items()},
        "rollouts": out["rollouts"]["output"], "demos": out["demos"]["output"],
        "data_steps": {a: out[f"ft_{a}{first}"]["output"].get("steps") for a in arms},
        "match_steps": out.get("rollouts_steps", {}).get("output"),
        "seeds": seeds_table,
        "gap_rldg_minus_human": {t: rl[t].rate - human[t].rate for t in tasks if t in rl and t in human},
        "stage_seconds": {k: round(v["seconds"]) for k, v in out.items()},
        "load_average": os.getloadavg(), "this_run_seconds": round(time.time() - t0), "config": config,
    }
    (wd / "summary.json").write_text(json.dumps(summary, indent=2))
    (wd / "summary.md").write_text(table + "\n")
    print(table)
    print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
    if summary["gap_rldg_minus_human"]:
        print("mean gap RLDG - human:", float(np.mean(list(summary["gap_rldg_minus_human"].values()))))


if __name__ == "__main__":
    main()
