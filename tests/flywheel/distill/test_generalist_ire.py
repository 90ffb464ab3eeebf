"""Training-data plumbing of the distillation (store -> VLA batches, replay mixing) and iRe-VLA's AWR update."""

import numpy as np
import pytest
import torch

from flywheel.data import EpisodeStore
from flywheel.distill import collect, rldg
from flywheel.distill.generalist import VLABatches, store_stats
from flywheel.distill.ire_vla import awr_update, discounted_returns


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    env = collect.make_env("PandaRig/PegInsert-v0", cameras=("wrist",), image_size=16, max_episode_steps=5)
    s = EpisodeStore(tmp_path_factory.mktemp("s") / "store", "a", spec=env.unwrapped.rig_spec)

    class Const:
        def __init__(self, v):
            self.v = v

        def reset(self):
            pass

        def act(self, obs):
            return np.full(7, self.v, np.float32)

    collect.record_rollouts(s, env, Const(0.1), [0, 1], source="human", collection="old", progress=False)
    collect.record_rollouts(s, env, Const(-0.1), [2], source="rl", collection="new", progress=False)
    env.close()
    yield s
    s.close()


def test_batches_hold_spec_keys_and_padded_chunks(store):
    b = next(iter(VLABatches(store, [0, 1, 2], store.spec, batch_size=16, seed=0)))
    assert b["images/wrist"].shape == (16, 16, 16, 3) and b["images/wrist"].dtype == np.uint8
    assert b["state/ee_pos"].shape == (16, 3) and b["actions"].shape == (16, 8, 7)
    assert b["instruction"][0] == "insert the peg into the hole"
    # chunks never cross an episode end: padded steps repeat the episode's last action
    for a, pad in zip(b["actions"], b["action_is_pad"], strict=True):
        assert len(np.unique(a[:, 0])) == 1  # constant-action episodes
        assert pad.sum() >= 8 - 5  # 5-step episodes: at least 3 padded steps of 8
    st = store_stats(store, [0, 1, 2])
    assert len(st["proprio"]["mean"]) == 8 and len(st["actions"]["std"]) == 7


def test_replay_fraction_sets_the_share_of_old_data(store):
    eps, w = rldg.mix_weights([2], [0, 1], 0.25)
    data = VLABatches(store, eps, store.spec, batch_size=4000, seed=1, weights=w)
    b = next(iter(data))
    share_old = float(np.mean(b["actions"][:, 0, 0] > 0))  # old (human) episodes acted +0.1
    assert abs(share_old - 0.25) < 0.04
    assert rldg.mix_weights([2], [], 0.3) == ([2], None)


def test_discounted_returns():
    np.testing.assert_allclose(discounted_returns(True, 3, 0.5), [0.25, 0.5, 1.0])
    assert not discounted_returns(False, 4, 0.9).any()


def test_awr_moves_the_head_towards_successful_actions():
    from policy.heads import TokenLearnerHead

    torch.manual_seed(0)

    class M:
        head = TokenLearnerHead(8, 3, 2, 7, num_tokens=2, hidden_dim=32)

    from flywheel.distill.ire_vla import CriticHead, IReVLAConfig

    n = 64
    hidden = np.random.default_rng(0).normal(size=(n, 4, 8)).astype(np.float32)
    ok = np.arange(n) % 2 == 0  # same kind of states; successes acted +0.5, failures -0.5
    data = {"hidden": hidden, "mask": np.ones((n, 4), bool), "proprio": np.zeros((n, 3), np.float32),
            "actions": np.where(ok[:, None, None], 0.5, -0.5).repeat(2, 1).repeat(7, 2).astype(np.float32),
            "is_pad": np.zeros((n, 2), bool), "ret": ok.astype(np.float32)}
    cfg = IReVLAConfig(head_updates=150, batch_size=32, beta=0.1)
    m = awr_update(M, CriticHead(8, 3, hidden=32, num_tokens=2), data, cfg)
    with torch.no_grad():
        pred = M.head(torch.as_tensor(hidden), torch.ones(n, 4, dtype=torch.bool), torch.zeros(n, 3))
    assert float(pred.mean()) > 0.25, "AWR should imitate the successful (+0.5) actions, not the mean (0)"
    assert m["critic_loss"] < 0.3
