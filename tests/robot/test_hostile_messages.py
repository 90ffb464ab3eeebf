"""No single message stops a node: hostile content on every subscribed topic of every node.

For each node (franka, camera, teleop, policy, recorder) the test sends one message of
each subscribed type with hostile content (empty arrays, NaN, Inf, 1e308, wrong
encodings, wrong sizes, huge strings), then checks that the node is still alive AND
still working (it follows a valid command, publishes, records) and that what it refused
shows on /diagnostics (``callback_errors`` for a message that raised, ``rejected`` for a
command the franka node refused).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

from _ros_probe import Probe, Spinner  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from waiting import wait_for  # noqa: E402

from robot.ros.convert import JOINT_NAMES, fill_pose, fill_wrench, numpy_to_image, to_stamp  # noqa: E402
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS  # noqa: E402

NAN, INF, HUGE = float("nan"), float("inf"), 1e308
HUGE_TEXT = "x" * 1_000_000
DOWN = (1.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------- hostile messages
def _stamped(msg: Any, frame: str = "panda_link0") -> Any:
    msg.header.stamp = to_stamp(time.time())
    msg.header.frame_id = frame
    return msg


def hostile_poses() -> list[PoseStamped]:
    cases = [((NAN, 0.0, 0.3), DOWN), ((INF, 0.0, 0.3), DOWN), ((HUGE, -HUGE, HUGE), DOWN),
             ((0.4, 0.0, 0.3), (1e154, 1e154, 0.0, 0.0)), ((0.4, 0.0, 0.3), (HUGE, HUGE, HUGE, HUGE)),
             ((0.4, 0.0, 0.3), (0.0, 0.0, 0.0, 0.0)), ((0.4, 0.0, 0.3), (NAN, 0.0, 0.0, 1.0)),
             ((0.4, 0.0, 0.3), (1e-320, 0.0, 0.0, 0.0))]
    out = [fill_pose(_stamped(PoseStamped()), p, q) for p, q in cases]
    out.append(fill_pose(_stamped(PoseStamped(), HUGE_TEXT), (0.4, 0.0, 0.3), DOWN))
    return out


def hostile_twists() -> list[TwistStamped]:
    out = []
    for lin, ang in [((NAN, 0, 0), (0, 0, 0)), ((INF, 0, 0), (0, 0, 0)), ((HUGE, HUGE, HUGE), (0, 0, 0)),
                     ((0, 0, 0), (1e154, 0, 0)), ((0, 0, 0), (HUGE, -HUGE, HUGE)), ((1e10, 0, 0), (0, 0, 1e10))]:
        m = _stamped(TwistStamped())
        t = m.twist
        t.linear.x, t.linear.y, t.linear.z = (float(v) for v in lin)
        t.angular.x, t.angular.y, t.angular.z = (float(v) for v in ang)
        out.append(m)
    out.append(_stamped(TwistStamped(), HUGE_TEXT))
    out.append(_stamped(TwistStamped(), "panda_hand_tcp"))  # valid frame, zero twist
    return out


def hostile_joint_states(gripper: bool = False) -> list[JointState]:
    names = ["width"] if gripper else list(JOINT_NAMES)
    cases = [
        JointState(),  # no position at all
        JointState(name=names, position=[NAN] * len(names), velocity=[NAN] * len(names)),
        JointState(name=names, position=[INF] * len(names), effort=[-INF] * len(names)),
        JointState(name=names, position=[HUGE] * len(names), velocity=[-HUGE] * len(names),
                   effort=[HUGE] * len(names)),
        JointState(name=names, position=[0.01] * len(names), velocity=[0.0]),  # too few velocities
        JointState(name=["a"] * 10_000, position=[0.0] * 3),  # too few positions, silly names
        JointState(name=[HUGE_TEXT], position=[0.0] * 100_000),
    ]
    return [_stamped(m) for m in cases]


def hostile_images(width: int = 8, height: int = 6) -> list[Image]:
    good = np.zeros((height, width, 3), np.uint8)
    cases = [
        Image(height=height, width=width, encoding="yuv422", step=width * 2, data=bytes(width * height * 2)),
        Image(height=height, width=width, encoding=HUGE_TEXT, step=width * 3, data=good.tobytes()),
        Image(height=height, width=width, encoding="rgb8", step=width * 3, data=good.tobytes()[:-1]),
        Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=good.tobytes()),
        Image(height=0, width=0, encoding="rgb8", step=0, data=b""),
        Image(height=height, width=width, encoding="rgb8", step=1, data=good.tobytes()),
        Image(height=height, width=width, encoding="16UC1", step=width * 2, data=bytes(width * height * 2)),
        Image(height=4000, width=4000, encoding="mono8", step=4000, data=bytes(4000 * 4000)),  # huge, valid
    ]
    return [_stamped(m, "front_optical_frame") for m in cases]


def hostile_wrenches() -> list[WrenchStamped]:
    return [fill_wrench(_stamped(WrenchStamped()), w) for w in ([NAN] * 6, [INF] * 6, [HUGE, -HUGE] * 3)]


def hostile_strings() -> list[String]:
    return [String(data=HUGE_TEXT), String(data=""), String(data="\x00\x01\u202e\U0001f4a5"),
            String(data="start\n" * 1000)]


def send_all(pub: Any, msgs: list[Any], gap: float = 0.03) -> None:
    """Publish each message, paced so the subscription's queue never drops one."""
    for m in msgs:
        pub.publish(m)
        time.sleep(gap)


