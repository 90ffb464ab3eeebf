"""The ``flywheel-rl`` app as a library: its config (roles, algorithms, task presets) and :func:`run`.

``run(cfg)`` runs one role with a composed config (``role=local``: actor and
learner in one process; ``learner``: the networked learner; ``actor``: the
networked actor) and writes ``results.json``. ``role`` and ``algo`` are config
groups whose options hold the fields of that role or algorithm only
(``role.final_eval_episodes=``, ``algo.steps=``); :func:`compose` names the new
key for a key of the form before the groups, and :func:`upgrade_config` reads a
``results.json`` config written then. :mod:`flywheel.rl.cli` is the
hydra entry point around it, and the distillation's ``sac`` specialist calls
it directly. Outputs under ``out_dir``: ``checkpoint/`` (resumed
automatically), ``tb/`` (TensorBoard), ``learning_curve.png``, ``results.json``, and with ``algo.review``
``reward_classifier/`` (the classifier refined in the loop, resumed too).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
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
    make_reviewer,
    reward_fn,
    transport_config,
)
from flywheel.rl.learner import LearnerConfig
from flywheel.rl.reward_refine import RefineConfig
from flywheel.rl.sac import SACConfig
from flywheel.rl.transport import TransportConfig
from robot.reset import ResetConfig

log = logging.getLogger("flywheel.rl")


@dataclass
class EnvConfig:
    task: str = "PegInsert"  # a sim task id or short name (sim.list_tasks())
    cameras: list[str] = field(default_factory=list)  # [] -> state-only observations
    image_size: int = 64
    privileged_state: bool = True  # sim only: object poses in state/privileged (state-only runs)
    factory: str = ""  # "module:function" returning the env instead of sim.make (e.g. the ROS env adapter)
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "sim"  # sim (sim.make) | rig (the ROS env adapter on a running rig-up graph: flywheel.rig_env)
    namespace: str = ""  # rig: the rig's ROS namespace
    control_hz: float = 10.0  # rig: rig-up's rig.control_hz
    max_episode_steps: int = 200  # rig: an episode still running after this many steps is a failure
    reset: ResetConfig = field(default_factory=ResetConfig)  # rig: reset.kind=none|scripted|operator (robot.reset)


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
    max_interventions: int = 0  # takeovers per episode (0: no limit)


@dataclass
class LocalRole:
    """``role=local``: the actor and the learner in one process."""

    name: str = "local"
    actor_name: str = "actor0"
    record_to: str = ""  # an EpisodeStore path: write the actor's episodes there (source=rl)
    resume: bool = True  # from out_dir/checkpoint when it is there
    final_eval_episodes: int = 100


@dataclass
class LearnerRole:
    """``role=learner``: the networked learner (actors connect through ``transport``)."""

    name: str = "learner"
    resume: bool = True
    final_eval_episodes: int = 100


@dataclass
class ActorRole:
    """``role=actor``: a networked actor (sends ``transport.send_every`` transitions per message)."""

    name: str = "actor"
    actor_name: str = "actor0"
    record_to: str = ""
    rate_hz: float = 0.0  # pace env steps like a robot's control loop (0: flat out)


@dataclass
class HILSERLAlgo:
    """``algo=hil_serl``: SAC on demos, online transitions and interventions, rewarded by ``reward``."""

    name: str = "hil_serl"
    reward: str = "success"  # success | env | classifier
    classifier: str = ""  # reward classifier .safetensors (reward=classifier)
    # the operator's verdict on each success the classifier claims (none | sim: the sim's test stands in | operator:
    # on the rig, asked on reset/prompt and answered with the success / failure keys): a rejected one is relabelled
    # (no reward, no terminal) and refines the classifier (flywheel.rl.reward_refine)
    review: str = "none"
    review_timeout: float = 120.0  # review=operator: s to wait for the verdict (no answer: the claim stands)
    refine: RefineConfig = field(default_factory=RefineConfig)  # with review: refine.every=0 relabels only
    # behaviour-cloning steps on the demos before online RL (0: none, as HIL-SERL): a warm start of the actor and,
    # with agent.encoder=pretrained, of the keypoint head the critic then shares (a fresh run only, not on resume)
    bc_warmup: int = 0


@dataclass
class BCAlgo:
    """``algo=bc``: the BC baseline, offline on the demos."""

    name: str = "bc"
    steps: int = 5_000  # gradient steps


ROLES: dict[str, type] = {"local": LocalRole, "learner": LearnerRole, "actor": ActorRole}
ALGOS: dict[str, type] = {"hil_serl": HILSERLAlgo, "bc": BCAlgo}
# keys of the config before the role and algo groups -> where they are now
MOVED = {"bc_steps": "algo.steps", "reward": "algo.reward", "classifier": "algo.classifier",
         "actor_name": "role.actor_name", "actor_rate_hz": "role.rate_hz", "record_to": "role.record_to",
         "resume": "role.resume", "final_eval_episodes": "role.final_eval_episodes", "send_every": "transport.send_every"}


@dataclass
class RLAppConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"role": "local"}, {"algo": "hil_serl"},
                                                         {"rl_task": "peg_insert"}])
    role: Any = None  # the config group: local | learner | actor
    algo: Any = None  # the config group: hil_serl | bc
    seed: int = 0
    total_steps: int = 20_000  # env steps (all actors together for the learner; algo=bc takes none)
    out_dir: str = "outputs/rl"
    torch_threads: int = 1
    device: str = "cpu"  # auto (CUDA when present) | cpu | cuda | cuda:N; the small SAC nets are fastest beside the sim
    progress: bool = True
    latent_policy: str = ""  # generalist checkpoint whose frozen backbone is the encoder (agent.encoder=latent)
    latent_instruction: str = ""
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: SACConfig = field(default_factory=SACConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)  # role=local | learner
    intervention: InterventionConfig = field(default_factory=InterventionConfig)  # role=local | actor, algo=hil_serl
    transport: TransportConfig = field(default_factory=TransportConfig)  # role=learner | actor


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
    # pick and place: the lift's controls, plus the goal relative to the cube (privileged = cube xyz, yaw, goal xyz)
    "place_cube": {
        "env": {"task": "PlaceCubeTarget-Green"},
        "agent": {"discount": 0.98, "hidden_dims": [256, 256], "arm_dims": [0, 1, 2, 5], "gripper": True,
                  "gripper_penalty": 0.05, "utd_ratio": 2,
                  "state_keys": ["state/ee_pos", "state/gripper_width", "state/privileged"],
                  "state_deltas": ["state/privileged[0:3]-state/ee_pos[0:3]",
                                   "state/privileged[4:7]-state/privileged[0:3]"]},
    },
}


# Pixel specialists (issue #17): what the rig sees, no simulator state. Each is its state preset with the
# front and wrist cameras at 128 px through the frozen pretrained trunk (agent.encoder=pretrained), the
# agent's state restricted to proprioception and no state deltas (they read state/privileged).
PIXEL_PROPRIO: dict[str, list[str]] = {
    "peg_insert": ["state/ee_pos"],
    "lift_cube": ["state/ee_pos", "state/ee_quat", "state/gripper_width"],  # ee_quat: lift controls yaw
}


def pixel_preset(name: str) -> dict[str, Any]:
    """``<name>_pixels``: the state preset ``name`` for a pixel specialist (see PIXEL_PROPRIO)."""
    base = TASK_PRESETS[name]
    # measured on LiftCube-Blue (docs/bench/rl.md): 10 critics (RLPD's ensemble) took a BC-warmed pixel run
    # from 0.08 to 0.40 at 15k env steps; batch 128 updates twice as fast as 256 with no loss seen; shifting the
    # cached maps by up to half a cell in critic updates took it from 0.38 to 0.84 at 30k (0.88 at 40k); the same
    # recipe did PegInsert at 0.93 at 30k (100 demos, algo.bc_warmup=2000)
    return {"env": {**base["env"], "privileged_state": False, "cameras": ["front", "wrist"], "image_size": 128},
            "agent": {**base["agent"], "encoder": "pretrained", "state_keys": list(PIXEL_PROPRIO[name]),
                      "state_deltas": [], "num_critics": 10, "batch_size": 128, "feature_shift": 0.5}}


def presets() -> dict[str, dict[str, Any]]:
    """Every ``rl_task`` option: the state presets and their ``_pixels`` variants."""
    return {**TASK_PRESETS, **{f"{n}_pixels": pixel_preset(n) for n in PIXEL_PROPRIO}}


def behaviour_clone(agent: Any, learner: Any, steps: int, what: str, progress: bool = False) -> dict[str, float]:
    """``steps`` behaviour-cloning updates of the encoder, actor and gripper head on the demo buffer (``algo=bc``,
    and ``algo.bc_warmup`` before online RL; ``what`` names the setting in messages); returns the BC loss over
    the first and last tenth of the steps."""
    if len(learner.demo) == 0:
        raise ValueError(f"{what} needs demos (demos.num > 0 or demos.store=...)")
    from tqdm import trange

    losses = [agent.bc_update(learner.demo.sample(agent.cfg.batch_size, learner.rng))["bc_loss"]
              for _ in trange(int(steps), disable=not progress, desc=f"BC ({what})")]
    k = max(1, len(losses) // 10)
    out = {"steps": len(losses), "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:]))}
    log.info("%s: %d BC steps, loss %.4f -> %.4f", what, out["steps"], out["loss_first"], out["loss_last"])
    return out


def register() -> None:
    """Register the app config, its ``role`` and ``algo`` groups and the ``rl_task`` presets in hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="flywheel_rl", node=RLAppConfig)
    for group, options in (("role", ROLES), ("algo", ALGOS)):
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)
    for name, preset in presets().items():
        cs.store(group="rl_task", name=name, node=preset, package="_global_")
    cs.store(group="rl_task", name="none", node={}, package="_global_")


