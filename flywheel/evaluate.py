"""`flywheel-eval`: success rate with a confidence interval over N seeded episodes per task.

Runs a policy (a checkpoint directory, or ``expert`` for the scripted operator)
on sim tasks, or on the rig through the ROS env adapter (``env=rig``, :mod:`flywheel.rig_env`:
a reset routine between episodes, ``reset.kind=none|scripted|operator``; success from the
operator's events or ``classifier``). Seeds are ``seed, seed+1, ...`` per task, so two
evaluations with the same seed see the same resets; held-out evaluation uses a seed range
no training job uses (``HELDOUT_SEED``).

    flywheel-eval policy=outputs/ckpt tasks=[PandaRig/LiftCube-Red-v0] episodes=50
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.cluster import ClusterConfig, EvalScalars, PolicySource, evaluate_tasks
from flywheel.rollout import Agent, Step
from flywheel.rollout import run_episodes as _rollouts
from robot.reset import ResetConfig

log = logging.getLogger(__name__)

HELDOUT_SEED = 1_000_000  # evaluation seeds start here; training/collection seeds stay below


ActsOnObs = Agent  # the agent protocol of flywheel.rollout (the name evaluation callers know)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int
    mean_steps: float
    mean_return: float
    seeds: list[int] = field(default_factory=list)
    success_per_episode: list[bool] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci
        return {
            "task": self.task,
            "episodes": self.episodes,
            "successes": self.successes,
            "success_rate": self.rate,
            "ci95": [lo, hi],
            "mean_steps": self.mean_steps,
            "mean_return": self.mean_return,
            "seeds": self.seeds,
            "success_per_episode": self.success_per_episode,
        }


class ChunkedPolicy:
    """Runs a chunk policy (``infer(obs) -> {"actions": (H, A)}``) step by step.

    A new chunk is inferred every ``execute`` steps (open-loop in between), the
    synchronous execution used for evaluation and data collection in sim.

    ``ensemble=k > 0`` is ACT's temporal ensembling (Zhao et al. 2023): a chunk is
    inferred at every step, and the action for step t is the average of every stored
    chunk's prediction for t, weighted ``exp(-k * i)`` with i = 0 for the oldest
    prediction. ``switch_dims`` (the gripper) are taken from the newest chunk, never
    averaged, as on the rig (:class:`policy.chunking.ChunkScheduler`).
    """

    def __init__(self, policy: Any, instruction: str, execute: int | None = None, *, ensemble: float = 0.0,
                 switch_dims: tuple[int, ...] = (6,)):
        if ensemble < 0:
            raise ValueError(f"ensemble={ensemble}: ACT's k must be >= 0 (0: no temporal ensembling)")
        self.policy = policy
        self.instruction = instruction
        self.execute = execute
        self.ensemble = float(ensemble)
        self.switch_dims = tuple(switch_dims)
        self._chunk: np.ndarray | None = None
        self._i = 0
        self._t = 0
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step inferred at, chunk), oldest first

    def reset(self) -> None:
        self._chunk, self._i, self._t, self._chunks = None, 0, 0, []

    def seed_episode(self, seed: int) -> None:
        """Re-seed the policy's sampling noise (flow heads) from the episode seed: an episode is its seed's alone."""
        gen = getattr(self.policy, "generator", None)
        if gen is not None:
            gen.manual_seed(int(seed))

    def _infer(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.policy.infer({**obs, "instruction": self.instruction})["actions"], np.float32)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self.ensemble > 0:
            return self._act_ensembled(obs)
        if self._chunk is None or self._i >= (self.execute or len(self._chunk)):
            self._chunk, self._i = self._infer(obs), 0
        a = self._chunk[min(self._i, len(self._chunk) - 1)]
        self._i += 1
        return a

    def _act_ensembled(self, obs: dict[str, Any]) -> np.ndarray:
        t = self._t
        self._chunks.append((t, self._infer(obs)))
        self._chunks = [(s, c) for s, c in self._chunks if t - s < len(c)]  # those that still cover step t
        preds = np.stack([c[t - s] for s, c in self._chunks])
        w = np.exp(-self.ensemble * np.arange(len(preds)))[:, None]
        a = (w * preds).sum(0) / w.sum()
        for d in self.switch_dims:
            if d < a.shape[-1]:
                a[d] = preds[-1, d]
        self._t += 1
        return a.astype(np.float32)


def run_episodes(
    env: Any,
    agent: ActsOnObs,
    seeds: Iterable[int],
    max_steps: int | None = None,
    on_step: Callable[[dict, np.ndarray, float, dict], None] | None = None,
    progress: Any = None,
) -> tuple[list[bool], list[int], list[float]]:
    """Roll ``agent`` out once per seed (:mod:`flywheel.rollout`); returns (success, steps, return) per episode.

    Each episode is determined by its seed alone (:func:`flywheel.cluster.seed_agent` re-seeds the agent's
    own noise), so the episodes can run on any worker (``cluster=ray``) with the same results.
    ``on_step(next_obs, executed_action, reward, info)`` is called after every step.
    """
    from flywheel.cluster import seed_agent

    successes: list[bool] = []

    def step_cb(s: Step) -> None:
        on_step(s.next_obs, s.action, s.reward, s.info)  # type: ignore[misc]

    def episode_cb(ep: Any) -> None:
        successes.append(ep.success)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(success=f"{np.mean(successes):.2f}")

    eps = []
    for s in seeds:
        seed_agent(agent, int(s))
        eps += _rollouts(env, agent, [int(s)], max_steps=max_steps, on_step=step_cb if on_step is not None else (),
                         on_episode=episode_cb)
    return [e.success for e in eps], [e.steps for e in eps], [e.ret for e in eps]


def evaluate_task(
    task: str,
    make_agent: Callable[[Any], ActsOnObs],
    episodes: int,
    seed: int = HELDOUT_SEED,
    make_env: Callable[[str], Any] | None = None,
    max_steps: int | None = None,
    show_progress: bool = True,
) -> TaskResult:
    from tqdm.auto import tqdm

    if make_env is None:
        import sim

        def make_env(t: str) -> Any:
            return sim.make(t)

    env = make_env(task)
    try:
        agent = make_agent(env)
        seeds = list(range(seed, seed + episodes))
        with tqdm(total=episodes, desc=f"eval {task}", disable=not show_progress, leave=False) as bar:
            ok, steps, rets = run_episodes(env, agent, seeds, max_steps=max_steps, progress=bar)
    finally:
        env.close()
    return TaskResult(task, episodes, int(sum(ok)), float(np.mean(steps)), float(np.mean(rets)), seeds, ok)


def results_table(results: dict[str, dict[str, TaskResult]] | dict[str, TaskResult]) -> str:
    """Markdown table; accepts {task: result} or {column: {task: result}}."""
    if results and isinstance(next(iter(results.values())), TaskResult):
        results = {"success": results}  # type: ignore[assignment]
    cols = list(results)
    tasks = sorted({t for c in cols for t in results[c]})
    lines = ["| task | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for t in tasks:
        cells = []
        for c in cols:
            r = results[c].get(t)
            if r is None:
                cells.append("")
            else:
                lo, hi = r.ci
                cells.append(f"{r.rate:.2f} [{lo:.2f}, {hi:.2f}] (n={r.episodes})")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_results(results: dict[str, TaskResult], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({t: r.to_dict() for t, r in results.items()}, indent=2))


def load_results(path: str | Path) -> dict[str, TaskResult]:
    raw = json.loads(Path(path).read_text())
    out = {}
    for t, d in raw.items():
        out[t] = TaskResult(
            d["task"], d["episodes"], d["successes"], d["mean_steps"], d["mean_return"],
            d.get("seeds", []), d.get("success_per_episode", []),
        )
    return out


# ------------------------------------------------------------------ flywheel-eval
@dataclass
class EvalConfig:
    """``flywheel-eval``: success rate with a 95% Wilson interval over seeded episodes per task."""

    policy: str = "expert"  # a checkpoint directory, or "expert" (the scripted operator, noise expert_noise)
    tasks: list[str] = field(default_factory=lambda: ["PandaRig/PegInsert-v0"])
    episodes: int = 50
    seed: int = HELDOUT_SEED
    env: str = "sim"  # sim | rig (the ROS env adapter, robot/env.py, on a running rig-up graph)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 32
    execute: int = 1  # actions of each chunk executed before re-inferring (1: closed loop, best measured)
    expert_noise: float = 0.0
    max_steps: int | None = None
    namespace: str = ""  # rig: the rig's ROS namespace
    reset: ResetConfig = field(default_factory=ResetConfig)  # rig: reset.kind=none|scripted|operator (robot.reset)
    classifier: str = ""  # rig: a reward classifier .safetensors judges success ("": the operator's events)
    out: str = ""  # results JSON ("" -> eval_results.json in hydra's run directory)
    tensorboard: str = ""  # a log dir: success rate per task and episodes/min as episodes arrive (any worker)
    progress: bool = True
    device: str = "auto"  # the policy's torch device: auto (CUDA when present) | cpu | cuda | cuda:N
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # cluster.kind=ray: episodes on Ray workers


def register() -> None:
    """Register the ``flywheel_eval`` app config in hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="flywheel_eval", node=EvalConfig)


