"""The ``flywheel-rl`` app as a library: its config (roles, algorithms, task presets) and :func:`run`.

``run(cfg)`` runs one role with a composed config (``role=local``: actor and
learner in one process; ``learner``: the networked learner; ``actor``: the
networked actor) and writes ``results.json``; :mod:`flywheel.rl.cli` is the
hydra entry point around it, and the distillation's ``sac`` specialist calls
it directly. Outputs under ``out_dir``: ``checkpoint/`` (resumed
automatically), ``tb/`` (TensorBoard), ``learning_curve.png``, ``results.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.rl.build import (
    build_agent,
    learner_config,
    load_demos,
    make_env,
    make_intervener,
    make_recorder,
    reward_fn,
    transport_config,
)
from flywheel.rl.learner import LearnerConfig
from flywheel.rl.sac import SACConfig
from flywheel.rl.transport import TransportConfig

log = logging.getLogger("flywheel.rl")


@dataclass
class EnvConfig:
    task: str = "PegInsert"  # a sim task id or short name (sim.list_tasks())
    cameras: list[str] = field(default_factory=list)  # [] -> state-only observations
    image_size: int = 64
    privileged_state: bool = True  # sim only: object poses in state/privileged (state-only runs)
    factory: str = ""  # "module:function" returning the env instead of sim.make (e.g. the ROS env adapter)
    factory_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoConfig:
    num: int = 20  # successful demo episodes (0: none)
    noise: float = 1.0  # sim.expert noise (>0: human-like)
    store: str = ""  # an EpisodeStore path: take source=human episodes of the task instead of the sim expert
    max_attempts: int = 200


@dataclass
class InterventionConfig:
    enabled: bool = True
    noise: float = 0.3  # the simulated operator's expert noise
    # stall | direction | distance (see sim.SimulatedIntervener). "stall" steps in only when the policy is
    # stuck, as a human does once the policy is competent: it gave 100% / 96-100% where "distance", which
    # also overrides a different but valid path, gave 89% / 73% (insertion / lift, 40k steps, docs/bench/rl.md)
    criterion: str = "stall"
    disagreement: float = 0.9
    patience: int = 3
    stall_steps: int = 15
    takeover_steps: int = 8


@dataclass
class RLAppConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"rl_task": "peg_insert"}])
    role: str = "local"  # local | learner | actor
    algo: str = "hil_serl"  # hil_serl | bc
    seed: int = 0
    total_steps: int = 20_000  # env steps (all actors together for the learner)
    bc_steps: int = 5_000  # gradient steps of the BC baseline
    out_dir: str = "outputs/rl"
    resume: bool = True
    torch_threads: int = 1
    device: str = "cpu"  # auto (CUDA when present) | cpu | cuda | cuda:N; the small SAC nets are fastest beside the sim
    reward: str = "success"  # success | env | classifier
    classifier: str = ""  # reward classifier .safetensors (reward=classifier)
    final_eval_episodes: int = 100
    actor_name: str = "actor0"
    send_every: int = 50  # actor: transitions per message
    actor_rate_hz: float = 0.0  # actor: pace env steps like a robot's control loop (0: flat out)
    progress: bool = True
    latent_policy: str = ""  # generalist checkpoint whose frozen backbone is the encoder (agent.encoder=latent)
    latent_instruction: str = ""
    record_to: str = ""  # an EpisodeStore path: write the actor's episodes there (source=rl)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: SACConfig = field(default_factory=SACConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)


# Per-task settings (discount, controlled arm dims, state keys, gripper), hydra group ``rl_task``.
# The state deltas give the agent what a wrist camera shows: the hole relative to the peg, the cube
# relative to the TCP (without them, 10k steps: insertion 1% -> 20%, lift 2% -> 46%). Lift controls
# yaw too (the cubes are turned up to 45 degrees) and pays a small price per gripper toggle (HIL-SERL's
# gripper penalty), which stopped the agent closing on air on the way to the cube.
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "peg_insert": {
        "env": {"task": "PegInsert"},
        "agent": {"discount": 0.95, "hidden_dims": [128, 128], "arm_dims": [0, 1, 2], "gripper": False, "gripper_fixed": -1.0,
                  "utd_ratio": 2, "state_keys": ["state/ee_pos", "state/privileged"],
                  "state_deltas": ["state/privileged[3:6]-state/privileged[0:3]"]},
    },
    "lift_cube": {
        "env": {"task": "LiftCube-Blue"},
        "agent": {"discount": 0.97, "hidden_dims": [128, 128], "arm_dims": [0, 1, 2, 5], "gripper": True,
                  "gripper_penalty": 0.05, "utd_ratio": 2,
                  "state_keys": ["state/ee_pos", "state/gripper_width", "state/privileged"],
                  "state_deltas": ["state/privileged[0:3]-state/ee_pos[0:3]"]},
    },
}


def register() -> None:
    """Register the app config and the ``rl_task`` presets in hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="flywheel_rl", node=RLAppConfig)
    for name, preset in TASK_PRESETS.items():
        cs.store(group="rl_task", name=name, node=preset, package="_global_")
    cs.store(group="rl_task", name="none", node={}, package="_global_")


