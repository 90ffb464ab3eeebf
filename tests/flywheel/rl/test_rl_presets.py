"""Every ``rl_task`` preset reads its own env's state: the keys exist and each state delta is what it says."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from flywheel.rl.app import TASK_PRESETS
from flywheel.rl.encoders import obs_shapes_of, observation_layout, parse_state_deltas
from flywheel.rl.sac import SACConfig

# what each preset's deltas must equal, from the task's own scene state
EXPECTED = {
    "peg_insert": lambda t: [t.hole_pos() - t.peg_bottom()],  # the peg's bottom, not its centre
    "lift_cube": lambda t: [t.body_pos("target_cube") - t.rig.ee_pos],
    "place_cube": lambda t: [t.body_pos("target_cube") - t.rig.ee_pos, t.goal_pos() - t.body_pos("target_cube")],
}


@pytest.mark.parametrize("name", sorted(TASK_PRESETS))
def test_each_preset_reads_its_tasks_state(name):
    assert name in EXPECTED, f"add the meaning of preset {name!r}'s state deltas to EXPECTED"
    preset = TASK_PRESETS[name]
    env = sim.make(f"PandaRig/{preset['env']['task']}-v0", privileged_state=True)
    try:
        obs, _ = env.reset(seed=3)
        cfg = SACConfig(**preset["agent"])
        shapes = obs_shapes_of(obs)
        keys, images = observation_layout(shapes, cfg)
        assert images == []  # state-only specialists
        state = np.concatenate([np.asarray(obs[k], np.float64).ravel() for k in keys])
        deltas = parse_state_deltas(list(cfg.state_deltas), keys, shapes)
        got = [state[a] - state[b] for a, b in deltas]
        want = EXPECTED[name](env.unwrapped.task)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, np.asarray(w)[: len(g)], atol=1e-4)
    finally:
        env.close()
