"""Rollouts on a pool of Ray workers: ``cluster=local|ray`` for evaluation and collection.

Evaluation is embarrassingly parallel: every episode is a (task, seed) pair, and
its randomness derives from its seed alone (:func:`run_seeded`: the env resets
with the seed, the agent's own random stream is re-seeded from it), so an
episode's result does not depend on which process ran it, nor on the episodes
before it. The pool:

* starts ``workers`` Ray actors (:class:`EpisodeWorker`), each with its own sim
  env per task and its own copy of the policy; the checkpoint's files are put
  in the object store once and every worker reads them by reference;
* hands out one (task, seed) job at a time to whichever worker is free, so the
  results, gathered by (task, seed), equal the serial run's episode by episode;
* replaces a worker that dies (its job goes back to the queue and re-runs;
  a result is counted once, by its (task, seed) key), up to
  ``max_worker_restarts`` replacements per run;
* shows one progress bar across the workers.

Collection (:func:`flywheel.distill.collect.record_rollouts` with ``pool=``) runs on
the same pool: each worker rolls whole episodes and sends them back (the spec
observations, actions, rewards, intervention flags, success); the driver, the
store's one writer, commits them in seed order (:func:`collect_on_pool`), so the
store holds what the serial run would have written. A worker rebuilds the agent
from a picklable :class:`PolicySource`: the scripted operator, a policy checkpoint
(its files broadcast through the object store) or a distillation specialist (its
``train`` record; its weights are read from the path, so the workers need the
driver's filesystem, as a local cluster has).

``address=""`` starts a local Ray cluster in this process (``num_cpus`` CPUs);
``address=auto`` (or ``ray://host:10001``) joins a running one. Ray is the
optional ``cluster`` extra; nothing here imports it until a pool connects.
The HIL-SERL actor/learner keeps its authenticated ZeroMQ transport: it crosses
the rig's network, where a Ray cluster does not belong.
"""

from __future__ import annotations

import collections
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("local", "ray")


@dataclass
class ClusterConfig:
    """Where rollouts run: ``local`` (this process, serially) or a pool of Ray workers."""

    kind: str = "local"  # local | ray
    address: str = ""  # ray: "" starts a local cluster here; "auto" / "ray://host:10001" joins a running one
    workers: int = 2  # Ray actors, one CPU each
    num_cpus: int = 0  # local cluster only: CPUs it may use (0: Ray counts them)
    max_worker_restarts: int = 4  # dead workers replaced per run before the run fails

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cluster.kind={self.kind!r}: use one of {KINDS}")
        if int(self.workers) < 1:
            raise ValueError(f"cluster.workers={self.workers}: must be >= 1")
        if int(self.num_cpus) < 0:
            raise ValueError(f"cluster.num_cpus={self.num_cpus}: must be >= 0")
        if int(self.max_worker_restarts) < 0:
            raise ValueError(f"cluster.max_worker_restarts={self.max_worker_restarts}: must be >= 0")


@dataclass
class PolicySource:
    """What a worker rebuilds: the env factory and the agent (picklable; no callables)."""

    checkpoint: str = ""  # a policy checkpoint directory; "" or "expert": the scripted operator
    specialist: dict[str, Any] = field(default_factory=dict)  # a distillation specialist's train() record
    expert_noise: float = 0.0
    expert_seed: int = 0  # the scripted operator's own seed, mixed with each episode's (collect.ExpertAgent)
    execute: int = 1  # actions of each chunk executed before re-inferring
    device: str = "cpu"  # the workers' torch device (auto | cpu | cuda)
    env: str = "sim"  # sim (sim.make) | collect (collect.make_env; privileged state if env_kwargs asks)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # cameras, image_size (collect: privileged_state)
    max_steps: int | None = None

    @property
    def kind(self) -> str:
        """expert | checkpoint | specialist"""
        if self.specialist:
            return "specialist"
        return "expert" if self.checkpoint in ("", "expert") else "checkpoint"

    def validate(self) -> None:
        if self.specialist and self.checkpoint not in ("", "expert"):
            raise ValueError(f"PolicySource: checkpoint={self.checkpoint!r} and a specialist: give one of them")


# ------------------------------------------------------------------ one episode per seed
def seed_agent(agent: Any, seed: int) -> None:
    """Re-seed the agent's own random stream from the episode seed (policy sampling noise, expert noise)."""
    if hasattr(agent, "seed_episode"):
        agent.seed_episode(int(seed))
    elif isinstance(getattr(agent, "rng", None), np.random.Generator):
        agent.rng = np.random.default_rng(int(seed))


