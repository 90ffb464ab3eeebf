"""Collection: every rollout in the store tagged by source, resumable by seed, successes selectable."""

import numpy as np
import pytest

from flywheel.data import EpisodeStore
from flywheel.distill import collect


class _Agent:
    """Acts from the privileged state only (like a state-based specialist)."""

    def __init__(self):
        self.seen_privileged = False

    def reset(self):
        pass

    def act(self, obs):
        self.seen_privileged |= "state/privileged" in obs
        return np.zeros(7, np.float32)


@pytest.fixture
def env():
    e = collect.make_env("PandaRig/PegInsert-v0", cameras=("wrist",), image_size=16, privileged_state=True,
                         max_episode_steps=3)
    yield e
    e.close()


def test_rollouts_keep_images_not_privileged_state_and_resume(tmp_path, env):
    store = EpisodeStore(tmp_path / "s", "a", spec=env.unwrapped.rig_spec)
    agent = _Agent()
    st = collect.record_rollouts(store, env, agent, [0, 1], source="rl", collection="c1", progress=False)
    assert st.episodes == 2 and st.skipped == 0 and agent.seen_privileged
    assert "state/privileged" not in store.keys and "images/wrist" in store.keys
    rec = store.record(0)
    assert rec.source == "rl" and rec.task == "PandaRig/PegInsert-v0" and rec.extra == {"collection": "c1", "seed": 0}
    assert rec.length == 3 and rec.success is False
    assert store.read("images/wrist", rec.start, rec.end).shape == (3, 16, 16, 3)
    # re-running the same collection skips the recorded seeds
    st2 = collect.record_rollouts(store, env, agent, [0, 1, 2], source="rl", collection="c1", progress=False)
    assert st2.skipped == 2 and st2.episodes == 1 and store.num_episodes == 3
    assert st2.skipped_successes == 0 and st2.success_rate_all == 0.0  # the zero-action agent never succeeds
    assert collect.recorded_seeds(store, "c1") == {0, 1, 2}
    store.close()


def test_select_filters_source_success_and_collection(tmp_path, env):
    store = EpisodeStore(tmp_path / "s", "a", spec=env.unwrapped.rig_spec)
    collect.record_rollouts(store, env, collect.ExpertAgent(env, noise=0.0), [0], source="human", collection="h",
                            progress=False)
    collect.record_rollouts(store, env, _Agent(), [0], source="rl", collection="r", progress=False)
    assert collect.select(store, source="rl") == []  # the zero-action agent did not succeed in 3 steps
    assert collect.select(store, source="rl", success=None) == [1]
    assert collect.select(store, collection="h", success=None) == [0]
    assert collect.select(store, task="PandaRig/LiftCube-Red-v0", success=None) == []
    store.close()


def test_intervened_steps_are_flagged(tmp_path, env):
    class AlwaysIntervene:
        def reset(self):
            pass

        def step(self, obs, action):
            return np.full(7, 0.5, np.float32), True

    store = EpisodeStore(tmp_path / "s", "a", spec=env.unwrapped.rig_spec)
    st = collect.record_rollouts(store, env, _Agent(), [5], source="policy", collection="p",
                                 intervener=AlwaysIntervene(), progress=False)
    r = store.record(0)
    assert st.intervened_steps == 3
    assert store.read("intervention", r.start, r.end).all()
    np.testing.assert_allclose(store.read("action", r.start, r.end), 0.5)
    store.close()


def test_operator_noise_follows_the_episode_seed_and_the_operators_own_seed(env):
    def actions(agent_seed: int, episode_seed: int) -> np.ndarray:
        agent = collect.ExpertAgent(env, noise=1.0, seed=agent_seed)
        agent.seed_episode(episode_seed)
        obs, _ = env.reset(seed=episode_seed)
        agent.reset()
        return np.stack([agent.act(obs) for _ in range(4)])

    np.testing.assert_array_equal(actions(0, 5), actions(0, 5))  # an episode is its seeds' alone (resume, Ray)
    np.testing.assert_array_equal(actions(7, 5), actions(7, 5))
    assert not np.array_equal(actions(0, 5), actions(7, 5))  # another operator seed: other demos
    assert not np.array_equal(actions(0, 5), actions(0, 6))


def test_a_reused_collection_reports_its_recorded_successes(env):
    # every requested seed was recorded earlier (a resumed or copied run): nothing is rolled out, and the stats
    # say how the recorded episodes of exactly those seeds went
    from types import SimpleNamespace

    from flywheel.data.store_layout import EpisodeRecord

    recs = [EpisodeRecord(index=i, success=ok, extra={"collection": c, "seed": seed})
            for i, (c, seed, ok) in enumerate([("c1", 0, True), ("c1", 1, False), ("c1", 5, True), ("c2", 1, True)])]
    store = SimpleNamespace(records=recs, spec=env.unwrapped.rig_spec)
    st = collect.record_rollouts(store, env, _Agent(), [0, 1], source="rl", collection="c1", progress=False)
    assert (st.episodes, st.skipped, st.skipped_successes) == (0, 2, 1)
    assert st.success_rate == 0.0 and st.success_rate_all == 0.5