def _env_factory(cfg: Any, spec: Any) -> Callable[[str], Any]:
    if cfg.env == "sim":
        import sim

        cameras, size = tuple(cfg.cameras), int(cfg.image_size)
        trained = None if spec is None else spec.square_image_size()
        if trained is not None:  # render what the policy was trained on (its spec), not the defaults
            want = (tuple(spec.camera_names), trained)
            if (cameras, size) != want:
                log.warning("policy %s was trained on cameras %s at %d px: rendering those, not cameras=%s "
                            "image_size=%d", cfg.policy, list(want[0]), want[1], list(cameras), size)
                cameras, size = want

        def make_sim(task: str) -> Any:
            return sim.make(task, cameras=cameras, image_size=size)

        return make_sim
    if cfg.env == "rig":
        from flywheel.rig_env import make_rig_env, reset_config

        if spec is None:
            raise ValueError("env=rig evaluates a policy checkpoint (its spec names the cameras), not 'expert'")
        reset = reset_config(cfg.get("reset") if hasattr(cfg, "get") else cfg.reset)
        classifier = str(cfg.get("classifier", "") if hasattr(cfg, "get") else cfg.classifier)
        reward_fn = None
        if classifier:
            from flywheel.rl.reward_classifier import RewardClassifier

            reward_fn = RewardClassifier.load(classifier).reward

        def make_rig(task: str) -> Any:
            return make_rig_env(spec, namespace=str(cfg.namespace), reset=reset, reward_fn=reward_fn,
                                max_episode_steps=int(cfg.max_steps or 200), instruction=task)

        return make_rig
    raise ValueError(f"env={cfg.env!r}: use sim or rig")


