"""RL specialists for distillation, trained per task on state-only observations with privileged object state.

Two algorithms (``algo``):

* ``sac`` -- a thin adapter over :mod:`flywheel.rl` (SAC + RLPD, HIL-SERL style):
  seeded with a few human-like demos (RLPD's demo buffer), optionally with a
  simulated intervener (HIL-SERL's corrections); the whole learner (weights,
  optimisers, buffers, counters) is checkpointed every ``checkpoint_every`` env
  steps, so a killed run resumes where it stopped. Sample-hungry: thousands of
  env steps, more than a CPU demo can afford.
* ``sil`` -- self-imitation learning (Oh et al. 2018, in its simplest,
  success-filtered form): an MLP policy is behaviour-cloned from the human-like
  demos, then each generation rolls it out with Gaussian exploration noise and
  refits it on its own shortest successful episodes (sparse task reward only).
  Cheap enough for the CPU demo; checkpointed after every generation.
* ``scripted`` -- no learning: the scripted operator at noise 0 stands in for a
  converged specialist (pipeline tests, and an upper bound on what distillation
  of a near-perfect specialist gives). Reports label it as such.

:class:`SpecialistAgent` then acts deterministically for collection, where the
recorded episode keeps the camera images the generalist trains on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class SpecialistConfig:
    algo: str = "sil"  # sil | sac | scripted
    env_steps: int = 3000  # sac: online env steps of RL
    generations: int = 6  # sil: rollout -> refit generations
    rollouts_per_generation: int = 16  # sil
    exploration_noise: float = 0.05  # sil: Gaussian std on the translation dims (insertion needs ~1 mm)
    keep_best: int = 40  # sil: the shortest successes kept for refitting
    bc_steps: int = 1000  # sil: MLP fitting steps (first fit; later fits use half)
    demos: int = 10  # human-like demos seeding the RLPD demo buffer
    demo_noise: float = 1.0
    intervene: bool = True  # simulated operator corrections while training (HIL-SERL)
    max_interventions: int = 2  # per episode
    hidden_dims: list[int] = field(default_factory=lambda: [128, 128])
    batch_size: int = 128
    utd_ratio: int = 1
    discount: float = 0.95
    checkpoint_every: int = 1000
    eval_episodes: int = 20
    seed: int = 0


def _state_env(task: str) -> Any:
    import sim

    return sim.make(task, cameras=(), privileged_state=True)


def _build(cfg: Any, env: Any) -> tuple[Any, Any]:
    from flywheel.rl.learner import Learner, LearnerConfig
    from flywheel.rl.sac import SACAgent, SACConfig, obs_shapes_of

    keys = ["state/ee_pos", "state/ee_quat", "state/gripper_width", "state/privileged"]
    sc = SACConfig(hidden_dims=list(cfg.hidden_dims), batch_size=int(cfg.batch_size), utd_ratio=int(cfg.utd_ratio),
                   discount=float(cfg.discount), state_keys=keys)
    agent = SACAgent(sc, obs_shapes_of(env.observation_space))
    lc = LearnerConfig(eval_every=0, checkpoint_every=0, demo_capacity=50_000,
                       online_capacity=max(10_000, int(cfg.env_steps) + 1000))
    return agent, Learner(agent, lc, seed=int(cfg.seed))


def train_specialist(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume training) the specialist for ``task`` in ``workdir``; returns its metrics."""
    import torch

    import sim
    from flywheel.rl.actor import Actor, collect_demos
    from flywheel.rl.learner import train_local

    workdir = Path(workdir)
    ckpt = workdir / "learner"
    done_file = workdir / "specialist.json"
    if done_file.exists():
        return json.loads(done_file.read_text())
    torch.manual_seed(int(cfg.seed))
    env = _state_env(task)
    try:
        agent, learner = _build(cfg, env)
        if (ckpt / "state.json").exists():
            learner.load(ckpt)
            log.info("specialist %s: resumed at env step %d", task, learner.env_steps)
        elif cfg.demos > 0:
            demos, st = collect_demos(env, sim.expert(env, noise=float(cfg.demo_noise), seed=int(cfg.seed)),
                                      int(cfg.demos), agent.obs_keys, seed=int(cfg.seed), max_attempts=10 * cfg.demos)
            learner.add_demos(demos)
            log.info("specialist %s: %s", task, st)
        intervener = None
        if cfg.intervene:
            intervener = sim.SimulatedIntervener(env, sim.expert(env, noise=0.3, seed=int(cfg.seed) + 1),
                                                 max_interventions=int(cfg.max_interventions))
        actor = Actor(env, agent, intervener=intervener, seed=int(cfg.seed) + learner.env_steps)
        step = learner.env_steps
        every = max(1, int(cfg.checkpoint_every))
        while step < cfg.env_steps:
            step = min(int(cfg.env_steps), (step // every + 1) * every)
            train_local(learner, actor, step, progress=progress)
            learner.save(ckpt)
        eval_actor = Actor(env, agent, seed=int(cfg.seed))
        m = eval_actor.evaluate(int(cfg.eval_episodes), seed=500_000)
        out = {"task": task, "env_steps": learner.env_steps, "episodes": learner.episodes,
               "intervened_steps": learner.intervened_steps, "eval_success_rate": m["success_rate"],
               "eval_episodes": int(cfg.eval_episodes), "checkpoint": str(ckpt), "config": asdict(cfg)
               if hasattr(cfg, "__dataclass_fields__") else dict(cfg)}
        done_file.write_text(json.dumps(out, indent=2))
        return out
    finally:
        env.close()


class SpecialistAgent:
    """A trained specialist acting on the state keys of a (camera) env's observations."""

    def __init__(self, task: str, cfg: Any, workdir: str | Path):
        from robot.spec import ActionSpec

        env = _state_env(task)
        try:
            self.agent, learner = _build(cfg, env)
        finally:
            env.close()
        learner.load(Path(workdir) / "learner")
        self.agent.eval()
        self.spec = ActionSpec()
        self._grip = 1.0

    def reset(self) -> None:
        self._grip = None  # type: ignore[assignment]

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self._grip is None:
            self._grip = self.spec.width_to_gripper(float(np.asarray(obs["state/gripper_width"]).reshape(-1)[0]))
        a, _ = self.agent.act(obs, self._grip, deterministic=True)
        self._grip = float(a[6])
        return a


# ---------------------------------------------------------------- self-imitation (sil)
def state_features(obs: dict[str, Any]) -> np.ndarray:
    """TCP pose, gripper, and the privileged object/goal positions relative to the TCP and to each other.

    The privileged vector of every sim task starts with the object position; a goal
    position follows as its last three entries when it has more than four (insert:
    peg + hole; place/push: cube, yaw, goal; lift: cube, yaw).
    """
    ee = np.asarray(obs["state/ee_pos"], np.float32).reshape(3)
    p = np.asarray(obs["state/privileged"], np.float32).reshape(-1)
    parts = [ee, np.asarray(obs["state/ee_quat"], np.float32).reshape(4),
             np.asarray(obs["state/gripper_width"], np.float32).reshape(1), p[0:3] - ee, p[3:len(p) - 3 if len(p) > 4 else len(p)]]
    if len(p) > 4:
        goal = p[-3:]
        parts += [goal - ee, goal - p[0:3]]
    return np.concatenate(parts).astype(np.float32)


class MLPPolicy:
    """A small tanh MLP on the concatenated state keys (normalised), 7-d spec actions out."""

    def __init__(self, in_dim: int, hidden: list[int], mean: np.ndarray | None = None, std: np.ndarray | None = None):
        import torch
        from torch import nn

        layers: list[Any] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.GELU()]
            d = h
        self.net = nn.Sequential(*layers, nn.Linear(d, 7), nn.Tanh())
        self.mean = np.zeros(in_dim, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(in_dim, np.float32) if std is None else np.asarray(std, np.float32)
        self._torch = torch

    @staticmethod
    def features(obs: dict[str, Any]) -> np.ndarray:
        return state_features(obs)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.net(self._torch.as_tensor((x - self.mean) / self.std)[None])[0].numpy()

    def fit(self, x: np.ndarray, a: np.ndarray, steps: int, lr: float = 1e-3, seed: int = 0) -> float:
        torch = self._torch
        xt = torch.as_tensor((x - self.mean) / self.std)
        at = torch.as_tensor(a)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        loss = torch.zeros(())
        for _ in range(int(steps)):
            i = torch.randint(0, len(xt), (min(128, len(xt)),), generator=g)
            loss = ((self.net(xt[i]) - at[i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    def save(self, path: Path) -> None:
        import torch
        from safetensors.torch import save_file

        sd = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        sd["mean"], sd["std"] = torch.as_tensor(self.mean), torch.as_tensor(self.std)
        tmp = path.with_suffix(".tmp")
        save_file(sd, str(tmp))
        tmp.rename(path)

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        sd = load_file(str(path))
        self.mean, self.std = sd.pop("mean").numpy(), sd.pop("std").numpy()
        self.net.load_state_dict({k[len("net."):]: v for k, v in sd.items()})


def _sil_rollout(env: Any, act: Any, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    obs, _ = env.reset(seed=int(seed))
    xs, acts, ok = [], [], False
    while True:
        x = MLPPolicy.features(obs)
        a = np.clip(np.asarray(act(obs, x), np.float32), -1.0, 1.0)
        xs.append(x)
        acts.append(a)
        obs, _, term, trunc, info = env.step(a)
        ok = bool(info.get("is_success", False))
        if term or trunc or ok:
            return np.array(xs), np.array(acts), ok


def train_sil(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Self-imitation specialist: BC on human-like demos, then success-filtered refits on its own rollouts."""
    import torch
    from tqdm.auto import tqdm

    import sim

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    done_file = workdir / "specialist.json"
    if done_file.exists():
        return json.loads(done_file.read_text())
    torch.manual_seed(int(cfg.seed))
    state_file, weights, data_file = workdir / "sil_state.json", workdir / "policy.safetensors", workdir / "sil_data.npz"
    env = _state_env(task)
    try:
        rng = np.random.default_rng(int(cfg.seed))
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        if state is None:  # generation 0: behaviour cloning of the human-like demos
            expert = sim.expert(env, noise=float(cfg.demo_noise), seed=int(cfg.seed))
            demos = []
            for s in range(10 * int(cfg.demos)):
                expert.reset()
                ep = _sil_rollout(env, lambda obs, x: expert.act(obs), 900_000 + s)
                if ep[2]:
                    demos.append(ep)
                if len(demos) >= int(cfg.demos):
                    break
            if not demos:
                raise RuntimeError(f"{task}: the scripted operator never succeeded; cannot seed the specialist")
            x = np.concatenate([d[0] for d in demos])
            pol = MLPPolicy(x.shape[1], list(cfg.hidden_dims), x.mean(0), x.std(0) + 1e-3)
            pol.fit(x, np.concatenate([d[1] for d in demos]), int(cfg.bc_steps), seed=int(cfg.seed))
            np.savez(data_file, x=x, a=np.concatenate([d[1] for d in demos]),
                     ep=np.concatenate([np.full(len(d[0]), i) for i, d in enumerate(demos)]),
                     length=np.array([len(d[0]) for d in demos]))
            pol.save(weights)
            state = {"generation": 0, "history": [{"generation": 0, "demos": len(demos)}], "env_steps": 0}
            state_file.write_text(json.dumps(state))
        z = np.load(data_file)
        pol = MLPPolicy(z["x"].shape[1], list(cfg.hidden_dims))
        pol.load(weights)
        own: list[tuple[np.ndarray, np.ndarray]] = []
        if (workdir / "sil_own.npz").exists():
            o = np.load(workdir / "sil_own.npz")
            bounds = np.cumsum(o["length"])[:-1]
            own = list(zip(np.split(o["x"], bounds), np.split(o["a"], bounds), strict=True))
        noise_mask = np.array([1, 1, 1, 0, 0, 0, 0], np.float32) * float(cfg.exploration_noise)
        bar = tqdm(total=int(cfg.generations), initial=int(state["generation"]), desc=f"specialist {task}",
                   disable=not progress, leave=False)
        for gen in range(int(state["generation"]), int(cfg.generations)):
            n_ok, steps = 0, 0
            for k in range(int(cfg.rollouts_per_generation)):
                def act(obs: Any, x: np.ndarray) -> np.ndarray:
                    return pol(x) + rng.normal(0.0, 1.0, 7).astype(np.float32) * noise_mask

                xs, acts, ok = _sil_rollout(env, act, 800_000 + 1000 * gen + k)
                steps += len(xs)
                if ok:
                    own.append((xs, acts))
                    n_ok += 1
            own = sorted(own, key=lambda e: len(e[0]))[: int(cfg.keep_best)]
            if own:
                x = np.concatenate([e[0] for e in own])
                a = np.concatenate([e[1] for e in own])
                if len(own) < 10:  # few own successes yet: keep the demos in the mix
                    x, a = np.concatenate([x, z["x"]]), np.concatenate([a, z["a"]])
                pol.fit(x, a, int(cfg.bc_steps) // 2, seed=int(cfg.seed) + gen + 1)
                np.savez(workdir / "sil_own.npz", x=np.concatenate([e[0] for e in own]),
                         a=np.concatenate([e[1] for e in own]), length=np.array([len(e[0]) for e in own]))
            pol.save(weights)
            state = {"generation": gen + 1, "env_steps": state["env_steps"] + steps,
                     "history": [*state["history"], {"generation": gen + 1, "rollout_success": n_ok / max(
                         1, int(cfg.rollouts_per_generation)), "kept": len(own)}]}
            state_file.write_text(json.dumps(state))
            bar.update(1)
            bar.set_postfix(success=f"{n_ok / max(1, int(cfg.rollouts_per_generation)):.2f}")
        bar.close()
        oks = [_sil_rollout(env, lambda obs, x: pol(x), 500_000 + i)[2] for i in range(int(cfg.eval_episodes))]
        out = {"task": task, "algo": "sil", "env_steps": state["env_steps"], "generations": state["generation"],
               "history": state["history"], "eval_success_rate": float(np.mean(oks)) if oks else 0.0,
               "eval_episodes": int(cfg.eval_episodes), "checkpoint": str(weights), "config": _cfg_dict(cfg)}
        done_file.write_text(json.dumps(out, indent=2))
        return out
    finally:
        env.close()


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "__dataclass_fields__"):
        return asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def train(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the specialist of ``task`` with ``cfg.algo``."""
    if cfg.algo == "sil":
        return train_sil(task, cfg, workdir, progress=progress)
    if cfg.algo == "sac":
        return train_specialist(task, cfg, workdir, progress=progress)
    if cfg.algo == "scripted":
        return {"task": task, "algo": "scripted", "env_steps": 0, "eval_success_rate": float("nan"),
                "eval_episodes": 0, "checkpoint": "", "config": _cfg_dict(cfg)}
    raise ValueError(f"specialist.algo={cfg.algo!r}: use sil, sac or scripted")


def load_agent(task: str, info: dict[str, Any]) -> Any:
    """The agent of a trained specialist (``info``: what :func:`train` returned)."""
    cfg = SpecialistConfig(**info["config"])
    if cfg.algo == "scripted":
        return _ScriptedAgent()
    if cfg.algo == "sil":
        return SILAgent(Path(info["checkpoint"]), cfg)
    return SpecialistAgent(task, cfg, Path(info["checkpoint"]).parent)


class SILAgent:
    def __init__(self, weights: Path, cfg: Any):
        from safetensors.torch import load_file

        n = int(load_file(str(weights))["mean"].shape[0])
        self.pol = MLPPolicy(n, list(cfg.hidden_dims))
        self.pol.load(weights)

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return np.clip(self.pol(MLPPolicy.features(obs)), -1.0, 1.0).astype(np.float32)


class _ScriptedAgent:
    """The scripted operator at noise 0, bound to the collection env on its first observation."""

    def __init__(self) -> None:
        self.expert: Any = None

    def bind(self, env: Any) -> None:
        import sim

        self.expert = sim.expert(env, noise=0.0)

    def reset(self) -> None:
        if self.expert is not None:
            self.expert.reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self.expert is None:
            raise RuntimeError("the scripted specialist needs bind(env) before acting")
        return np.asarray(self.expert.act(obs), np.float32)