# ----------------------------------------------------------------------- helpers
def statuses(probe: Probe, prefix: str) -> list[tuple[int, str, dict[str, str]]]:
    out = []
    for a in probe.got("/diagnostics"):
        for s in a.status:
            if s.name.startswith(prefix):
                level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
                out.append((level, s.message, {kv.key: kv.value for kv in s.values}))
    return out


def errors_reported(probe: Probe, prefix: str, key: str = "callback_errors") -> int:
    """The largest ``key`` count the node reported on /diagnostics."""
    return max((int(v.get(key, 0)) for _, _, v in statuses(probe, prefix)), default=0)


class Streamer:
    """Publishes valid messages from a thread: ``sources`` maps a publisher to a message factory."""

    def __init__(self, sources: list[tuple[Any, Callable[[], Any]]], hz: float = 50.0):
        self.sources, self.period, self.running = sources, 1.0 / hz, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            for pub, make in self.sources:
                try:
                    pub.publish(make())
                except Exception:  # the context went down under us
                    return
            time.sleep(self.period)

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=2)


def valid_state() -> dict[str, Callable[[], Any]]:
    def joints():
        return _stamped(JointState(name=list(JOINT_NAMES), position=[0.1] * 7, velocity=[0.0] * 7,
                                   effort=[0.0] * 7))

    def pose():
        return fill_pose(_stamped(PoseStamped()), (0.45, 0.0, 0.3), DOWN)

    def wrench():
        return fill_wrench(_stamped(WrenchStamped()), [0.0, 0.0, -2.0, 0.0, 0.0, 0.0])

    def width():
        return _stamped(JointState(name=["width"], position=[0.04], velocity=[0.0], effort=[0.0]))

    def image():
        m = numpy_to_image(np.full((48, 64, 3), 120, np.uint8))
        return _stamped(m, "front_optical_frame")

    return {"joint_states": joints, "ee_pose": pose, "ee_wrench": wrench, "gripper/state": width,
            "command_applied": pose, "gripper/command_applied": width, "image": image}


