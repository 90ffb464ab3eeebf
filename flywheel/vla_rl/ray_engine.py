"""The rollout engine's waves on a pool of Ray workers (``RolloutEngine(..., cluster=kind=ray)``).

A wave (:class:`flywheel.vla_rl.engine.Wave`) is deterministic on its own: its envs reset with its
seeds and its sampling noise comes from a generator seeded by the wave itself. So the pool:

* starts ``cluster.workers`` Ray actors (:class:`WaveWorker`), each with its own vector env per
  task (``num_envs`` envs, made on first use from the engine's picklable ``make_vec``) and its
  own copy of the policy (the module, put in the object store once, read by reference);
* broadcasts the policy's weights once per ``collect`` (one ``ray.put`` of the CPU state dict;
  a worker loads them when their version is new to it);
* hands out one wave at a time to whichever worker is free and returns the results in wave
  order, so the engine assembles the serial run's :class:`RolloutBatch` exactly;
* replaces a worker that dies and re-runs its wave (a result is kept once, by the wave's
  index), up to ``cluster.max_worker_restarts`` replacements over the pool's life.

The workers compute on CPU with one torch thread. Recording to the episode store stays on the
driver: a wave brings its episodes' traces back. Nothing here imports Ray until :meth:`connect`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from flywheel.cluster import ClusterConfig, RayWorkerPool, connect_ray
from flywheel.vla_rl.engine import Wave, WaveResult, run_wave


def cpu_state(policy: Any) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}


class WaveWorker:
    """One worker: a vector env per task and a copy of the policy; runs waves."""

    def __init__(self, policy: Any, make_vec: Callable[[str, int], Any], num_envs: int, exec_horizon: int,
                 max_steps: int | None) -> None:
        import os

        import torch

        torch.set_num_threads(1)
        self.pid = os.getpid()
        self.policy, self.make_vec = policy, make_vec
        self.num_envs, self.exec_horizon, self.max_steps = int(num_envs), int(exec_horizon), max_steps
        self.version = -1
        self._vecs: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "version": self.version}

    def run(self, version: int, weights: list, wave: Wave, record: bool) -> WaveResult:
        """``weights``: [an object ref of the state dict] (in a list, so Ray passes the reference and
        this worker fetches the weights only when ``version`` is new to it)."""
        if version != self.version:
            import ray

            self.policy.load_state_dict(ray.get(weights[0]))
            self.version = version
        if wave.task not in self._vecs:
            self._vecs[wave.task] = self.make_vec(wave.task, self.num_envs)
        return run_wave(self.policy, self._vecs[wave.task], wave, exec_horizon=self.exec_horizon,
                        max_steps=self.max_steps, record=record)

    def close(self) -> None:
        for v in self._vecs.values():
            v.close()
        self._vecs.clear()


class RayWavePool(RayWorkerPool):
    """A pool of :class:`WaveWorker` Ray actors: one wave a job."""

    def __init__(self, policy: Any, make_vec: Callable[[str, int], Any], cluster: ClusterConfig, *, num_envs: int,
                 exec_horizon: int, max_steps: int | None) -> None:
        super().__init__(cluster)
        self.policy, self.make_vec = policy, make_vec
        self.num_envs, self.exec_horizon, self.max_steps = num_envs, exec_horizon, max_steps
        self.version = 0
        self._policy_ref: Any = None
        self._actor: Any = None
        self.on_wave: Callable[[RayWavePool, int], None] | None = None

    def connect(self) -> RayWavePool:
        self._ray, self._own = connect_ray(self.cluster)
        pol = self.policy
        if any(p.device.type != "cpu" for p in pol.parameters()):
            pol = copy.deepcopy(pol).to("cpu")
        self._policy_ref = self._ray.put(pol)
        self._actor = self._ray.remote(num_cpus=1, max_restarts=0)(WaveWorker)
        self.workers = [self._spawn() for _ in range(int(self.cluster.workers))]
        return self

    def _spawn(self) -> Any:
        return self._actor.remote(self._policy_ref, self.make_vec, self.num_envs, self.exec_horizon, self.max_steps)

    def run(self, waves: Sequence[Wave], policy: Any, *, record: bool = False) -> list[WaveResult]:
        """Every wave once, under ``policy``'s current weights; the results in wave order.
        :attr:`on_wave` ``(pool, index)`` is called as each wave's result arrives."""
        if self._ray is None:
            raise RuntimeError("RayWavePool: call connect() first")
        self.version += 1
        version, weights = self.version, [self._ray.put(cpu_state(policy))]  # once per call; read by reference
        results: dict[int, WaveResult] = {}

        def accept(i: int, k: int, res: WaveResult) -> None:
            results[k] = res
            if self.on_wave is not None:
                self.on_wave(self, k)

        self._dispatch(range(len(waves)), lambda w, k: w.run.remote(version, weights, waves[k], record), accept,
                       describe=lambda k: f"wave {k} ({waves[k].task})")
        return [results[k] for k in range(len(waves))]
