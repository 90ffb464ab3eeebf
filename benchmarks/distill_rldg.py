"""RLDG against human-demo fine-tuning, in sim, with 95% Wilson intervals over held-out episodes.

1. record human-like demos (the noisy scripted operator) on every task and
   pretrain a tiny generalist G0 on them (multi-task);
2. train a state-based specialist per task (``--specialist sil``: self-imitation
   RL from sparse success, seeded by demos) and roll it out with the cameras on;
3. fine-tune G0 three ways with the same steps, learning rates, and replay
   (30% of each batch from G0's pretraining demos), on the same number of
   successful episodes per task: ``human`` (fresh human-like demos),
   ``rldg`` (the specialists' successes) and ``scripted`` (the noise-0 scripted
   operator: an upper bound, a stand-in for a converged specialist, not RL);
4. evaluate everything on the same held-out seeds.

Resumable (a ``flywheel.job`` in ``--workdir``): re-run the same command after a kill.

    .venv/bin/python benchmarks/distill_rldg.py            # ~40-60 min on a loaded 2-core CPU
    .venv/bin/python benchmarks/distill_rldg.py --quick    # minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="outputs/bench/distill_rldg")
    ap.add_argument("--tasks", nargs="+", default=["PandaRig/PegInsert-v0", "PandaRig/LiftCube-Red-v0"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--specialist", default="sil", choices=["sil", "sac"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

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
    from flywheel.evaluate import HELDOUT_SEED, load_results, results_table, save_results
    from flywheel.job import ResumableJob, Stage

    q = args.quick
    n_pre, pre_steps = (4, 40) if q else (40, 1000)
    n_ft, ft_steps = (4, 20) if q else (30, 500)
    spec_rollouts = 8 if q else 60
    ev_g0, ev, ev_scripted = (4, 4, 4) if q else (30, 100, 50)
    g = GeneralistConfig()
    wd = Path(args.workdir)
    tasks = list(args.tasks)
    holder: dict = {}

    def spec():
        if "spec" not in holder:
            env = collect.make_env(tasks[0], privileged_state=False, **env_kwargs(g))
            holder["spec"] = env.unwrapped.rig_spec
            env.close()
        return holder["spec"]

    def store(mode="a"):
        return EpisodeStore(wd / "store", mode, spec=spec(), image_codec="png")

    def demos(ctx):
        out = {}
        with store() as s:
            for t in tasks:
                env = collect.make_env(t, privileged_state=False, **env_kwargs(g))
                try:
                    a = collect.ExpertAgent(env, 1.0, 0)
                    out[f"pre/{t}"] = collect.record_rollouts(s, env, a, range(n_pre), source="human",
                                                              collection=f"human/{t}").to_dict()
                    out[f"ft/{t}"] = collect.record_rollouts(s, env, a, range(50_000, 50_000 + 2 * n_ft),
                                                             source="human", collection=f"human-ft/{t}").to_dict()
                finally:
                    env.close()
        return out

    def pretrain(ctx):
        d = ctx.stage_dir("pretrain") / "sft"
        with store("r") as s:
            eps = collect.select(s, source="human", collection=[f"human/{t}" for t in tasks])
            parent = final_checkpoint(d) or new_generalist(g, s.spec, ensure_backbone(g, wd), store_stats(s, eps))
            ck = finetune(parent, s, eps, d, SFTConfig(steps=pre_steps, save_every=250))
        return {"checkpoint": str(ck), "episodes": len(eps)}

    def specialists(ctx):
        out = {}
        for t in tasks:
            cfg = SpecialistConfig(algo=args.specialist, generations=2 if q else 5, rollouts_per_generation=4 if q
                                   else 16, bc_steps=100 if q else 1500, eval_episodes=4 if q else 40,
                                   exploration_noise=0.05, env_steps=500 if q else 20_000)
            out[t] = train(t, cfg, ctx.stage_dir("specialists") / t.replace("/", "_"))
        return out

    def rollouts(ctx):
        out = {}
        infos = ctx.output("specialists")
        with store() as s:
            for t in tasks:
                env = collect.make_env(t, privileged_state=True, **env_kwargs(g))
                try:
                    out[f"rl/{t}"] = collect.record_rollouts(
                        s, env, load_agent(t, infos[t]), range(60_000, 60_000 + spec_rollouts), source="rl",
                        collection=f"specialist/{t}", policy_version=f"specialist/{infos[t]['algo']}").to_dict()
                    agent = collect.ExpertAgent(env, 0.0, 0)
                    out[f"scripted/{t}"] = collect.record_rollouts(
                        s, env, agent, range(70_000, 70_000 + n_ft), source="rl", collection=f"scripted/{t}",
                        policy_version="scripted-noise0").to_dict()
                finally:
                    env.close()
        return out

    def arms(ctx):
        """Per task and arm, how many successful episodes; the human arm always gets as many as RLDG."""
        counts: dict[str, dict[str, int]] = {"human": {}, "rldg": {}, "scripted": {}, "human_full": {},
                                             "scripted_full": {}}
        with store("r") as s:
            for t in tasks:
                human, rl, scripted = (len(collect.select(s, task=t, source=src, collection=c)) for src, c in
                                       (("human", f"human-ft/{t}"), ("rl", f"specialist/{t}"),
                                        ("rl", f"scripted/{t}")))
                n = min(n_ft, human, rl) if rl else min(n_ft, human, scripted)
                counts["rldg"][t] = min(n, rl)
                counts["human"][t] = n
                counts["scripted"][t] = min(n, scripted)
                # the data-quality comparison without the RL cap: as many human as clean scripted episodes
                counts["human_full"][t] = counts["scripted_full"][t] = min(n_ft, human, scripted)
                if not rl:
                    logging.warning("%s: no successful specialist rollouts: the RLDG arm has no data of it", t)
        return {"episodes_per_task": counts}

    def arm(name: str, source: str, coll: str):
        def run(ctx):
            counts = ctx.output("arms_full" if name.endswith("_full") else "arms")["episodes_per_task"][name]
            g0 = ctx.output("pretrain")["checkpoint"]
            with store("r") as s:
                replay = collect.select(s, source="human", collection=[f"human/{t}" for t in tasks])
                new = []
                for t in tasks:
                    if counts[t]:
                        new += collect.select(s, task=t, source=source, collection=f"{coll}/{t}")[: counts[t]]
                if not new:
                    return {"skipped": "no episodes"}
                eps, w = rldg.mix_weights(new, replay, 0.3)
                ck = finetune(g0, s, eps, ctx.stage_dir(f"ft_{name}") / "sft",
                              SFTConfig(steps=ft_steps, save_every=250), weights=w)
                steps = sum(s.record(i).length for i in new)
            return {"checkpoint": str(ck), "episodes": len(new), "steps": steps}
        return run

    def evaluation(name: str, stage: str, n: int):
        def run(ctx):
            f = ctx.stage_dir(f"eval_{name}") / "results.json"
            if "checkpoint" not in ctx.output(stage):
                return {"skipped": ctx.output(stage).get("skipped", "no checkpoint")}
            ck = ctx.output(stage)["checkpoint"]
            if not f.exists():
                save_results(evaluate(ck, tasks, n, g, seed=HELDOUT_SEED), f)
            return {"results": str(f)}
        return run

    stages = [Stage("demos", demos), Stage("pretrain", pretrain), Stage("specialists", specialists),
              Stage("rollouts", rollouts), Stage("arms", arms),
              Stage("ft_human", arm("human", "human", "human-ft")), Stage("ft_rldg", arm("rldg", "rl", "specialist")),
              Stage("ft_scripted", arm("scripted", "rl", "scripted")),
              Stage("eval_g0", evaluation("g0", "pretrain", ev_g0)),
              Stage("eval_human", evaluation("human", "ft_human", ev)),
              Stage("eval_rldg", evaluation("rldg", "ft_rldg", ev)),
              Stage("eval_scripted", evaluation("scripted", "ft_scripted", ev_scripted)),
              Stage("arms_full", arms),
              Stage("ft_human_full", arm("human_full", "human", "human-ft")),
              Stage("ft_scripted_full", arm("scripted_full", "rl", "scripted")),
              Stage("eval_human_full", evaluation("human_full", "ft_human_full", ev)),
              Stage("eval_scripted_full", evaluation("scripted_full", "ft_scripted_full", ev))]
    t0 = time.time()
    state = ResumableJob(wd, stages, config={"tasks": tasks, "quick": q, "specialist": args.specialist}).run()
    out = state["stages"]
    res = {k: load_results(out[f"eval_{k}"]["output"]["results"]) if "results" in out[f"eval_{k}"]["output"]
           else {} for k in ("g0", "human", "rldg", "scripted")}
    table = results_table({"G0 (pretrained)": res["g0"], "+ human demos": res["human"],
                           f"+ RLDG ({args.specialist} specialist)": res["rldg"],
                           "+ scripted noise-0 (upper bound)": res["scripted"]})
    full = {k: load_results(out[f"eval_{k}"]["output"]["results"]) for k in ("human_full", "scripted_full")
            if "results" in out[f"eval_{k}"]["output"]}
    table_full = results_table({"+ human demos (n_t each)": full.get("human_full", {}),
                                "+ scripted noise-0 (n_t each)": full.get("scripted_full", {})})
    summary = {
        "table": table, "episodes_per_task": out["arms"]["output"]["episodes_per_task"],
        "table_full": table_full, "episodes_per_task_full": out["arms_full"]["output"]["episodes_per_task"],
        "specialists": {t: {k: v for k, v in s.items() if k in ("algo", "eval_success_rate", "eval_episodes",
                                                                   "env_steps", "generations")}
                        for t, s in out["specialists"]["output"].items()},
        "rollouts": out["rollouts"]["output"], "demos": out["demos"]["output"],
        "data_steps": {k: out[f"ft_{k}"]["output"].get("steps") for k in ("human", "rldg", "scripted", "human_full",
                                                                           "scripted_full")},
        "stage_seconds": {k: round(v["seconds"]) for k, v in out.items()},
        "load_average": os.getloadavg(), "this_run_seconds": round(time.time() - t0),
        "mean_gap_rldg_minus_human": float(np.mean([res["rldg"][t].rate - res["human"][t].rate for t in tasks]))
        if res["rldg"] and res["human"] else None,
    }
    (wd / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(table_full)
    print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))


if __name__ == "__main__":
    main()
