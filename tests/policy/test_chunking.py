"""The chunk scheduler: alignment to elapsed ticks, blending at boundaries, missed ticks, stale chunks."""

from __future__ import annotations

import numpy as np
import pytest

from policy.chunking import ChunkScheduler


def ramp(start_tick: int, h: int, offset: float = 0.0, slope: float = 0.01) -> np.ndarray:
    """A chunk whose action for tick t is slope * t + offset (every dimension)."""
    t = np.arange(start_tick, start_tick + h, dtype=np.float32)
    return np.repeat((slope * t + offset)[:, None], 7, axis=1)


def test_alignment_drops_the_ticks_that_passed():
    s = ChunkScheduler(blend_steps=0)
    assert s.add(ramp(0, 8), obs_tick=0, now=3)
    a = s.next_action(3)
    np.testing.assert_allclose(a, ramp(3, 1)[0])  # action meant for tick 3, not the chunk's first
    assert s.remaining(4) == 4


def test_blending_bounds_the_jump_at_chunk_boundaries():
    h, delay, blend, offset, slope = 8, 2, 3, 0.4, 0.01
    jumps = {}
    for b in (0, blend):
        s = ChunkScheduler(blend_steps=b, switch_dims=())
        s.add(ramp(0, h), obs_tick=0, now=0)
        now, k = 0, 0
        pending = None
        for now in range(60):
            if pending is None and s.should_request(now, delay):
                k += 1
                pending = (now, ramp(now, h, offset=offset * (k % 2)))  # every other chunk is offset
            if pending is not None and now - pending[0] == delay:
                assert s.add(pending[1], obs_tick=pending[0], now=now)
                pending = None
            assert s.next_action(now) is not None
        jumps[b] = s.max_jump
        assert s.missed_ticks == 0
    assert jumps[0] == pytest.approx(offset + slope, abs=1e-5)  # no blending: the full disagreement
    assert jumps[blend] <= offset / (blend + 1) + slope + 1e-5
    assert jumps[blend] < jumps[0] / 2


def test_plan_running_out_is_a_missed_tick():
    s = ChunkScheduler()
    s.add(ramp(0, 4), obs_tick=0, now=0)
    assert all(s.next_action(t) is not None for t in range(4))
    assert s.next_action(4) is None
    assert s.missed_ticks == 1 and s.executed_ticks == 4


def test_stale_chunks_are_refused_and_change_nothing():
    s = ChunkScheduler(max_delay=3)
    s.add(ramp(0, 8), obs_tick=0, now=0)
    before = s.plan(1)
    assert not s.add(ramp(0, 8, offset=1.0), obs_tick=1, now=5)  # 4 ticks old
    assert not s.add(ramp(0, 2, offset=1.0), obs_tick=4, now=6)  # nothing left for tick 6
    np.testing.assert_array_equal(s.plan(1), before)
    assert s.chunks_refused == 2
    with pytest.raises(ValueError, match="shape"):
        s.add(np.zeros((8, 6), np.float32), obs_tick=0, now=0)
    with pytest.raises(ValueError, match="before it was observed"):
        s.add(ramp(0, 8), obs_tick=5, now=4)


def test_gripper_switches_to_the_new_chunk_without_blending():
    s = ChunkScheduler(blend_steps=3)
    old = np.zeros((8, 7), np.float32)
    old[:, 6] = 1.0  # open
    s.add(old, obs_tick=0, now=0)
    s.next_action(0)
    new = np.ones((8, 7), np.float32)
    new[:, 6] = -1.0  # close
    s.add(new, obs_tick=0, now=1)
    a = s.next_action(1)
    assert a[6] == -1.0  # a half-closed gripper would be a failed grasp
    assert 0.0 < a[0] < 1.0  # the arm is blended


def test_committed_prefix_is_what_executes_while_the_next_chunk_is_computed():
    s = ChunkScheduler(blend_steps=0)
    s.add(ramp(0, 8), obs_tick=0, now=0)
    executed = [s.next_action(t) for t in range(3)]
    pre = s.committed(obs_tick=1, now=3, ahead=2)  # observed at tick 1, 2 more ticks of inference
    np.testing.assert_array_equal(pre, np.stack([executed[1], executed[2], *ramp(3, 2)]))
    assert s.committed(obs_tick=1, now=3, ahead=0).shape == (2, 7)
    s.reset()
    assert s.committed(obs_tick=1, now=3, ahead=2).shape == (0, 7)  # nothing known after a reset