# --------------------------------------------------------------------------- franka
@pytest.mark.parametrize("twist_mode", ["delta", "velocity"])
def test_franka_node_survives_hostile_commands_and_still_follows_a_valid_one(twist_mode):
    from _franka_harness import Harness

    with Harness({"backend": "sim", "state_rate_hz": 200.0, "twist_mode": twist_mode}) as h:
        assert h.wait_for(lambda: h.last["ee_pose"], 15.0), "no ee_pose"
        start, quat = h.ee()
        send_all(h.pub_pose, hostile_poses())
        send_all(h.pub_twist, hostile_twists())
        send_all(h.pub_gripper, hostile_joint_states(gripper=True))
        h.intervene(True)
        assert h.wait_for(lambda: h.node._intervening, 5.0)
        send_all(h.pub_teleop_twist, hostile_twists())
        send_all(h.pub_teleop_gripper, hostile_joint_states(gripper=True))
        h.intervene(False)
        assert h.wait_for(lambda: not h.node._intervening, 5.0)
        # alive and working: a valid target 4 cm away is followed, a service answers
        n = h.counts["joint_states"]
        goal = start + np.array([0.04, 0.0, -0.02])
        reached = h.wait_for(lambda: np.linalg.norm(h.ee()[0] - goal) < 0.01, 20.0,
                             every=lambda: h.send_pose(goal, quat))
        assert reached, f"the node no longer follows targets: ee {h.ee()[0]}, goal {goal}"
        assert h.counts["joint_states"] > n
        from std_srvs.srv import SetBool

        assert h.call(SetBool, "hold", SetBool.Request(data=False)).success
        # what it refused shows on /diagnostics

        def refused():
            d = h.diag()
            return d and int(d[2].get("rejected", 0)) + int(d[2].get("callback_errors", 0)) >= 10 and d

        d = h.wait_for(refused, 10.0)
        assert d, f"the hostile commands are not on /diagnostics: {h.diag()}"
        assert "callback_errors" in d[2]  # the guard's count is reported, even when nothing raised


