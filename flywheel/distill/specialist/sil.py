"""The ``sil`` specialist: self-imitation learning (Oh et al. 2018, in its simplest, success-filtered form).

An MLP policy on privileged state features (:func:`state_features`) is
behaviour-cloned from human-like demos of the scripted operator, then each
generation rolls it out with Gaussian exploration noise on the translation dims
and refits it on its own shortest successful episodes (sparse task reward
only). Cheap enough for the CPU demo; checkpointed after every generation
(``sil_state.json``, ``policy.safetensors``, ``sil_data.npz``, ``sil_own.npz``)
and resumed from there. Rollouts go through :mod:`flywheel.rollout`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.rollout import Rollout, Step

ActFn = Callable[[dict[str, Any], np.ndarray], np.ndarray]  # (obs, state features) -> action


def _state_env(task: str) -> Any:
    import sim

    return sim.make(task, cameras=(), privileged_state=True)

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

class _FeatureAgent:
    """A rollout agent from ``act(obs, features)``."""

    def __init__(self, act: ActFn, reset: Callable[[], None] | None = None):
        self._act, self._reset = act, reset

    def reset(self) -> None:
        if self._reset is not None:
            self._reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self._act(obs, MLPPolicy.features(obs)), np.float32)


def _sil_rollout(env: Any, agent: _FeatureAgent, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """One episode: (state features, executed actions, success)."""
    xs: list[np.ndarray] = []
    acts: list[np.ndarray] = []

    def record(s: Step) -> None:
        xs.append(MLPPolicy.features(s.obs))
        acts.append(s.action)

    ep = Rollout(env, agent, on_step=record).run(int(seed))
    return np.array(xs), np.array(acts), ep.success


def train_sil(task: str, cfg: Any, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Self-imitation specialist: BC on human-like demos, then success-filtered refits on its own rollouts."""
    import torch
    from tqdm.auto import tqdm

    import sim
    from flywheel.distill.specialist import config_dict

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
                ep = _sil_rollout(env, _FeatureAgent(lambda obs, x: expert.act(obs), expert.reset), 900_000 + s)
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

                xs, acts, ok = _sil_rollout(env, _FeatureAgent(act), 800_000 + 1000 * gen + k)
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
        oks = [_sil_rollout(env, _FeatureAgent(lambda obs, x: pol(x)), 500_000 + i)[2] for i in range(int(cfg.eval_episodes))]
        out = {"task": task, "algo": "sil", "env_steps": state["env_steps"], "generations": state["generation"],
               "history": state["history"], "eval_success_rate": float(np.mean(oks)) if oks else 0.0,
               "eval_episodes": int(cfg.eval_episodes), "checkpoint": str(weights), "config": config_dict(cfg)}
        done_file.write_text(json.dumps(out, indent=2))
        return out
    finally:
        env.close()

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
