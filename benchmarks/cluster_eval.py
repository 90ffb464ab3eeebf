"""Scaling out on this CPU: evaluation episodes/min serial vs Ray workers, and SFT samples/s at 1 and 2 processes.

* evaluation: the scripted operator (noise 1, state only, ``--max-steps`` steps) on
  ``--task``, ``--episodes`` seeded episodes, serially (one process) and on a
  pool of ``--workers`` Ray workers (:mod:`flywheel.cluster`); the results are
  checked equal episode by episode. Reported: episodes/min of the run proper and
  the pool's start-up (Ray up + workers importing the stack), and the scaling
  model ``T(W) = start + E * (c / W + d)`` (W workers on W free cores) from the
  measured per-episode cost ``c`` and the per-episode overhead ``d`` of the
  pool beyond ``c / min(W, cores)`` (dispatch, and here CPU contention), also
  for a VLA episode with cameras (``--vla-episode-s``);
* training: the tiny VLA's SFT (random smolvlm-shaped backbone, two 32 px
  cameras, global batch ``--batch``) under torchrun with 1 and 2 gloo processes,
  samples/s over the steps after the first (start-up excluded).

    .venv/bin/python benchmarks/cluster_eval.py                 # ~3 min on a quiet 2-core machine
    .venv/bin/python benchmarks/cluster_eval.py --skip-train --episodes 6
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def eval_bench(args: argparse.Namespace) -> dict:
    import ray

    from flywheel.cluster import (
        ClusterConfig,
        PolicySource,
        RayEpisodePool,
        episode_record,
        make_agent,
        make_env,
        run_seeded,
    )

    src = PolicySource(checkpoint="expert", expert_noise=1.0, env="sim", env_kwargs={"cameras": []},
                       max_steps=args.max_steps)
    seeds = list(range(1_000_000, 1_000_000 + args.episodes))
    env = make_env(src, args.task)
    t0 = time.perf_counter()
    eps = run_seeded(env, make_agent(src, None, env), seeds, max_steps=src.max_steps)
    serial_s = time.perf_counter() - t0
    env.close()
    serial = {(args.task, e.seed): episode_record(args.task, e) for e in eps}

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    pool = RayEpisodePool(src, ClusterConfig(kind="ray", workers=args.workers)).connect()
    ray.get([w.info.remote() for w in pool.workers])  # workers up
    pool.run([(args.task, seeds[0] - 1 - i) for i in range(args.workers)])  # each worker's env built, warm
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = pool.run([(args.task, s) for s in seeds])
    ray_s = time.perf_counter() - t0
    pool.close()
    ray.shutdown()
    if got != serial:
        raise SystemExit("Ray results differ from the serial run's")
    c = serial_s / len(seeds)
    cores = os.cpu_count() or 1
    d = max(0.0, (ray_s - len(seeds) * c / min(args.workers, cores)) / len(seeds))
    ws = (1, 2, 4, 8, 16, 32)
    model = {w: 100 / ((start_s + 100 * (c / w + d)) / 60) for w in ws}  # a machine with >= W free cores
    vla = {w: 100 / ((start_s + 100 * (args.vla_episode_s / w + d)) / 60) for w in ws}
    return {"episodes": len(seeds), "max_steps": args.max_steps, "serial_s": serial_s, "ray_s": ray_s,
            "start_s": start_s, "per_episode_s": c, "dispatch_s": d, "workers": args.workers, "cores": cores,
            "serial_eps_per_min": 60 * len(seeds) / serial_s, "ray_eps_per_min": 60 * len(seeds) / ray_s,
            "model_eps_per_min_100": model, "model_vla_eps_per_min_100": vla, "steps_total": sum(r["steps"] for r in serial.values())}


def train_worker(backbone: str, steps: int, batch: int, out: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "policy"))
    from policy_helpers import SyntheticChunks, TimedLoader, tiny_spec

    from policy.config import PolicyConfig, TrainConfig
    from policy.model import VLA
    from policy.train import distributed_loader, init_distributed, train

    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    torch.manual_seed(0)
    model = VLA.from_backbone(PolicyConfig(backbone=backbone, hidden_dim=64, num_tokens=4), tiny_spec())
    loader = distributed_loader(SyntheticChunks(tiny_spec(), n=batch * steps), batch_size=batch // world, seed=0)
    timed = TimedLoader(loader)
    train(model, timed, TrainConfig(out_dir=out, steps=steps, warmup_steps=0, save_every=10**9, log_every=10**9,
                                    resume=False))
    times = timed.times
    if rank == 0:
        sps = (len(times) - 1) * batch / (times[-1] - times[0])
        Path(out, "bench.json").write_text(json.dumps({"world": world, "samples_per_s": sps}))


def train_bench(args: argparse.Namespace) -> dict:
    from policy.tiny import main as make_tiny

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bb = Path(tmp) / "smolvlm"
        make_tiny(["--family", "smolvlm", "--out", str(bb)])
        for n in (1, 2):
            run_dir = Path(tmp) / f"w{n}"
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [str(Path(sys.executable).with_name("torchrun")), f"--nproc_per_node={n}",
                   "--master_addr=127.0.0.1", f"--master_port={port}", __file__, "--train-worker", str(bb),
                   str(args.train_steps), str(args.batch), str(run_dir)]
            r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
            out[n] = json.loads((run_dir / "bench.json").read_text())["samples_per_s"]
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--train-worker":
        train_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="PandaRig/PegInsert-v0")
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vla-episode-s", type=float, default=5.0, help="a VLA episode's cost for the model row")
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="global batch")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    load0 = os.getloadavg()
    res: dict = {"load_before": load0}
    if not args.skip_eval:
        e = res["eval"] = eval_bench(args)
        print(f"\n| evaluation ({e['episodes']} episodes, <= {e['max_steps']} steps) | episodes/min | wall s |")
        print("| --- | --- | --- |")
        print(f"| serial (1 process) | {e['serial_eps_per_min']:.1f} | {e['serial_s']:.1f} |")
        print(f"| Ray, {e['workers']} workers | {e['ray_eps_per_min']:.1f} | {e['ray_s']:.1f} "
              f"(+ {e['start_s']:.1f} start-up) |")
        print(f"\nper-episode cost c = {e['per_episode_s']:.2f} s, overhead d = {e['dispatch_s']:.3f} s/episode, "
              f"start-up {e['start_s']:.1f} s; model T(W) = start + E*(c/W + d), E = 100 episodes:")
        print("| W workers | " + " | ".join(str(w) for w in e["model_eps_per_min_100"]) + " |")
        print("| --- |" + " --- |" * len(e["model_eps_per_min_100"]))
        print(f"| episodes/min, c = {e['per_episode_s']:.2f} s (this task) | "
              + " | ".join(f"{v:.0f}" for v in e["model_eps_per_min_100"].values()) + " |")
        print(f"| episodes/min, c = {args.vla_episode_s:.0f} s (VLA + cameras) | "
              + " | ".join(f"{v:.0f}" for v in e["model_vla_eps_per_min_100"].values()) + " |")
    if not args.skip_train:
        t = res["train"] = train_bench(args)
        print(f"\n| SFT, tiny VLA, global batch {args.batch} | samples/s |\n| --- | --- |")
        for n, v in t.items():
            print(f"| {n} process{'es' if n > 1 else ''} (gloo) | {v:.1f} |")
    res["load_after"] = os.getloadavg()
    print(f"\nload average before {load0}, after {res['load_after']}; {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
