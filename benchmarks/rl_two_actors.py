"""Two actors feeding one learner over the network transport (ZeroMQ + msgpack + HMAC, loopback).

    .venv/bin/python benchmarks/rl_two_actors.py --task peg_insert --steps 3000
    .venv/bin/python benchmarks/rl_two_actors.py --task peg_insert --steps 8000 --eval 100 --actor-rate-hz 10
    .venv/bin/python benchmarks/rl_two_actors.py --quick

Starts ``flywheel-rl role=learner`` and two ``flywheel-rl role=actor`` processes
(separate processes, as on a GPU box and two rigs) on 127.0.0.1 with a random
token, waits for them, and prints what each side reports.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="peg_insert")
    ap.add_argument("--steps", type=int, default=3000, help="env steps in all (half per actor)")
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--out", default="outputs/bench/rl_two_actors")
    ap.add_argument("--actor-rate-hz", type=float, default=0.0,
                    help="pace each actor's env steps like a robot's control loop (role.rate_hz; 0: flat out)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("extra", nargs="*", help="more hydra overrides for every process (role.* fields differ per role)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.eval = 200, 5
        a.extra += ["demos.num=2"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from flywheel.rl.transport import free_ports

    p1, p2 = free_ports(2)
    env = {**os.environ, "FLYWHEEL_RL_TOKEN": secrets.token_hex(16)}
    exe = str(Path(sys.executable).with_name("flywheel-rl"))
    common = [f"rl_task={a.task}", f"transport.transitions_port={p1}", f"transport.weights_port={p2}",
              "transport.weights_period_s=2", "progress=false", f"out_dir={out}", *a.extra]
    t0 = time.time()
    learner = subprocess.Popen(
        [exe, "role=learner", f"total_steps={a.steps}", f"role.final_eval_episodes={a.eval}", "learner.eval_every=0",
         f"hydra.run.dir={out}/hydra_learner", "role.resume=false", *common],
        env=env, stdout=open(out / "learner.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    actors = [
        subprocess.Popen(
            [exe, "role=actor", f"role.actor_name=actor{i}", f"total_steps={a.steps // 2}", f"seed={i + 1}",
             f"role.rate_hz={a.actor_rate_hz}", f"hydra.run.dir={out}/hydra_actor{i}", *common],
            env=env, stdout=open(out / f"actor{i}.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        for i in range(2)
    ]
    rcs = [p.wait() for p in actors]
    rc = learner.wait(timeout=3600)
    wall = time.time() - t0
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    acts = [json.loads((out / f"results_actor{i}.json").read_text()) for i in range(2)
            if (out / f"results_actor{i}.json").exists()]
    summary = {
        "exit_codes": {"learner": rc, "actors": rcs}, "wall_s": wall,
        "learner": {k: res.get(k) for k in ("env_steps", "update_calls", "received", "rejected", "final_eval",
                                            "intervention_rate", "train_seconds")},
        "actors": [{k: r.get(k) for k in ("env_steps", "episodes", "sent", "dropped", "steps_per_s")} for r in acts],
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