def run_eval(cfg: Any) -> dict[str, TaskResult]:
    """Evaluate ``cfg.policy`` on every task of ``cfg.tasks``; writes and returns the results."""
    from policy.device import check_device, resolve_device

    if cfg.episodes < 1:
        raise ValueError(f"episodes={cfg.episodes}: must be >= 1")
    device = check_device(cfg.get("device", "auto") if hasattr(cfg, "get") else cfg.device, "device")
    cluster = ClusterConfig(**dict(cfg.get("cluster") or {})) if hasattr(cfg, "get") else cfg.cluster
    cluster.validate()
    if cfg.policy != "expert" and not (Path(cfg.policy) / "policy_config.json").is_file():
        raise FileNotFoundError(f"policy={cfg.policy!r} is not a checkpoint directory (no policy_config.json); "
                                "give a checkpoint or policy=expert")
    if cluster.kind == "ray":
        if cfg.env != "sim":
            raise ValueError(f"cluster.kind=ray with env={cfg.env!r}: Ray workers run sim envs (the rig is one robot)")
        src = PolicySource(checkpoint=str(cfg.policy), expert_noise=float(cfg.expert_noise), execute=int(cfg.execute),
                           device=device, env="sim", max_steps=cfg.max_steps,
                           env_kwargs={"cameras": list(cfg.cameras), "image_size": int(cfg.image_size)})
        scalars = _scalars(cfg)
        try:
            results = evaluate_tasks(list(cfg.tasks), src, int(cfg.episodes), seed=int(cfg.seed), cluster=cluster,
                                     progress=bool(cfg.progress), on_result=scalars)
        finally:
            if scalars is not None:
                scalars.close()
        return _report(cfg, results)
    spec, pol = None, None
    if cfg.policy != "expert":
        import policy as policy_pkg

        pol = policy_pkg.load(cfg.policy, device=resolve_device(device))
        spec = pol.spec

    def make_agent(env: Any) -> ActsOnObs:
        if pol is None:
            import sim

            return sim.expert(env, noise=float(cfg.expert_noise))
        instruction = getattr(env.unwrapped, "instruction", "")
        return ChunkedPolicy(pol, instruction, execute=int(cfg.execute))

    make_env = _env_factory(cfg, spec)
    scalars = _scalars(cfg)
    results = {}
    try:
        for t in cfg.tasks:
            results[t] = evaluate_task(t, make_agent, int(cfg.episodes), seed=int(cfg.seed), make_env=make_env,
                                       max_steps=cfg.max_steps, show_progress=bool(cfg.progress))
            if scalars is not None:
                scalars.task_done(results[t])
    finally:
        if scalars is not None:
            scalars.close()
    return _report(cfg, results)


def _scalars(cfg: Any) -> EvalScalars | None:
    tb = cfg.get("tensorboard", "") if hasattr(cfg, "get") else cfg.tensorboard
    return EvalScalars(tb) if tb else None


def _default_out() -> Path:
    """``eval_results.json`` in hydra's run directory (``hydra.run.dir``), or here outside a hydra app. (hydra
    does not change the working directory: before 2026-12-01 the file landed in the caller's directory.)"""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "eval_results.json"
    return Path("eval_results.json")


def _report(cfg: Any, results: dict[str, TaskResult]) -> dict[str, TaskResult]:
    out = Path(cfg.out) if cfg.out else _default_out()
    save_results(results, out)
    print(results_table({str(cfg.policy): results}))
    print(f"results: {out.resolve()}")
    return results


def main() -> None:
    import hydra

    register()
    hydra.main(version_base=None, config_name="flywheel_eval")(run_eval)()
