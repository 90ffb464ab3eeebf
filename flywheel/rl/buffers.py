"""Replay buffers for HIL-SERL: fixed-size numpy rings, RLPD sampling, intervention routing.

A transition is a flat dict of numpy arrays: ``obs/<key>`` and ``next_obs/<key>``
for each observation key the agent reads, ``action`` (the 7-d spec action that
was executed), ``grip`` (the discrete gripper action, see :mod:`flywheel.rl.actions`),
``reward``, ``terminated`` (a true terminal, not a time limit) and
``intervened`` (the operator had control). Batches of transitions use the same
keys with a leading batch axis.

Buffers save to and load from ``.npz`` with ``allow_pickle=False``: nothing is
ever unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SCALAR_FIELDS: dict[str, tuple[tuple[int, ...], str]] = {
    "action": ((7,), "float32"),
    "grip": ((), "int64"),
    "reward": ((), "float32"),
    "terminated": ((), "bool"),
    "intervened": ((), "bool"),
}


def transition_layout(obs_shapes: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple]:
    """Every field of a transition -> (shape, dtype), given the observation keys kept."""
    layout: dict[str, tuple] = {}
    for k, (shape, dtype) in obs_shapes.items():
        layout[f"obs/{k}"] = (tuple(shape), str(dtype))
        layout[f"next_obs/{k}"] = (tuple(shape), str(dtype))
    layout.update(SCALAR_FIELDS)
    return layout


class ReplayBuffer:
    """A ring buffer of transitions (oldest overwritten once ``capacity`` is reached)."""

    def __init__(self, capacity: int, obs_shapes: Mapping[str, tuple[tuple[int, ...], str]]):
        if capacity <= 0:
            raise ValueError(f"capacity={capacity}: give a positive number of transitions")
        self.capacity = int(capacity)
        self.obs_shapes = {k: (tuple(s), str(d)) for k, (s, d) in obs_shapes.items()}
        self.layout = transition_layout(self.obs_shapes)
        self.data = {k: np.zeros((self.capacity, *s), dtype=d) for k, (s, d) in self.layout.items()}
        self.size = 0
        self.ptr = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self.size

    def add_batch(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append ``n`` transitions (each field with a leading axis of length n)."""
        missing = [k for k in self.layout if k not in batch]
        if missing:
            raise KeyError(f"transition batch misses fields {missing} (has {sorted(batch)})")
        n = int(np.asarray(batch["reward"]).shape[0])
        for k, (shape, _) in self.layout.items():
            got = np.asarray(batch[k]).shape
            if got != (n, *shape):
                raise ValueError(f"transition field {k!r}: expected shape {(n, *shape)}, got {got}")
        if n == 0:
            return
        idx = (self.ptr + np.arange(n)) % self.capacity
        for k in self.layout:
            self.data[k][idx] = np.asarray(batch[k])
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))
        self.total_added += n

    def add(self, transition: Mapping[str, np.ndarray]) -> None:
        self.add_batch({k: np.asarray(v)[None] for k, v in transition.items()})

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=n)
        return {k: v[idx] for k, v in self.data.items()}

    # ---------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the filled part to ``path`` (.npz), atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {f"data/{k}": v[: self.size] for k, v in self.data.items()}
        meta = np.array([self.capacity, self.size, self.ptr, self.total_added], np.int64)
        np.savez(tmp, __meta__=meta, **arrays)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Restore what :meth:`save` wrote (the layout must match)."""
        with np.load(path, allow_pickle=False) as z:
            capacity, size, ptr, total = (int(x) for x in z["__meta__"])
            keys = {k[len("data/"):] for k in z.files if k.startswith("data/")}
            if keys != set(self.layout):
                raise ValueError(
                    f"{path}: buffer fields {sorted(keys)} do not match this agent's {sorted(self.layout)}"
                )
            if capacity != self.capacity:
                raise ValueError(f"{path}: saved capacity {capacity} != configured {self.capacity}")
            for k in self.layout:
                self.data[k][:size] = z[f"data/{k}"]
        self.size, self.ptr, self.total_added = size, ptr, total


def rlpd_batch(
    demo: ReplayBuffer, online: ReplayBuffer, batch_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """RLPD symmetric sampling: half the batch from the demo buffer, half from the online buffer.

    While one buffer is empty the whole batch comes from the other. The first half
    of the returned batch is the demo part.
    """
    if len(demo) == 0 and len(online) == 0:
        raise ValueError("both replay buffers are empty: add demos or collect transitions first")
    if len(demo) == 0:
        return online.sample(batch_size, rng)
    if len(online) == 0:
        return demo.sample(batch_size, rng)
    n_demo = batch_size // 2
    a, b = demo.sample(n_demo, rng), online.sample(batch_size - n_demo, rng)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def route_transitions(batch: Mapping[str, np.ndarray], demo: ReplayBuffer, online: ReplayBuffer) -> int:
    """HIL-SERL routing: every transition goes to the online buffer; intervened ones to the demo buffer too.

    Returns the number of intervened transitions.
    """
    online.add_batch(batch)
    mask = np.asarray(batch["intervened"], bool)
    if mask.any():
        demo.add_batch({k: np.asarray(v)[mask] for k, v in batch.items()})
    return int(mask.sum())


def stack_transitions(transitions: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A list of single transitions -> one batch."""
    if not transitions:
        raise ValueError("no transitions to stack")
    return {k: np.stack([np.asarray(t[k]) for t in transitions]) for k in transitions[0]}


def episodes_to_transitions(
    episodes: list[Any], obs_keys: list[str], initial_gripper: float = 1.0
) -> dict[str, np.ndarray]:
    """Recorded episodes (episode-store ``Episode`` objects or dicts of (T, ...) arrays) -> transitions.

    Each step t gives (obs_t, action_t, reward_t, obs_{t+1}); the last step of a
    successful episode is terminal. Demos count as intervened (they join the demo buffer).
    """
    from flywheel.rl.actions import gripper_label

    out: list[dict[str, np.ndarray]] = []
    for ep in episodes:
        missing = [k for k in [*obs_keys, "action"] if k not in ep.keys()]
        if missing:
            raise KeyError(f"a recorded episode misses {missing}; record them or change the agent's keys")
        obs = {k: np.asarray(ep[k]) for k in obs_keys}
        act = np.asarray(ep["action"], np.float32)
        n = len(act)
        if n < 2:
            continue
        rew = np.asarray(ep["reward"], np.float32) if "reward" in ep.keys() else np.zeros(n, np.float32)
        success = bool(getattr(getattr(ep, "record", None), "success", rew[-1] > 0))
        prev = initial_gripper
        for t in range(n - 1):
            last = t == n - 2
            tr = {f"obs/{k}": obs[k][t] for k in obs_keys}
            tr.update({f"next_obs/{k}": obs[k][t + 1] for k in obs_keys})
            r = float(rew[t + 1] > 0) if not last else float(success)
            tr.update(action=np.clip(act[t], -1, 1), grip=np.int64(gripper_label(act[t][6], prev)),
                      reward=np.float32(r), terminated=np.bool_(last and success), intervened=np.bool_(True))
            prev = float(act[t][6])
            out.append(tr)
    return stack_transitions(out)
