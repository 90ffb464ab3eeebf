"""Rig episodes end to end against `rig-up rig=sim` (the lab rig's code path): `flywheel-eval env=rig` with the
operator resetting the scene, and a `flywheel-rl` actor on the rig with the scripted reset; the graph's recorder
node labels every episode in the store."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import String

sys.path.insert(0, str(Path(__file__).parents[1] / "robot"))  # the shared ROS probe helpers
from _ros_probe import Probe  # noqa: E402
from waiting import wait_for  # noqa: E402

from apps.bringup import Graph, compose_rig
from robot.ros.qos import COMMAND_QOS, LATCHED_QOS

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.render]

SMALL_CAMERAS = [f"rig.cameras.cameras.{i}.{k}={v}" for i in (0, 1) for k, v in
                 (("width", 64), ("height", 48), ("fps", 15.0))]


@pytest.fixture(scope="module")
def sim_rig(tmp_path_factory):
    """`rig-up rig=sim` in this process with the recorder writing to a fresh store; yields the store's path."""
    import rclpy

    store = tmp_path_factory.mktemp("rig") / "episodes.zarr"
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    graph = Graph(compose_rig(["rig.teleop.device=none", *SMALL_CAMERAS, "rig.cameras.policy_image_size=32",
                               f"record_path={store}", "task=reach"]), context=ctx).start()
    spinner = threading.Thread(target=graph.spin, daemon=True)
    spinner.start()
    try:
        yield store
    finally:
        ctx.try_shutdown()
        spinner.join(timeout=5)
        graph.close()


def records(store: Path) -> list:
    from flywheel.data import EpisodeStore

    return EpisodeStore(store, "r").records


# the rig actor's settings shared by the flywheel-rl tests below: a tiny conv agent on the wrist camera
RIG_ACTOR = ["role=actor", "rl_task=none", "progress=false", "env.kind=rig", "env.privileged_state=false",
             "env.cameras=[wrist]", "env.image_size=32", "env.max_episode_steps=8", "intervention.enabled=false",
             "learner.random_steps=10", "agent.encoder=conv", "agent.conv_channels=8", "agent.feature_dim=16",
             "agent.hidden_dims=[32]", "agent.arm_dims=[0,1,2]", "agent.gripper=false",
             "agent.state_keys=[state/ee_pos,state/gripper_width]", "transport.token=t"]


