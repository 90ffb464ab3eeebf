"""Remote inference over policy-serve (openpi's websocket protocol) against in-process ``Policy.infer``.

Two 224 px cameras (``default_spec(224)``), loopback. For each policy:

* ``in-process``: ``policy.infer(obs)`` in this process;
* ``remote raw`` / ``remote jpeg``: ``RemotePolicy.infer`` against ``PolicyServer`` in this process
  (its own event-loop thread, inference in a worker thread), images as raw rgb8 or JPEG (quality 90);
* ``remote ... @N Mbit/s``: the same through a loopback proxy pacing bytes at N Mbit/s each way
  (a stand-in for the lab's network; stub policy only);
* ``4 clients``: requests per second with 4 concurrent clients, each in its own thread.

Policies: ``stub`` (returns a zero chunk: the protocol's own cost) and ``tiny`` (a random tiny
SmolVLM checkpoint, the CPU-sized model of the tests). Latency per chunk is wall time of one
``infer`` call; overhead is remote p50 minus in-process p50.

    .venv/bin/python benchmarks/serve_latency.py                 # 200 iters stub, 30 tiny
    .venv/bin/python benchmarks/serve_latency.py --quick         # 50 / 10
    .venv/bin/python benchmarks/serve_latency.py --device cuda   # the tiny policy on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy.remote import RemotePolicy, encode_jpeg, packb  # noqa: E402
from policy.serve import PolicyServer, ServeConfig  # noqa: E402
from rig.spec import default_spec  # noqa: E402


class StubPolicy:
    def __init__(self, spec) -> None:
        self.spec = spec
        self.device = "cpu"
        self.path = None

    def infer(self, obs, prefix=None):
        return {"actions": np.zeros((self.spec.action.chunk_horizon, self.spec.action.dim), np.float32)}


def observation(spec, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: rng.normal(size=s.shape).astype(np.float32) for k, s in spec.state_specs().items()}
    h = spec.cameras[0].height
    yy, xx = np.mgrid[0:h, 0:spec.cameras[0].width]
    for i, c in enumerate(spec.cameras):  # a camera-like image: smooth gradients plus sensor noise
        base = ((xx + yy * 2 + 40 * i) % 256).astype(np.int16)
        noise = rng.integers(-8, 8, (c.height, c.width, 3))
        obs[f"images/{c.name}"] = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
    obs["instruction"] = "pick up the red cube and lift it"
    return obs


def stats(lat_s) -> dict:
    ms = np.asarray(lat_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def timed(fns: dict, obs, iters, warmup=3) -> dict[str, list[float]]:
    """Round-robin over ``fns`` so that machine load hits every mode alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(obs)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(iters):
        obs["state/ee_pos"] = obs["state/ee_pos"] + np.float32(1e-4 * i)
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(obs)
            out[k].append(time.perf_counter() - t)
    return out


class ThrottledProxy:
    """A loopback TCP proxy that paces bytes at ``mbit`` Mbit/s each way (a slower link than loopback)."""

    def __init__(self, target_port: int, mbit: float) -> None:
        import asyncio

        self.target, self.rate = target_port, mbit * 1e6 / 8  # bytes/s
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    await asyncio.sleep(len(data) / self.rate)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def handle(cr, cw):
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(pipe(cr, sw), pipe(sr, cw))

        async def start():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        threading.Thread(target=lambda: self.loop.run_until_complete(start()), daemon=True).start()
        ready.wait(5)


def throughput(port: int, obs, clients: int, seconds: float, codec: str) -> float:
    remotes = [RemotePolicy("127.0.0.1", port, image_codec=codec).connect() for _ in range(clients)]
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def run(i):
        while time.perf_counter() < stop:
            remotes[i].infer(obs)
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for r in remotes:
        r.close()
    return sum(counts) / elapsed


def bench(name: str, policy, iters: int, seconds: float, link_mbit=()) -> list[dict]:
    spec = policy.spec
    obs = observation(spec)
    raw_bytes = len(packb(obs))
    jpg_bytes = len(packb({k: (encode_jpeg(v) if k.startswith("images/") else v) for k, v in obs.items()}))
    with PolicyServer(policy, ServeConfig(port=0)) as server:
        fns, remotes = {"in-process": policy.infer}, []
        links = [("", server.port)] + [(f" @{m:g} Mbit/s", ThrottledProxy(server.port, m).port) for m in link_mbit]
        for link, port in links:
            for codec in ("raw", "jpeg"):
                remotes.append(RemotePolicy("127.0.0.1", port, image_codec=codec).connect())
                fns[f"remote {codec}{link}"] = remotes[-1].infer
        lat = timed(fns, obs, iters)
        for r in remotes:
            r.close()
        local = stats(lat["in-process"])
        rows = [{"policy": name, "mode": "in-process", **local}]
        for mode in list(fns)[1:]:
            r = stats(lat[mode])
            r["overhead_p50_ms"] = round(r["p50_ms"] - local["p50_ms"], 2)
            size = raw_bytes if " raw" in mode else jpg_bytes
            rows.append({"policy": name, "mode": mode, "request_kB": round(size / 1024, 1), **r})
        for codec in ("raw", "jpeg"):
            rps = throughput(server.port, obs, 4, seconds, codec)
            rows.append({"policy": name, "mode": f"4 clients {codec}", "requests_per_s": round(rps, 1)})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def tiny_policy(device: str):
    import torch

    import policy as policy_pkg
    from policy.config import PolicyConfig
    from policy.model import VLA
    from policy.tiny import main as make_tiny

    root = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    make_tiny(["--family", "smolvlm", "--out", str(root / "backbone")])
    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(root / "backbone"), hidden_dim=64, num_tokens=4)
    path = VLA.from_backbone(cfg, default_spec(224)).save_pretrained(root / "policy")
    return policy_pkg.load(path, device=device or None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each 4-client run")
    p.add_argument("--out", default="", help="write the rows as JSON here")
    p.add_argument("--link-mbit", default="1000,100", help="also through a paced loopback proxy at these rates")
    args = p.parse_args(argv)
    spec = default_spec(224)
    links = [float(x) for x in args.link_mbit.split(",") if x]
    rows = bench("stub", StubPolicy(spec), 50 if args.quick else 200, args.seconds, links)
    rows += bench(f"tiny ({args.device})", tiny_policy(args.device), 10 if args.quick else 30, args.seconds)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
