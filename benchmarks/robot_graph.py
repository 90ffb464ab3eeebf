"""Benchmark of the rig's ROS graph (sim): camera rate and image latency across DDS, env adapter observation age.

Starts ``rig-up rig=sim`` as its own process (two 640x480 sim cameras at 30 fps,
no teleop device), then from this process:

1. subscribes to both ``cameras/<name>/image_raw`` topics for ``--seconds`` and
   reports the received rate and the latency ``receive time - header.stamp``
   (render-to-subscriber, across DDS between two processes);
2. runs :class:`robot.env.RosRigEnv` (the default 128x128 spec) at the 10 Hz
   control tick for ``--steps`` steps and reports how old the newest sample of
   each source was at each tick.

Usage: ``.venv/bin/python benchmarks/robot_graph.py [--quick] [--out docs/bench/robot_graph.md]``
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


def pct(x, q):
    return float(np.percentile(np.asarray(x), q)) if len(x) else float("nan")


def camera_rates(seconds: float) -> list[dict]:
    import rclpy
    from sensor_msgs.msg import Image

    from robot.ros.qos import SENSOR_QOS

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bench_probe", context=ctx)
    got: dict[str, list[tuple[float, float]]] = {"front": [], "wrist": []}
    for name in got:
        node.create_subscription(
            Image, f"cameras/{name}/image_raw",
            lambda m, n=name: got[n].append((time.time(), m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)),
            SENSOR_QOS)
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    published: dict[str, str] = {}

    def on_diag(arr):
        for st in arr.status:
            for name in got:
                if st.name.endswith(f"camera {name}"):
                    published[name] = {kv.key: kv.value for kv in st.values}.get("rate_hz", "nan")

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    end = time.monotonic() + 60
    while time.monotonic() < end and not all(len(v) > 5 for v in got.values()):  # warm up
        ex.spin_once(timeout_sec=0.1)
    for v in got.values():
        v.clear()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    rows = []
    for name, v in got.items():
        recv = np.array([r for r, _ in v])
        lat = np.array([(r - s) * 1e3 for r, s in v])
        rows.append(dict(camera=name, frames=len(v), published=float(published.get(name, "nan")), rate=(len(v) - 1) / (recv[-1] - recv[0]) if len(v) > 1 else 0,
                         p50=pct(lat, 50), p95=pct(lat, 95), max=float(lat.max()) if len(lat) else float("nan")))
    ex.shutdown()
    node.destroy_node()
    ctx.try_shutdown()
    return rows


def render_cost(n: int = 20) -> float:
    """ms to snapshot and render one 640x480 frame of the sim rig (what the camera node does per frame)."""
    from robot.backends.sim_camera import SimCamera, SimCameraSource
    from sim.rig import SimRig

    rig = SimRig().connect()
    src = SimCameraSource(rig, [SimCamera("front"), SimCamera("wrist")], lambda *a: None)
    src._snapshot()
    for c in src.cameras:
        src._render(c)
    t = time.perf_counter()
    for k in range(n):
        src._snapshot()
        src._render(src.cameras[k % 2])
    rig.close()
    return (time.perf_counter() - t) / n * 1e3


def env_ages(steps: int) -> dict:
    from rig.spec import default_spec
    from robot.env import RosEnvConfig, RosRigEnv

    env = RosRigEnv(default_spec(128), RosEnvConfig(max_obs_age=0.5, wait_timeout=5.0, max_episode_steps=10**6))
    ages: dict[str, list[float]] = {}
    late, step_ms = [], []
    with env:
        env.reset()
        for _ in range(steps):
            t = time.perf_counter()
            _, _, _, _, info = env.step(np.zeros(7, np.float32))
            step_ms.append((time.perf_counter() - t) * 1e3)
            late.append(info["late"] * 1e3)
            for k, a in info["ages"].items():
                ages.setdefault(k, []).append(a * 1e3)
    return {"ages": ages, "late": late, "step_ms": step_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s of camera traffic and 30 env steps")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.steps = 5.0, 30
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")
    load0 = os.getloadavg()
    render_ms = render_cost()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apps.bringup", "rig=sim", "rig.teleop.device=none", "duration=600"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            cams = camera_rates(a.seconds)
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(env_ages(a.steps)))
            t.start()
            t.join()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    load1 = os.getloadavg()
    lines = [
        "# Robot graph (sim) benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/robot_graph.py{' --quick' if a.quick else ''}` "
        f"({a.seconds:g} s of camera traffic, {a.steps} env steps).",
        f"Date: 2026-11-21. Machine: 2-core CPU, no GPU, MuJoCo EGL software rendering; load average "
        f"{load0[0]:.1f} before / {load1[0]:.1f} after (other engineers share the machine).",
        "",
        "## Camera publish rate and image latency across DDS",
        "",
        "`rig-up rig=sim` in its own process, two 640x480 rgb8 sim cameras at 30 fps; latency = receive time in",
        "another process - `header.stamp` (the time the scene was read for rendering).",
        "",
        f"One 640x480 sim frame costs {render_ms:.1f} ms to render here (so two cameras at 30 fps need "
        f"{2 * 30 * render_ms / 10:.0f}% of a core).",
        "",
        "| camera | published (Hz, node's /diagnostics) | received (Hz) | latency p50 (ms) | p95 (ms) | max (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in cams:
        lines.append(f"| {r['camera']} | {r['published']:.1f} | {r['rate']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} "
                     f"| {r['max']:.1f} |")
    lines += [
        "",
        "## Env adapter observation age at a 10 Hz tick",
        "",
        "`RosRigEnv` (default spec, 128x128 images resized from 640x480) stepping zero actions; age = tick time -",
        "stamp of the sample used.",
        "",
        "| source | age p50 (ms) | p95 (ms) | max (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for k, v in sorted(result["ages"].items()):
        lines.append(f"| {k} | {pct(v, 50):.1f} | {pct(v, 95):.1f} | {max(v):.1f} |")
    lines += [
        "",
        f"Step wall time p50 {pct(result['step_ms'], 50):.1f} ms (period 100 ms); tick lateness p95 "
        f"{pct(result['late'], 95):.1f} ms.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)


if __name__ == "__main__":
    main()