# --------------------------------------------------------------------------- camera
@pytest.mark.render
def test_camera_node_survives_hostile_mirror_states_and_keeps_streaming():
    from rclpy.parameter import Parameter

    from robot.nodes.camera_node import CameraNode

    ns = f"/c{uuid.uuid4().hex[:8]}"
    probe = Probe(namespace=ns)
    probe.subscribe("cameras/front/image_raw", Image, SENSOR_QOS)
    probe.subscribe("/diagnostics", DiagnosticArray, 50)
    joints = probe.publisher("joint_states", JointState, STATE_QOS)
    grip = probe.publisher("gripper/state", JointState, STATE_QOS)
    spinner = Spinner()
    params = {"names": ["front"], "widths": [32], "heights": [24], "fps": [10.0]}
    try:
        spinner.add(CameraNode(namespace=ns, context=spinner.context,
                               parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
        spinner.start()
        assert wait_for(lambda: probe.got("cameras/front/image_raw"), 30), "no images"
        assert wait_for(lambda: joints.get_subscription_count() and grip.get_subscription_count(), 10)
        send_all(joints, hostile_joint_states())
        send_all(grip, hostile_joint_states(gripper=True))
        n = len(probe.got("cameras/front/image_raw"))
        assert wait_for(lambda: len(probe.got("cameras/front/image_raw")) >= n + 5, 15), "images stopped"
        assert wait_for(lambda: errors_reported(probe, f"{ns}/cameras") >= 8, 10), statuses(probe, ns)[-1:]
    finally:
        spinner.close()
        probe.close()


# --------------------------------------------------------------------------- teleop
class FlakyDevice:
    """A teleop device whose poll fails in every way a driver can, then works."""

    name = "flaky"

    def __init__(self) -> None:
        self.polls = 0

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def poll(self, now: float):
        from robot.backends.teleop_devices import TeleopCommand

        self.polls += 1
        if self.polls == 2:
            raise RuntimeError("driver bug")
        if self.polls == 3:
            return TeleopCommand(twist=np.zeros(2))  # the wrong size
        if self.polls == 4:
            return TeleopCommand(twist=np.full(6, np.nan), events=[HUGE_TEXT])
        return TeleopCommand(twist=np.full(6, 0.5), intervening=True)


def test_teleop_node_survives_a_failing_device_and_keeps_publishing():
    from rclpy.parameter import Parameter

    from robot.nodes.teleop_node import TeleopNode

    ns = f"/t{uuid.uuid4().hex[:8]}"
    probe = Probe(namespace=ns)
    probe.subscribe("teleop/twist", TwistStamped, COMMAND_QOS)
    probe.subscribe("/diagnostics", DiagnosticArray, 50)
    spinner = Spinner()
    try:
        dev = FlakyDevice()
        spinner.add(TeleopNode(namespace=ns, context=spinner.context, device=dev,
                               parameter_overrides=[Parameter("teleop.rate_hz", value=50.0)]))
        spinner.start()
        assert wait_for(lambda: dev.polls > 20, 15), "the tick timer died"
        assert wait_for(lambda: any(m.twist.linear.x > 0 for m in probe.got("teleop/twist")), 5)
        assert wait_for(lambda: errors_reported(probe, f"{ns}/teleop") >= 2, 10), statuses(probe, ns)[-1:]
    finally:
        spinner.close()
        probe.close()


# --------------------------------------------------------------------------- policy
class StubPolicy:
    """A policy with the tiny spec that moves +x; counts its inferences."""

    device = "cpu"

    def __init__(self) -> None:
        from rig.spec import default_spec

        self.spec = default_spec(32)
        self.calls = 0

    def infer(self, obs: dict, prefix=None) -> dict:
        for k, v in obs.items():
            assert k == "instruction" or np.all(np.isfinite(v)), f"non-finite {k} reached the policy"
        self.calls += 1
        a = np.zeros((self.spec.action.chunk_horizon, self.spec.action.dim), np.float32)
        a[:, 0] = 0.5
        return {"actions": a}


def test_policy_node_survives_hostile_inputs_and_still_publishes_targets():
    from rclpy.parameter import Parameter

    from policy.node import PolicyNode

    ns = f"/p{uuid.uuid4().hex[:8]}"
    probe = Probe(namespace=ns)
    probe.subscribe("target_pose", PoseStamped, COMMAND_QOS)
    probe.subscribe("/diagnostics", DiagnosticArray, 50)
    pubs = {
        "front": probe.publisher("cameras/front/image_raw", Image, SENSOR_QOS),
        "wrist": probe.publisher("cameras/wrist/image_raw", Image, SENSOR_QOS),
        "ee_pose": probe.publisher("ee_pose", PoseStamped, STATE_QOS),
        "gripper/state": probe.publisher("gripper/state", JointState, STATE_QOS),
        "joint_states": probe.publisher("joint_states", JointState, STATE_QOS),
        "ee_wrench": probe.publisher("ee_wrench", WrenchStamped, STATE_QOS),
        "instruction": probe.publisher("policy/instruction", String, 10),
    }
    spinner = Spinner()
    streamer = None
    policy = StubPolicy()
    try:
        spinner.add(PolicyNode(namespace=ns, context=spinner.context, policy=policy,
                               parameter_overrides=[Parameter("max_obs_age", value=1.0)]))
        spinner.start()
        assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), 10)
        send_all(pubs["front"], hostile_images())
        send_all(pubs["wrist"], hostile_images())
        send_all(pubs["ee_pose"], hostile_poses())
        send_all(pubs["gripper/state"], hostile_joint_states(gripper=True))
        send_all(pubs["joint_states"], hostile_joint_states())
        send_all(pubs["ee_wrench"], hostile_wrenches())
        send_all(pubs["instruction"], hostile_strings())
        assert not probe.got("target_pose"), "hostile inputs alone made the node command the arm"
        # alive and working: valid inputs and an instruction give finite targets
        v = valid_state()
        streamer = Streamer([(pubs["front"], v["image"]), (pubs["wrist"], v["image"]),
                             (pubs["ee_pose"], v["ee_pose"]), (pubs["gripper/state"], v["gripper/state"]),
                             (pubs["joint_states"], v["joint_states"]), (pubs["ee_wrench"], v["ee_wrench"])])
        pubs["instruction"].publish(String(data="pick up the red cube"))
        assert wait_for(lambda: len(probe.got("target_pose")) >= 5, 20), "no targets after the hostile inputs"
        for m in probe.got("target_pose"):
            p = m.pose.position
            assert np.all(np.isfinite([p.x, p.y, p.z])) and p.x > 0.45  # +x from the measured pose
        assert policy.calls > 0
        assert wait_for(lambda: errors_reported(probe, f"{ns}/policy") >= 20, 10), statuses(probe, ns)[-1:]
    finally:
        if streamer is not None:
            streamer.stop()
        spinner.close()
        probe.close()


