"""Training-data plumbing of the distillation (store -> VLA batches, replay mixing) and iRe-VLA's AWR update."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flywheel.data import EpisodeStore
from flywheel.distill import collect, rldg
from flywheel.distill.generalist import sft_batches, store_stats
from flywheel.distill.ire_vla import awr_update, discounted_returns, stage2_mix

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))  # the data tests' episodes
from flywheel_data_helpers import make_episode  # noqa: E402


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
    b = next(iter(sft_batches(store, [0, 1, 2], store.spec, batch_size=16, seed=0)))
    assert b["images/wrist"].shape == (16, 16, 16, 3) and b["images/wrist"].dtype == torch.uint8
    assert b["state/ee_pos"].shape == (16, 3) and b["actions"].shape == (16, 8, 7)
    assert b["instruction"][0] == "insert the peg into the hole"
    # chunks never cross an episode end: padded steps repeat the episode's last action
    for a, pad in zip(b["actions"].numpy(), b["action_is_pad"].numpy(), strict=True):
        assert len(np.unique(a[:, 0])) == 1  # constant-action episodes
        assert pad.sum() >= 8 - 5  # 5-step episodes: at least 3 padded steps of 8
    st = store_stats(store, [0, 1, 2])
    assert len(st["state/ee_pos"]["mean"]) == 3 and len(st["action"]["std"]) == 7
    with pytest.raises(ValueError, match="no episodes"):
        sft_batches(store, [], store.spec, batch_size=4)


def test_store_stats_keep_the_old_numbers(store):
    """The per-key statistics normalise exactly as the former concatenated proprio/actions ones did."""
    from policy.normalize import Normalizer
    from rig.spec import PROPRIO_KEYS

    eps = [0, 2]
    recs = [store.record(i) for i in eps]
    prop = np.concatenate([np.concatenate([store.read(k, r.start, r.end).reshape(r.length, -1)
                                           for k in PROPRIO_KEYS], -1) for r in recs]).astype(np.float64)
    act = np.concatenate([store.read("action", r.start, r.end) for r in recs]).astype(np.float64)
    old = {"proprio": {"mean": prop.mean(0).tolist(), "std": [max(s, 1e-2) for s in prop.std(0)]},
           "actions": {"mean": act.mean(0).tolist(), "std": [max(s, 1e-2) for s in act.std(0)]}}
    dims = {"proprio": store.spec.proprio_dim, "actions": 7}
    new, was = Normalizer(store_stats(store, eps), dims), Normalizer(old, dims)
    for k in ("proprio", "actions"):
        np.testing.assert_array_equal(new.mean[k], was.mean[k])
        np.testing.assert_array_equal(new.std[k], was.std[k])
    assert new.std["actions"].min() >= 1e-2  # constant actions: the floor
    assert Normalizer(was.to_dict(), dims).to_dict() == was.to_dict()


def test_replay_fraction_sets_the_share_of_old_data(store):
    eps, w = rldg.mix_weights([2], [0, 1], 0.25)
    data = sft_batches(store, eps, store.spec, batch_size=4000, seed=1, weights=w)
    b = next(iter(data))
    share_old = float(np.mean(b["actions"][:, 0, 0].numpy() > 0))  # old (human) episodes acted +0.1
    assert abs(share_old - 0.25) < 0.04
    assert rldg.mix_weights([2], [], 0.3) == ([2], None)


def test_stage2_rl_fraction_sets_the_share_of_rl_successes(store):
    # ire stage 2: expert demos 0 and 1 (acted +0.1), one RL success (episode 2); equal weight per step by default
    assert stage2_mix([0, 1], [2], 0.0) == ([0, 1, 2], None)
    assert stage2_mix([0, 1], [], 0.5) == ([0, 1], None)
    eps, w = stage2_mix([0, 1], [2], 0.6)
    b = next(iter(sft_batches(store, eps, store.spec, batch_size=4000, seed=2, weights=w)))
    share_rl = float(np.mean(b["actions"][:, 0, 0].numpy() <= 0))
    assert abs(share_rl - 0.6) < 0.04
    with pytest.raises(ValueError, match="stage2_rl_fraction"):
        stage2_mix([0], [2], 1.0)


def test_stage2_operator_labels_take_the_assisted_rollouts_and_only_their_operators_steps(tmp_path, store):
    """``method.stage2_rl_labels=operator``: stage 2's RL episodes are every rollout the operator took over in
    (failures too; none without an operator step), and only those steps are trained on."""
    from flywheel.distill.ire_vla import stage2_episodes

    spec = store.spec
    with EpisodeStore(tmp_path / "s", "w", spec) as s:
        for k, (success, inter) in enumerate([(True, None), (True, "some"), (False, "some"), (False, "none"),
                                              (True, "none")]):
            ep = make_episode(spec, 12, seed=k)
            ep["action"] = np.full((12, spec.action.dim), 0.1 * (k + 1), np.float32)
            ep["intervention"] = np.zeros(12, bool) if inter != "some" else np.arange(12) % 3 == 0
            coll = "expert" if inter is None else "ire/round1_rl/T/ppo"
            s.add_episode(ep, task="T", instruction="t", success=success,
                          source="human" if inter is None else "rl", extra={"collection": coll})
        assert stage2_episodes(s, ["ire/round1_rl/T/ppo"], "successes") == [1, 4]
        assert stage2_episodes(s, ["ire/round1_rl/T/ppo"], "operator") == [1, 2]
        with pytest.raises(ValueError, match="stage2_rl_labels"):
            stage2_episodes(s, ["ire/round1_rl/T/ppo"], "failures")
        eps, w = stage2_mix([0], [1, 2], 0.5)
        b = next(iter(sft_batches(s, eps, s.spec, batch_size=3000, seed=0, weights=w, intervened_only=[1, 2])))
        idx, ep_of = b["index"].numpy(), b["episode_index"].numpy()
        local = idx - np.array([s.record(int(e)).start for e in ep_of])
        rl = ep_of != 0
        assert (local[rl] % 3 == 0).all()  # the operator's steps only
        assert abs(rl.mean() - 0.5) < 0.04 and set(ep_of[rl]) == {1, 2}


def test_stage2_step_weighting_spreads_the_rl_share_over_the_operators_steps(tmp_path, store):
    """``method.stage2_rl_weighting=step``: an assisted rollout with 8 operator steps is drawn 4x as often as one
    with 2 (``episode``, the default: equally often), the RL share unchanged."""
    from flywheel.distill.ire_vla import check_stage2_labels, labelled_steps, stage2_episodes

    spec = store.spec
    with EpisodeStore(tmp_path / "s", "w", spec) as s:
        for k, n_op in enumerate([None, 2, 8]):
            ep = make_episode(spec, 12, seed=k)
            ep["action"] = np.full((12, spec.action.dim), 0.1 * (k + 1), np.float32)
            ep["intervention"] = np.arange(12) < (n_op or 0)
            s.add_episode(ep, task="T", instruction="t", success=k != 1,
                          source="human" if n_op is None else "rl",
                          extra={"collection": "expert" if n_op is None else "ire/round1_rl/T/rloo"})
        rl = stage2_episodes(s, ["ire/round1_rl/T/rloo"], "operator")
        assert rl == [1, 2] and labelled_steps(s, rl, "operator") == [2, 8]
        assert labelled_steps(s, rl, "successes") == [12, 12]
        shares = {}
        for weighting, counts in (("episode", None), ("step", labelled_steps(s, rl, "operator"))):
            eps, w = stage2_mix([0], rl, 0.5, counts)
            b = next(iter(sft_batches(s, eps, s.spec, batch_size=4000, seed=0, weights=w, intervened_only=rl)))
            ep_of = b["episode_index"].numpy()
            assert abs((ep_of != 0).mean() - 0.5) < 0.04  # the RL share is the same either way
            shares[weighting] = (ep_of == 2).sum() / (ep_of != 0).sum()
        assert abs(shares["episode"] - 0.5) < 0.05 and abs(shares["step"] - 0.8) < 0.05
    with pytest.raises(ValueError, match="stage2_rl_weighting"):
        check_stage2_labels("operator", "trajectory")
    with pytest.raises(ValueError, match="rl_steps"):
        stage2_mix([0], [1, 2], 0.5, [0, 0])


def test_stage2_takes_this_jobs_stage1_collections_only():
    """A store shared by iRe-VLA jobs with different stage-1 learners holds each one's rollouts for the same round
    and task; stage 2 of a PPO job must not train on an AWR job's (before, it took both)."""
    from flywheel.distill.ire_vla import stage1_collections

    tasks = ["PandaRig/PegInsert-v0", "PandaRig/LiftCube-Blue-v0"]
    assert stage1_collections(tasks, "ppo", 3) == ["ire/round1_rl/PandaRig/PegInsert-v0/ppo",
                                                   "ire/round2_rl/PandaRig/LiftCube-Blue-v0/ppo"]
    assert stage1_collections(tasks[:1], "awr", 2) == ["ire/round1_rl/PandaRig/PegInsert-v0/iter0",
                                                       "ire/round1_rl/PandaRig/PegInsert-v0/iter1"]


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


