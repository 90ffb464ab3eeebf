"""Re-run a finished demo's distill stage with other settings and evaluate each candidate on the RL task.

Why the demo's gain depends on its draw (docs/bench/demo.md): this takes a finished ``flywheel-demo``
workdir (its G0, store, features and specialist rollouts) and distils again with each variant, evaluating
on the same held-out seeds as the demo (n = budget.eval_episodes).

    .venv/bin/python benchmarks/demo_distill_variants.py outputs/demo_s6 --variant lr=1e-3 \
        --variant lr=3e-4 --variant steps=2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir")
    ap.add_argument("--variant", action="append", default=[],
                    help="comma-separated overrides of sft (lr, steps, frame_stride, batch_size) and rldg (replay)")
    ap.add_argument("--tasks", nargs="+", default=["PandaRig/PegInsert-v0"])
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import numpy as np
    from omegaconf import OmegaConf

    from flywheel.data import EpisodeStore
    from flywheel.distill import collect, rldg
    from flywheel.distill.generalist import SFTConfig, evaluate
    from flywheel.distill.rldg import RLDGConfig
    from flywheel.evaluate import HELDOUT_SEED
    from flywheel.registry import ModelRegistry

    wd = Path(a.workdir)
    it = wd / "iterations" / "iter_001"
    if not (it / "job_state.json").exists():
        raise SystemExit(f"{wd}: no {it / 'job_state.json'}: give a finished flywheel-demo workdir")
    state = json.loads((it / "job_state.json").read_text())
    cfg, st = state["config"], state["stages"]
    if "collect_specialists" not in st or "path" not in st.get("bootstrap", {}).get("output", {}):
        raise SystemExit(f"{wd}: the demo has not finished its bootstrap and specialist rollouts yet")
    g0 = st["bootstrap"]["output"]["path"]
    parent = ModelRegistry(wd / "registry").get(st["evaluate_current"]["output"]["model"])
    tunable = {f.name for f in dataclasses.fields(SFTConfig)} | {"replay"}
    out = Path(a.out or it / "variants")
    rows = []
    for v in a.variant or ["base"]:
        kv = dict(x.split("=", 1) for x in v.split(",")) if v != "base" else {}
        if unknown := sorted(set(kv) - tunable):
            raise SystemExit(f"--variant {v!r}: {unknown} are not sft fields or replay (sft: {sorted(tunable)})")
        sft = SFTConfig(**{**cfg["sft"], "steps": int(cfg["budget"]["distill_steps"]),
                           "feature_root": str(wd / "features"), "device": "cpu"})
        rc = RLDGConfig(**{**cfg["rldg"], "episodes_per_task": int(cfg["budget"]["rollouts"])})
        for k, x in kv.items():
            if k == "replay":
                rc.replay = float(x)
            else:
                setattr(sft, k, type(getattr(sft, k))(float(x)) if k != "finetune" else x)
        d = out / v.replace("=", "_").replace(",", "__")
        with EpisodeStore(wd / "store", "r") as store:
            # the parent's own data, as the demo's distill stage replays it
            replay = collect.select(store, source=["human", "rl", "policy"], collection=parent.data.get("collections"))
            tasks = list(cfg["tasks"])
            ckpt, data = rldg.distill(g0, store, tasks, d / "sft", sft, rc, source=["rl", "policy"],
                                      replay_episodes=replay,
                                      collection=[f"iter_001/specialist/{t}" for t in tasks])
        res = evaluate(str(ckpt), a.tasks, int(cfg["budget"]["eval_episodes"]), OmegaConf.create(cfg["generalist"]),
                       seed=HELDOUT_SEED, progress=False, device="cpu")
        rows.append({"variant": v, **{t: r.rate for t, r in res.items()},
                     "mean": float(np.mean([r.rate for r in res.values()]))})
        print(json.dumps(rows[-1]), flush=True)
    (out / "variants.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
