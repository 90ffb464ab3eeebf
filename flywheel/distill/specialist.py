"""RL specialists for distillation, trained per task on state-only observations with privileged object state.

Two algorithms (``algo``):

* ``sac`` -- HIL-SERL exactly as ``flywheel-rl`` runs it (SAC + RLPD with the
  task's ``rl_task`` preset: controlled arm dims, gripper critic, discount),
  seeded with human-like demos and corrected by a simulated intervener. It is a
  ``flywheel-rl role=local`` run in ``<workdir>/rl`` that resumes from its own
  checkpoint when killed; ``rl_run=DIR`` uses a finished run instead (e.g. one
  trained on the GPU machine). Sample-hungry: thousands of env steps.
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
    # sac: HIL-SERL through flywheel-rl (its rl_task preset: arm dims, gripper, discount, network)
    env_steps: int = 3000  # sac: online env steps of RL
    rl_task: str = ""  # sac: the flywheel-rl preset; "" -> by task kind (peg_insert, lift_cube, else none)
    rl_run: str = ""  # sac: a finished flywheel-rl out_dir to use instead of training
    rl_overrides: list[str] = field(default_factory=list)  # sac: more flywheel-rl overrides
    checkpoint_every: int = 1000  # sac
    generations: int = 6  # sil: rollout -> refit generations
    rollouts_per_generation: int = 16  # sil
    exploration_noise: float = 0.05  # sil: Gaussian std on the translation dims (insertion needs ~1 mm)
    keep_best: int = 40  # sil: the shortest successes kept for refitting
    bc_steps: int = 1000  # sil: MLP fitting steps (first fit; later fits use half)
    hidden_dims: list[int] = field(default_factory=lambda: [128, 128])  # sil
    demos: int = 20  # human-like demos (sac: RLPD's demo buffer; sil: the first fit)
    demo_noise: float = 1.0
    intervene: bool = True  # sac: simulated operator corrections while training (HIL-SERL)
    eval_episodes: int = 20
    seed: int = 0


def _state_env(task: str) -> Any:
    import sim

    return sim.make(task, cameras=(), privileged_state=True)


def rl_preset_for(task: str) -> str:
    """The ``flywheel-rl`` task preset (``rl_task``) for a sim task id: its arm dims, gripper and discount."""
    name = task.split("/")[-1]
    if name.startswith("PegInsert"):
        return "peg_insert"
    if name.startswith("LiftCube"):
        return "lift_cube"
    return "none"


def rl_overrides(task: str, cfg: Any, out_dir: Path) -> list[str]:
    """The ``flywheel-rl`` command line (hydra overrides) that trains this specialist."""
    preset = cfg.rl_task or rl_preset_for(task)
    return [f"rl_task={preset}", f"env.task={task}", f"out_dir={out_dir}", f"total_steps={int(cfg.env_steps)}",
            f"seed={int(cfg.seed)}", f"demos.num={int(cfg.demos)}", f"demos.noise={float(cfg.demo_noise)}",
            f"intervention.enabled={str(bool(cfg.intervene)).lower()}",
            f"learner.checkpoint_every={int(cfg.checkpoint_every)}", "learner.eval_every=0",
            f"final_eval_episodes={int(cfg.eval_episodes)}", "progress=false", *list(cfg.rl_overrides)]


def train_specialist(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """HIL-SERL (``flywheel-rl``, role=local) on the task's state-only sim env; resumes a killed run.

    ``cfg.rl_run`` names a finished ``flywheel-rl`` run to use as the specialist instead of training one.
    """
    run_dir = Path(cfg.rl_run) if cfg.rl_run else Path(workdir) / "rl"
    results = run_dir / "results.json"
    if not results.exists():
        if cfg.rl_run:
            raise FileNotFoundError(f"specialist.rl_run={cfg.rl_run}: no results.json there (not a finished "
                                    "flywheel-rl run)")
        from flywheel.rl.cli import register, run
        from robot.config import compose

        register()
        overrides = rl_overrides(task, cfg, run_dir)
        log.info("specialist %s: flywheel-rl %s", task, " ".join(overrides))
        run(compose("flywheel_rl", overrides))
    res = json.loads(results.read_text())
    return {"task": task, "algo": "sac", "env_steps": res["env_steps"], "episodes": res["episodes"],
            "intervention_rate": res["intervention_rate"], "eval_success_rate": res["final_eval"]["success_rate"],
            "eval_episodes": int(res["config"]["final_eval_episodes"]),
            "checkpoint": str(run_dir / "checkpoint"), "config": _cfg_dict(cfg)}


class SpecialistAgent:
    """A trained ``flywheel-rl`` agent, acting deterministically on the state keys of a (camera) env."""

    def __init__(self, run_dir: str | Path):
        import safetensors.torch
        from omegaconf import OmegaConf

        from flywheel.rl.cli import build_agent, make_env
        from rig.spec import ActionSpec

        run_dir = Path(run_dir)
        rl_cfg = OmegaConf.create(json.loads((run_dir / "results.json").read_text())["config"])
        env = make_env(rl_cfg)  # the observation space the agent was built for
        try:
            self.agent = build_agent(rl_cfg, env)
        finally:
            env.close()
        tensors = safetensors.torch.load_file(str(run_dir / "checkpoint" / "agent.safetensors"))
        self.agent.load_state_dict({k[len("agent/"):]: v for k, v in tensors.items() if k.startswith("agent/")})
        self.agent.eval()
        self.spec = ActionSpec()
        self._grip: float | None = None

    def reset(self) -> None:
        self._grip = None

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
    return SpecialistAgent(Path(info["checkpoint"]).parent)


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
