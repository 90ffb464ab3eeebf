"""G0, the compact pretrained-encoder VLA generalist, from human-like demos (issue #16).

Stages (each skipped when its output exists, so a killed run resumes where it stopped):

1. ``collect``: the scripted operator at noise 1.0 (human-like) on every task, front + wrist
   cameras at 128 px, into one episode store, until ``--demos`` successes per task
   (``--cluster ray --workers N``: the episodes roll on Ray workers; the store, written here in
   seed order, holds what the serial run writes);
2. ``features``: the frozen EfficientNet-Lite0 encoder's features of every stored frame, once,
   into the feature cache (``policy.feature_cache``);
3. ``train``: the compact VLA head on the cached features (successes only), saved as a policy
   checkpoint that ``policy.load`` reads;
4. ``eval``: held-out seeds (``flywheel.evaluate.HELDOUT_SEED`` onwards, disjoint from the
   collection seeds), executing 1 and 4 actions of each chunk, with 95% Wilson intervals;
5. ``latency``: ``infer`` with two 128 px cameras on one CPU core, p50/p99 per chunk;
6. ``report``: a markdown table of the evaluations (``WORKDIR/<name>_results.md``).

Progress goes to ``WORKDIR/log.txt`` (and stderr); results to ``WORKDIR/results.json``.

    nohup .venv/bin/python benchmarks/generalist_g0.py > outputs/bench/g0/log.txt 2>&1 &
    .venv/bin/python benchmarks/generalist_g0.py --quick --workdir /tmp/g0   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

EXPERT_TASKS = ["PandaRig/LiftCube-Red-v0", "PandaRig/LiftCube-Green-v0", "PandaRig/PlaceCubeBin-Red-v0",
                "PandaRig/PushCube-Blue-v0"]
RL_TASKS = ["PandaRig/PegInsert-v0", "PandaRig/LiftCube-Blue-v0", "PandaRig/PlaceCubeTarget-Green-v0"]
MORE_DEMOS = ("PandaRig/PushCube-Blue-v0=330", "PandaRig/LiftCube-Green-v0=330")  # G0 v3: 0.70 -> 0.80
STAGES = ("collect", "features", "train", "eval", "latency", "report")

log = logging.getLogger("g0")


def _timings(work: Path) -> dict[str, Any]:
    f = work / "timings.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _record_time(work: Path, key: str, seconds: float) -> None:
    t = _timings(work)
    t[key] = round(float(seconds), 1)
    (work / "timings.json").write_text(json.dumps(t, indent=1))


# ------------------------------------------------------------------ 1. collect
def _collect_pool(args: argparse.Namespace) -> Any:
    """``--cluster ray``: a pool of workers rolling the noisy operator (the store stays written here)."""
    import contextlib

    if args.cluster == "local":
        return contextlib.nullcontext()
    from flywheel.cluster import ClusterConfig, PolicySource, RayEpisodePool

    src = PolicySource(checkpoint="expert", expert_noise=args.noise, env="collect",
                       env_kwargs={"cameras": ("front", "wrist"), "image_size": args.image_size,
                                   "privileged_state": True})
    return RayEpisodePool(src, ClusterConfig(kind="ray", workers=args.workers))


def demos_for(args: argparse.Namespace, task: str) -> int:
    """Successful demos to collect for ``task``: ``--demos-for TASK=N`` where given, else ``--demos``."""
    for item in args.demos_for:
        name, sep, n = item.rpartition("=")
        if not sep or not n.isdigit():
            raise SystemExit(f"--demos-for {item!r}: write it as TASK=N, e.g. PandaRig/PushCube-Blue-v0=330")
        if name == task:
            return int(n)
    return int(args.demos)


def collect(args: argparse.Namespace, work: Path) -> None:
    with _collect_pool(args) as pool:
        _collect(args, work, pool)


def _collect(args: argparse.Namespace, work: Path, pool: Any) -> None:
    from flywheel.data import EpisodeStore
    from flywheel.distill.collect import ExpertAgent, make_env, record_rollouts, select

    store_path = work / "store"
    for ti, task in enumerate(args.tasks):
        env = make_env(task, cameras=("front", "wrist"), image_size=args.image_size, privileged_state=True)
        spec = env.unwrapped.rig_spec
        store = EpisodeStore(store_path, mode="a", spec=spec)
        try:
            name = f"g0-human-{task}"
            agent = ExpertAgent(env, noise=args.noise, seed=ti)
            t0 = time.perf_counter()
            start = 0
            want = demos_for(args, task)
            while True:
                have = len(select(store, task=task, collection=name))
                if have >= want:
                    break
                # a batch of seeds sized by the remaining successes (noise 1.0 succeeds ~80%)
                n = max(5, int((want - have) * 1.3))
                seeds = range(start, start + n)
                start += n
                st = record_rollouts(store, env, agent, seeds, source="human", collection=name, progress=False,
                                     pool=pool)
                if st.episodes:
                    log.info("collect %s: +%d episodes (%d ok), %d successes so far", task, st.episodes,
                             st.successes, have + st.successes)
            _record_time(work, f"collect/{task}", _timings(work).get(f"collect/{task}", 0.0)
                         + time.perf_counter() - t0)
            log.info("collect %s: %d successes", task, len(select(store, task=task, collection=name)))
        finally:
            store.close()
            env.close()


def _demo_indices(store: Any, tasks: list[str], limit: int | None = None, fastest: float = 1.0) -> list[int]:
    """The first ``limit`` successful demos of each task; with ``fastest`` < 1 only that fraction of them
    with the fewest steps (filtered BC: a policy copies its teacher's pace, and a slow teacher times out)."""
    from flywheel.distill.collect import select

    out = []
    for t in tasks:
        idx = select(store, task=t, source="human", collection=f"g0-human-{t}", limit=limit)
        if fastest < 1.0:
            keep = max(1, round(fastest * len(idx)))
            idx = sorted(sorted(idx, key=lambda i: (store.record(i).length, i))[:keep])
        out += idx
    return out


def _cache(args: argparse.Namespace, work: Path, store: Any) -> Any:
    from policy.encoders import image_encoder_id, image_trunk
    from policy.feature_cache import FeatureCache

    trunk = image_trunk("efficientnet-lite0", args.feature_block, args.image_size)
    eid = image_encoder_id("efficientnet-lite0", args.feature_block, args.image_size)
    return FeatureCache(store, trunk, eid, root=work / "features", batch_size=64, frame_stride=args.frame_stride,
                        encoder_meta={"encoder": "efficientnet-lite0", "block": args.feature_block,
                                      "image_size": args.image_size})


# ----------------------------------------------------------------- 2. features
def features(args: argparse.Namespace, work: Path) -> None:
    from flywheel.data import EpisodeStore

    store = EpisodeStore(work / "store", mode="r")
    cache = _cache(args, work, store)
    k, n = (int(v) for v in args.shard.split("/"))
    idx = _demo_indices(store, args.tasks, args.max_demos)[k::n]
    st = cache.build(idx, progress=False)
    frames = sum(len(range(0, store.record(i).length, args.frame_stride)) for i in idx) * len(cache.cameras)
    log.info("features: %d episodes (%d encoded now, %d cached), %d frames, %.0f s", st["episodes"],
             st["encoded"], st["cached"], frames, st["seconds"])
    if st["encoded"]:
        _record_time(work, "features", _timings(work).get("features", 0.0) + st["seconds"])
        _record_time(work, "features_frames", frames)


# -------------------------------------------------------------------- 3. train
def train_stage(args: argparse.Namespace, work: Path) -> None:
    import torch

    from flywheel.data import EpisodeStore
    from flywheel.data.loader import EpisodeDataset, random_batches
    from flywheel.data.stats import array_stats, floor_std
    from policy.compact import CompactVLA
    from policy.config import CompactConfig, TrainConfig
    from policy.train import train
    from rig.spec import PROPRIO_KEYS

    out = work / args.name
    if (out / "policy_config.json").is_file():
        log.info("train: %s exists, skipping", out)
        return
    store = EpisodeStore(work / "store", mode="r")
    cache = _cache(args, work, store)
    idx = _demo_indices(store, args.tasks, args.max_demos, args.fastest)
    t0 = time.perf_counter()
    keys = [f"images/{c}" for c in cache.cameras] + list(PROPRIO_KEYS)
    data = EpisodeDataset(store, episodes=idx, obs_keys=keys, horizon=store.spec.action.chunk_horizon, features=cache)
    steps = EpisodeDataset(store, episodes=idx, obs_keys=list(PROPRIO_KEYS), features=cache)  # no features read
    every = steps.__getitems__(np.arange(len(steps)))  # proprio at the cached steps, actions of every step
    acts = np.concatenate([store.read("action", r.start, r.end) for r in map(store.record, data.episodes)])
    stats = {k: array_stats(every[k].numpy()) for k in PROPRIO_KEYS} | {"action": array_stats(acts)}
    stats = floor_std(stats, args.min_std)  # floor: a near-constant input must not become a huge one
    from flywheel.data.codecs import frames_codec

    codec = frames_codec(store) if args.image_codec == "store" else ""
    cfg = CompactConfig(feature_block=args.feature_block, image_size=args.image_size, head=args.head,
                        hidden_dim=args.hidden_dim, head_layers=args.head_layers, conv_kernel=args.conv_kernel,
                        image_codec=codec)
    torch.manual_seed(0)
    model = CompactVLA(cfg, store.spec, stats)
    log.info("train: %d episodes, %d samples, head %d parameters, %d steps at batch %d", len(idx), len(data),
             model.num_parameters("head"), args.steps, args.batch)
    tcfg = TrainConfig(out_dir=str(work / f"{args.name}_train"), steps=args.steps, lr=args.lr, warmup_steps=100,
                       weight_decay=1e-4, save_every=1000, keep_checkpoints=1, log_every=100, max_grad_norm=1.0)
    metrics = train(model, random_batches(data, args.batch, seed=0, replace=False), tcfg, device="cpu")
    model.save_pretrained(out)
    _record_time(work, f"train/{args.name}", time.perf_counter() - t0)
    log.info("train: %s, final loss %.4f, %.0f s", out, metrics.get("loss", float("nan")), time.perf_counter() - t0)


# --------------------------------------------------------------------- 4. eval
def eval_stage(args: argparse.Namespace, work: Path) -> None:
    import policy
    import sim
    from flywheel.evaluate import HELDOUT_SEED, ChunkedPolicy, TaskResult, evaluate_task, save_results

    pol = policy.load(work / args.name, device="cpu")
    res_dir = work / f"{args.name}_eval"
    res_dir.mkdir(exist_ok=True)

    def make_env(t: str) -> Any:
        return sim.make(t, cameras=("front", "wrist"), image_size=args.image_size)

    # a mode: execute E actions of each chunk ("execE"), or ACT's temporal ensembling with k ("teK")
    modes = [f"te{args.ensemble:g}"] if args.ensemble > 0 else [f"exec{e}" for e in args.execute]
    for mode in modes:
        for task in args.eval_tasks or args.tasks:
            f = res_dir / f"{mode}_{task.split('/')[-1]}_n{args.episodes}.json"
            if f.is_file():
                continue
            t0 = time.perf_counter()

            def make_agent(env: Any, mode: str = mode) -> Any:
                if mode.startswith("te"):
                    return ChunkedPolicy(pol, env.unwrapped.instruction, ensemble=float(mode[2:]))
                return ChunkedPolicy(pol, env.unwrapped.instruction, execute=int(mode[4:]))

            r: TaskResult = evaluate_task(task, make_agent, args.episodes, seed=HELDOUT_SEED, make_env=make_env,
                                          show_progress=False)
            save_results({task: r}, f)
            lo, hi = r.ci
            log.info("eval %s %s: %.2f [%.2f, %.2f] n=%d (%.0f s)", mode, task, r.rate, lo, hi,
                     r.episodes, time.perf_counter() - t0)


# ------------------------------------------------------------------ 5. latency
def latency(args: argparse.Namespace, work: Path) -> None:
    import torch

    import policy
    import sim

    torch.set_num_threads(1)
    pol = policy.load(work / args.name, device="cpu")
    env = sim.make(args.tasks[0], cameras=("front", "wrist"), image_size=args.image_size)
    obs, _ = env.reset(seed=0)
    env.close()
    obs = {**obs, "instruction": "pick up the red cube"}
    pol.warmup(obs, n=5)
    lat = []
    for _ in range(args.latency_iters):
        t0 = time.perf_counter()
        pol.infer(obs)
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat) * 1e3
    out = {"threads": 1, "iters": len(ms), "p50_ms": float(np.percentile(ms, 50)),
           "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}
    (work / f"{args.name}_latency.json").write_text(json.dumps(out, indent=1))
    log.info("latency (1 thread, 2 x %d px): p50 %.1f ms, p99 %.1f ms", args.image_size, out["p50_ms"],
             out["p99_ms"])


# ------------------------------------------------------------------- 6. report
def report(args: argparse.Namespace, work: Path) -> None:
    """A markdown table of every evaluation found (task x executed actions or temporal ensembling), with timings."""
    from flywheel.evaluate import load_results, wilson_interval

    res_dir = work / f"{args.name}_eval"
    rows: dict[str, dict[str, Any]] = {}
    for f in sorted([*res_dir.glob("exec*_n*.json"), *res_dir.glob("te*_n*.json")]):
        mode = f.name.split("_")[0]
        for task, r in load_results(f).items():
            rows.setdefault(task, {})[mode] = r
    execs = sorted({e for r in rows.values() for e in r})

    def label(mode: str) -> str:
        return f"execute {mode[4:]} of 8" if mode.startswith("exec") else f"temporal ensembling k={mode[2:]}"

    lines = ["| task | " + " | ".join(label(e) for e in execs) + " |", "| --- |" + " --- |" * len(execs)]
    for task in sorted(rows):
        cells = []
        for e in execs:
            r = rows[task].get(e)
            cells.append("" if r is None else f"{r.rate:.2f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}] (n={r.episodes})")
        lines.append(f"| {task.split('/')[-1]} | " + " | ".join(cells) + " |")
    means = []
    for e in execs:
        rs = [rows[t][e] for t in rows if e in rows[t] and t in EXPERT_TASKS]
        if len(rs) == len(EXPERT_TASKS):
            k, n = sum(r.successes for r in rs), sum(r.episodes for r in rs)
            lo, hi = wilson_interval(k, n)
            means.append(f"{label(e)}: mean over the 4 expert tasks {k / n:.2f} [{lo:.2f}, {hi:.2f}] (n={n})")
    text = "\n".join(lines + [""] + means + ["", "timings (s): " + json.dumps(_timings(work))])
    lat = work / f"{args.name}_latency.json"
    if lat.is_file():
        text += "\nlatency: " + lat.read_text()
    (work / f"{args.name}_results.md").write_text(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="outputs/bench/g0")
    ap.add_argument("--tasks", nargs="+", default=EXPERT_TASKS)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--demos", type=int, default=165, help="successful human-like demos per task")
    ap.add_argument("--demos-for", nargs="*", default=list(MORE_DEMOS), metavar="TASK=N",
                    help="more demos where G0 is weak (G0 v3: twice the PushCube and LiftCube-Green demos)")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--feature-block", type=int, default=10)
    ap.add_argument("--frame-stride", type=int, default=1, help="encode and train on every k-th frame")
    ap.add_argument("--max-demos", type=int, default=330, help="train on at most this many demos per task "
                    "(G0 v2: 165)")
    ap.add_argument("--fastest", type=float, default=1.0,
                    help="train on this fraction of each task's demos, the shortest ones (filtered BC)")
    ap.add_argument("--name", default="g0", help="the checkpoint's directory name under the workdir")
    ap.add_argument("--head", default="mlp", choices=["mlp", "token_learner", "flow"])
    ap.add_argument("--hidden-dim", type=int, default=512)
    ap.add_argument("--head-layers", type=int, default=2)
    ap.add_argument("--conv-kernel", type=int, default=1, choices=[1, 3])
    ap.add_argument("--image-codec", default="store", choices=["store", "none"],
                    help="store: live frames take the store's JPEG round trip before the encoder (as in training)")
    ap.add_argument("--min-std", type=float, default=0.01, help="floor of the normalisation std")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--episodes", type=int, default=100, help="held-out episodes per task")
    ap.add_argument("--execute", type=int, nargs="+", default=[1, 4], help="actions run per chunk")
    ap.add_argument("--ensemble", type=float, default=0.0,
                    help="eval with ACT's temporal ensembling, weights exp(-k i) (k > 0; replaces --execute)")
    ap.add_argument("--eval-tasks", nargs="*", default=None, help="default: --tasks")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU)")
    ap.add_argument("--shard", default="0/1", help="features: encode every N-th demo from K (K/N), "
                    "to run N processes side by side")
    ap.add_argument("--latency-iters", type=int, default=200)
    ap.add_argument("--cluster", default="local", choices=["local", "ray"],
                    help="collect: roll the episodes on Ray workers (the store is written here, in seed order)")
    ap.add_argument("--workers", type=int, default=2, help="--cluster ray: workers, one CPU each")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.quick:
        args.demos, args.demos_for, args.steps, args.episodes, args.latency_iters = 3, [], 30, 2, 10
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(work / "progress.log")])
    import torch

    torch.set_num_threads(args.threads)
    stages = {"collect": collect, "features": features, "train": train_stage, "eval": eval_stage,
              "latency": latency, "report": report}
    for s in args.stages:
        if s in stages:
            log.info("stage %s", s)
            stages[s](args, work)


if __name__ == "__main__":
    main()
