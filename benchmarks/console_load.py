"""Benchmark: does the operator console load the control path? And its frame-to-screen latency.

Starts ``rig-up rig=sim`` (no teleop device, a recorder writing a tmp store, an episode
started so the recorder records every tick) twice:

A. without the console node;
B. with ``console=true``: first ``--seconds`` with no page open (the node subscribed, idle),
   then ``--seconds`` with ``--pages`` headless chromium pages open (playwright), each
   receiving the live views.

In every phase it samples the franka node's ``/diagnostics`` (``period_p99_ms``, the p99 of the
last 2000 control-loop periods at 500 Hz, i.e. the last 4 s; and ``rate_hz``) and the
recorder's counters (``dropped``, ``recorded``, ``ticks``). The pages report frame-to-screen
latency: browser ``Date.now()`` when the JPEG has been decoded into the ``<img>`` minus the
image's ``header.stamp`` (when the sim scene was read for rendering), so it includes render,
DDS, the console's JPEG encoding, the websocket and the browser's decode.

Usage: ``.venv/bin/python benchmarks/console_load.py [--seconds 20] [--pages 2] [--repeats 2] [--width 640
--height 480 --fps 30] [--out docs/bench/console.md]`` (idle and open phases alternate ``--repeats`` times).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def pct(x, q):
    return float(np.percentile(np.asarray(x, float), q)) if len(x) else float("nan")


class Watch:
    """/diagnostics and episode events from the graph, in this process."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from robot.ros.lifecycle import spin_in_background
        from robot.ros.qos import COMMAND_QOS

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("bench_console", context=self.ctx)
        self.lock = threading.Lock()
        self.franka: list[tuple[float, dict]] = []
        self.recorder: list[tuple[float, dict]] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.events = self.node.create_publisher(String, "episode/event", COMMAND_QOS)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.thread = spin_in_background(self.ex, self.ctx.ok)

    def _on_diag(self, arr) -> None:
        now = time.monotonic()
        for s in arr.status:
            v = {kv.key: kv.value for kv in s.values}
            with self.lock:
                if "clipped" in v and "period_p99_ms" in v:
                    self.franka.append((now, v))
                elif "dropped" in v and "recorded" in v:
                    self.recorder.append((now, v))

    def event(self, name: str) -> None:
        from std_msgs.msg import String

        self.events.publish(String(data=name))

    def window(self, t0: float, t1: float) -> dict:
        with self.lock:
            fr = [v for t, v in self.franka if t0 <= t <= t1]
            rec = [v for t, v in self.recorder if t0 <= t <= t1]
        p99 = [float(v["period_p99_ms"]) for v in fr]
        rate = [float(v["rate_hz"]) for v in fr]
        out = {"samples": len(fr), "p99_med": pct(p99, 50), "p99_max": max(p99) if p99 else float("nan"),
               "rate_med": pct(rate, 50)}
        if len(rec) >= 2:
            a, b = rec[0], rec[-1]
            for k in ("dropped", "recorded", "ticks", "skipped_stale", "skipped_missing"):
                out[k] = int(float(b.get(k, 0))) - int(float(a.get(k, 0)))
        return out

    def close(self) -> None:
        self.ctx.try_shutdown()
        self.thread.join(timeout=5)


