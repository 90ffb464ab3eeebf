"""``flywheel-vla-rl``: on-policy RL / preference learning of a generalist as a hydra app.

Examples::

    flywheel-vla-rl algo=rloo policy=outputs/g0 tasks=[PegInsert,LiftCube-Blue] env_steps=30000
    flywheel-vla-rl algo=ppo prm.enabled=true tasks=[PegInsert]          # PPO + process reward
    flywheel-vla-rl algo=gfpo algo.adaptive=true algo.group_size=16
    flywheel-vla-rl algo=dpo policy=outputs/g0 registry=outputs/registry  # a candidate for the gate
    flywheel-vla-rl algo=grpo cluster.kind=ray cluster.workers=4 num_envs=8  # rollout waves on Ray workers

``policy``: a compact VLA checkpoint (its frozen features, its own head as the mean / the flow),
an RL policy directory written by this app (continue training), or empty: a state-only policy
from scratch on ``env.state_keys`` (sim, privileged state). ``algo`` picks a config group (one
per algorithm: ``algo.<field>=`` sets its fields). Outputs in ``out_dir``: ``checkpoint/``
(resumed automatically), ``tb/``, ``curve.png``, ``report.md``, ``results.json``, ``policy/`` (the best held-out
evaluation's policy; ``train.keep=last``: the last), ``best/`` and, from a generalist, ``generalist/``: the
generalist checkpoint with the kept head (``policy.load``,
the policy node, the gate's evaluation). With ``registry=DIR`` that (or a state policy's ``policy/``) is
registered there as a candidate (not promoted: the promotion gate decides). ``cluster.kind=ray`` runs the rollout waves (``num_envs`` envs each) on
``cluster.workers`` Ray workers, with the serial run's batches (:mod:`flywheel.vla_rl.ray_engine`).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.cluster import ClusterConfig
from flywheel.rl.app import InterventionConfig
from flywheel.vla_rl import ALGORITHMS, algorithm
from flywheel.vla_rl.prm import PRMConfig
from flywheel.vla_rl.trainer import TrainConfig

log = logging.getLogger("flywheel.vla_rl")


@dataclass
class HeadConfig:
    kind: str = "gaussian"  # gaussian | flow
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    value_hidden: list[int] = field(default_factory=lambda: [128, 128])
    init_log_std: float = -1.0  # gaussian
    fixed_dims: list[int] = field(default_factory=list)  # gaussian: action dims executed at the mean (6: gripper)
    sample_executed: bool = False  # gaussian: sample (and score) only the chunk's executed steps (exec_horizon)
    train: str = "all"  # a generalist's head: all of it | mlp (the mlp head's MLP only, keypoints frozen)
    steps: int = 5  # flow: denoising steps
    noise_level: float = 0.5  # flow: SDE noise
    horizon: int = 0  # 0: the generalist's chunk horizon (1 for a state policy from scratch)
    action_dim: int = 7


@dataclass
class EnvConfig:
    cameras: list[str] = field(default_factory=list)  # [] -> state only (a generalist's spec overrides it)
    image_size: int = 64
    privileged_state: bool = True
    state_keys: list[str] = field(default_factory=lambda: ["state/ee_pos", "state/privileged"])
    factory: str = ""  # "module:function" (task, num_envs) -> vector env, instead of sim.make_vec
    max_steps: int = 0  # 0: the env's own limit


@dataclass
class BCInitConfig:
    """Behaviour cloning of a fresh policy on scripted-expert demos before RL (a state-only G0)."""

    demos: int = 0  # successful episodes per task (0: no warm start)
    noise: float = 0.3  # the scripted expert's noise
    steps: int = 2000
    lr: float = 1e-3


@dataclass
class OperatorConfig(InterventionConfig):
    """``flywheel-rl``'s simulated operator (sim.SimulatedIntervener), here taking over from a straying policy during
    training rollouts only (held-out evaluation is never assisted). Its corrections become DPO's intervention
    pairs; for the on-policy methods its decisions leave the ratio terms and its chunks are fitted after each
    update (``algo.operator_coef``, :class:`flywheel.vla_rl.common.Algorithm`). Off by default; otherwise as
    iRe-VLA's stage-1 operator."""

    enabled: bool = False
    criterion: str = "distance"
    max_interventions: int = 2


