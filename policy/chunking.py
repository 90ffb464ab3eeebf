"""Asynchronous action-chunk scheduling: execute one chunk while the next is computed.

Time is counted in control ticks (integers at ``control_hz``). A chunk predicted
from the observation of tick ``t_obs`` holds the actions for ticks ``t_obs,
t_obs + 1, ...``. When it arrives at tick ``now`` (inference took ``now -
t_obs`` ticks), :meth:`ChunkScheduler.add` *aligns* it: the actions for ticks
that have already passed are dropped. Over the ticks where the current plan
and the new chunk overlap, the two are *blended*, the weight moving linearly
from the old plan to the new one over ``blend_steps`` ticks, so a boundary
never jumps by more than ``|new - old| / (n + 1)`` plus the plan's own change
per tick, with ``n = min(blend_steps, overlap)``. After the overlap, the new chunk alone is executed.

:meth:`next_action` pops the action for a tick, or returns None when the plan
has run out (a missed tick: the caller sends nothing, the robot holds).
:meth:`should_request` says when to start the next inference so that its result
arrives before the plan runs out.

Pure Python + numpy: the ROS policy node and the sim benchmark share it.
"""

from __future__ import annotations

import numpy as np


class ChunkScheduler:
    """The plan of future actions, one per control tick."""

    def __init__(self, action_dim: int = 7, *, blend_steps: int = 3, max_delay: int | None = None,
                 switch_dims: tuple[int, ...] = (6,)) -> None:
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0, got {blend_steps}")
        self.action_dim = action_dim
        self.blend_steps = blend_steps
        # dimensions taken from the new chunk at once, never blended: the gripper (a half-closed
        # gripper is a failed grasp, not a compromise)
        self.switch_dims = tuple(d for d in switch_dims if d < action_dim)
        self.max_delay = max_delay  # chunks older than this many ticks are refused
        self._start = 0  # tick of self._plan[0]
        self._plan = np.zeros((0, action_dim), np.float32)
        self.chunks_added = 0
        self.chunks_refused = 0
        self.missed_ticks = 0
        self.executed_ticks = 0
        self.last_action: np.ndarray | None = None
        self.max_jump = 0.0  # largest |a_t - a_{t-1}| (inf-norm) between consecutive executed actions
        self._history: dict[int, np.ndarray] = {}  # executed actions of the last ticks, by tick

    # --------------------------------------------------------------- state
    def remaining(self, now: int) -> int:
        """Planned actions left from tick ``now`` on."""
        return max(0, self._start + len(self._plan) - now)

    def plan(self, now: int) -> np.ndarray:
        """The actions planned for ticks ``now, now + 1, ...`` (a copy)."""
        return self._plan[max(0, now - self._start):].copy()

    def committed(self, obs_tick: int, now: int, ahead: int) -> np.ndarray:
        """The actions a chunk observed at ``obs_tick`` and arriving ``ahead`` ticks after ``now`` cannot
        change: those executed since ``obs_tick`` plus the next ``ahead`` planned ones (the prefix
        for real-time chunking; stops at the first gap)."""
        out = []
        for t in range(obs_tick, now):
            if t not in self._history:
                return np.asarray(out, np.float32).reshape(-1, self.action_dim)
            out.append(self._history[t])
        out.extend(self.plan(now)[:ahead])
        return np.asarray(out, np.float32).reshape(-1, self.action_dim)

    def should_request(self, now: int, expected_delay: int) -> bool:
        """True when a chunk requested now would arrive with ``max(blend_steps, 1)`` planned actions left
        (enough to blend over, and no missed tick)."""
        return self.remaining(now) <= expected_delay + max(self.blend_steps, 1)

    def reset(self) -> None:
        self._start, self._plan = 0, np.zeros((0, self.action_dim), np.float32)
        self.last_action = None
        self._history.clear()

    # ------------------------------------------------------------- updates
    def add(self, chunk: np.ndarray, obs_tick: int, now: int) -> bool:
        """Merge a chunk predicted from the observation of ``obs_tick``, arriving at tick ``now``.

        Returns False (and changes nothing) when the chunk is stale: older than
        ``max_delay`` ticks, or with no action left for tick ``now``.
        """
        chunk = np.asarray(chunk, np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk must have shape (H, {self.action_dim}), got {chunk.shape}")
        delay = now - obs_tick
        if delay < 0:
            raise ValueError(f"chunk from tick {obs_tick} arrives before it was observed (now={now})")
        if (self.max_delay is not None and delay > self.max_delay) or delay >= len(chunk):
            self.chunks_refused += 1
            return False
        new = chunk[delay:]
        old = self.plan(now)
        n = min(len(old), len(new), self.blend_steps)
        merged = new.copy()
        if n:
            w = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None]
            merged[:n] = (1.0 - w) * old[:n] + w * new[:n]
            merged[:n, self.switch_dims] = new[:n, self.switch_dims]
        self._start, self._plan = now, merged
        self.chunks_added += 1
        return True

    def next_action(self, now: int) -> np.ndarray | None:
        """The action for tick ``now`` (None: nothing planned, a missed tick)."""
        i = now - self._start
        if i < 0 or i >= len(self._plan):
            self.missed_ticks += 1
            return None
        a = self._plan[i].copy()
        if self.last_action is not None:
            self.max_jump = max(self.max_jump, float(np.max(np.abs(a - self.last_action))))
        self.last_action = a
        self.executed_ticks += 1
        self._history[now] = a
        self._history.pop(now - 64, None)
        return a
