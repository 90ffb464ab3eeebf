"""policy-node over real DDS: targets from rendered sim images, silence on stale inputs and on failures."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from policy_helpers import tiny_spec

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.render]

sys.path.insert(0, str(Path(__file__).parents[1] / "robot"))  # the shared ROS probe helpers
from _ros_probe import Probe, Spinner  # noqa: E402
from waiting import wait_for  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tiny_backbones, tmp_path_factory):
    from policy.config import PolicyConfig
    from policy.model import VLA

    torch.manual_seed(0)
    cfg = PolicyConfig(backbone=str(tiny_backbones["smolvlm"]), hidden_dim=32, num_tokens=4)
    return VLA.from_backbone(cfg, tiny_spec()).save_pretrained(tmp_path_factory.mktemp("ck") / "policy")


class SimPublisher:
    """Publishes SimRig renders and state at 20 Hz, as the camera and franka nodes would."""

    def __init__(self, probe: Probe) -> None:
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, JointState

        from robot.ros.qos import SENSOR_QOS, STATE_QOS
        from sim.rig import SimRig

        self.rig = SimRig().connect()
        self.rig.reset()
        self.st = self.rig.state()
        self.images = {c: self.rig.render(c, 64, 64) for c in ("front", "wrist")}  # resized by the node
        self.Image, self.Pose, self.Joint = Image, PoseStamped, JointState
        self.img_pubs = {c: probe.publisher(f"cameras/{c}/image_raw", Image, SENSOR_QOS) for c in self.images}
        self.pose_pub = probe.publisher("ee_pose", PoseStamped, STATE_QOS)
        self.grip_pub = probe.publisher("gripper/state", JointState, STATE_QOS)
        self.joint_pub = probe.publisher("joint_states", JointState, STATE_QOS)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from robot.ros.convert import to_stamp as stamp

        while self.running:
            t = stamp(time.time())
            for c, img in self.images.items():
                m = self.Image(height=img.shape[0], width=img.shape[1], encoding="rgb8", step=img.shape[1] * 3,
                               data=img.tobytes())
                m.header.stamp = t
                self.img_pubs[c].publish(m)
            p = self.Pose()
            p.header.stamp, p.header.frame_id = t, "panda_link0"
            p.pose.position.x, p.pose.position.y, p.pose.position.z = (float(v) for v in self.st["state/ee_pos"])
            o = p.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in self.st["state/ee_quat"])
            self.pose_pub.publish(p)
            g = self.Joint(name=["width"], position=[float(self.st["state/gripper_width"][0])])
            g.header.stamp = t
            self.grip_pub.publish(g)
            j = self.Joint(name=[f"panda_joint{i + 1}" for i in range(7)],
                           position=self.st["state/joint_pos"].astype(float).tolist(), velocity=[0.0] * 7)
            j.header.stamp = t
            self.joint_pub.publish(j)
            time.sleep(0.05)

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.rig.close()


def _probe():
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from robot.ros.qos import COMMAND_QOS

    probe = Probe()
    probe.subscribe("target_pose", PoseStamped, COMMAND_QOS)
    probe.subscribe("gripper/command", JointState, COMMAND_QOS)
    probe.subscribe("/diagnostics", DiagnosticArray)
    instr = probe.publisher("policy/instruction", String)
    return probe, instr, String


def _node(spinner: Spinner, **params):
    from rclpy.parameter import Parameter

    from policy.node import PolicyNode

    policy = params.pop("policy", None)
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return spinner.add(PolicyNode(policy=policy, context=spinner.context, parameter_overrides=overrides))


def _status(probe: Probe):
    out = [s for m in probe.got("/diagnostics") for s in m.status if s.name.endswith("policy")]
    return out[-1] if out else None


def test_node_turns_sim_images_into_targets_and_falls_silent_when_inputs_go_stale(checkpoint):
    probe, instr, String = _probe()
    pub = SimPublisher(probe)
    spinner = Spinner()
    try:
        _node(spinner, checkpoint=str(checkpoint), max_obs_age=1.0, device="cpu")
        spinner.start()
        time.sleep(0.5)
        assert not probe.got("target_pose"), "no instruction yet: the node must not move the arm"
        assert wait_for(lambda: [instr.publish(String(data="pick up the red cube")), probe.got("target_pose")][1]
                        if len(probe.got("target_pose")) < 15 else True, timeout=30), "no targets"
        ee = pub.st["state/ee_pos"].astype(float)
        spec = tiny_spec().action
        for m in probe.got("target_pose")[-10:]:
            p = np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
            assert m.header.frame_id == "panda_link0"
            assert np.linalg.norm(p - ee) <= spec.max_translation * np.sqrt(3) + 1e-6  # one delta step away
            q = m.pose.orientation
            assert abs(np.linalg.norm([q.x, q.y, q.z, q.w]) - 1.0) < 1e-6
        grip = probe.got("gripper/command")
        assert grip and 0.0 <= grip[0].position[0] <= 0.08 and grip[0].name == ["width"]
        def values():
            s = _status(probe)
            v = {kv.key: kv.value for kv in s.values} if s and s.message == "running" else {}
            return v if int(v.get("chunks", 0)) >= 2 else None

        v = wait_for(values, timeout=10)
        assert v and float(v["latency_p50_ms"]) > 0
        # the robot state stops: after max_obs_age the node falls silent
        pub.stop()
        time.sleep(1.0 + 0.5)
        n = len(probe.got("target_pose"))
        time.sleep(1.0)
        assert len(probe.got("target_pose")) == n, "targets kept coming on stale inputs"
    finally:
        pub.running = False
        spinner.close()
        probe.close()


def test_node_stays_silent_when_inference_fails(checkpoint):
    import policy
    from robot.ros.diagnostics import ERROR

    class Failing:
        def __init__(self, inner):
            self.inner, self.spec, self.device = inner, inner.spec, inner.device

        def infer(self, obs, **kwargs):
            raise RuntimeError("CUDA error: device lost")

    probe, instr, String = _probe()
    pub = SimPublisher(probe)
    spinner = Spinner()
    try:
        _node(spinner, policy=Failing(policy.load(checkpoint)), instruction="pick up the red cube")
        spinner.start()
        st = wait_for(lambda: (s := _status(probe)) and "inference failed" in s.message and s, timeout=15)
        assert st and st.level == ERROR
        time.sleep(0.5)
        assert not probe.got("target_pose") and not probe.got("gripper/command")
    finally:
        pub.stop()
        spinner.close()
        probe.close()


def test_node_stays_silent_on_a_non_finite_chunk_and_reports_it(checkpoint):
    import policy
    from robot.ros.diagnostics import ERROR

    class NaNPolicy:
        def __init__(self, inner):
            self.inner, self.spec, self.device = inner, inner.spec, inner.device
            self.calls = 0

        def infer(self, obs, **kwargs):
            self.calls += 1
            a = self.inner.infer(obs)["actions"].copy()
            a[-1, 0] = np.nan  # one value: the whole chunk is refused
            return {"actions": a}

    probe, instr, String = _probe()
    pub = SimPublisher(probe)
    spinner = Spinner()
    try:
        p = NaNPolicy(policy.load(checkpoint))
        _node(spinner, policy=p, instruction="pick up the red cube")
        spinner.start()
        st = wait_for(lambda: (s := _status(probe)) and "NonFiniteActions" in s.message and s, timeout=30)
        assert st and st.level == ERROR and "non-finite" in st.message
        assert wait_for(lambda: p.calls >= 3, timeout=15), "the node stopped asking after a NaN chunk"
        assert not probe.got("target_pose") and not probe.got("gripper/command"), "a NaN chunk was executed"
    finally:
        pub.stop()
        spinner.close()
        probe.close()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_policy_node_executable_stops_through_its_lifecycle(checkpoint, sig, tmp_path):
    import signal
    import uuid

    from _executables import ACTIVE, SHUT_DOWN, kill_all, start, stop_all, wait_ready

    run = start("policy-node", ["--ros-args", "-r", f"__ns:=/pn{uuid.uuid4().hex[:8]}", "-p",
                                f"checkpoint:={checkpoint}", "-p", "device:=cpu"], tmp_path)
    try:
        assert not wait_ready([run], timeout=180), f"policy-node did not come up:\n{run.output()[-3000:]}"
        stop_all([run], getattr(signal, sig), 20.0)
        out = run.output()
        assert run.proc.returncode == 0 and out.count(SHUT_DOWN) == out.count(ACTIVE) == 1, \
            f"exit {run.proc.returncode} after {run.exit_s:.1f} s:\n{out[-3000:]}"
        assert "Traceback" not in out, out
    finally:
        kill_all([run])