def run(cfg: Any) -> dict[str, Any]:
    """Run one role of the app with a composed config; returns the results written to results.json."""
    import torch

    from flywheel.rl.actor import Actor
    from flywheel.rl.learner import Learner
    from flywheel.rl.loops import run_actor, serve, train_local

    if cfg.role not in ("local", "learner", "actor"):
        raise ValueError(f"role={cfg.role!r}: use local, learner or actor")
    if cfg.algo not in ("hil_serl", "bc"):
        raise ValueError(f"algo={cfg.algo!r}: use hil_serl or bc")
    torch.set_num_threads(int(cfg.torch_threads))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(cfg)
    agent = build_agent(cfg, env)
    rng_seed = int(cfg.seed)
    results: dict[str, Any] = {"role": cfg.role, "algo": cfg.algo, "task": cfg.env.task, "seed": rng_seed}

    if cfg.role == "actor":
        from flywheel.rl.transport import ActorEndpoint

        actor = Actor(env, agent, intervener=make_intervener(cfg, env), reward_source=cfg.reward,
                      reward_fn=reward_fn(cfg), seed=rng_seed, name=cfg.actor_name,
                      recorder=make_recorder(cfg, env))
        t0 = time.time()
        with ActorEndpoint(transport_config(cfg, agent), cfg.actor_name) as ep:
            run_actor(actor, ep, int(cfg.total_steps), send_every=int(cfg.send_every), progress=cfg.progress,
                      random_steps=int(cfg.learner.random_steps), rate_hz=float(cfg.actor_rate_hz))
            results.update(sent=ep.sent, dropped=ep.dropped, **ep.counters)
        results.update(env_steps=actor.env_steps, episodes=actor.episodes,
                       steps_per_s=actor.env_steps / max(time.time() - t0, 1e-9))
        _write_results(out / f"results_{cfg.actor_name}.json", results)
        return results

    learner = Learner(agent, learner_config(cfg), logdir=out, seed=rng_seed)
    ckpt = out / "checkpoint"
    resumed = False
    if cfg.resume and (ckpt / "state.json").exists():
        learner.load(ckpt)
        resumed = True
        log.info("resumed from %s at env step %d", ckpt, learner.env_steps)
    if not resumed:
        demos, demo_stats = load_demos(cfg, env, agent)
        results.update(demo_stats)
        if demos is not None:
            agent.fit_state_normalizer(demos)
            learner.add_demos(demos)
    eval_env = make_env(cfg)
    eval_actor = Actor(eval_env, agent, seed=rng_seed + 100, name="eval")
    t0 = time.time()
    if cfg.algo == "bc":
        if len(learner.demo) == 0:
            raise ValueError("algo=bc needs demos (demos.num > 0)")
        from tqdm import trange

        for _ in trange(int(cfg.bc_steps), disable=not cfg.progress, desc="BC steps"):
            agent.bc_update(learner.demo.sample(agent.cfg.batch_size, learner.rng))
    elif cfg.role == "local":
        actor = Actor(env, agent, intervener=make_intervener(cfg, env), reward_source=cfg.reward,
                      reward_fn=reward_fn(cfg), seed=rng_seed, name=cfg.actor_name,
                      recorder=make_recorder(cfg, env))
        train_local(learner, actor, int(cfg.total_steps), eval_actor=eval_actor, checkpoint_dir=ckpt,
                    progress=cfg.progress)
    else:  # learner
        from flywheel.rl.transport import LearnerEndpoint

        tcfg = transport_config(cfg, agent)
        with LearnerEndpoint(tcfg) as ep:
            serve(learner, ep, int(cfg.total_steps), weights_period_s=tcfg.weights_period_s,
                  checkpoint_dir=ckpt, eval_actor=eval_actor, progress=cfg.progress)
            results.update(received=ep.received, **ep.counters)
    train_s = time.time() - t0
    final = eval_actor.evaluate(int(cfg.final_eval_episodes), seed=1_000_000)
    learner.log_eval(final)
    eps = [h for h in learner.history if h["kind"] == "episode"]
    results.update(
        final_eval=final, env_steps=learner.env_steps, update_calls=learner.update_calls,
        critic_updates=learner.critic_updates, episodes=learner.episodes,
        intervention_rate=learner.intervened_steps / max(learner.env_steps, 1),
        train_success_last20=float(np.mean([h["success"] for h in eps[-20:]])) if eps else None,
        train_seconds=train_s, demo_buffer=len(learner.demo), online_buffer=len(learner.online),
        resumed=resumed, config=_plain(cfg),
    )
    learner.plot(out / "learning_curve.png", title=f"{cfg.env.task} {cfg.algo}")
    learner.close()
    _write_results(out / "results.json", results)
    env.close()
    eval_env.close()
    return results


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    except ValueError:
        return asdict(cfg)


def _write_results(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
