"""A gymnasium env over the rig's ROS 2 topics: RL actors and evaluation run on the rig as in sim.

:class:`RosRigEnv` speaks the rig spec: the observation is the spec's dict
(``state/...`` and ``images/<camera>`` at the spec's size), the action is the
spec's normalised 7-d delta, turned into an absolute ``target_pose`` and a
``gripper/command`` by :meth:`rig.spec.ActionSpec.to_target` from the
measured TCP pose. One :meth:`step` publishes the targets, waits for the next
control tick (``1 / control_hz``) and assembles the observation at that tick
from the latest sample of every topic stamped at or before it. A sample older
than ``max_obs_age`` is not used: the env waits up to ``wait_timeout`` for a
fresh one and then raises :class:`StaleObservation` naming the topic, the age
and the node to check.

Episodes: :meth:`reset` calls the franka node's ``home`` service, then the
task's reset callback, and publishes ``episode/event`` ``start``. An episode
ends on ``episode/event`` success / failure (from the operator's teleop
device), when the optional ``reward_fn`` (a learned reward classifier,
``obs -> probability``) crosses ``success_threshold`` (the env then publishes
``success``), or after ``max_episode_steps`` (truncated; the env publishes
``failure``); ``info["is_success"]`` says which. A recorder node on the graph
therefore labels every episode the env runs. ``info["intervening"]`` and ``info["intervene_action"]`` (the
operator's applied command as a spec action) feed HIL-SERL.

The env owns its own rclpy context and a single-threaded executor in a
worker thread, so it works next to an in-process ``rig-up`` graph.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from rig.spec import RigSpec
from robot.ros.convert import (
    BASE_FRAME,
    gripper_width,
    image_to_numpy,
    joints_to_numpy,
    pose_to_numpy,
    stamp_seconds,
    to_stamp,
    wrench_to_numpy,
)


class StaleObservation(RuntimeError):
    """No sample recent enough for the tick; the message names the topic and what to check."""


@dataclass
class RosEnvConfig:
    namespace: str = ""  # the rig's ROS namespace
    max_obs_age: float = 0.25  # s: a sample older than this at the tick is refused
    wait_timeout: float = 2.0  # s to wait for a fresh sample before StaleObservation
    max_episode_steps: int = 200
    gripper_speed: float = 0.1  # m/s
    grasp_force: float = 20.0  # N, used when the commanded width is below grasp_below
    grasp_below: float = 0.01  # m: a command this closed is a grasp (close on the object with force)
    home_timeout: float = 30.0  # s for the home service
    success_threshold: float = 0.5  # reward_fn output that counts as success
    connect_timeout: float = 10.0  # s to wait for the first samples of every topic


def observation_space(spec: RigSpec) -> gym.spaces.Dict:
    """The gymnasium space of a spec observation."""
    spaces = {}
    for key, s in spec.observation_specs().items():
        if s.dtype == "uint8":
            spaces[key] = gym.spaces.Box(0, 255, s.shape, np.uint8)
        elif s.dtype == "uint16":
            spaces[key] = gym.spaces.Box(0, 65535, s.shape, np.uint16)
        else:
            spaces[key] = gym.spaces.Box(-np.inf, np.inf, s.shape, np.float32)
    return gym.spaces.Dict(spaces)


def action_space(spec: RigSpec) -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (spec.action.dim,), np.float32)


class SampleBuffer:
    """Recent (stamp, value) samples of one topic; :meth:`at` picks the latest at or before a time."""

    def __init__(self, maxlen: int = 64):
        self._buf: deque[tuple[float, Any]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, stamp: float, value: Any) -> None:
        with self._lock:
            if self._buf and stamp < self._buf[-1][0]:  # out of order: keep the deque sorted
                items = sorted([*self._buf, (stamp, value)], key=lambda x: x[0])
                self._buf.clear()
                self._buf.extend(items)
            else:
                self._buf.append((stamp, value))

    def at(self, t: float) -> tuple[float, Any] | None:
        with self._lock:
            for s, v in reversed(self._buf):
                if s <= t:
                    return s, v
        return None

    def latest(self) -> tuple[float, Any] | None:
        with self._lock:
            return self._buf[-1] if self._buf else None

    def clear(self) -> None:
        with self._lock:
            self._buf.clear()


class RosRigEnv(gym.Env):
    """The rig (or its sim twin behind ``rig-up``) as a gymnasium env; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        spec: RigSpec,
        config: RosEnvConfig | None = None,
        *,
        task_reset: Callable[[RosRigEnv], None] | None = None,
        reward_fn: Callable[[dict[str, np.ndarray]], float] | None = None,
        instruction: str = "",
        context: Any = None,
    ):
        self.spec_ = spec
        self.cfg = config or RosEnvConfig()
        self.task_reset, self.reward_fn = task_reset, reward_fn
        self.instruction = instruction
        self.observation_space = observation_space(spec)
        self.action_space = action_space(spec)
        self.period = 1.0 / spec.action.control_hz
        self._context, self._own_context = context, context is None
        self._node: Any = None
        self._thread: threading.Thread | None = None
        self._bufs: dict[str, SampleBuffer] = {}
        self._topics: dict[str, str] = {}  # observation source -> topic
        self._events: deque[str] = deque()
        self._events_lock = threading.Lock()
        self._steps = 0
        self._tick = 0.0
        self._last_width: float | None = None
        self._obs: dict[str, np.ndarray] | None = None

    # ---------------------------------------------------------- life cycle
    def connect(self) -> RosRigEnv:
        import rclpy
        from geometry_msgs.msg import PoseStamped, WrenchStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger

        from robot.ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS

        if self._node is not None:
            return self
        if self._own_context:
            self._context = rclpy.Context()
            rclpy.init(args=[], context=self._context)
        ns = self.cfg.namespace
        self._node = rclpy.create_node("rig_env", namespace=ns, context=self._context)
        n = self._node
        sources = {
            "joint_states": ("joint_states", JointState, STATE_QOS),
            "ee_pose": ("ee_pose", PoseStamped, STATE_QOS),
            "ee_wrench": ("ee_wrench", WrenchStamped, STATE_QOS),
            "gripper": ("gripper/state", JointState, STATE_QOS),
            "command_applied": ("command_applied", PoseStamped, STATE_QOS),
            "gripper_applied": ("gripper/command_applied", JointState, STATE_QOS),
            "intervening": ("teleop/intervening", Bool, LATCHED_QOS),
        }
        for cam in self.spec_.cameras:
            sources[f"images/{cam.name}"] = (f"cameras/{cam.name}/image_raw", Image, SENSOR_QOS)
            if cam.depth:
                sources[f"depth/{cam.name}"] = (f"cameras/{cam.name}/depth/image_raw", Image, SENSOR_QOS)
        for key, (topic, ty, qos) in sources.items():
            self._bufs[key] = SampleBuffer(256 if key in ("joint_states", "ee_pose", "command_applied") else 32)
            self._topics[key] = topic
            n.create_subscription(ty, topic, lambda m, k=key: self._on_msg(k, m), qos)
        n.create_subscription(String, "episode/event", self._on_event, COMMAND_QOS)
        self._pub_target = n.create_publisher(PoseStamped, "target_pose", COMMAND_QOS)
        self._pub_gripper = n.create_publisher(JointState, "gripper/command", COMMAND_QOS)
        self._pub_event = n.create_publisher(String, "episode/event", COMMAND_QOS)
        self._pub_instruction = n.create_publisher(String, "policy/instruction", LATCHED_QOS)
        from std_msgs.msg import Float32  # the reward classifier's belief, for the operator's console

        self._pub_reward = n.create_publisher(Float32, "reward/probability", COMMAND_QOS)
        self._pub_threshold = n.create_publisher(Float32, "reward/threshold", LATCHED_QOS)
        self._pub_threshold.publish(Float32(data=float(self.cfg.success_threshold)))
        self._home = n.create_client(Trigger, "home")
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, name="rig-env-ros", daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        try:
            while self._context.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except Exception:  # the context was shut down under us
            pass

    def close(self) -> None:
        if self._node is None:
            return
        if self._own_context:
            self._context.try_shutdown()
        else:
            self._executor.remove_node(self._node)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        self._node = None

    def __enter__(self) -> RosRigEnv:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------- callbacks
    def _on_msg(self, key: str, msg: Any) -> None:
        stamp = stamp_seconds(msg.header.stamp) if hasattr(msg, "header") else time.time()
        self._bufs[key].add(stamp, msg)

    def _on_event(self, msg: Any) -> None:
        with self._events_lock:
            self._events.append(msg.data)

    # -------------------------------------------------------- observation
    def _stale(self, key: str, t: float, s: tuple[float, Any] | None) -> StaleObservation:
        topic = self._topics[key]
        if s is None:
            latest = self._bufs[key].latest()
            why = ("no sample yet" if latest is None else
                   f"only samples stamped after the tick (clock skew of {latest[0] - t:.3f} s?)")
        else:
            why = f"the newest sample at or before the tick is {t - s[0]:.3f} s old"
        return StaleObservation(
            f"observation {key!r} from topic {topic!r} (namespace {self.cfg.namespace or '/'!r}): {why}; "
            f"the limit is max_obs_age={self.cfg.max_obs_age} s. Check that its node runs and publishes "
            f"(ros2 topic hz {topic}), or raise max_obs_age"
        )

    def _pick(self, t: float | None) -> tuple[float, dict[str, tuple[float, Any]]]:
        """The latest sample at or before the tick for every source; waits (moving the tick) if one is stale."""
        t = time.time() if t is None else t
        deadline = time.time() + self.cfg.wait_timeout
        keys = [k for k in self._bufs if k not in ("command_applied", "gripper_applied", "intervening")]
        while True:
            picked: dict[str, tuple[float, Any]] = {}
            for key in keys:
                s = self._bufs[key].at(t)
                if s is None or t - s[0] > self.cfg.max_obs_age:
                    if time.time() >= deadline:
                        raise self._stale(key, t, s)
                    break
                picked[key] = s
            else:
                return t, picked
            time.sleep(0.005)
            t = time.time()  # the tick moves to when the sources are fresh again

    def observe(self, t: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The spec observation at tick ``t`` (now by default); info has the tick and each source's age."""
        t, picked = self._pick(t)
        q, dq = joints_to_numpy(picked["joint_states"][1])
        pos, quat = pose_to_numpy(picked["ee_pose"][1])
        g = picked["gripper"][1]
        obs = {
            "state/ee_pos": pos.astype(np.float32),
            "state/ee_quat": quat.astype(np.float32),
            "state/gripper_width": np.array([gripper_width(g) if len(g.position) else 0.0], np.float32),
            "state/joint_pos": q.astype(np.float32),
            "state/joint_vel": dq.astype(np.float32),
            "state/ee_wrench": wrench_to_numpy(picked["ee_wrench"][1]).astype(np.float32),
        }
        for cam in self.spec_.cameras:
            for kind in ("images", "depth") if cam.depth else ("images",):
                key = f"{kind}/{cam.name}"
                obs[key] = image_to_numpy(picked[key][1], (cam.height, cam.width))
        self.spec_.check_observation(obs)
        ages = {k: t - s for k, (s, _) in picked.items()}
        return obs, {"tick": t, "ages": ages, "obs_age": max(ages.values())}

    # -------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._need()
        self._call_home()
        self._wait_for_subscribers()
        if self.task_reset is not None:
            self.task_reset(self)
        if self.instruction:
            from std_msgs.msg import String

            self._pub_instruction.publish(String(data=self.instruction))
        with self._events_lock:
            self._events.clear()
        self._steps, self._last_width = 0, None
        self._publish_event("start")
        self._tick = time.time()
        self._obs, oinfo = self.observe(self._tick)
        self._tick = oinfo["tick"]
        return self._obs, {"is_success": False, "intervening": False, **oinfo}

    def step(self, action: np.ndarray):
        self._need()
        if self._obs is None:
            raise RuntimeError("step() before reset(): call env.reset() first")
        a = self.spec_.action.check(np.asarray(action, np.float32))
        pos, quat, width = self.spec_.action.to_target(a, self._obs["state/ee_pos"], self._obs["state/ee_quat"])
        self._publish_targets(pos, quat, width)
        # wait for the next control tick; a late step starts the next period from now
        self._tick += self.period
        late = time.time() - self._tick
        if late > 0:
            self._tick = time.time() if late > self.period else self._tick
        else:
            time.sleep(-late)
        obs, oinfo = self.observe(self._tick)
        self._tick = oinfo["tick"]
        self._steps += 1
        with self._events_lock:
            events, self._events = list(self._events), deque()
        reward, success = 0.0, "success" in events
        if self.reward_fn is not None:
            reward = float(self.reward_fn(obs))
            from std_msgs.msg import Float32

            self._pub_reward.publish(Float32(data=reward))
            if reward >= self.cfg.success_threshold and not success:
                success = True
                self._publish_event("success")
        elif success:
            reward = 1.0
        terminated = success or "failure" in events
        timeout = not terminated and self._steps >= self.cfg.max_episode_steps
        truncated = timeout or (not terminated and ("reset" in events or "abort" in events))
        if timeout:
            self._publish_event("failure")  # out of time: a failed attempt (the recorder labels it so)
        info = {"is_success": success, "events": events, "late": max(0.0, late), **oinfo,
                **self._intervention(obs)}
        self._obs = obs
        return obs, reward, terminated, truncated, info

    # -------------------------------------------------------------- helpers
    def _need(self) -> None:
        if self._node is None:
            raise RuntimeError("RosRigEnv is not connected: call env.connect() (or use it as a context manager)")

    def _publish_targets(self, pos: np.ndarray, quat: np.ndarray, width: float) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        now = to_stamp(time.time())
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = now, BASE_FRAME
        p, o = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = (float(v) for v in pos)
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self._pub_target.publish(msg)
        if self._last_width is None or abs(width - self._last_width) > 1e-3:
            g = JointState(name=["width"], position=[float(width)], velocity=[self.cfg.gripper_speed],
                           effort=[self.cfg.grasp_force if width < self.cfg.grasp_below else 0.0])
            g.header.stamp = now
            self._pub_gripper.publish(g)
            self._last_width = width

    def _publish_event(self, event: str) -> None:
        from std_msgs.msg import String

        self._pub_event.publish(String(data=event))

    def _intervention(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        flag = self._bufs["intervening"].latest()
        intervening = bool(flag[1].data) if flag is not None else False
        out: dict[str, Any] = {"intervening": intervening}
        applied = self._bufs["command_applied"].latest()
        if intervening and applied is not None:
            p, o = applied[1].pose.position, applied[1].pose.orientation
            grip = self._bufs["gripper_applied"].latest()
            width = grip[1].position[0] if grip is not None and grip[1].position else obs["state/gripper_width"][0]
            out["intervene_action"] = self.spec_.action.from_target(
                np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]), float(width),
                obs["state/ee_pos"], obs["state/ee_quat"],
            )
        return out

    def _wait_for_subscribers(self) -> None:
        """Targets published before DDS matched the franka node's subscriptions would be lost."""
        end = time.time() + self.cfg.connect_timeout
        for pub in (self._pub_target, self._pub_gripper):
            while pub.get_subscription_count() == 0:
                if time.time() > end:
                    raise RuntimeError(f"nobody subscribes to {pub.topic_name!r}: is franka-node running "
                                       f"(namespace {self.cfg.namespace or '/'!r})?")
                time.sleep(0.01)

    def _call_home(self) -> None:
        from std_srvs.srv import Trigger

        name = self._home.srv_name
        if not self._home.wait_for_service(timeout_sec=self.cfg.connect_timeout):
            raise RuntimeError(f"service {name!r} is not available: is franka-node running "
                               f"(namespace {self.cfg.namespace or '/'!r})?")
        fut = self._home.call_async(Trigger.Request())
        end = time.time() + self.cfg.home_timeout
        while not fut.done() and time.time() < end:
            time.sleep(0.01)
        if not fut.done():
            raise RuntimeError(f"service {name!r} did not answer within {self.cfg.home_timeout} s")
        res = fut.result()
        if not res.success:
            raise RuntimeError(f"homing failed ({name}): {res.message}")

