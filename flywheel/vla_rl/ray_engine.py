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

import collections
import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

from flywheel.cluster import ClusterConfig, connect_ray
from flywheel.vla_rl.engine import Wave, WaveResult, run_wave

log = logging.getLogger(__name__)


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


class RayWavePool:
    """A pool of :class:`WaveWorker` Ray actors with a connect/close life cycle."""

    def __init__(self, policy: Any, make_vec: Callable[[str, int], Any], cluster: ClusterConfig, *, num_envs: int,
                 exec_horizon: int, max_steps: int | None) -> None:
        cluster.validate()
        self.policy, self.make_vec, self.cluster = policy, make_vec, cluster
        self.num_envs, self.exec_horizon, self.max_steps = num_envs, exec_horizon, max_steps
        self.workers: list[Any] = []
        self.replaced = 0
        self.version = 0
        self._ray: Any = None
        self._own = False
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

    def __enter__(self) -> RayWavePool:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, waves: Sequence[Wave], policy: Any, *, record: bool = False) -> list[WaveResult]:
        """Every wave once, under ``policy``'s current weights; the results in wave order.
        :attr:`on_wave` ``(pool, index)`` is called as each wave's result arrives."""
        if self._ray is None:
            raise RuntimeError("RayWavePool: call connect() first")
        ray = self._ray
        from ray.exceptions import RayActorError

        self.version += 1
        weights = [ray.put(cpu_state(policy))]  # once per call; workers read it by reference
        queue = collections.deque(range(len(waves)))
        results: dict[int, WaveResult] = {}
        inflight: dict[Any, tuple[int, int]] = {}

        def submit(i: int) -> None:
            while queue:
                k = queue.popleft()
                if k not in results:
                    inflight[self.workers[i].run.remote(self.version, weights, waves[k], record)] = (i, k)
                    return

        for i in range(len(self.workers)):
            submit(i)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            i, k = inflight.pop(done[0])
            try:
                res = ray.get(done[0])
            except RayActorError as e:
                self.replaced += 1
                if self.replaced > int(self.cluster.max_worker_restarts):
                    raise RuntimeError(f"{self.replaced} Ray workers died (cluster.max_worker_restarts="
                                       f"{self.cluster.max_worker_restarts}); last wave {waves[k]}: {e}") from e
                log.warning("Ray worker %d died on wave %d (%s): replaced, the wave re-runs", i, k, waves[k].task)
                self.workers[i] = self._spawn()
                queue.appendleft(k)
                submit(i)
                continue
            if k not in results:
                results[k] = res
                if self.on_wave is not None:
                    self.on_wave(self, k)
            submit(i)
        return [results[k] for k in range(len(waves))]

    def close(self) -> None:
        if self._ray is None:
            return
        for w in self.workers:
            try:
                self._ray.kill(w)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.workers = []
        if self._own:
            self._ray.shutdown()
        self._ray = None
