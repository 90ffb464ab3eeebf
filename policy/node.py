"""``policy-node``: the VLA on the GPU, closing the loop at control rate with asynchronous chunks.

Subscribes (relative names) through :class:`robot.ros.observer.Observer` (the
project's one observation assembly): ``cameras/<name>/image_raw`` for every
camera of the checkpoint's rig spec (sensor QoS; resized to the spec's
resolution), ``ee_pose``, ``gripper/state``, ``joint_states`` (read by joint
name), ``ee_wrench`` (both zeros while silent or stale) and the franka node's
``command_applied``; and ``policy/instruction``. Every callback is guarded (a
bad message is counted and reported on ``/diagnostics``, the node goes on).
Publishes ``target_pose`` (absolute TCP target from
:meth:`rig.spec.ActionSpec.to_target` around the pose of ``action_origin``:
``measured``, default, the latest measured TCP pose at the control tick, the
sim's meaning, the target stamped just after that pose sample (where the
recorder's window starts); ``commanded``, the latest ``command_applied``, so an action is the
step of the arm's command, the measured pose until the franka node applies one;
the recorder node must use the same value, which ``rig-up`` passes to both) and ``gripper/command`` for the
franka node, and its health and latency on ``/diagnostics``.

A worker thread runs inference while a control timer (``control_hz``) executes
the current chunk; :class:`policy.chunking.ChunkScheduler` aligns each new chunk
to the time passed since its observation and blends it into the plan. The
next inference starts early enough (from the measured latency) for its chunk to
arrive before the plan runs out. With ``rtc`` (default) the actions that will
execute while the chunk is computed are passed to the policy as a committed
prefix, which the flow-matching head inpaints (real-time chunking), so the new
chunk continues the motion instead of contradicting it.

Safety behaviour: observations older than ``max_obs_age`` are refused (no new
inference, and no target while the robot state is stale); if inference fails,
hangs, returns a chunk that is not finite or not (H, action dim), or the plan runs
out, the node publishes nothing, so the franka node's watchdog holds the arm. ``rclpy`` is imported only here in the policy package.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from policy.chunking import ChunkScheduler
from policy.config import PolicyNodeConfig
from rig.spec import RigSpec, check_compatible
from robot.ros.convert import BASE_FRAME, GRIPPER_JOINT, ConversionError, finite, pose_stamped, to_stamp
from robot.ros.diagnostics import ERROR, OK, WARN
from robot.ros.lifecycle import RigNode, run_lifecycle_node
from robot.ros.observer import ORIGIN_STAMP_OFFSET, ObservationUnavailable, Observer
from robot.ros.params import ParameterError, declare_dataclass, read_dataclass, require
from robot.ros.qos import COMMAND_QOS

MAX_INSTRUCTION = 10_000  # characters of policy/instruction accepted


@dataclass
class PolicyNodeParams(PolicyNodeConfig):
    rig_spec: str = ""  # path to the rig's spec.json; when set, the checkpoint's spec must match it
    backend: str = "local"  # local (load `checkpoint`) | remote (a policy-serve or openpi server, policy.remote)
    host: str = "127.0.0.1"  # backend=remote: the server (API key from $POLICY_SERVE_API_KEY)
    port: int = 8000
    remote_mapping: str = ""  # backend=remote: "" (policy-serve), a preset (droid) or a mapping YAML/JSON
    image_codec: str = "raw"  # backend=remote: raw | jpeg (used when the server decodes JPEG)
    action_origin: str = "measured"  # measured (as in sim) | commanded (command_applied): the pose an action steps from


class NonFiniteActions(ValueError):
    """The policy returned a chunk with NaN or Inf (or of the wrong shape): nothing is published."""


def check_chunk(actions: Any, dim: int) -> np.ndarray:
    """``actions`` as a (H, dim) float32 chunk; raises :class:`NonFiniteActions` otherwise."""
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes Inf: refused below
        chunk = np.asarray(actions, np.float32)
    if chunk.ndim != 2 or chunk.shape[0] == 0 or chunk.shape[1] != dim:
        raise NonFiniteActions(f"policy returned actions of shape {chunk.shape}: expected (H, {dim})")
    if not np.all(np.isfinite(chunk)):
        bad = int(np.count_nonzero(~np.isfinite(chunk)))
        raise NonFiniteActions(f"policy returned {bad} non-finite (NaN or Inf) values in a {chunk.shape} chunk")
    return chunk


class PolicyNode(RigNode):
    def __init__(self, name: str = "policy", policy: Any = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        declare_dataclass(self, PolicyNodeParams())
        self._policy = policy  # injected (tests) or loaded in configure
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.observer: Observer | None = None
        self._instruction = ""
        self._request: tuple[dict[str, Any], int, np.ndarray | None] | None = None
        self._result: tuple[np.ndarray, int, float] | None = None
        self._busy = False
        self._running = False
        self._worker: threading.Thread | None = None
        self.diag: Any = None
        self.latencies: list[float] = []
        self.stale_refused = 0
        self.failures = 0
        self.published = 0
        self._last_gripper: float | None = None
        self._failing = False

    # ------------------------------------------------------------ lifecycle
    def setup(self) -> None:
        p: PolicyNodeParams = read_dataclass(self, PolicyNodeParams)
        require(p.max_obs_age > 0, "max_obs_age", p.max_obs_age, "must be > 0 s")
        require(p.blend_steps >= 0, "blend_steps", p.blend_steps, "must be >= 0")
        require(p.control_hz >= 0, "control_hz", p.control_hz, "must be >= 0 (0: the spec's rate)")
        require(p.action_origin in ("commanded", "measured"), "action_origin", p.action_origin,
                "must be commanded or measured")
        if self._policy is None:  # a missing checkpoint, non-finite weights, a spec mismatch: configure fails
            require(p.backend in ("local", "remote"), "backend", p.backend, "must be local or remote")
            rig = RigSpec.from_json(open(p.rig_spec).read()) if p.rig_spec else None
            if p.backend == "remote":
                from policy.remote import RemotePolicy

                self._policy = RemotePolicy.from_params(p, spec=rig).connect()
            else:
                require(bool(p.checkpoint), "checkpoint", p.checkpoint, "give a policy checkpoint directory")
                from policy.inference import load

                self._policy = load(p.checkpoint, spec=rig, device=p.device or None, compile=p.compile)
        elif p.rig_spec:
            check_compatible(RigSpec.from_json(open(p.rig_spec).read()), self._policy.spec)
        self.p = p
        self.spec: RigSpec = self._policy.spec
        self.hz = p.control_hz or self.spec.action.control_hz
        self._instruction = p.instruction
        self.scheduler = ChunkScheduler(self.spec.action.dim, blend_steps=p.blend_steps,
                                        max_delay=max(1, int(p.max_obs_age * self.hz)))
        self.diag = self.make_diagnostics("policy", hardware_id=str(getattr(self._policy, "device", "")))
        self.diag.set(WARN, "configured, waiting for observations and an instruction")
        self._target_pub = self.make_publisher(PoseStamped, "target_pose", COMMAND_QOS)
        self._gripper_pub = self.make_publisher(JointState, "gripper/command", COMMAND_QOS)
        self.observer = Observer(self.spec, max_age=p.max_obs_age, optional=("joint_states", "ee_wrench"),
                                 commands=True)
        self.observer.subscribe(self)
        self.guarded_subscription(String, "policy/instruction", self._on_instruction, 10)

    def start(self) -> None:
        self._running = True
        self.scheduler.reset()
        self._t0 = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="policy-inference", daemon=True)
        self._worker.start()
        self.guarded_timer(1.0 / self.hz, self._tick)

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    # --------------------------------------------------------------- inputs
    def _on_instruction(self, msg: String) -> None:
        if len(msg.data) > MAX_INSTRUCTION:
            raise ConversionError(f"policy/instruction of {len(msg.data)} characters: at most {MAX_INSTRUCTION}")
        with self._lock:
            changed = msg.data != self._instruction
            self._instruction = msg.data
        if changed:
            self.get_logger().info(f"instruction: {msg.data[:200]!r}")
            self.scheduler.reset()  # a new task: do not finish the old plan

    def _observation(self, now_wall: float) -> tuple[dict[str, Any] | None, float, str]:
        """(obs, oldest sample time, why not) at ``now_wall`` from the observer, or None when incomplete/stale.

        Joints and the wrench are optional (zeros until their topics publish, or when stale).
        """
        with self._lock:
            instruction = self._instruction
        if not instruction:
            return None, 0.0, "no instruction (publish one on policy/instruction)"
        assert self.observer is not None
        try:
            o = self.observer.observe(now_wall)
        except ObservationUnavailable as e:
            if e.kind == "missing":
                return None, 0.0, f"waiting for {e.key!r} ({e.topic}): {e.why}"
            return None, e.sample_t or 0.0, (f"stale input {e.key!r} ({e.topic}, {e.age:.3f} s old; "
                                             f"max_obs_age={self.p.max_obs_age} s)")
        obs: dict[str, Any] = dict(o.obs)
        obs["instruction"] = instruction
        return obs, o.tick - o.age, ""

    def _origin(self, now_wall: float) -> tuple[np.ndarray, np.ndarray, float | None] | None:
        """(pos, quat, target stamp) the next action steps from, or None if stale.

        ``commanded``: the applied command (stamped when sent), else the measured pose, its target
        stamped just after the pose sample (so the recorder's window starts at that sample).
        """
        assert self.observer is not None
        cmd = self.observer.fresh("command", now_wall) if self.p.action_origin == "commanded" else None
        if cmd is not None:
            return np.asarray(cmd[0], np.float64), np.asarray(cmd[1], np.float64), None
        try:
            ts, pose = self.observer.sample("ee_pose", now_wall)
        except ObservationUnavailable:
            return None
        stamp = ts + ORIGIN_STAMP_OFFSET if self.p.action_origin == "measured" else None
        return np.asarray(pose[0], np.float64), np.asarray(pose[1], np.float64), stamp

    # --------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and self._request is None:
                    self._wake.wait(0.5)
                if not self._running:
                    return
                obs, obs_tick, prefix = self._request
                self._request = None
            t0 = time.perf_counter()
            try:
                out = self._policy.infer(obs, prefix=prefix) if prefix is not None else self._policy.infer(obs)
                chunk = check_chunk(out["actions"], self.spec.action.dim)
            except Exception as e:  # failed, or NaN/Inf: stay silent, the franka watchdog holds the arm
                self.failures += 1
                self.get_logger().error(f"inference failed: {type(e).__name__}: {e}")
                self.diag.set(ERROR, f"inference failed: {type(e).__name__}: {e}", failures=self.failures)
                self.diag.publish_now()
                with self._lock:
                    self._busy = False
                    self._failing = True
                continue
            with self._lock:
                self._result = (chunk, obs_tick, time.perf_counter() - t0)
                self._busy = False
                self._failing = False

    # ---------------------------------------------------------- control tick
    def _expected_delay(self) -> int:
        if not self.latencies:
            return 1
        recent = np.asarray(self.latencies[-20:])
        return max(1, math.ceil(float(np.percentile(recent, 90)) * self.hz))

    def _tick(self) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        now = int(round((now_mono - self._t0) * self.hz))
        with self._lock:
            result, self._result = self._result, None
        if self._failing:
            self.scheduler.reset()  # inference failed: drop the plan and stay silent
        if result is not None:
            chunk, obs_tick, latency = result
            self.latencies.append(latency)
            if not self.scheduler.add(chunk, obs_tick, now):
                self.stale_refused += 1
        if not self._busy and self.scheduler.should_request(now, self._expected_delay()):
            obs, oldest, why = self._observation(now_wall)
            if obs is None:
                if oldest:
                    self.stale_refused += 1
                self.diag.set(WARN, why)
            else:
                obs_tick = now - int(round((now_wall - oldest) * self.hz))
                prefix = self.scheduler.committed(obs_tick, now, self._expected_delay()) if self.p.rtc else None
                with self._lock:
                    self._request, self._busy = (obs, obs_tick, prefix), True
                    self._wake.notify()
        origin = self._origin(now_wall) if self.observer.fresh("ee_pose", now_wall) is not None else None
        action = self.scheduler.next_action(now)
        sent = action is not None and origin is not None
        if sent:
            self._publish(action, *origin)
        elif action is not None:
            self.scheduler.reset()  # robot state went stale: drop the plan, stay silent
        self._diagnose(sent)

    def _publish(self, action: np.ndarray, ee_pos: np.ndarray, ee_quat: np.ndarray,
                 stamp: float | None = None) -> None:
        pos, quat, width = self.spec.action.to_target(action, ee_pos, ee_quat)
        finite("target", pos, quat, width)  # never publish NaN; the guard reports it
        t = to_stamp(time.time() if stamp is None else stamp)
        msg = pose_stamped(pos, quat, frame_id=BASE_FRAME)
        msg.header.stamp = t
        self._target_pub.publish(msg)
        if self._last_gripper is None or abs(width - self._last_gripper) > 0.002:
            closing = self._last_gripper is not None and width < self._last_gripper
            g = JointState()
            g.header.stamp = t
            g.name = [GRIPPER_JOINT]
            g.position, g.velocity = [float(width)], [float(self.p.gripper_speed)]
            g.effort = [float(self.p.gripper_force) if closing else 0.0]
            self._gripper_pub.publish(g)
            self._last_gripper = width
        self.published += 1

    def _diagnose(self, action_sent: bool) -> None:
        if self.diag is None:
            return
        lat = np.asarray(self.latencies[-200:]) * 1e3
        values = {
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "chunks": self.scheduler.chunks_added, "missed_ticks": self.scheduler.missed_ticks,
            "stale_refused": self.stale_refused, "failures": self.failures, "published": self.published,
            "control_hz": self.hz,
        }
        if self._failing:
            self.diag.update(**values)
        elif action_sent:
            self.diag.set(OK, "running", **values)
        elif self.scheduler.executed_ticks:
            self.diag.set(WARN, "no action for this tick (inference late or inputs stale): holding", **values)
        else:
            self.diag.update(**values)


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["PolicyNode", "PolicyNodeParams", "ParameterError", "NonFiniteActions", "check_chunk", "main"]
