"""Policy inference latency per chunk: tiny and ~0.5 B (SmolVLM-500M-shaped) backbones, eager vs torch.compile.

Random weights (no downloads); two 128x128 cameras as in the default rig spec,
resized by each backbone's own processor (32 px for the tiny one, 512 px for
the 0.5 B one, as SmolVLM-500M). Latency is wall time of ``Policy.infer``
(preprocessing + backbone + head), after warm-up; compile time is reported
separately.

    .venv/bin/python benchmarks/policy_latency.py            # tiny: 50 iters, 0.5B: 6 iters
    .venv/bin/python benchmarks/policy_latency.py --quick    # tiny only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "policy")]  # the repo, and policy_helpers

from policy_helpers import observation as synthetic_observation  # noqa: E402

from benchmarks.tables import markdown_table, publish  # noqa: E402
from policy.config import PolicyConfig  # noqa: E402
from policy.inference import Policy  # noqa: E402
from policy.model import VLA  # noqa: E402
from policy.tiny import random_backbone  # noqa: E402
from rig.spec import default_spec  # noqa: E402


def observation(spec, seed=0):
    """The policy tests' synthetic observation, with the benchmarks' longer instruction."""
    return synthetic_observation(spec, seed, instruction="pick up the red cube and lift it")


def measure(policy: Policy, obs, iters: int) -> dict:
    t0 = time.perf_counter()
    policy.warmup(obs, n=2)
    warm = time.perf_counter() - t0
    lat = []
    for i in range(iters):
        obs["state/ee_pos"] = obs["state/ee_pos"] + np.float32(0.001 * i)
        t = time.perf_counter()
        policy.infer(obs)
        lat.append(time.perf_counter() - t)
    lat = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()), "warmup_s": warm, "iters": iters}


def run(family: str, iters: int, head: str) -> list[dict]:
    spec = default_spec(128)
    backbone, proc = random_backbone(family)
    cfg = PolicyConfig(backbone=family, head=head)
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = VLA(cfg, spec, backbone, proc)
        nparams = sum(p.numel() for p in model.parameters())
        torch._dynamo.reset()
        pol = Policy(model, device="cpu", compile=compiled)
        r = measure(pol, observation(spec), iters)
        r.update(family=family, head=head, params_M=round(nparams / 1e6, 1),
                 mode="torch.compile" if compiled else "eager")
        print(json.dumps(r), flush=True)
        rows.append(r)
        # undo compile wrappers for the next round
        for mod in (model.encoder, model.head):
            mod.__dict__.pop("forward", None)
        model.head.__dict__.pop("velocity", None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny backbone only, 20 iterations")
    ap.add_argument("--iters-tiny", type=int, default=50)
    ap.add_argument("--iters-large", type=int, default=6)
    ap.add_argument("--skip-tiny", action="store_true", help="only the 0.5 B backbone")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for head in () if args.skip_tiny else ("token_learner", "flow"):
        rows += run("smolvlm", 20 if args.quick else args.iters_tiny, head)
    if not args.quick:
        rows += run("smolvlm-500m", args.iters_large, "token_learner")
    publish(markdown_table(["backbone", "params", "head", "mode", "p50 ms", "p99 ms", "warm-up s"],
                           [[r["family"], f"{r['params_M']} M", r["head"], r["mode"], f"{r['p50_ms']:.1f}",
                             f"{r['p99_ms']:.1f}", f"{r['warmup_s']:.1f}"] for r in rows]))
    print(f"\nload average: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