@dataclass
class VlaRLConfig:
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"algo": "rloo"}])
    algo: Any = None  # the config group
    policy: str = ""
    tasks: list[str] = field(default_factory=lambda: ["PegInsert"])
    task_weights: list[float] = field(default_factory=list)
    env_steps: int = 30_000
    seed: int = 0
    num_envs: int = 16
    exec_horizon: int = 0  # executed actions per chunk (0: the whole chunk)
    out_dir: str = "outputs/vla_rl"
    record_to: str = ""  # an EpisodeStore: training episodes go there (source=rl)
    record_collection: str = ""  # their collection name (flywheel.distill.collect.select finds them by it)
    registry: str = ""  # a ModelRegistry root: register the result as a candidate
    registry_parent: str = ""  # the id of the starting generalist in that registry
    torch_threads: int = 1
    device: str = "cpu"
    head: HeadConfig = field(default_factory=HeadConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    bc_init: BCInitConfig = field(default_factory=BCInitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # cluster.kind=ray: the waves on Ray workers
    intervention: OperatorConfig = field(default_factory=OperatorConfig)  # an operator corrects training rollouts


def make_config(algo: str, overrides: Sequence[str] = ()) -> Any:
    """``flywheel-vla-rl``'s config without hydra's global state, for callers inside another app (iRe-VLA's
    stage 1): the defaults, ``algo``'s group, then ``overrides`` as ``key=value`` (unknown keys are errors)."""
    from omegaconf import OmegaConf

    _, cfg_cls = algorithm(algo)
    base = OmegaConf.structured(VlaRLConfig)
    base.algo = {"name": algo, **asdict(cfg_cls())}
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


def register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="flywheel_vla_rl", node=VlaRLConfig)
    for name in ALGORITHMS:
        _, cfg_cls = algorithm(name)
        cs.store(group="algo", name=name, node={"name": name, **asdict(cfg_cls())})


# ------------------------------------------------------------------ resuming
# what may change between a run and its resumption: the budget, where and how fast it runs, how often it is
# evaluated and where its results go. Anything else (the algorithm, its hyperparameters, the tasks, the head)
# would make the resumed run a mixture of two experiments.
RESUMABLE = ("env_steps", "torch_threads", "device", "cluster", "out_dir", "registry", "registry_parent",
             "record_to", "record_collection", "train.progress", "train.eval_every", "train.eval_episodes",
             "train.final_eval_episodes")
CONFIG_FILE = "config.json"


def saved_config(out: str | Path) -> dict[str, Any] | None:
    """The config a run in ``out`` started with: its ``config.json``, or (a run from before that file) the copy in
    its ``results.json``; None where no run has got as far as a checkpoint or results (a new directory, or a run
    that stopped before its first iteration: starting afresh there mixes nothing)."""
    out = Path(out)
    if not ((out / "checkpoint" / "state.json").is_file() or (out / "results.json").is_file()):
        return None
    for path, key in ((out / CONFIG_FILE, None), (out / "results.json", "config")):
        if path.is_file():
            d = json.loads(path.read_text())
            return d.get(key) if key else d
    return None


def check_resumable(cfg: Any, out: str | Path) -> dict[str, Any] | None:
    """Refuse to continue a run in ``out`` that was started with other settings (a clear error naming them);
    nothing is changed on disk. Returns the run's saved config (:func:`saved_config`; None: a new run)."""
    from omegaconf import OmegaConf

    from flywheel.job import config_changes

    saved = saved_config(out)
    if saved is None:
        return None
    changes = config_changes(saved, OmegaConf.to_container(cfg, resolve=True), RESUMABLE, both_sides_only=True)
    if changes:
        raise ValueError(f"{out} holds a run started with other settings; resuming it would mix two experiments. "
                         f"Use a new out_dir, or the run's own settings. Differences (started -> now):\n  "
                         + "\n  ".join(changes))
    return saved


# ------------------------------------------------------------------ building
def make_operator_factory(cfg: Any, head_kind: str):
    """``env -> sim.SimulatedIntervener`` when ``intervention.enabled`` (else None), after checking it fits."""
    i = cfg.intervention
    if not i.enabled:
        return None
    if head_kind != "gaussian":
        raise ValueError("intervention.enabled=true needs head.kind=gaussian (an operator's chunk has a density "
                         "under the Gaussian; the flow head's likelihood needs its own denoising chain)")
    if cfg.env.factory:
        raise ValueError("intervention.enabled=true needs the sim's envs (the operator is its scripted expert); "
                         f"env.factory={cfg.env.factory!r}")
    from flywheel.rl.build import make_intervener

    return lambda env: make_intervener(cfg, env)


def make_vec_factory(cfg: Any, encoder_spec: Any = None):
    e = cfg.env
    if e.factory:
        mod, _, fn = e.factory.partition(":")
        if not fn:
            raise ValueError(f"env.factory={e.factory!r}: write it as 'package.module:function'")
        return getattr(importlib.import_module(mod), fn)
    from flywheel.vla_rl.engine import make_sim_vec

    kw: dict[str, Any] = {"privileged_state": bool(e.privileged_state)}
    if encoder_spec is not None:  # the generalist's cameras and image size
        cams = encoder_spec.cameras
        kw.update(cameras=tuple(c.name for c in cams), image_size=(cams[0].height, cams[0].width) if cams else 64)
    else:
        kw.update(cameras=tuple(e.cameras), image_size=int(e.image_size))
    return make_sim_vec(kw)


def build(cfg: Any) -> tuple[Any, Any]:
    """(policy, vector env factory) from the config."""
    from omegaconf import OmegaConf

    from flywheel.vla_rl.checkpoint import build_policy, is_rl_policy, load_policy

    head = OmegaConf.to_container(cfg.head, resolve=True)
    kind = head.pop("kind")
    h = {"kind": kind, "hidden": head["hidden"], "value_hidden": head["value_hidden"],
         "horizon": head["horizon"], "action_dim": head["action_dim"]}
    h.update({"init_log_std": head["init_log_std"], "fixed_dims": head["fixed_dims"]} if kind == "gaussian" else
             {"steps": head["steps"], "noise_level": head["noise_level"]})
    if kind == "gaussian" and head["sample_executed"]:
        if not int(cfg.exec_horizon):
            raise ValueError("head.sample_executed=true needs exec_horizon > 0 (the executed steps of a chunk)")
        h["sampled_steps"] = int(cfg.exec_horizon)
    if cfg.policy and is_rl_policy(cfg.policy):
        pol = load_policy(cfg.policy, cfg.device)
    elif cfg.policy:
        h["horizon"], h["action_dim"] = 0, 0  # the generalist's
        pol = build_policy(h, {"type": "checkpoint", "path": str(cfg.policy)}, cfg.device)
    else:
        vec = make_vec_factory(cfg)(cfg.tasks[0], 2)
        obs, _ = vec.reset(seed=[int(cfg.seed), int(cfg.seed) + 1])
        keys = list(cfg.env.state_keys)
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(f"env.state_keys {missing} are not in the observation (has {sorted(obs)})")
        dims = [int(np.prod(obs[k].shape[1:])) for k in keys]
        h["horizon"] = int(h["horizon"]) or 1
        pol = build_policy(h, {"type": "state", "keys": keys, "dims": dims}, cfg.device)
        pol.encoder.fit(obs)
        pol.encoder.scale.clamp_(min=0.05)
        vec.close()
    if head["train"] != "all":
        if not hasattr(pol.encoder, "set_trainable"):
            raise ValueError(f"head.train={head['train']!r} needs a generalist checkpoint (policy=...); a state "
                             "policy's head trains whole")
        pol.encoder.set_trainable(str(head["train"]))
    return pol, make_vec_factory(cfg, getattr(pol.encoder, "spec", None))


def expert_demos(cfg: Any, policy: Any, n: int, exec_horizon: int, noise: float = 0.3) -> list[tuple[Any, Any]]:
    """``n`` successful scripted-expert episodes per task, through :mod:`flywheel.rollout`: per
    decision (every ``exec_horizon`` steps) the policy's features and the expert's next H actions
    (the last repeated past the end) - (features (T, D), chunks (T, H, A)) per episode."""
    import torch

    import sim
    from flywheel.rollout import Rollout

    out = []
    h = policy.horizon
    for task in cfg.tasks:
        vec = make_vec_factory(cfg, getattr(policy.encoder, "spec", None))(task, 1)
        env = vec.envs[0]
        expert = sim.expert(env, noise=noise, seed=int(cfg.seed) + 7)
        instr = str(getattr(env.unwrapped, "instruction", task))
        got, seed = 0, int(cfg.seed) + 500_000
        while got < n and seed < int(cfg.seed) + 500_000 + 20 * n:
            steps: list[Any] = []
            ep = Rollout(env, expert, max_steps=cfg.env.max_steps or None, on_step=steps.append).run(seed)
            seed += 1
            if not ep.success:
                continue
            idx = list(range(0, len(steps), exec_horizon))
            batch = {k: np.stack([steps[i].obs[k] for i in idx]) for k in steps[0].obs}
            acts = np.stack([s.action for s in steps]).astype(np.float32)
            chunks = np.stack([acts[np.minimum(np.arange(i, i + h), len(acts) - 1)] for i in idx])
            norm = getattr(policy.encoder, "normalize_actions", None)
            ch = torch.as_tensor(norm(chunks) if norm else chunks)
            out.append((policy.features({**batch, "instruction": [instr] * len(idx)}), ch[..., : policy.action_dim]))
            got += 1
        vec.close()
    if not out:
        raise RuntimeError("the scripted expert gave no successful episode")
    return out


def bc_init(policy: Any, demos: list[tuple[Any, Any]], steps: int, lr: float, seed: int = 0) -> float:
    """Fit the policy's mean (Gaussian) or its flow (flow head) to the demos; returns the last loss."""
    import torch

    feats = torch.cat([f for f, _ in demos])
    acts = torch.cat([a for _, a in demos]).float()
    g = torch.Generator().manual_seed(seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(len(feats), (min(256, len(feats)),), generator=g)
        if hasattr(policy, "flow_loss"):
            loss = policy.flow_loss(feats[idx], acts[idx])
        else:
            loss = ((policy.dist(feats[idx])[0] - acts[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def export_generalist(rl_policy: str | Path, out: str | Path) -> Path:
    """The generalist checkpoint of an RL policy trained from one: the compact VLA with the trained head as its
    action head (the Gaussian's mean; execution is deterministic), for ``policy.load``, the policy node and
    fine-tuning. A flow head exports its trained velocity network (the same module)."""
    from flywheel.vla_rl.checkpoint import load_policy

    return save_generalist(load_policy(rl_policy), out, name=str(rl_policy))


def save_generalist(policy: Any, out: str | Path, name: str = "the policy") -> Path:
    """:func:`export_generalist` of a policy in memory (the end of a run: no reload)."""
    model = getattr(policy.encoder, "model", None)
    if model is None:
        raise ValueError(f"{name}: a state-only RL policy has no generalist to export (train it with "
                         "policy=<a compact checkpoint>)")
    out = Path(out)
    model.save_pretrained(out)
    return out


def run(cfg: Any, store: Any = None) -> dict[str, Any]:
    """Train ``cfg.algo`` as configured; ``store``: an open EpisodeStore for the training episodes (instead of
    opening ``cfg.record_to``)."""
    import torch

    from flywheel.vla_rl.engine import RolloutEngine, StoreRecorder
    from flywheel.vla_rl.trainer import Trainer

    name = cfg.algo.name
    algo_cls, algo_cfg_cls = algorithm(name)
    from omegaconf import OmegaConf

    a = {k: v for k, v in OmegaConf.to_container(cfg.algo, resolve=True).items() if k != "name"}
    acfg = algo_cfg_cls(**a)
    make_operator = make_operator_factory(cfg, str(cfg.head.kind))  # checked before anything is built
    torch.set_num_threads(int(cfg.torch_threads))
    torch.manual_seed(int(cfg.seed))
    cluster = ClusterConfig(**OmegaConf.to_container(cfg.cluster, resolve=True)) if "cluster" in cfg else None
    if cluster is not None:
        cluster.validate()
    out = Path(cfg.out_dir)
    new_run = check_resumable(cfg, out) is None  # or one that never got going
    out.mkdir(parents=True, exist_ok=True)
    if new_run:  # these are its settings
        (out / CONFIG_FILE).write_text(json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=2, default=str))
    policy, make_vec = build(cfg)
    exec_h = int(cfg.exec_horizon) or policy.horizon
    recorder, own_store = None, None
    if store is None and cfg.record_to:
        from flywheel.data import EpisodeStore

        probe = make_vec(cfg.tasks[0], 1)
        spec = probe.envs[0].unwrapped.rig_spec
        probe.close()
        store = own_store = EpisodeStore(cfg.record_to, mode="a", spec=spec)
    if store is not None:
        recorder = StoreRecorder(store, name, policy_version=f"vla_rl:{name}:{out}",
                                 collection=str(cfg.record_collection))
    engine = RolloutEngine(policy, make_vec, list(cfg.tasks), group_size=acfg.group_size,
                           num_envs=max(int(cfg.num_envs), acfg.group_size), exec_horizon=exec_h,
                           max_steps=int(cfg.env.max_steps) or None,
                           task_weights=list(cfg.task_weights) or None, seed=int(cfg.seed), recorder=recorder,
                           cluster=cluster, make_operator=make_operator)
    resuming = (out / "checkpoint" / "state.json").exists()
    if int(cfg.bc_init.demos) > 0:  # the warm start is the reference policy: kept in out/init for resuming
        from flywheel.vla_rl.checkpoint import load_policy, save_policy

        if (out / "init").is_dir():
            policy.load_state_dict(load_policy(out / "init", cfg.device).state_dict())
        else:
            demos = expert_demos(cfg, policy, int(cfg.bc_init.demos), exec_h, float(cfg.bc_init.noise))
            loss = bc_init(policy, demos, int(cfg.bc_init.steps), float(cfg.bc_init.lr), int(cfg.seed))
            log.info("behaviour cloning on %d demos: loss %.4f", len(demos), loss)
            save_policy(policy, out / "init", {"bc_demos": len(demos), "bc_loss": loss})
    algo = algo_cls(policy, acfg, seed=int(cfg.seed))
    prm = None
    if cfg.prm.enabled:
        from flywheel.vla_rl.prm import ProgressModel

        prm = ProgressModel(policy.feature_dim, tuple(cfg.prm.hidden))
        if not resuming:
            feats = [f for f, _ in expert_demos(cfg, policy, int(cfg.prm.demos), exec_h)]
            mse = prm.fit_episodes(feats, steps=int(cfg.prm.steps), lr=float(cfg.prm.lr),
                                   batch_size=int(cfg.prm.batch_size), seed=int(cfg.seed))
            log.info("process reward model: fit on %d demos, MSE %.4f", len(feats), mse)
    tcfg = TrainConfig(**{**OmegaConf.to_container(cfg.train, resolve=True), "env_steps": int(cfg.env_steps)})
    info = {"policy": str(cfg.policy), "seed": int(cfg.seed), "prm": bool(cfg.prm.enabled),
            "head": str(cfg.head.kind), "config": OmegaConf.to_container(cfg, resolve=True)}
    trainer = Trainer(policy, algo, engine, tcfg, out, prm=prm, prm_coef=float(cfg.prm.coef) if prm else 0.0,
                      prm_gamma=float(cfg.prm.gamma), run_info=info)
    t0 = time.time()
    try:
        results = trainer.run()
    finally:
        trainer.close()
        if own_store is not None:
            own_store.close()
    results["wall_seconds"] = time.time() - t0
    deployable = out / "policy"
    if getattr(policy.encoder, "model", None) is not None:  # a generalist's head trained: deploy it as one
        deployable = results["generalist"] = save_generalist(policy, out / "generalist")
    if cfg.registry:
        results["candidate_id"] = register_candidate(cfg, results, Path(deployable))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def register_candidate(cfg: Any, results: dict[str, Any], path: Path) -> str:
    """Register the trained policy in the model registry as a candidate (the gate promotes)."""
    from flywheel.registry import ModelRecord, ModelRegistry

    reg = ModelRegistry(cfg.registry)
    kept = results.get("kept") or results["final_eval"]  # the policy at ``path``: train.keep's choice
    rid = f"vla_rl-{cfg.algo.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    reg.register(ModelRecord(
        id=rid, path=str(path), parent=cfg.registry_parent or None,
        data={"source": "rl", "algo": cfg.algo.name, "tasks": list(cfg.tasks), "env_steps": results["env_steps"]},
        metrics={"success": kept["success"], "per_task": kept["per_task"], "env_steps": kept["env_steps"],
                 "initial_success": results["initial_eval"]["success"],
                 "final_success": results["final_eval"]["success"]},
        notes="candidate from flywheel-vla-rl",
    ))
    return rid


def main() -> None:
    import hydra

    register()

    @hydra.main(version_base=None, config_name="flywheel_vla_rl")
    def _app(cfg: Any) -> None:
        logging.basicConfig(level=logging.INFO)
        res = run(cfg)
        keep = ("algo", "tasks", "env_steps", "iterations", "env_steps_per_s", "groups_rejected_mean",
                "update_compute_saved", "update_compute_saved_by_filtering", "candidate_id", "wall_seconds")
        print(json.dumps({**{k: res.get(k) for k in keep}, "initial_success": res["initial_eval"]["success"],
                          "final_success": res["final_eval"]["success"], "kept": res.get("kept")}, indent=2,
                         default=str))

    _app()


if __name__ == "__main__":
    main()
