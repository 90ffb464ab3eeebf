"""The HIL-SERL agent: RLPD batches, intervention routing, the gripper critic, learning sanity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rl_toy_envs import AlwaysIntervener, LineEnv, LineExpert, TargetEnv

from flywheel.rl.actions import GRIP_CLOSE, GRIP_OPEN, GRIP_STAY, compose_action, gripper_label
from flywheel.rl.actor import Actor, collect_demos
from flywheel.rl.buffers import ReplayBuffer, rlpd_batch, route_transitions, stack_transitions
from flywheel.rl.encoders import (
    KeypointEncoder,
    SpatialEmbedding,
    obs_shapes_of,
    random_map_shift,
    random_shift,
)
from flywheel.rl.learner import Learner, LearnerConfig
from flywheel.rl.loops import train_local
from flywheel.rl.sac import SACAgent, SACConfig

SHAPES = {"state/x": ((2,), "float32")}


def _batch(n: int, reward: float, intervened=False) -> dict[str, np.ndarray]:
    return {
        "obs/state/x": np.zeros((n, 2), np.float32), "next_obs/state/x": np.zeros((n, 2), np.float32),
        "action": np.zeros((n, 7), np.float32), "grip": np.ones(n, np.int64),
        "reward": np.full(n, reward, np.float32), "terminated": np.zeros(n, bool),
        "intervened": np.broadcast_to(np.asarray(intervened, bool), (n,)).copy(),
    }


def test_rlpd_batch_is_half_demo_half_online():
    demo, online = ReplayBuffer(100, SHAPES), ReplayBuffer(100, SHAPES)
    demo.add_batch(_batch(10, reward=1.0))
    online.add_batch(_batch(90, reward=-1.0))
    rng = np.random.default_rng(0)
    b = rlpd_batch(demo, online, 256, rng)
    assert b["reward"].shape == (256,)
    np.testing.assert_array_equal(b["reward"][:128], 1.0)  # demo half despite 10 vs 90 stored
    np.testing.assert_array_equal(b["reward"][128:], -1.0)
    # an empty side: the whole batch from the other
    empty = ReplayBuffer(100, SHAPES)
    assert (rlpd_batch(empty, online, 64, rng)["reward"] == -1.0).all()
    assert (rlpd_batch(demo, empty, 64, rng)["reward"] == 1.0).all()
    with pytest.raises(ValueError, match="empty"):
        rlpd_batch(empty, ReplayBuffer(5, SHAPES), 8, rng)


def test_ring_buffer_overwrites_oldest_and_checks_shapes():
    buf = ReplayBuffer(5, SHAPES)
    for r in range(7):
        buf.add_batch(_batch(1, reward=float(r)))
    assert len(buf) == 5 and buf.total_added == 7
    assert sorted(buf.data["reward"].tolist()) == [2, 3, 4, 5, 6]
    bad = _batch(2, 0.0)
    bad["action"] = np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match="action"):
        buf.add_batch(bad)


def test_intervened_transitions_go_to_both_buffers_policy_ones_only_online():
    demo, online = ReplayBuffer(100, SHAPES), ReplayBuffer(100, SHAPES)
    b = _batch(6, 0.0)
    b["intervened"] = np.array([1, 0, 1, 0, 0, 1], bool)
    b["reward"] = np.arange(6, dtype=np.float32)
    assert route_transitions(b, demo, online) == 3
    assert len(online) == 6 and len(demo) == 3
    assert sorted(demo.data["reward"][:3].tolist()) == [0, 2, 5]


def test_actor_routes_interventions_and_logs_rate():
    torch.manual_seed(0)
    env = LineEnv(horizon=10)
    agent = SACAgent(SACConfig(hidden_dims=[16], arm_dims=[0]), obs_shapes_of(env.observation_space))
    expert = LineExpert()
    actor = Actor(env, agent, intervener=AlwaysIntervener(expert), seed=1)
    learner = Learner(agent, LearnerConfig(demo_capacity=100, online_capacity=100))
    trs, stats = [], None
    while stats is None:
        tr, stats = actor.step()
        trs.append(tr)
    batch = stack_transitions(trs)
    learner.add(batch)
    n = len(trs)
    inter = batch["intervened"]
    assert inter.sum() == n // 2 and not inter[0] and inter[1]
    assert len(learner.online) == n and len(learner.demo) == n // 2
    assert stats.intervention_rate == pytest.approx((n // 2) / n)
    # the stored action of an intervened step is the operator's, not the policy's
    i = int(np.flatnonzero(inter)[0])
    np.testing.assert_allclose(batch["action"][i], expert.act({"state/ee_pos": batch["obs/state/ee_pos"][i]}))
    # its gripper label explains the operator's command given the command in force before it
    assert batch["grip"][i] == gripper_label(batch["action"][i][6], batch["action"][i - 1][6])


def test_gripper_actions_compose_the_spec_action():
    arm = np.array([0.5, -0.2, 0.1], np.float32)
    a = compose_action(arm, [0, 1, 2], GRIP_OPEN, current_gripper=-0.3)
    np.testing.assert_allclose(a, [0.5, -0.2, 0.1, 0, 0, 0, 1.0])
    assert compose_action(arm, [0, 1, 2], GRIP_CLOSE, 0.7)[6] == -1.0
    assert compose_action(arm, [0, 1, 2], GRIP_STAY, 0.7)[6] == pytest.approx(0.7)
    assert compose_action(np.array([2.0]), [4], GRIP_STAY, 0.0)[4] == 1.0  # clipped, placed at dim 4
    with pytest.raises(ValueError, match="gripper action"):
        compose_action(arm, [0, 1, 2], 3, 0.0)
    assert gripper_label(1.0, -1.0) == GRIP_OPEN
    assert gripper_label(-1.0, 1.0) == GRIP_CLOSE
    assert gripper_label(0.9, 1.0) == GRIP_STAY
    # the agent's gripper head picks the argmax of its discrete critic
    env = TargetEnv()
    agent = SACAgent(SACConfig(hidden_dims=[16]), obs_shapes_of(env.observation_space))
    obs, _ = env.reset(seed=0)
    for choice, expect in ((GRIP_CLOSE, -1.0), (GRIP_OPEN, 1.0), (GRIP_STAY, 0.25)):
        with torch.no_grad():
            last = agent.grip_critic.net[-1]
            last.weight.zero_()
            last.bias.zero_()
            last.bias[:, :, choice] = 10.0
        a, g = agent.act(obs, current_gripper=0.25, deterministic=True)
        assert g == choice and a.shape == (7,) and a.dtype == np.float32 and a[6] == pytest.approx(expect)


def test_critic_loss_decreases_on_fixed_data():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    agent = SACAgent(SACConfig(hidden_dims=[64, 64], batch_size=128, discount=0.0), SHAPES)
    demo, online = ReplayBuffer(512, SHAPES), ReplayBuffer(512, SHAPES)
    b = _batch(512, 0.0)
    b["obs/state/x"] = rng.uniform(-1, 1, (512, 2)).astype(np.float32)
    b["action"] = rng.uniform(-1, 1, (512, 7)).astype(np.float32)
    b["reward"] = (b["obs/state/x"][:, 0] * b["action"][:, 0]).astype(np.float32)
    demo.add_batch(b)
    online.add_batch(b)
    losses = [agent.update([rlpd_batch(demo, online, 128, rng)])["critic_loss"] for _ in range(300)]
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20])


@pytest.mark.slow
def test_sac_solves_one_step_target_task_with_the_gripper():
    torch.manual_seed(0)
    env = TargetEnv(gripper_task=True)
    agent = SACAgent(SACConfig(hidden_dims=[64, 64], batch_size=64, arm_dims=[0, 1], init_temperature=0.1),
                     obs_shapes_of(env.observation_space))
    learner = Learner(agent, LearnerConfig(random_steps=100, warmup_steps=100))
    train_local(learner, Actor(env, agent, reward_source="env"), 1500, progress=False)
    untrained = SACAgent(agent.cfg, obs_shapes_of(env.observation_space))
    base = Actor(TargetEnv(gripper_task=True), untrained).evaluate(50)
    res = Actor(TargetEnv(gripper_task=True), agent).evaluate(50)
    assert base["success_rate"] < 0.3
    assert res["success_rate"] >= 0.85, res


def test_image_encoders_conv_and_latent_hook():
    torch.manual_seed(0)
    env = TargetEnv(image_size=32)
    shapes = obs_shapes_of(env.observation_space)
    x = torch.rand(4, 3, 32, 32)
    y = random_shift(x, 4)
    assert y.shape == x.shape and not torch.equal(x, y)
    calls = []

    def backbone(images: torch.Tensor) -> torch.Tensor:  # frozen "generalist" features
        calls.append(images.shape)
        return images.float().mean(dim=(1, 2))  # (B, 3)

    for enc, kw in (("conv", {}), ("latent", {"latent_encoder": backbone})):
        cfg = SACConfig(hidden_dims=[32], batch_size=8, encoder=enc, state_keys=["state/gripper_width"],
                        conv_channels=8, feature_dim=16)
        agent = SACAgent(cfg, shapes, **kw)
        assert agent.image_keys == ["images/front"]
        demo, online = ReplayBuffer(16, agent.obs_shapes), ReplayBuffer(16, agent.obs_shapes)
        actor = Actor(env, agent, reward_source="env")
        trs = [actor.step()[0] for _ in range(8)]
        route_transitions(stack_transitions(trs), demo, online)
        info = agent.update([rlpd_batch(demo, online, 8, np.random.default_rng(0))])
        assert np.isfinite(info["critic_loss"]) and "actor_loss" in info
    assert calls, "the latent encoder hook was never called"
    assert not any(p.requires_grad is False for p in agent.encoder.parameters())
    with pytest.raises(ValueError, match="latent_encoder"):
        SACAgent(SACConfig(encoder="latent"), shapes)
    with pytest.raises(KeyError, match="cameras"):
        SACAgent(SACConfig(encoder="conv"), {"state/x": ((2,), "float32")})


def test_feature_map_shift_translates_by_up_to_the_given_cells():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 4] = 1.0  # one peak, away from the border
    assert random_map_shift(x, 0.0) is x
    y = random_map_shift(x, 1.0)
    assert y.shape == x.shape and not torch.equal(x, y)
    # each map's centre of mass moved by the sampled translation, never more than one cell per axis
    grid = torch.arange(8.0)
    cy = (y[:, 0].sum(2) * grid).sum(1) / y[:, 0].sum((1, 2))
    cx = (y[:, 0].sum(1) * grid).sum(1) / y[:, 0].sum((1, 2))
    dy, dx = cy - 3, cx - 4
    assert dx.abs().max() <= 1.0 + 1e-5 and dy.abs().max() <= 1.0 + 1e-5
    assert dx.abs().max() > 0.5 and dy.abs().max() > 0.5 and dx.std() > 0.3  # spread, both signs
    assert (dx > 0).any() and (dx < 0).any()
    # the mass is kept (a sub-cell shift is an interpolation, not a crop) for a peak inside the map
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(64), atol=1e-5)


def test_pretrained_keypoint_head_augments_only_when_asked():
    torch.manual_seed(0)
    feats = torch.randn(4, 112, 8, 8).half()
    enc = KeypointEncoder((112, 8, 8), channels=8, num_keypoints=4, feature_dim=16)
    assert torch.equal(enc(feats), enc(feats))  # no augmentation: deterministic
    assert not torch.allclose(enc(feats, 0.5), enc(feats, 0.5))
    cfg = SACConfig(hidden_dims=[32], batch_size=4, encoder="pretrained", state_keys=["state/q"], feature_shift=0.5,
                    conv_channels=8, feature_dim=16, pretrained_keypoints=4)
    agent = SACAgent(cfg, {"features/front": ((112, 8, 8), "float16"), "state/q": ((2,), "float32")})
    obs = {"features/front": feats, "state/q": torch.zeros(4, 2)}
    assert agent.encoder.shift == 0.5
    assert torch.equal(agent.encoder(obs), agent.encoder(obs))
    assert not torch.allclose(agent.encoder(obs, augment=True), agent.encoder(obs, augment=True))
    shapes = {"features/front": ((112, 8, 8), "float16"), "state/q": ((2,), "float32")}
    for bad, err in (({"feature_shift": -0.5}, "feature_shift=-0.5"), ({"feature_shift": float("nan")}, "feature_shift"),
                     ({"pretrained_spatial": -1}, "pretrained_spatial=-1")):
        with pytest.raises(ValueError, match=err):
            SACAgent(SACConfig(encoder="pretrained", state_keys=["state/q"], **bad), shapes)


def test_spatial_embedding_keeps_where_a_feature_fires():
    torch.manual_seed(0)
    emb = SpatialEmbedding(channels=3, h=4, w=4, k=2)
    a, b = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    a[0, :, 0, 0], b[0, :, 3, 3] = 1.0, 1.0  # equal means, different places
    assert emb(a).shape == (1, 6)
    assert torch.allclose(a.mean((2, 3)), b.mean((2, 3))) and not torch.allclose(emb(a), emb(b))
    # exactly the kernel at the firing cell
    assert torch.allclose(emb(a)[0].view(3, 2), emb.kernel[:, 0, :])
    enc = KeypointEncoder((5, 4, 4), channels=3, num_keypoints=2, feature_dim=8, spatial=2)
    assert enc.head[0].in_features == 2 * 2 + 3 + 3 * 2
    out = enc(torch.randn(2, 5, 4, 4))
    out.sum().backward()
    assert out.shape == (2, 8) and emb.kernel.grad is None and enc.spatial.kernel.grad is not None


def test_collect_demos_keeps_only_successes():
    env = LineEnv(horizon=10)
    batch, stats = collect_demos(env, LineExpert(), 3, ["state/ee_pos", "state/gripper_width"], seed=0)
    assert stats["demo_episodes"] == 3
    assert batch["intervened"].all() and batch["reward"].sum() == 3 and batch["terminated"].sum() == 3


def test_state_deltas_add_relative_features_and_bad_ones_fail_clearly():
    shapes = {"state/ee_pos": ((3,), "float32"), "state/privileged": ((6,), "float32")}
    cfg = SACConfig(hidden_dims=[8], arm_dims=[0, 1, 2], gripper=False,
                    state_deltas=["state/privileged[3:6]-state/privileged[0:3]", "state/privileged[0:2]-state/ee_pos[0:2]"])
    agent = SACAgent(cfg, shapes)
    obs = {"state/ee_pos": torch.tensor([[1.0, 2.0, 3.0]]),
           "state/privileged": torch.tensor([[0.5, 0.5, 0.5, 0.75, 1.5, 2.5]])}
    x = agent.encoder.state_vector(obs)
    assert x.shape == (1, 3 + 6 + 3 + 2)
    np.testing.assert_allclose(x[0, 9:].numpy(), [0.25, 1.0, 2.0, -0.5, -1.5])
    n = 5
    batch = {"obs/state/ee_pos": np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32),
             "obs/state/privileged": np.random.default_rng(1).normal(size=(n, 6)).astype(np.float32),
             "reward": np.zeros(n, np.float32)}
    agent.fit_state_normalizer(batch)  # statistics over the deltas too
    assert agent.encoder.state_mean.shape == (14,)
    a, _ = agent.act({"state/ee_pos": np.zeros(3, np.float32), "state/privileged": np.ones(6, np.float32)}, 1.0)
    assert a.shape == (7,) and np.isfinite(a).all()
    for bad, err in (("state/privileged[3:6]+state/ee_pos[0:3]", "write it as"),
                     ("state/joints[0:3]-state/ee_pos[0:3]", "not one of the state keys"),
                     ("state/privileged[4:8]-state/ee_pos[0:4]", "outside"),
                     ("state/privileged[0:3]-state/ee_pos[0:2]", "differ in length")):
        with pytest.raises((ValueError, KeyError), match=err):
            SACAgent(SACConfig(hidden_dims=[8], state_deltas=[bad]), shapes)
