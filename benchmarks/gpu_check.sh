#!/usr/bin/env bash
# One short check for a CUDA machine (< 10 min on one GPU; each part has its own timeout): writes a markdown table.
#
#   benchmarks/gpu_check.sh [OUT.md]        (default outputs/bench/gpu_check.md; paste it into docs/bench/scaling.md)
#
# 1. per-chunk latency of the compact VLA, the tiny and the 0.5B (SmolVLM-500M-shaped) transformers VLA,
#    eager and torch.compile (random weights, no downloads; two 128 px cameras);
# 2. SFT samples/s (bf16 autocast) of the tiny and the 0.5B VLA, one process, and peak memory;
# 3. DDP vs FSDP full-shard peak memory and samples/s of the 0.5B VLA on 2 GPUs (skipped with fewer);
# 4. a short distillation on CUDA: flywheel-iterate budget=tiny device=cuda sft.device=cuda (collect, SFT,
#    specialist, RLDG distillation, evaluation, gate), timed.
# GPU_CHECK_DEVICE=cpu runs the small parts on the CPU (a smoke test of this script, no 0.5B, no step 3/4).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/bench/gpu_check.md}
DEV=${GPU_CHECK_DEVICE:-cuda}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$(dirname "$OUT")"
export PYTHONPATH="$PWD:$PWD/tests/policy${PYTHONPATH:+:$PYTHONPATH}"

cat > "$WORK/check.py" <<'EOF'
import json, sys
import numpy as np
import torch

from benchmarks.policy_latency import measure, observation
from policy.config import CompactConfig, PolicyConfig, TrainConfig
from policy.inference import Policy
from policy.model import VLA
from policy.tiny import random_backbone
from policy_helpers import SyntheticChunks, TimedLoader
from rig.spec import default_spec

mode, dev, out = sys.argv[1], sys.argv[2], sys.argv[3]
spec = default_spec(128)
big = dev == "cuda"


def build(name):
    torch.manual_seed(0)
    if name == "compact":
        from policy.compact import CompactVLA
        return CompactVLA(CompactConfig(), spec)
    bb, proc = random_backbone(name)
    return VLA(PolicyConfig(backbone=name), spec, bb, proc)


def latency(rows):
    for name in ["compact", "smolvlm"] + (["smolvlm-500m"] if big else []):
        for compiled in (False, True):
            torch._dynamo.reset()
            model = build(name)
            r = measure(Policy(model, device=dev, compile=compiled), observation(spec), 30 if name != "smolvlm-500m" else 10)
            rows.append({"what": f"latency {name} {'compiled' if compiled else 'eager'}", "p50_ms": r["p50_ms"],
                         "p99_ms": r["p99_ms"], "warmup_s": r["warmup_s"]})
            print(rows[-1], flush=True)
            json.dump(rows, open(out, "w"))  # what is measured survives a timeout


def sft_rate(model, batch, steps, strategy="ddp", world=1):
    from policy.train import init_distributed, make_loader, train
    rank, world, _ = init_distributed()
    loader = make_loader(SyntheticChunks(spec, n=batch * world * (steps + 1)), batch_size=batch, seed=0)
    timed = TimedLoader(loader)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with_dir = f"{out}.train{rank}"
    train(model, timed, TrainConfig(out_dir=with_dir, steps=steps, warmup_steps=0, save_every=10**9,
                                    log_every=10**9, resume=False, strategy=strategy, amp=True), device=dev)
    times = timed.times
    sps = (len(times) - 3) * batch * world / (times[-1] - times[2])  # after two warm-up steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
    return rank, sps, mem


if mode == "latency":
    latency([])
elif mode == "sft":
    rows = []
    for name, batch in [("compact", 32), ("smolvlm", 16)] + ([("smolvlm-500m", 8)] if big else []):
        _, sps, mem = sft_rate(build(name), batch, 12)
        rows.append({"what": f"SFT {name} batch {batch} (1 process, bf16)", "samples_per_s": sps, "peak_GiB": mem})
        print(rows[-1], flush=True)
        json.dump(rows, open(out, "w"))
else:  # ddp | fsdp under torchrun: the 0.5B VLA
    rank, sps, mem = sft_rate(build("smolvlm-500m"), 4, 8, strategy=mode)
    if rank == 0:
        json.dump([{"what": f"SFT smolvlm-500m {mode.upper()} x{torch.distributed.get_world_size()} batch 4/GPU",
                    "samples_per_s": sps, "peak_GiB": mem}], open(out, "w"))
EOF

echo "== 1. per-chunk latency on $DEV"
timeout 240 "$PY" "$WORK/check.py" latency "$DEV" "$WORK/1_latency.json" || echo "latency: failed or timed out"
echo "== 2. single-process SFT on $DEV"
timeout 120 "$PY" "$WORK/check.py" sft "$DEV" "$WORK/2_sft.json" || echo "SFT: failed or timed out"

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$DEV" = cuda ] && [ "$NGPU" -ge 2 ]; then
  for s in ddp fsdp; do
    echo "== 3. $s on 2 GPUs"
    timeout 75 "$(dirname "$PY")/torchrun" --nproc_per_node=2 "$WORK/check.py" "$s" cuda "$WORK/3_$s.json" \
      || echo "$s failed or timed out"
  done
else
  echo "== 3. DDP vs FSDP: skipped ($NGPU GPU(s) here; needs 2)"
fi

if [ "$DEV" = cuda ]; then
  echo "== 4. a short distillation on CUDA (flywheel-iterate budget=tiny)"
  t0=$(date +%s)
  if timeout 180 "$(dirname "$PY")/flywheel-iterate" budget=tiny "workdir=$WORK/flywheel" device=cuda sft.device=cuda \
      progress=false "hydra.run.dir=$WORK/hydra" > "$WORK/distill.log" 2>&1; then
    echo "{\"what\": \"flywheel-iterate budget=tiny on CUDA\", \"wall_s\": $(( $(date +%s) - t0 ))}" > "$WORK/4_distill.json"
  else
    tail -20 "$WORK/distill.log"
    echo "{\"what\": \"flywheel-iterate budget=tiny on CUDA: FAILED (see log)\", \"wall_s\": $(( $(date +%s) - t0 ))}" \
      > "$WORK/4_distill.json"
  fi
fi

"$PY" - "$WORK" "$OUT" <<'EOF'
import glob, json, os, subprocess, sys
work, out = sys.argv[1], sys.argv[2]
rows = []
for f in sorted(glob.glob(f"{work}/*.json")):
    d = json.load(open(f))
    rows += d if isinstance(d, list) else [d]
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().replace("\n", "; ")
except OSError:
    gpu = "no nvidia-smi"
import torch
lines = [f"GPU check: {gpu or 'none'}; torch {torch.__version__}; {os.cpu_count()} CPU cores", "",
         "| what | p50 ms | p99 ms | warm-up s | samples/s | peak GiB | wall s |", "| --- |" + " --- |" * 6]
f = lambda r, k, p=1: "" if k not in r or r[k] != r[k] else f"{r[k]:.{p}f}"
for r in rows:
    lines.append(f"| {r['what']} | {f(r, 'p50_ms')} | {f(r, 'p99_ms')} | {f(r, 'warmup_s')} | "
                 f"{f(r, 'samples_per_s')} | {f(r, 'peak_GiB', 2)} | {f(r, 'wall_s', 0)} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten: {out}")
EOF
