"""A gymnasium env over the rig's ROS 2 topics: RL actors and evaluation run on the rig as in sim.

:class:`RosRigEnv` speaks the rig spec: the observation is the spec's dict
(``state/...`` and ``images/<camera>`` at the spec's size), the action is the
spec's normalised 7-d delta, turned into an absolute ``target_pose`` and a
``gripper/command`` by :meth:`rig.spec.ActionSpec.to_target` around the pose
of ``action_origin``: ``"measured"`` (default, the sim's meaning: the latest
measured TCP pose when the target is sent; the target is stamped just after
that pose sample, where the recorder's window starts, so the recorder with the
same ``action_origin`` stores the action exactly) or ``"commanded"`` (the franka node's ``command_applied`` at the
tick, so an action is the step of the arm's command; the measured pose until the
node applies one). One :meth:`step` publishes
the targets, waits for the next control tick (``1 / control_hz``) and takes the
observation at that tick from :class:`robot.ros.observer.Observer` (the latest
sample of every topic stamped at or before it). A sample older than
``max_obs_age`` is not used: the env waits up to ``wait_timeout`` for a fresh
one and then raises :class:`StaleObservation` naming the topic, the age and the
node to check.

Episodes: :meth:`reset` calls the franka node's ``home`` service, then the
task's reset callback (a :mod:`robot.reset` routine: a scripted motion through
:meth:`move_to`, or the operator asked on ``reset/prompt`` through :meth:`prompt`
and answering on ``episode/event``, :meth:`wait_event`), and publishes ``episode/event`` ``start``. An episode
ends on ``episode/event`` success / failure (from the operator's teleop
device), when the optional ``reward_fn`` (a learned reward classifier,
``obs -> probability``) crosses ``success_threshold`` (the env then publishes
``success``), or after ``max_episode_steps`` (truncated; the env publishes
``failure``); ``info["is_success"]`` says which. With ``review_timeout`` > 0 a success the classifier claims is
first put to the operator on ``reset/prompt``: their ``success`` confirms it, their ``failure`` rejects it (no
reward, truncated, not terminal: HIL-SERL's relabelling), no answer leaves it standing; ``info["review"]`` says
which. A recorder node on the graph
therefore labels every episode the env runs. ``info["intervening"]`` and ``info["intervene_action"]`` (the
command the operator gave the arm between the previous tick and this one, as a spec action in the meaning of
``action_origin``: measured, the command at this tick relative to the measured pose at the previous one;
:meth:`~robot.ros.observer.Observer.commanded_action`) feed HIL-SERL.

The env owns its own rclpy context and a single-threaded executor in a
worker thread, so it works next to an in-process ``rig-up`` graph.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from rig.spec import RigSpec
from robot.ros.convert import BASE_FRAME, to_stamp
from robot.ros.observer import ORIGIN_STAMP_OFFSET, ObservationUnavailable, Observer

log = logging.getLogger(__name__)


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
    action_origin: str = "measured"  # measured (as in sim) | commanded (command_applied): the pose an action steps from
    # s the operator has to confirm or reject a success the reward_fn claims (0: no review, the claim stands)
    review_timeout: float = 0.0
    review_prompt: str = ("The reward classifier says success: confirm with success (keyboard y, gamepad Start, "
                          "the console) or reject with failure (n, Back)")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.review_timeout) and self.review_timeout >= 0.0):
            raise ValueError(f"review_timeout={self.review_timeout!r}: seconds, >= 0 (0: no review)")


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
        if self.cfg.action_origin not in ("commanded", "measured"):
            raise ValueError(f"RosEnvConfig.action_origin {self.cfg.action_origin!r}: commanded or measured")
        self.observer = Observer(spec, max_age=self.cfg.max_obs_age, commands=True)
        self._events: deque[str] = deque()
        self._events_lock = threading.Lock()
        self._steps = 0
        self._tick = 0.0
        self._last_width: float | None = None
        self._obs: dict[str, np.ndarray] | None = None

    # ---------------------------------------------------------- life cycle
    def connect(self) -> RosRigEnv:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from robot.ros.lifecycle import spin_in_background
        from robot.ros.qos import COMMAND_QOS, LATCHED_QOS

        if self._node is not None:
            return self
        if self._own_context:
            self._context = rclpy.Context()
            rclpy.init(args=[], context=self._context)
        ns = self.cfg.namespace
        self._node = rclpy.create_node("rig_env", namespace=ns, context=self._context)
        n = self._node
        self.observer.subscribe(n)
        n.create_subscription(String, "episode/event", self._on_event, COMMAND_QOS)
        self._pub_target = n.create_publisher(PoseStamped, "target_pose", COMMAND_QOS)
        self._pub_gripper = n.create_publisher(JointState, "gripper/command", COMMAND_QOS)
        self._pub_event = n.create_publisher(String, "episode/event", COMMAND_QOS)
        self._pub_instruction = n.create_publisher(String, "policy/instruction", LATCHED_QOS)
        self._pub_prompt = n.create_publisher(String, "reset/prompt", LATCHED_QOS)  # "" when none is pending
        from std_msgs.msg import Float32  # the reward classifier's belief, for the operator's console

        self._pub_reward = n.create_publisher(Float32, "reward/probability", COMMAND_QOS)
        self._pub_threshold = n.create_publisher(Float32, "reward/threshold", LATCHED_QOS)
        self._pub_threshold.publish(Float32(data=float(self.cfg.success_threshold)))
        self._home = n.create_client(Trigger, "home")
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(n)
        self._thread = spin_in_background(self._executor, self._context.ok, "rig-env-ros")
        return self

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
    def _on_event(self, msg: Any) -> None:
        with self._events_lock:
            self._events.append(msg.data)

    # -------------------------------------------------------- observation
    def _stale(self, e: ObservationUnavailable) -> StaleObservation:
        return StaleObservation(
            f"observation {e.key!r} from topic {e.topic!r} (namespace {self.cfg.namespace or '/'!r}): {e.why}; "
            f"the limit is max_obs_age={self.cfg.max_obs_age} s. Check that its node runs and publishes "
            f"(ros2 topic hz {e.topic}), or raise max_obs_age"
        )

    def observe(self, t: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The spec observation at tick ``t`` (now by default); info has the tick and each source's age.

        When a source is stale the env waits (moving the tick to now) up to ``wait_timeout``.
        """
        t = time.time() if t is None else t
        deadline = time.time() + self.cfg.wait_timeout
        while True:
            try:
                o = self.observer.observe(t)
                break
            except ObservationUnavailable as e:
                if time.time() >= deadline:
                    raise self._stale(e) from None
            time.sleep(0.005)
            t = time.time()  # the tick moves to when the sources are fresh again
        return o.obs, {"tick": o.tick, "ages": o.ages, "obs_age": o.age}

    def action_origin(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The pose an action steps from: the applied command at ``t`` (``commanded``), else the measured pose at ``t``."""
        return self._origin(t)[:2]

    def _origin(self, t: float) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(pos, quat, the target's stamp): measured, just after the pose sample's (the recorder's window start)."""
        if self.cfg.action_origin == "commanded":
            cmd = self.observer.fresh("command", t)
            if cmd is not None:
                return np.asarray(cmd[0], np.float64), np.asarray(cmd[1], np.float64), None
        ts, (pos, quat) = self.observer.sample("ee_pose", t, np.inf)
        stamp = ts + ORIGIN_STAMP_OFFSET if self.cfg.action_origin == "measured" else None
        return np.asarray(pos, np.float64), np.asarray(quat, np.float64), stamp

    # -------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._need()
        self.home()
        self._wait_for_subscribers()
        if self.task_reset is not None:
            self.task_reset(self)
        if callable(getattr(self.reward_fn, "reset", None)):
            self.reward_fn.reset()  # type: ignore[union-attr]  # a stateful reward counts frames per episode
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
        prev = self._tick
        # measured: the latest pose when the target is sent, which its stamp names (the recorder's window start)
        origin_t = prev if self.cfg.action_origin == "commanded" else max(prev, time.time())
        opos, oquat, stamp = self._origin(origin_t)
        pos, quat, width = self.spec_.action.to_target(a, opos, oquat)
        self._publish_targets(pos, quat, width, stamp)
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
        review: dict[str, Any] = {}
        if self.reward_fn is not None:
            reward = float(self.reward_fn(obs))
            from std_msgs.msg import Float32

            # a stateful reward (k frames in a row) keeps the classifier's own belief beside its 0/1 verdict
            self._pub_reward.publish(Float32(data=float(getattr(self.reward_fn, "probability", reward))))
            if reward >= self.cfg.success_threshold and not success:
                review = {"review": self._review_claim()}
                if review["review"] == "reject":
                    reward = 0.0  # the operator's failure event ended the episode (the recorder labels it so)
                else:
                    success = True
                    if review["review"] == "none":  # unreviewed: the classifier's claim stands, announced
                        self._publish_event("success")
        elif success:
            reward = 1.0
        rejected = review.get("review") == "reject"
        terminated = success or "failure" in events
        timeout = not terminated and not rejected and self._steps >= self.cfg.max_episode_steps
        truncated = timeout or rejected or (not terminated and ("reset" in events or "abort" in events))
        if timeout:
            self._publish_event("failure")  # out of time: a failed attempt (the recorder labels it so)
        info = {"is_success": success, "events": events, "late": max(0.0, late), **oinfo, **review,
                **self._intervention(prev, self._tick)}
        self._obs = obs
        return obs, reward, terminated, truncated, info

    def _review_claim(self) -> str:
        """The operator's verdict on the success the reward function just claimed: ``confirm`` (their
        ``success`` event), ``reject`` (``failure``), or ``none`` (no review, or no answer within
        ``review_timeout``). The arm holds still meanwhile (no target is sent); the answer, on ``episode/event``,
        is what the recorder labels the episode with. A reward function with a ``verdict`` method
        (:class:`flywheel.rl.reward_refine.RefiningReward`) hears it."""
        if self.cfg.review_timeout <= 0:
            return "none"
        self.prompt(self.cfg.review_prompt)
        try:
            ev = self.wait_event(("success", "failure"), self.cfg.review_timeout)
        finally:
            self.prompt("")
        if ev is None:
            log.warning("no verdict on the classifier's success within review_timeout=%.0f s: it stands unreviewed",
                        self.cfg.review_timeout)
            return "none"
        tell = getattr(self.reward_fn, "verdict", None)
        if tell is not None:
            tell(ev == "success")
        return "confirm" if ev == "success" else "reject"

    # ------------------------------------------------ reset routines' API
    def pose(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The latest measured TCP position, quaternion (x, y, z, w) and gripper width (fresh, as :meth:`observe`)."""
        self._need()
        deadline = time.time() + self.cfg.wait_timeout
        while True:
            try:
                t = time.time()
                pos, quat = self.observer.sample("ee_pose", t)[1]
                width = float(self.observer.sample("gripper", t)[1])
                return np.asarray(pos, np.float64), np.asarray(quat, np.float64), width
            except ObservationUnavailable as e:
                if time.time() >= deadline:
                    raise self._stale(e) from None
            time.sleep(0.005)

    def move_to(self, pos: np.ndarray, quat: np.ndarray, width: float | None = None, *, tolerance: float = 0.01,
                timeout: float = 10.0) -> None:
        """Stream a target at the control rate until the TCP is within ``tolerance`` m of ``pos`` (and the gripper,
        when ``width`` is given, within 5 mm of it); ``width=None`` sends no gripper command (a grasp is kept)."""
        self._need()
        self._wait_for_subscribers()
        pos, quat = np.asarray(pos, np.float64), np.asarray(quat, np.float64)
        self._last_width = None  # the gripper command is sent (once) whatever was sent before
        end = time.time() + timeout
        while True:
            self._publish_targets(pos, quat, width)
            p, _, w = self.pose()
            dist = float(np.linalg.norm(p - pos))
            if dist <= tolerance and (width is None or abs(w - width) <= 0.005):
                return
            if time.time() > end:
                raise RuntimeError(
                    f"move_to {np.round(pos, 3).tolist()} (width {width}): the TCP is {dist:.3f} m away "
                    f"(tolerance {tolerance}), gripper {w:.3f} m, after {timeout} s. Is the target inside the "
                    "franka node's safety workspace, is the operator intervening, is the arm in error?")
            time.sleep(self.period)

    def prompt(self, text: str) -> None:
        """Ask the operator something on ``reset/prompt`` (latched; ``""`` withdraws the request)."""
        from std_msgs.msg import String

        self._need()
        self._pub_prompt.publish(String(data=text))

    def clear_events(self) -> None:
        """Forget the ``episode/event`` messages received so far."""
        with self._events_lock:
            self._events.clear()

    def wait_event(self, names: tuple[str, ...], timeout: float) -> str | None:
        """Pop ``episode/event`` messages (queued or to come) until one among ``names``; None after ``timeout`` s."""
        end = time.time() + timeout
        while time.time() < end:
            with self._events_lock:
                while self._events:
                    ev = self._events.popleft().strip().lower()
                    if ev in names:
                        return ev
            time.sleep(0.01)
        return None

    # -------------------------------------------------------------- helpers
    def _need(self) -> None:
        if self._node is None:
            raise RuntimeError("RosRigEnv is not connected: call env.connect() (or use it as a context manager)")

    def _publish_targets(self, pos: np.ndarray, quat: np.ndarray, width: float | None,
                         stamp: float | None = None) -> None:
        """The pose target and, when ``width`` is given and changed, a gripper command."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        now = to_stamp(time.time() if stamp is None else stamp)
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = now, BASE_FRAME
        p, o = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = (float(v) for v in pos)
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self._pub_target.publish(msg)
        if width is not None and (self._last_width is None or abs(width - self._last_width) > 1e-3):
            g = JointState(name=["width"], position=[float(width)], velocity=[self.cfg.gripper_speed],
                           effort=[self.cfg.grasp_force if width < self.cfg.grasp_below else 0.0])
            g.header.stamp = now
            self._pub_gripper.publish(g)
            self._last_width = width

    def _publish_event(self, event: str) -> None:
        from std_msgs.msg import String

        self._pub_event.publish(String(data=event))

    def _intervention(self, t0: float, t1: float) -> dict[str, Any]:
        """``intervening`` at ``t1`` and, when set, the command the operator gave over (t0, t1] as a spec action."""
        intervening = self.observer.intervening(t1)
        out: dict[str, Any] = {"intervening": intervening}
        if intervening:
            try:
                out["intervene_action"] = self.observer.commanded_action(t0, t1, origin=self.cfg.action_origin)
            except ObservationUnavailable:  # the franka node applied nothing (holding): no operator action
                pass
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

    def home(self) -> None:
        """Call the franka node's ``home`` service and wait for it (``home_timeout``); raises naming the failure."""
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