# ------------------------------------------------------------------------- recorder
def test_recorder_node_survives_hostile_messages_and_still_records_an_episode(tmp_path):
    from rclpy.parameter import Parameter

    from flywheel.data import EpisodeStore
    from flywheel.data.recorder_node import RecorderNode

    ns = f"/r{uuid.uuid4().hex[:8]}"
    store = tmp_path / "episodes.zarr"
    probe = Probe(namespace=ns)
    probe.subscribe("/diagnostics", DiagnosticArray, 50)
    pubs = {
        "joint_states": probe.publisher("joint_states", JointState, STATE_QOS),
        "ee_pose": probe.publisher("ee_pose", PoseStamped, STATE_QOS),
        "ee_wrench": probe.publisher("ee_wrench", WrenchStamped, STATE_QOS),
        "gripper/state": probe.publisher("gripper/state", JointState, STATE_QOS),
        "command_applied": probe.publisher("command_applied", PoseStamped, STATE_QOS),
        "gripper/command_applied": probe.publisher("gripper/command_applied", JointState, STATE_QOS),
        "image": probe.publisher("cameras/front/image_raw", Image, SENSOR_QOS),
        "intervening": probe.publisher("teleop/intervening", Bool, LATCHED_QOS),
        "event": probe.publisher("episode/event", String, 10),
        "instruction": probe.publisher("policy/instruction", String, LATCHED_QOS),
    }
    params = {"store": str(store), "cameras": ["front"], "image_size": 16, "task": "wipe"}
    spinner = Spinner()
    streamer = None
    node = None
    try:
        node = spinner.add(RecorderNode(namespace=ns, context=spinner.context,
                                        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
        spinner.start()
        assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), 10)
        pubs["event"].publish(String(data="start"))  # hostile messages arrive while recording
        time.sleep(0.2)
        send_all(pubs["joint_states"], hostile_joint_states())
        send_all(pubs["ee_pose"], hostile_poses())
        send_all(pubs["command_applied"], hostile_poses())
        send_all(pubs["ee_wrench"], hostile_wrenches())
        send_all(pubs["gripper/state"], hostile_joint_states(gripper=True))
        send_all(pubs["gripper/command_applied"], hostile_joint_states(gripper=True))
        send_all(pubs["image"], hostile_images())
        send_all(pubs["event"], hostile_strings())
        send_all(pubs["instruction"], hostile_strings())
        send_all(pubs["intervening"], [Bool(data=True), Bool(data=False)])
        pubs["event"].publish(String(data="abort"))
        # alive and working: a valid stream is recorded as one successful episode
        v = valid_state()
        streamer = Streamer([(pubs[k], v[k]) for k in ("joint_states", "ee_pose", "ee_wrench", "gripper/state",
                                                       "command_applied", "gripper/command_applied", "image")])
        pubs["instruction"].publish(String(data="wipe the table"))
        time.sleep(0.5)
        pubs["event"].publish(String(data="start"))
        time.sleep(1.5)
        pubs["event"].publish(String(data="success"))
        assert wait_for(lambda: node.store is not None and node.store.num_episodes == 1, 15), \
            f"no episode recorded after the hostile messages: {statuses(probe, ns)[-1:]}"
        assert wait_for(lambda: errors_reported(probe, f"{ns}/recorder") >= 25, 10), statuses(probe, ns)[-1:]
    finally:
        if streamer is not None:
            streamer.stop()
        spinner.close()
        probe.close()
    ep = EpisodeStore(store).episode(0)
    assert ep.record.success and ep.record.instruction == "wipe the table" and len(ep) >= 5
    for key in ("state/ee_pos", "state/ee_quat", "state/joint_pos", "state/ee_wrench", "state/gripper_width"):
        assert np.all(np.isfinite(ep[key])), f"hostile values reached the store: {key}"