def start_rig(tmp: Path, args, console: bool, tag: str) -> tuple[subprocess.Popen, Path]:
    url_file = tmp / f"url-{tag}"
    cams = [f"rig.cameras.cameras.{i}.{k}={v}" for i in (0, 1)
            for k, v in (("width", args.width), ("height", args.height), ("fps", float(args.fps)))]
    cmd = [sys.executable, "-m", "apps.bringup", "rig=sim", "rig.teleop.device=none", "duration=900", *cams,
           f"record_path={tmp / f'ep-{tag}.zarr'}", "task=bench"]
    if console:
        cmd += ["console=true", "console_port=0", f"console_url_file={url_file}"]
    log = (tmp / f"rig-{tag}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    return proc, url_file


def stop_rig(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_franka(watch: Watch, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with watch.lock:
            if len(watch.franka) > 4 and watch.recorder:
                return
        time.sleep(0.5)
    raise RuntimeError("the franka node or the recorder never reported on /diagnostics")


def phase(watch: Watch, seconds: float, settle: float = 5.0) -> dict:
    time.sleep(settle)  # the p99 window (4 s) forgets the previous phase
    t0 = time.monotonic()
    time.sleep(seconds)
    return watch.window(t0, time.monotonic())


def ws_phase(watch: Watch, base: str, token: str, n: int, seconds: float) -> tuple[dict, list[float], list[float]]:
    """A phase with ``n`` plain websocket clients (no browser): the console server's own cost."""
    import json

    from websockets.sync.client import connect

    url = base.replace("http://", "ws://") + f"ws?token={token}"
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(n)]

    def client(i: int) -> None:
        with connect(url, max_size=None) as ws:
            while not stop.is_set():
                try:
                    m = ws.recv(timeout=1.0)
                except TimeoutError:
                    continue
                if isinstance(m, bytes):
                    k = int.from_bytes(m[:2], "big")
                    lat[i].append(time.time() - json.loads(m[2:2 + k])["stamp"])

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    row = phase(watch, seconds)
    dt = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=5)
    return row, [x for v in lat for x in v], [len(v) / dt for v in lat]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    rows: dict[str, dict] = {}
    lat: list[float] = []
    frames_per_s: list[float] = []
    ws_lat: list[float] = []
    ws_fps: list[float] = []
    load0 = os.getloadavg()[0]
    watch = Watch()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # A: no console
        proc, _ = start_rig(tmp, args, False, "a")
        try:
            wait_franka(watch)
            watch.event("start")
            for rep in range(1, args.repeats + 1):
                rows[f"A.{rep}: no console node"] = phase(watch, args.seconds)
        finally:
            watch.event("abort")
            stop_rig(proc)
        # B: console node, idle then with pages open
        proc, url_file = start_rig(tmp, args, True, "b")
        try:
            wait_franka(watch)
            end = time.monotonic() + 60
            while not (url_file.exists() and url_file.read_text().strip()) and time.monotonic() < end:
                time.sleep(0.2)
            base, token = url_file.read_text().strip().split("?token=")
            watch.event("start")
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                for rep in range(1, args.repeats + 1):  # idle and open phases alternate (the machine's load drifts)
                    rows[f"B0.{rep}: console node, no page open"] = phase(watch, args.seconds)
                    pages = [browser.new_page() for _ in range(args.pages)]
                    for pg in pages:
                        pg.goto(base)
                        pg.wait_for_function("() => (window.consoleStats.frames.front || 0) >= 1", timeout=60_000)
                        pg.evaluate("() => { window.consoleStats.latencies.length = 0; }")
                    before = [pg.evaluate("() => ({...window.consoleStats.frames})") for pg in pages]
                    t0 = time.monotonic()
                    rows[f"B{args.pages}.{rep}: console node, {args.pages} pages open"] = phase(watch, args.seconds)
                    for pg, b in zip(pages, before, strict=True):
                        st = pg.evaluate("() => ({frames: window.consoleStats.frames, "
                                         "lat: window.consoleStats.latencies})")
                        lat.extend(x for x in st["lat"] if x == x)
                        frames_per_s.append((sum(st["frames"].values()) - sum(b.values())) / (time.monotonic() - t0))
                        pg.close()
                    row, wl, wf = ws_phase(watch, base, token, args.pages, args.seconds)
                    rows[f"W{args.pages}.{rep}: console node, {args.pages} websocket clients (no browser)"] = row
                    ws_lat.extend(wl)
                    ws_fps.extend(wf)
                browser.close()
        finally:
            watch.event("abort")
            stop_rig(proc)
    watch.close()
    load1 = os.getloadavg()[0]
    lines = [
        "| phase | franka period p99 (ms), median of samples | max of samples | loop rate (Hz) | "
        "recorder ticks | recorded | dropped | skipped stale |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['p99_med']:.2f} | {r['p99_max']:.2f} | {r['rate_med']:.0f} | "
                     f"{r.get('ticks', '-')} | {r.get('recorded', '-')} | {r.get('dropped', '-')} | "
                     f"{r.get('skipped_stale', '-')} |")
    lat_ms = [1000 * x for x in lat]
    lines += ["", f"Frame-to-screen latency over {len(lat_ms)} frames ({args.pages} pages): "
              f"p50 {pct(lat_ms, 50):.0f} ms, p95 {pct(lat_ms, 95):.0f} ms, max {max(lat_ms, default=float('nan')):.0f} ms; "
              f"frames shown per page and second (both cameras): "
              f"{', '.join(f'{f:.1f}' for f in frames_per_s)}.",
              f"Frame-to-client latency of the plain websocket clients (no decode) over {len(ws_lat)} frames: "
              f"p50 {pct([1000 * x for x in ws_lat], 50):.0f} ms, p95 {pct([1000 * x for x in ws_lat], 95):.0f} ms; "
              f"frames per client and second: {', '.join(f'{f:.1f}' for f in ws_fps)}.",
              f"Cameras {args.width}x{args.height} at {args.fps:g} fps; {args.seconds:g} s per phase; "
              f"load average {load0:.1f} before, {load1:.1f} after."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
