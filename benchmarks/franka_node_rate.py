"""Benchmark: the franka node's state-publish rate and command-to-backend latency, both backends.

For each backend (``franky`` against franka-sim on loopback, and ``sim``, the
in-process MuJoCo rig) this starts, each in its own process:

* the node (the ``franka-node`` executable) at ``--rate`` Hz;
* a camera load: two 640x480 rgb8 streams at 30 Hz (sensor QoS) and a
  subscriber for them (the recorder's role), unless ``--no-cameras``;
* franka-sim (franky backend only);

and, in this process, a client that streams ``target_pose`` at 100 Hz (a slow
circle in the workspace) and records ``joint_states`` arrivals. Reported:

* achieved rate (joint_states received per second) against the requested one;
* the node's control-loop period p50 / p99 / max (measured in the node, from
  ``/diagnostics``) and the arrival period p50 / p99 at the subscriber;
* command-to-backend latency p50 / p99: from a target's header stamp (when the
  client published it) to the tick that streamed the resulting filtered
  command to the backend (measured in the node, on ``/diagnostics``).

    .venv/bin/python benchmarks/franka_node_rate.py                 # both backends, 500 Hz, 10 s
    .venv/bin/python benchmarks/franka_node_rate.py --rate 1000     # the moonshot
    .venv/bin/python benchmarks/franka_node_rate.py --quick         # 3 s, sim only
    .venv/bin/python benchmarks/franka_node_rate.py --write docs/bench/robot_franka.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))
sys.path.insert(0, str(REPO))


def _ros_env() -> None:
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(101, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


# ------------------------------------------------------------------ camera load
def camera_load(ns: str, role: str, seconds: float) -> None:
    """Publish (role=pub) or consume (role=sink) two 640x480 rgb8 streams at 30 Hz."""
    import rclpy


    rclpy.init()
    try:
        _camera_load(ns, role, seconds)
    except Exception:  # terminated by the benchmark (rclpy shuts the context down on SIGTERM)
        if rclpy.ok():
            raise
    finally:
        rclpy.try_shutdown()


def _camera_load(ns: str, role: str, seconds: float) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    from robot.ros.qos import SENSOR_QOS

    node = rclpy.create_node(f"camera_load_{role}", namespace=ns)
    topics = [f"cameras/{c}/image_raw" for c in ("front", "wrist")]
    if role == "pub":
        pubs = [node.create_publisher(Image, t, SENSOR_QOS) for t in topics]
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8).tobytes() for _ in range(4)]
        msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3)
        k = 0
        t_next = time.monotonic()
        end = t_next + seconds
        while time.monotonic() < end:
            for p in pubs:
                msg.header.stamp = node.get_clock().now().to_msg()
                msg.data = frames[k % len(frames)]
                p.publish(msg)
            k += 1
            t_next += 1.0 / 30.0
            time.sleep(max(0.0, t_next - time.monotonic()))
    else:
        count = [0]
        for t in topics:
            node.create_subscription(Image, t, lambda m: count.__setitem__(0, count[0] + 1), SENSOR_QOS)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        print(json.dumps({"images_received": count[0]}))
    node.destroy_node()


# ------------------------------------------------------------------- one run
def run_one(backend: str, rate: float, duration: float, cameras: bool, rt_priority: int = 0,
            warmup: float = 4.0) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState

    from robot.ros.qos import STATE_QOS

    ns = f"/bench_{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []
    fsim = None
    py = sys.executable
    env = dict(os.environ)
    try:
        params = ["-p", f"backend:={backend}", "-p", f"state_rate_hz:={float(rate)}", "-p", f"rt_priority:={rt_priority}"]
        if backend == "franky":
            from robot.backends.franka_sim_process import FrankaSimProcess, free_loopback_host

            fsim = FrankaSimProcess(free_loopback_host()).start()
            params += ["-p", f"host:={fsim.host}"]
        total = warmup + duration + 130.0  # the camera load outlives the run; it is terminated at the end
        if cameras:
            for role in ("pub", "sink"):
                procs.append(subprocess.Popen(
                    [py, __file__, "--role", f"camera-{role}", "--ns", ns, "--seconds", str(total)],
                    env=env, stdout=subprocess.PIPE, text=True))
        node_exe = str(Path(py).with_name("franka-node"))
        log = open(LOG_DIR / f"franka_node_{backend}_{int(rate)}.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen([node_exe, "--ros-args", "-r", f"__ns:={ns}", *params], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))

        if rt_priority > 0:  # the consumer runs like the node: SCHED_FIFO, below the node's threads
            from robot.nodes.franka_node import set_thread_priority

            set_thread_priority(max(1, rt_priority - 5))
        rclpy.init()
        cli = rclpy.create_node("bench_client", namespace=ns)
        arrivals: list[float] = []
        stamps: list[float] = []
        diag: dict[str, str] = {}

        def on_js(m: JointState) -> None:
            arrivals.append(time.monotonic())
            stamps.append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)

        def on_diag(m: DiagnosticArray) -> None:
            for s in m.status:
                if s.name.startswith(f"{ns}/franka"):
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in s.values})
                    diag["_message"] = s.message

        cli.create_subscription(JointState, "joint_states", on_js, STATE_QOS)
        cli.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        pub = cli.create_publisher(PoseStamped, "target_pose", 10)
        center = np.array([0.42, 0.0, 0.40])
        msg = PoseStamped()
        msg.header.frame_id = "panda_link0"
        msg.pose.orientation.x = 1.0
        # the node process may take a while to start on a loaded machine: wait for its first state
        deadline = time.monotonic() + 120.0
        while not arrivals and time.monotonic() < deadline:
            rclpy.spin_once(cli, timeout_sec=0.05)
        if not arrivals:
            raise RuntimeError(f"no joint_states from the {backend} node within 120 s")
        t0 = time.monotonic()
        t_send = t0
        t_meas = None
        n0 = 0
        while time.monotonic() - t0 < warmup + duration:
            rclpy.spin_once(cli, timeout_sec=0.002)
            now = time.monotonic()
            if now >= t_send:
                a = 2 * np.pi * 0.2 * (now - t0)
                p = center + 0.05 * np.array([np.cos(a), np.sin(a), 0.0])
                msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
                msg.header.stamp = cli.get_clock().now().to_msg()
                pub.publish(msg)
                t_send += 0.01
            if t_meas is None and now - t0 >= warmup:
                t_meas, n0 = now, len(arrivals)
        t_end = time.monotonic()
        # let the node publish its diagnostics covering the window
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            rclpy.spin_once(cli, timeout_sec=0.05)
        cli.destroy_node()
        rclpy.shutdown()

        arr = np.array(arrivals[n0:])
        periods = np.diff(arr) * 1e3 if len(arr) > 2 else np.array([np.nan])
        out = {
            "backend": backend,
            "requested_hz": rate,
            "achieved_hz": (len(arr) - 1) / (arr[-1] - arr[0]) if len(arr) > 2 else 0.0,
            "received": int(len(arr)),
            "window_s": round(t_end - (t_meas or t_end), 2),
            "arrival_p50_ms": float(np.percentile(periods, 50)),
            "arrival_p99_ms": float(np.percentile(periods, 99)),
            "node_rate_hz": float(diag.get("rate_hz", "nan")),
            "node_p50_ms": float(diag.get("period_p50_ms", "nan")),
            "node_p99_ms": float(diag.get("period_p99_ms", "nan")),
            "node_max_ms": float(diag.get("period_max_ms", "nan")),
            "latency_p50_ms": float(diag.get("cmd_latency_p50_ms", "nan")),
            "latency_p99_ms": float(diag.get("cmd_latency_p99_ms", "nan")),
            "node_status": diag.get("_message", "no diagnostics"),
            "cameras": cameras,
            "rt_priority": rt_priority,
            "loadavg": os.getloadavg()[0],
        }
        return out
    finally:
        if rt_priority > 0:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if fsim is not None:
            fsim.stop()


def table(rows: list[dict]) -> str:
    head = ("| backend | rt_priority | requested Hz | achieved Hz | node period p50 / p99 / max ms | arrival period p50 / p99 ms "
            "| cmd->backend latency p50 / p99 ms | load avg |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['rt_priority']} | {r['requested_hz']:.0f} | {r['achieved_hz']:.1f} "
            f"| {r['node_p50_ms']:.2f} / {r['node_p99_ms']:.2f} / {r['node_max_ms']:.1f} "
            f"| {r['arrival_p50_ms']:.2f} / {r['arrival_p99_ms']:.2f} "
            f"| {r['latency_p50_ms']:.2f} / {r['latency_p99_ms']:.2f} | {r['loadavg']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sim", "franky", "both"], default="both")
    ap.add_argument("--rate", type=float, nargs="+", default=[500.0], help="requested state rates (Hz)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--no-cameras", action="store_true", help="without the two-camera image load")
    ap.add_argument("--rt-priority", type=int, nargs="+", default=[0],
                    help="node parameter rt_priority (0: normal scheduling; N: SCHED_FIFO control thread)")
    ap.add_argument("--quick", action="store_true", help="3 s, sim backend only")
    ap.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    ap.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--ns", default="", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _ros_env()
    if args.role.startswith("camera-"):
        camera_load(args.ns, args.role.split("-", 1)[1], args.seconds)
        return
    backends = ["sim"] if args.quick else (["sim", "franky"] if args.backend == "both" else [args.backend])
    duration = 3.0 if args.quick else args.duration
    rows = []
    for backend in backends:
        for rt in args.rt_priority:
            for rate in args.rate:
                r = run_one(backend, rate, duration, cameras=not args.no_cameras, rt_priority=rt)
                rows.append(r)
                print(json.dumps(r), flush=True)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