def run_seeded(env: Any, agent: Any, seeds: Iterable[int], *, max_steps: int | None = None,
               on_episode: Callable[[Any], None] | None = None) -> list[Any]:
    """One :class:`flywheel.rollout.Episode` per seed, each determined by its seed alone."""
    from flywheel.rollout import Rollout

    r = Rollout(env, agent, max_steps=max_steps)
    out = []
    for s in seeds:
        seed_agent(agent, int(s))
        ep = r.run(int(s))
        out.append(ep)
        if on_episode is not None:
            on_episode(ep)
    return out


def episode_record(task: str, ep: Any) -> dict[str, Any]:
    return {"task": task, "seed": int(ep.seed), "success": bool(ep.success), "steps": int(ep.steps),
            "ret": float(ep.ret)}


def make_env(src: PolicySource, task: str) -> Any:
    if src.env == "sim":
        import sim

        kw = dict(src.env_kwargs)
        if "cameras" in kw:
            kw["cameras"] = tuple(kw["cameras"])
        return sim.make(task, **kw)
    if src.env == "collect":
        from flywheel.distill.collect import make_env as collect_env

        return collect_env(task, **{"privileged_state": False, **src.env_kwargs})
    raise ValueError(f"env={src.env!r}: a worker builds sim or collect envs (the rig is not a Ray worker)")


def make_agent(src: PolicySource, pol: Any, env: Any, task: str = "") -> Any:
    if src.kind == "specialist":
        from flywheel.distill.specialist import load_agent

        agent = load_agent(task, src.specialist)
        if hasattr(agent, "bind"):
            agent.bind(env)
        return agent
    if pol is None:
        from flywheel.distill.collect import ExpertAgent

        return ExpertAgent(env, noise=float(src.expert_noise), seed=int(src.expert_seed))
    from flywheel.evaluate import ChunkedPolicy

    return ChunkedPolicy(pol, getattr(env.unwrapped, "instruction", ""), execute=int(src.execute))


