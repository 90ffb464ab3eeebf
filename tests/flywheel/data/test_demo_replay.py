"""A stored demo means what the env does: its actions, replayed open loop on its seed, retrace it.

The first compact G0 was trained on demos recorded before the sim ran the safety filter; replayed in
today's env they drifted 50-69 mm and never succeeded (docs/bench/generalist.md). This check catches
any such drift between the recorder and the env (action semantics, filter, controller, task resets).
"""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.data import EpisodeStore
from flywheel.distill.collect import ExpertAgent, make_env, record_rollouts


def replay_deviation(store: EpisodeStore, index: int, env) -> tuple[float, bool]:
    """Max end-effector distance (m) between a stored episode and its open-loop replay; replay success."""
    r = store.record(index)
    actions = store.read("action", r.start, r.end)
    recorded = store.read("state/ee_pos", r.start, r.end)
    obs, _ = env.reset(seed=int(r.extra["seed"]))
    dev, success = 0.0, False
    for t, a in enumerate(actions):
        dev = max(dev, float(np.abs(obs["state/ee_pos"] - recorded[t]).max()))
        obs, _, _, _, info = env.step(a)
        success |= bool(info["is_success"])
    return dev, success


@pytest.mark.parametrize("task", ["PandaRig/LiftCube-Red-v0", "PandaRig/PushCube-Blue-v0"])
def test_stored_demo_actions_replay_to_the_same_trajectory(tmp_path, task):
    env = make_env(task, cameras=(), image_size=32, privileged_state=True)
    store = EpisodeStore(tmp_path / "s", mode="a", spec=env.unwrapped.rig_spec)
    try:
        st = record_rollouts(store, env, ExpertAgent(env, noise=1.0, seed=0), range(3), source="human",
                             collection="demo", progress=False)
        assert st.episodes == 3
        replay_env = make_env(task, cameras=(), image_size=32, privileged_state=True)
        try:
            for i in range(store.num_episodes):
                dev, success = replay_deviation(store, i, replay_env)
                assert dev < 1e-5, f"episode {i}: replay drifts {dev * 1e3:.2f} mm"
                assert success == store.record(i).success
        finally:
            replay_env.close()
    finally:
        store.close()
        env.close()