@contextlib.contextmanager
def stand_in_learner(cfg: Any) -> Iterator[list[dict]]:
    """A learner for an actor of ``cfg``: publishes the agent's weights, collects what the actor sends (yielded)."""
    from flywheel.rig_env import rl_spec
    from flywheel.rl.build import build_agent
    from flywheel.rl.learner import weights_to_bytes
    from flywheel.rl.transport import LearnerEndpoint, TransportConfig
    from robot.env import RosRigEnv

    t = cfg.transport
    weights = weights_to_bytes(build_agent(cfg, RosRigEnv(rl_spec(cfg.env))))
    got: list[dict] = []
    stop = threading.Event()

    def learner() -> None:
        with LearnerEndpoint(TransportConfig(transitions_port=t.transitions_port, weights_port=t.weights_port,
                                             token=t.token)) as ep:
            while not stop.is_set():
                ep.publish_weights(1, weights)
                got.extend(ep.recv(timeout_ms=100))

    thread = threading.Thread(target=learner, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        stop.set()
        thread.join(timeout=5)


def wait_heard_by_all(op: Probe) -> None:
    """Until every subscriber of episode/event (the recorder's, the probe's own) has matched ``op.pub``: an answer
    published during DDS discovery would be lost."""
    assert wait_for(lambda: op.pub.get_subscription_count() >= op.node.count_subscribers("episode/event") >= 2,
                    timeout=10)


class Operator(Probe):
    """A test operator: answers every reset prompt with `reset`, and marks episode n (1-based) a success half a
    second after it starts for each n in ``succeed``."""

    def __init__(self, succeed: tuple[int, ...] = ()):
        super().__init__("operator")
        self.succeed = set(succeed)
        self.prompts: list[str] = []
        self.events: list[str] = []
        self.pub = self.publisher("episode/event", String, COMMAND_QOS)
        self.node.create_subscription(String, "reset/prompt", self._on_prompt, LATCHED_QOS)
        self.node.create_subscription(String, "episode/event", self._on_event, COMMAND_QOS)

    def _on_prompt(self, m: String) -> None:
        if m.data:
            self.prompts.append(m.data)
            self.pub.publish(String(data="reset"))  # the scene is set up again

    def _on_event(self, m: String) -> None:
        self.events.append(m.data)
        if m.data == "start" and self.events.count("start") in self.succeed:
            # a moment later: an episode ended at its start has no steps, and the recorder keeps no empty episode
            threading.Timer(0.5, self.pub.publish, [String(data="success")]).start()


def test_flywheel_eval_on_the_rig_prompts_the_operator_between_episodes_and_records_them(sim_rig, tmp_path):
    import torch
    from omegaconf import OmegaConf

    from flywheel.evaluate import EvalConfig, run_eval
    from policy.config import PolicyConfig
    from policy.model import VLA
    from policy.tiny import make_tiny_backbone
    from rig.spec import default_spec
    from robot.reset import ResetConfig

    bb = make_tiny_backbone("smolvlm", tmp_path / "bb")
    torch.manual_seed(0)
    VLA.from_backbone(PolicyConfig(backbone=str(bb), hidden_dim=32, num_tokens=4),
                      default_spec(16, ("wrist",))).save_pretrained(tmp_path / "ckpt")
    before = len(records(sim_rig))
    op = Operator(succeed=(2,))
    wait_heard_by_all(op)  # the operator's answers must reach the recorder
    try:
        cfg = OmegaConf.structured(EvalConfig(
            policy=str(tmp_path / "ckpt"), tasks=["reach"], episodes=2, env="rig", max_steps=15, device="cpu",
            progress=False, out=str(tmp_path / "eval.json"),
            reset=ResetConfig(kind="operator", prompt="put the cube back", operator_timeout=60.0)))
        res = run_eval(cfg)["reach"]
        # the operator was asked before each episode, and the prompt withdrawn after the answer
        assert op.prompts == ["put the cube back"] * 2
        # episode 1 ran out of steps (the env says failure); the operator marked episode 2 a success
        assert res.success_per_episode == [False, True]
        def labels() -> list[str]:
            return [e for e in op.events if e != "reset"]  # the operator's own answers aside

        assert wait_for(lambda: labels() == ["start", "failure", "start", "success"]), op.events
        assert wait_for(lambda: len(records(sim_rig)) == before + 2, timeout=15), records(sim_rig)
        new = records(sim_rig)[before:]
        assert [(r.success, r.task) for r in new] == [(False, "reach"), (True, "reach")]
        assert new[0].end - new[0].start >= 10  # the first episode's steps are in the store
    finally:
        op.close()


def test_a_flywheel_rl_actor_on_the_rig_runs_episodes_with_the_scripted_reset(sim_rig, tmp_path):
    from flywheel.rl.app import compose, run
    from flywheel.rl.transport import free_ports

    t_port, w_port = free_ports(2)
    lo, hi = [0.33, -0.08, 0.3], [0.45, 0.08, 0.42]  # a put-down box near home (short motions)
    cfg = compose([
        *RIG_ACTOR, f"out_dir={tmp_path / 'rl'}", "total_steps=20", "env.reset.kind=scripted",
        f"env.reset.workspace_min={lo}", f"env.reset.workspace_max={hi}",
        "agent.gripper_fixed=-1.0",  # closed: it may hold
        "transport.send_every=5", f"transport.transitions_port={t_port}", f"transport.weights_port={w_port}"])
    before = len(records(sim_rig))
    watch = Probe("watch")
    watch.subscribe("target_pose", PoseStamped, COMMAND_QOS)
    try:
        with stand_in_learner(cfg) as got:
            res = run(cfg)
            assert res["env_steps"] == 20 and res["episodes"] == 2  # 8 + 8 steps, and 4 of a third
            assert wait_for(lambda: sum(len(m["batch"]["reward"]) for m in got) == 20, timeout=10)
        eps = [e for m in got for e in m["episodes"]]
        assert [(e["length"], e["success"]) for e in eps] == [(8, False), (8, False)]
        # the scripted reset lowered to the box's floor at a spot inside the box after each closed-gripper episode
        floor = [p for p in (np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
                             for m in watch.got("target_pose")) if abs(p[2] - lo[2]) < 1e-9]
        spots = {tuple(np.round(p[:2], 6)) for p in floor}
        assert len(spots) >= 2, spots
        assert all(np.all(p >= lo) and np.all(p <= hi) for p in floor)
        # the recorder node labelled the two finished episodes failures (out of steps)
        assert wait_for(lambda: len(records(sim_rig)) >= before + 2, timeout=15), records(sim_rig)
        assert [r.success for r in records(sim_rig)[before:before + 2]] == [False, False]
    finally:
        watch.close()


class Reviewer(Probe):
    """A test operator at the review prompt: answers the classifier's claimed successes with ``verdicts`` in turn
    (``failure`` rejects, ``success`` confirms)."""

    def __init__(self, verdicts: list[str]):
        super().__init__("reviewer")
        self.verdicts = list(verdicts)
        self.prompts: list[str] = []
        self.events: list[str] = []
        self.pub = self.publisher("episode/event", String, COMMAND_QOS)
        self.node.create_subscription(String, "reset/prompt", self._on_prompt, LATCHED_QOS)
        self.node.create_subscription(String, "episode/event", lambda m: self.events.append(m.data), COMMAND_QOS)

    def _on_prompt(self, m: String) -> None:
        if m.data.startswith("The reward classifier says success") and self.verdicts:
            self.prompts.append(m.data)
            # a second later, as a person would: the recorder keeps the episode open meanwhile (an episode of a
            # few steps whose camera samples are all stale on a loaded machine would be empty, and not kept)
            threading.Timer(1.0, self.pub.publish, [String(data=self.verdicts.pop(0))]).start()


def test_the_operator_confirms_or_rejects_the_classifiers_successes_on_the_rig(sim_rig, tmp_path):
    """`algo.review=operator`: a success the classifier claims on the rig is put to the operator; their failure key
    rejects it (no reward, no terminal reaches the learner, the recorder labels a failure), their success key
    confirms it; the reward function hears both verdicts and keeps their frames for a refinement."""
    from flywheel.rl.app import compose, run
    from flywheel.rl.reward_classifier import ClassifierConfig, RewardClassifier
    from flywheel.rl.transport import free_ports

    # a classifier that fires on every frame: p > 0 always, 3 frames in a row
    clf = RewardClassifier(ClassifierConfig(image_keys=["images/wrist"], channels=4, feature_dim=8, hidden_dims=[8],
                                            threshold=0.0, consecutive=3), {"images/wrist": (32, 32, 3)})
    path = clf.save(tmp_path / "clf.safetensors")
    t_port, w_port = free_ports(2)
    cfg = compose([
        *RIG_ACTOR, f"out_dir={tmp_path / 'rl'}", "total_steps=6",
        "algo.reward=classifier", f"algo.classifier={path}", "algo.review=operator", "algo.review_timeout=30",
        "algo.refine.every=0", "agent.gripper_fixed=1.0",
        "transport.send_every=3", f"transport.transitions_port={t_port}", f"transport.weights_port={w_port}"])
    before = len(records(sim_rig))
    op = Reviewer(["failure", "success"])
    wait_heard_by_all(op)  # the verdicts must reach the recorder
    try:
        with stand_in_learner(cfg) as got:
            res = run(cfg)
            assert res["env_steps"] == 6 and res["episodes"] == 2
            assert len(op.prompts) == 2  # asked once per claimed success
            assert wait_for(lambda: sum(len(m["batch"]["reward"]) for m in got) == 6, timeout=10)
        reward = np.concatenate([m["batch"]["reward"] for m in got])
        terminated = np.concatenate([m["batch"]["terminated"] for m in got])
        # episode 1: rejected on its 3rd step -> no reward, not terminal; episode 2: confirmed -> reward 1, terminal
        assert reward.tolist() == [0, 0, 0, 0, 0, 1] and terminated.tolist() == [0, 0, 0, 0, 0, 1]
        eps = [e for m in got for e in m["episodes"]]
        assert [(e["length"], e["success"]) for e in eps] == [(3, False), (3, True)]
        assert res["reward_review"] == {"verdicts": 2, "rejected": 1, "refinements": 0}
        labels = np.load(tmp_path / "rl" / "reward_classifier" / "reward_labels.npz")
        assert labels["labels"].tolist() == [False] * 3 + [True] * 3  # the rejected episode's frames, the confirmed
        # the recorder labelled the episodes with the operator's answers (the last two: an episode an earlier test
        # left open is committed unlabelled when this test's first episode starts)
        assert wait_for(lambda: len(records(sim_rig)) >= before + 2 and
                        [r.success for r in records(sim_rig)[-2:]] == [False, True], timeout=15), records(sim_rig)
    finally:
        op.close()