# ---------------------------------------------------------------------------- the worker
def checkpoint_files(path: str | Path) -> dict[str, bytes]:
    """Every file of a checkpoint directory (relative path -> bytes): what goes in the object store once."""
    root = Path(path)
    if not (root / "policy_config.json").is_file():
        raise FileNotFoundError(f"checkpoint={str(path)!r} is not a checkpoint directory (no policy_config.json)")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class EpisodeWorker:
    """One worker: its own envs (one per task, made on first use) and its own copy of the policy."""

    def __init__(self, src: PolicySource, files: dict[str, bytes] | None = None):
        import os

        import torch

        torch.set_num_threads(1)
        self.src = src
        self.pid = os.getpid()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.policy = None
        if src.kind == "checkpoint":
            import policy as policy_pkg
            from policy.device import resolve_device

            if files is None:
                ckpt: Path = Path(src.checkpoint)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="flywheel-worker-")
                ckpt = Path(self._tmp.name)
                for rel, data in files.items():
                    (ckpt / rel).parent.mkdir(parents=True, exist_ok=True)
                    (ckpt / rel).write_bytes(data)
            self.policy = policy_pkg.load(ckpt, device=resolve_device(src.device))
        self._envs: dict[str, tuple[Any, Any]] = {}

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid}

    def _env(self, task: str) -> tuple[Any, Any]:
        if task not in self._envs:
            env = make_env(self.src, task)
            self._envs[task] = (env, make_agent(self.src, self.policy, env, task))
        return self._envs[task]

    def run(self, task: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
        env, agent = self._env(task)
        return [episode_record(task, ep) for ep in run_seeded(env, agent, seeds, max_steps=self.src.max_steps)]

    def collect(self, task: str, seeds: Sequence[int], keys: Sequence[str]) -> list[dict[str, Any]]:
        """Whole episodes (:class:`flywheel.distill.collect.RolledEpisode`) for the driver to commit."""
        from flywheel.distill.collect import roll_episode

        env, agent = self._env(task)
        return [{"task": task, "seed": int(s), "episode": roll_episode(env, agent, s, keys,
                                                                       max_steps=self.src.max_steps)}
                for s in seeds]

    def close(self) -> None:
        for env, _ in self._envs.values():
            env.close()
        self._envs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()


# ------------------------------------------------------------------------------ the pool
def connect_ray(cluster: ClusterConfig) -> tuple[Any, bool]:
    """(the ray module, whether this call started Ray: then its closer shuts it down)."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("cluster.kind=ray needs Ray: pip install -e .[cluster]") from e
    if ray.is_initialized():
        return ray, False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cluster.address:
        kw["address"] = cluster.address
    elif cluster.num_cpus:
        kw["num_cpus"] = int(cluster.num_cpus)
    ray.init(**kw)
    return ray, True


class RayWorkerPool:
    """Ray actors that each run one job at a time, with a connect/close life cycle. A worker that dies is
    replaced and its job re-run, up to ``cluster.max_worker_restarts`` replacements over the pool's life;
    every job's result is accepted once. Subclasses start Ray in ``connect`` (:func:`connect_ray`), fill
    :attr:`workers` and say how to start one more (:meth:`_spawn`)."""

    def __init__(self, cluster: ClusterConfig):
        cluster.validate()
        self.cluster = cluster
        self.workers: list[Any] = []
        self.replaced = 0
        self._ray: Any = None
        self._own = False

    def connect(self) -> RayWorkerPool:
        raise NotImplementedError

    def _spawn(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _dispatch(self, jobs: Sequence[Any], call: Callable[[Any, Any], Any], accept: Callable[[int, Any, Any], None],
                  describe: Callable[[Any], str] = str) -> None:
        """Every job of ``jobs`` once (a job listed twice runs once): ``call(worker, job)`` submits it (an object
        ref); ``accept(worker_index, job, result)`` takes its result. ``describe(job)`` names it in messages."""
        if self._ray is None:
            raise RuntimeError(f"{type(self).__name__}: call connect() first")
        ray = self._ray
        from ray.exceptions import RayActorError

        queue = collections.deque(dict.fromkeys(jobs))
        finished: set[Any] = set()
        inflight: dict[Any, tuple[int, Any]] = {}

        def submit(i: int) -> None:
            while queue:
                job = queue.popleft()
                if job not in finished:
                    inflight[call(self.workers[i], job)] = (i, job)
                    return

        for i in range(len(self.workers)):
            submit(i)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            i, job = inflight.pop(done[0])
            try:
                res = ray.get(done[0])
            except RayActorError as e:
                self.replaced += 1
                if self.replaced > int(self.cluster.max_worker_restarts):
                    raise RuntimeError(f"{self.replaced} Ray workers died (cluster.max_worker_restarts="
                                       f"{self.cluster.max_worker_restarts}); last job {describe(job)}: {e}") from e
                log.warning("Ray worker %d died on %s: replaced, it re-runs", i, describe(job))
                self.workers[i] = self._spawn()
                queue.appendleft(job)
                submit(i)
                continue
            if job not in finished:
                finished.add(job)
                accept(i, job, res)
            submit(i)

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


class RayEpisodePool(RayWorkerPool):
    """A pool of :class:`EpisodeWorker` Ray actors: one (task, seed) episode a job."""

    def __init__(self, src: PolicySource, cluster: ClusterConfig):
        super().__init__(cluster)
        src.validate()
        self.src = src
        self._files: Any = None
        self._actor: Any = None

    def connect(self) -> RayEpisodePool:
        self._ray, self._own = connect_ray(self.cluster)
        ray = self._ray
        self._files = ray.put(checkpoint_files(self.src.checkpoint)) if self.src.kind == "checkpoint" else None
        if self.src.kind == "specialist" and self.src.specialist.get("checkpoint"):  # read where the driver is
            info = {**self.src.specialist, "checkpoint": str(Path(self.src.specialist["checkpoint"]).resolve())}
            self.src = replace(self.src, specialist=info)
        self._actor = ray.remote(num_cpus=1, max_restarts=0)(EpisodeWorker)
        self.workers = [self._spawn() for _ in range(int(self.cluster.workers))]
        return self

    def _spawn(self) -> Any:
        return self._actor.remote(self.src, self._files)

    def run(self, jobs: Sequence[tuple[str, int]], *, progress: Any = None,
            on_result: Callable[[RayEpisodePool, dict[str, Any]], None] | None = None,
            method: str = "run", args: tuple = (), keep: bool = True) -> dict[tuple[str, int], Any]:
        """Every (task, seed) job once; returns {(task, seed): episode record}.

        ``method``/``args``: the worker method called as ``method(task, [seed], *args)``
        (``run``: an evaluation record; ``collect``: a whole episode). ``keep=False``
        hands each result to ``on_result`` only (the returned values are None): whole
        episodes are not held here.
        """
        results: dict[tuple[str, int], Any] = {}

        def accept(i: int, job: tuple[str, int], recs: list[dict[str, Any]]) -> None:
            for rec in recs:
                key = (rec["task"], rec["seed"])
                if key in results:
                    continue
                results[key] = rec if keep else None
                if progress is not None:
                    progress.update(1)
                if on_result is not None:
                    on_result(self, rec)

        self._dispatch(jobs, lambda w, job: getattr(w, method).remote(job[0], [job[1]], *args), accept)
        return results


class EvalScalars:
    """TensorBoard scalars of an evaluation, as episodes arrive from any worker (``on_result`` of a pool).

    Per task: ``eval/<task>/success_rate`` and ``eval/<task>/mean_steps`` (running, x = episodes of that
    task done); across the pool: ``eval/episodes_per_min`` and ``eval/workers_replaced`` (x = episodes
    done). :meth:`task_done` writes a finished task's totals (the serial path, which has no pool).
    """

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.t0 = time.perf_counter()
        self.done = 0
        self.per_task: dict[str, list[tuple[bool, int]]] = {}

    def __call__(self, pool: RayEpisodePool | None, rec: dict[str, Any]) -> None:
        task = rec["task"]
        eps = self.per_task.setdefault(task, [])
        eps.append((bool(rec["success"]), int(rec["steps"])))
        self.done += 1
        n = len(eps)
        self.writer.add_scalar(f"eval/{task}/success_rate", sum(e[0] for e in eps) / n, n)
        self.writer.add_scalar(f"eval/{task}/mean_steps", sum(e[1] for e in eps) / n, n)
        minutes = max(time.perf_counter() - self.t0, 1e-9) / 60.0
        self.writer.add_scalar("eval/episodes_per_min", self.done / minutes, self.done)
        if pool is not None:
            self.writer.add_scalar("eval/workers_replaced", pool.replaced, self.done)

    def task_done(self, result: Any) -> None:
        n = int(result.episodes)
        self.writer.add_scalar(f"eval/{result.task}/success_rate", result.rate, n)
        self.writer.add_scalar(f"eval/{result.task}/mean_steps", result.mean_steps, n)

    def close(self) -> None:
        self.writer.close()


def evaluate_tasks(tasks: Sequence[str], src: PolicySource, episodes: int, *, seed: int,
                   cluster: ClusterConfig, progress: bool = True,
                   on_result: Callable[[RayEpisodePool, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """{task: TaskResult} over seeds ``seed .. seed+episodes-1`` per task, on a Ray pool."""
    from tqdm.auto import tqdm

    from flywheel.evaluate import TaskResult

    seeds = list(range(int(seed), int(seed) + int(episodes)))
    jobs = [(t, s) for t in tasks for s in seeds]
    with RayEpisodePool(src, cluster) as pool, \
            tqdm(total=len(jobs), desc=f"eval x{cluster.workers} ray workers", disable=not progress) as bar:
        res = pool.run(jobs, progress=bar, on_result=on_result)
    out = {}
    for t in tasks:
        recs = [res[(t, s)] for s in seeds]
        ok = [r["success"] for r in recs]
        out[t] = TaskResult(t, len(seeds), int(sum(ok)), float(np.mean([r["steps"] for r in recs])),
                            float(np.mean([r["ret"] for r in recs])), seeds, ok)
    return out


def collect_on_pool(pool: RayEpisodePool, task: str, seeds: Sequence[int], keys: Sequence[str],
                    commit: Callable[[Any], None]) -> None:
    """Roll ``seeds`` of ``task`` on the pool; ``commit`` each episode here, in seed order, exactly once.

    An episode that comes back early waits in memory until the seeds before it are
    committed (jobs are handed out in seed order, so a few wait); a seed re-run after
    a worker died is committed once, by its (task, seed) key.
    """
    order = [int(s) for s in dict.fromkeys(seeds)]
    waiting: dict[int, Any] = {}
    nxt = 0

    def arrived(_: RayEpisodePool, rec: dict[str, Any]) -> None:
        nonlocal nxt
        waiting[int(rec["seed"])] = rec["episode"]
        while nxt < len(order) and order[nxt] in waiting:
            commit(waiting.pop(order[nxt]))
            nxt += 1

    pool.run([(task, s) for s in order], on_result=arrived, method="collect", args=(list(keys),), keep=False)
    if nxt != len(order):  # pool.run returns only when every job has come back
        raise RuntimeError(f"collect_on_pool: {len(order) - nxt} of {len(order)} seeds never came back")