def test_latent_cache_reads_the_steps_through_the_loader(store, tmp_path):
    """Stage 1's latent cache: every step in order, with the chunk and padding of the former per-episode slicing."""
    from flywheel.distill.ire_vla import cache_latents, load_cache
    from policy.normalize import Normalizer

    class Fake:  # features: a frame's mean as its hidden state, ee_pos as its proprio
        spec = store.spec
        normalizer = Normalizer({"action": {"mean": [0.1] * 7, "std": [2.0] * 7}}, {"proprio": 8, "actions": 7})

        def features(self, b):
            n = len(b["state/ee_pos"])
            hidden = torch.as_tensor(b["images/wrist"]).float().mean((1, 2, 3)).view(n, 1, 1).repeat(1, 2, 4)
            return {"hidden": hidden, "mask": torch.ones(n, 2, dtype=torch.bool),
                    "proprio": torch.as_tensor(b["state/ee_pos"])}

    cache_latents(Fake(), store, [2, 0], tmp_path, batch=2)
    h = store.spec.action.chunk_horizon
    for e in (2, 0):
        r, z = store.record(e), np.load(tmp_path / f"{e:06d}.npz")
        np.testing.assert_array_equal(z["proprio"], store.read("state/ee_pos", r.start, r.end))
        frames = store.read("images/wrist", r.start, r.end).astype(np.float32).mean((1, 2, 3))
        np.testing.assert_allclose(z["hidden"][:, 0, 0], frames, rtol=1e-6)
        raw = np.arange(r.length)[:, None] + np.arange(h)[None]
        acts = store.read("action", r.start, r.end)[np.minimum(raw, r.length - 1)]
        np.testing.assert_allclose(z["actions"], (acts - 0.1) / 2.0, rtol=1e-6)
        np.testing.assert_array_equal(z["is_pad"], raw >= r.length)
    data = load_cache(tmp_path, [0, 2], discount=0.9)
    assert len(data["ret"]) == store.record(0).length + store.record(2).length