def check_overrides(overrides: list[str]) -> None:
    """Fail with the new key for a key of the old (union) form or a field of another role or algorithm."""
    from flywheel.overrides import check_overrides as check

    check("flywheel-rl", overrides, {"role": ("local", ROLES), "algo": ("hil_serl", ALGOS)}, MOVED)


def compose(overrides: list[str]) -> Any:
    """The app's config from a command line (checked, then composed by hydra) outside the hydra app."""
    from flywheel.overrides import compose_app

    return compose_app("flywheel_rl", check_overrides, register, overrides)


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (``results.json``'s ``config``) in the current form; one from before the groups is converted,
    and ``env`` keys added since it was saved (``env.kind``, ``env.reset``...) get their defaults."""
    if isinstance(saved.get("env"), dict):
        saved = {**saved, "env": {**asdict(EnvConfig()), **saved["env"]}}
    if isinstance(saved.get("algo"), dict) and saved["algo"].get("name") in ALGOS:  # algo keys added since
        saved = {**saved, "algo": {**asdict(ALGOS[saved["algo"]["name"]]()), **saved["algo"]}}
    if not isinstance(saved.get("role"), str):
        return saved
    top = {k: v for k, v in saved.items() if k not in MOVED and k not in ("role", "algo")}
    old = {new: saved[k] for k, new in MOVED.items() if k in saved}
    role, algo = saved["role"], saved.get("algo", "hil_serl")
    if role not in ROLES or algo not in ALGOS:
        raise ValueError(f"saved config: role={role!r} algo={algo!r} (roles {list(ROLES)}, algos {list(ALGOS)})")
    groups = {"role": (role, ROLES[role]), "algo": (algo, ALGOS[algo])}
    pick = {g: {**asdict(c()), "name": n, **{f.name: old[f"{g}.{f.name}"] for f in fields(c) if f"{g}.{f.name}" in old}}
            for g, (n, c) in groups.items()}
    transport = {**saved.get("transport", {}), **({"send_every": old["transport.send_every"]}
                                                   if "transport.send_every" in old else {})}
    return {**top, **pick, "transport": transport}


def actor_reward(cfg: Any, env: Any) -> tuple[str, Any, Any]:
    """The actor's ``(reward_source, reward_fn)`` and the reward function that hears the operator's verdicts (a
    :class:`~flywheel.rl.reward_refine.RefiningReward`, or None). On the rig (``env.kind=rig``) the env already runs
    the reward classifier as its success test (announcing ``success``, and with ``algo.review=operator`` asking the
    operator first), so the actor reads the env's success instead of running the classifier a second time."""
    if str(getattr(cfg.env, "kind", "sim")) == "rig":
        fn = getattr(env.unwrapped, "reward_fn", None)
        return "success", None, fn if hasattr(fn, "verdict") else None
    fn = reward_fn(cfg, env)
    return str(cfg.algo.reward), fn, fn if hasattr(fn, "verdict") else None


def eval_env_for(cfg: Any, env: Any) -> Any:
    """The evaluation env. On the rig its success test is the training env's classifier (the same weights, refined
    or not, without the operator's review: evaluation only reads it)."""
    fn = getattr(env.unwrapped, "reward_fn", None)
    if str(getattr(cfg.env, "kind", "sim")) != "rig" or fn is None:
        return make_env(cfg)
    from flywheel.rl.reward_classifier import ClassifierReward

    return make_env(cfg, rig_reward=ClassifierReward(fn.model))


def run(cfg: Any) -> dict[str, Any]:
    """Run one role of the app with a composed config; returns the results written to results.json."""
    import torch

    from flywheel.rl.actor import Actor
    from flywheel.rl.learner import Learner
    from flywheel.rl.loops import run_actor, serve, train_local

    r, a = cfg.role, cfg.algo
    role, algo = getattr(r, "name", None), getattr(a, "name", None)
    if role not in ROLES:
        raise ValueError(f"role={role!r}: use one of {', '.join(ROLES)}")
    if algo not in ALGOS:
        raise ValueError(f"algo={algo!r}: use one of {', '.join(ALGOS)}")
    if role == "actor" and algo != "hil_serl":
        raise ValueError(f"role=actor runs algo=hil_serl only (algo={algo} trains offline: role=local)")
    torch.set_num_threads(int(cfg.torch_threads))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(cfg, training=True)
    agent = build_agent(cfg, env)
    rng_seed = int(cfg.seed)
    results: dict[str, Any] = {"role": role, "algo": algo, "task": cfg.env.task, "seed": rng_seed}
    if cfg.agent.encoder == "pretrained":  # which frozen features the buffers hold
        results["pretrained_encoder"] = env.featurizer.encoder_id

    if role == "actor":
        from flywheel.rl.transport import ActorEndpoint

        try:
            source, fn, refining = actor_reward(cfg, env)
            if refining is not None and int(a.refine.every) > 0:
                raise ValueError("algo.refine.every > 0 refines the classifier on the demo buffer: role=local only "
                                 "(a networked actor can still relabel: algo.refine.every=0)")
            actor = Actor(env, agent, intervener=make_intervener(cfg, env), reward_source=source,
                          reward_fn=fn, seed=rng_seed, name=r.actor_name,
                          recorder=make_recorder(cfg, env), reviewer=make_reviewer(cfg))
            t0 = time.time()
            tcfg = transport_config(cfg, agent)
            with ActorEndpoint(tcfg, r.actor_name) as ep:
                run_actor(actor, ep, int(cfg.total_steps), send_every=int(tcfg.send_every), progress=cfg.progress,
                          random_steps=int(cfg.learner.random_steps), rate_hz=float(r.rate_hz))
                results.update(sent=ep.sent, dropped=ep.dropped, **ep.counters)
        finally:
            env.close()  # the rig env's ROS node goes with it
        results.update(env_steps=actor.env_steps, episodes=actor.episodes,
                       steps_per_s=actor.env_steps / max(time.time() - t0, 1e-9))
        if refining is not None:  # the operator's verdicts and their frames, kept for an offline refinement
            results["reward_review"] = dict(refining.counts)
            if refining.save_dir is not None:
                refining.save(refining.save_dir)
        _write_results(out / f"results_{r.actor_name}.json", results)
        return results

    learner = Learner(agent, learner_config(cfg), logdir=out, seed=rng_seed)
    ckpt = out / "checkpoint"
    resumed = False
    if r.resume and (ckpt / "state.json").exists():
        learner.load(ckpt)
        resumed = True
        log.info("resumed from %s at env step %d", ckpt, learner.env_steps)
    if not resumed:
        demos, demo_stats = load_demos(cfg, env, agent)
        results.update(demo_stats)
        if demos is not None:
            agent.fit_state_normalizer(demos)
            learner.add_demos(demos)
        if algo == "hil_serl" and int(a.bc_warmup) > 0:
            results["bc_warmup"] = behaviour_clone(agent, learner, int(a.bc_warmup), "algo.bc_warmup", cfg.progress)
    eval_env = eval_env_for(cfg, env)
    eval_actor = Actor(eval_env, agent, seed=rng_seed + 100, name="eval")
    t0 = time.time()
    review_counts = None
    if algo == "bc":
        behaviour_clone(agent, learner, int(a.steps), "algo=bc", cfg.progress)
    elif role == "local":
        source, fn, refining = actor_reward(cfg, env)
        if refining is not None:  # a refining classifier: the demo buffer's frames are its base set
            refining.set_base(learner.demo)
            review_counts = refining.counts
        actor = Actor(env, agent, intervener=make_intervener(cfg, env), reward_source=source,
                      reward_fn=fn, seed=rng_seed, name=r.actor_name,
                      recorder=make_recorder(cfg, env), reviewer=make_reviewer(cfg))
        train_local(learner, actor, int(cfg.total_steps), eval_actor=eval_actor, checkpoint_dir=ckpt,
                    progress=cfg.progress)
        if refining is not None and refining.save_dir is not None:  # the verdicts since the last refinement too
            refining.save(refining.save_dir)
    else:  # learner
        from flywheel.rl.transport import LearnerEndpoint

        tcfg = transport_config(cfg, agent)
        with LearnerEndpoint(tcfg) as ep:
            serve(learner, ep, int(cfg.total_steps), weights_period_s=tcfg.weights_period_s,
                  checkpoint_dir=ckpt, eval_actor=eval_actor, progress=cfg.progress)
            results.update(received=ep.received, **ep.counters)
    train_s = time.time() - t0
    final = eval_actor.evaluate(int(r.final_eval_episodes), seed=1_000_000)
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
    results.update(reward_check_summary(eps))
    if review_counts is not None:  # the operator's verdicts the run used, and what they did
        results["reward_review"] = dict(review_counts)
    learner.plot(out / "learning_curve.png", title=f"{cfg.env.task} {algo}")
    learner.close()
    _write_results(out / "results.json", results)
    env.close()
    eval_env.close()
    return results


def reward_check_summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """A classifier reward in sim, over the training episodes that checked it (``extra``, see
    ``Actor._reward_check``): how often per 100 episodes it fired, fired wrongly and missed; {} when none did."""
    checks = [h["extra"] for h in episodes if h.get("extra")]
    if not checks:
        return {}
    keys = sorted({k for c in checks for k in c})
    return {"reward_check_episodes": len(checks),
            "reward_check_per_100_episodes": {k: 100.0 * float(np.mean([c.get(k, 0.0) for c in checks])) for k in keys}}


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    except ValueError:
        return asdict(cfg)


def _write_results(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
