"""iRe-VLA (Guo et al. 2025): alternate online RL with the VLM frozen and supervised learning of the whole model.

* Stage 0: supervised fine-tuning on expert demonstrations (the pretrained generalist).
* Stage 1, per new task: online RL with the backbone **frozen**. Only the action
  head and a critic head train, on **cached backbone latents**: every recorded
  step is encoded once by the frozen backbone (``latents/<episode>.npz``), and all
  head/critic updates run on the cache (no backbone forward, so CPU-cheap). The
  RL update is advantage-weighted regression (AWR, Peng et al. 2019): the critic
  head regresses the discounted sparse success return, the action head regresses
  the executed action chunks weighted by ``exp(advantage / beta)``. Rollouts use
  Gaussian exploration noise and, like HIL-SERL on the rig, an optional
  (simulated) operator who corrects the policy; every rollout is recorded in the
  store with ``source="rl"``.
* Stage 2: supervised learning of the whole model (full or LoRA) on the expert
  demos plus every RL success so far.

Repeat task by task (:func:`run` builds the resumable job); success on expert,
RL-trained and unseen tasks is evaluated after every stage.

A compact parent (``parent=`` a :mod:`policy.compact` checkpoint) runs both stages on the shared
frozen-encoder feature cache (:mod:`flywheel.distill.ire_compact`; stage 2 with
``method.stage2_finetune=frozen``); the env renders at the checkpoint's own cameras and image size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.distill import collect

log = logging.getLogger(__name__)


@dataclass
class IReVLAConfig:
    # stage 1's learner: awr (advantage-weighted regression of the head on assisted rollouts, the simulated
    # operator correcting) | an on-policy flywheel-vla-rl algorithm (ppo: the paper's; grpo, rloo, ...) on the
    # head of a compact parent for stage1_env_steps, assisted as awr when intervene (the operator's decisions out of
    # the ratios, its chunks fitted) | dpo (GRAPE with the operator's corrections as its state pairs)
    # (flywheel/distill/ire_onpolicy.py)
    stage1: str = "awr"
    stage1_env_steps: int = 20_000
    # flywheel-vla-rl overrides for an on-policy stage 1 (after its own: e.g. algo.lr=1e-5, num_envs=16)
    stage1_overrides: list[str] = field(default_factory=list)
    rl_tasks: list[str] = field(default_factory=lambda: ["PandaRig/PegInsert-v0", "PandaRig/LiftCube-Blue-v0"])
    rl_iterations: int = 3  # collect -> update rounds of stage 1 per task
    episodes_per_iteration: int = 20
    exploration_noise: float = 0.15  # Gaussian std on the arm dims of executed actions
    intervene: bool = True  # simulated operator corrections during stage-1 rollouts (HIL)
    max_interventions: int = 2
    discount: float = 0.95
    beta: float = 0.1  # AWR temperature
    max_weight: float = 20.0
    head_updates: int = 300  # gradient steps on the heads per iteration
    batch_size: int = 64
    head_lr: float = 3e-4
    critic_lr: float = 1e-3
    # stage 2's share of samples from the RL successes: 0 weighs every step equally (the paper: expert demos and
    # RL successes pooled); e.g. 0.5 keeps a few dozen RL successes from drowning among ~1000 expert demos
    stage2_rl_fraction: float = 0.0
    # stage 2's labels from stage 1: successes (every step of the RL successes, the paper's) | operator (the
    # operator's steps of every assisted stage-1 rollout, success or not: HG-DAgger's labels; the policy's own
    # sampled actions are not trained on)
    stage2_rl_labels: str = "successes"
    # how stage2_rl_fraction is spread over the RL episodes: episode (each labelled episode equally, however few of
    # its steps carry a label) | step (each labelled step equally: an operator takeover of 40 steps weighs 20 of 2)
    stage2_rl_weighting: str = "episode"
    stage2_finetune: str = "full"  # full | lora (vla); frozen | partial | full (compact: frozen = cached features)
    device: str = "auto"  # rollouts and evaluation: auto (CUDA when present) | cpu | cuda; stage 2 uses sft.device


class CriticHead:
    """A value head V(latent, proprio) on the frozen backbone's hidden states (TokenLearner pooling + MLP)."""

    def __init__(self, dim: int, proprio_dim: int, hidden: int = 128, num_tokens: int = 4):
        import torch
        from torch import nn

        from policy.heads import TokenLearner

        self.pool = TokenLearner(dim, num_tokens, hidden)
        self.mlp = nn.Sequential(nn.Linear(num_tokens * dim + proprio_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.module = nn.ModuleDict({"pool": self.pool, "mlp": self.mlp})
        self._torch = torch

    def __call__(self, hidden: Any, mask: Any, proprio: Any) -> Any:
        z = self.pool(hidden, mask).flatten(1)
        return self.mlp(self._torch.cat([z, proprio], -1)).squeeze(-1)


def discounted_returns(success: bool, length: int, discount: float) -> np.ndarray:
    """Return-to-go of a sparse terminal success reward."""
    if not success:
        return np.zeros(length, np.float32)
    return (discount ** np.arange(length - 1, -1, -1)).astype(np.float32)


def cache_latents(model: Any, store: Any, episodes: Sequence[int], cache_dir: Path, batch: int = 64) -> None:
    """Encode every step of ``episodes`` once with the frozen backbone (skips episodes already cached).

    The steps come from the store loader (:class:`flywheel.data.loader.EpisodeDataset`): the model's
    cameras and proprio, the instruction and the action chunks with their padding."""
    import torch

    from flywheel.data.loader import EpisodeDataset
    from rig.spec import PROPRIO_KEYS

    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = [e for e in dict.fromkeys(int(e) for e in episodes) if not (cache_dir / f"{e:06d}.npz").exists()]
    if not todo:
        return
    keys = [f"images/{c}" for c in model.spec.camera_names] + list(PROPRIO_KEYS)
    data = EpisodeDataset(store, episodes=todo, obs_keys=keys, horizon=model.spec.action.chunk_horizon,
                          image_cache_mb=0)
    first = 0
    for e in data.episodes:
        r = store.record(e)
        hid, msk, pro, acts, pads = [], [], [], [], []
        with torch.no_grad():
            for s in range(first, first + r.length, batch):
                b = data.__getitems__(np.arange(s, min(s + batch, first + r.length)))
                feat = model.features(b)
                hid.append(feat["hidden"].numpy())
                msk.append(feat["mask"].numpy())
                pro.append(feat["proprio"].numpy())
                acts.append(b["actions"].numpy())
                pads.append(b["action_is_pad"].numpy())
        first += r.length
        f = cache_dir / f"{e:06d}.npz"
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, hidden=np.concatenate(hid), mask=np.concatenate(msk), proprio=np.concatenate(pro),
                 actions=model.normalizer.normalize("actions", np.concatenate(acts).astype(np.float32)),
                 is_pad=np.concatenate(pads), success=np.bool_(bool(r.success)))
        tmp.rename(f)


def load_cache(cache_dir: Path, episodes: Sequence[int], discount: float) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("hidden", "mask", "proprio", "actions", "is_pad", "ret")}
    for e in episodes:
        z = np.load(cache_dir / f"{e:06d}.npz")
        n = len(z["proprio"])
        for k in ("hidden", "mask", "proprio", "actions", "is_pad"):
            parts[k].append(z[k])
        parts["ret"].append(discounted_returns(bool(z["success"]), n, discount))
    width = max(p.shape[1] for p in parts["hidden"])  # token counts differ between instructions: pad
    parts["hidden"] = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in parts["hidden"]]
    parts["mask"] = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts["mask"]]
    return {k: np.concatenate(v) for k, v in parts.items()}


def awr_update(model: Any, critic: CriticHead, data: dict[str, np.ndarray], cfg: Any, seed: int = 0) -> dict[str, float]:
    """Critic regression then advantage-weighted regression of the action head, on cached latents."""
    import torch

    t = {k: torch.as_tensor(v) for k, v in data.items()}
    t["mask"] = t["mask"].bool()
    n = len(t["ret"])
    g = torch.Generator().manual_seed(seed)
    copt = torch.optim.Adam(critic.module.parameters(), lr=cfg.critic_lr)
    aopt = torch.optim.Adam([p for p in model.head.parameters() if p.requires_grad], lr=cfg.head_lr)
    model.head.train()
    closs = aloss = 0.0
    for _ in range(int(cfg.head_updates)):
        i = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        v = critic(t["hidden"][i], t["mask"][i], t["proprio"][i])
        lc = torch.nn.functional.mse_loss(v, t["ret"][i])
        copt.zero_grad()
        lc.backward()
        copt.step()
        with torch.no_grad():
            adv = t["ret"][i] - critic(t["hidden"][i], t["mask"][i], t["proprio"][i])
            w = torch.exp(adv / cfg.beta).clamp(max=cfg.max_weight)
        pred = model.head(t["hidden"][i], t["mask"][i], t["proprio"][i])
        keep = (~t["is_pad"][i]).unsqueeze(-1).float()  # per-sample masked MSE over the chunk
        per = (((pred.float() - t["actions"][i]) ** 2) * keep).sum((1, 2)) / (keep.sum((1, 2)) * pred.shape[-1]).clamp_min(1.0)
        la = (w * per).sum() / w.sum().clamp_min(1e-6)
        aopt.zero_grad()
        la.backward()
        aopt.step()
        closs, aloss = float(lc.detach()), float(la.detach())
    model.head.eval()
    return {"critic_loss": closs, "actor_loss": aloss, "samples": n, "mean_return": float(t["ret"].mean())}


class NoisyVLAAgent:
    """The VLA acting through chunks with Gaussian exploration noise on the arm dims."""

    def __init__(self, model: Any, instruction: str, execute: int, noise: float, seed: int = 0,
                 device: Any = "cpu"):
        from policy.device import resolve_device
        from policy.inference import Policy

        self.policy = Policy(model, device=resolve_device(device))
        self.instruction, self.execute, self.noise = instruction, int(execute), float(noise)
        self.rng = np.random.default_rng(seed)
        self._chunk: np.ndarray | None = None
        self._i = 0

    def reset(self) -> None:
        self._chunk, self._i = None, 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        if self._chunk is None or self._i >= self.execute:
            self._chunk = self.policy.infer({**obs, "instruction": self.instruction})["actions"]
            self._i = 0
        a = self._chunk[min(self._i, len(self._chunk) - 1)].copy()
        self._i += 1
        a[:6] += self.rng.normal(0.0, self.noise, 6).astype(np.float32)
        return np.clip(a, -1.0, 1.0)


class VLALearner:
    """Stage 1's learner for a VLM-family parent: backbone frozen, latents cached per episode, AWR."""

    def __init__(self, path: str | Path) -> None:
        from policy.model import VLA

        self.model = VLA.from_checkpoint(path)
        self.model.freeze_backbone()
        self._critic = CriticHead(int(self.model.backbone.config.get_text_config().hidden_size),
                                  self.model.spec.proprio_dim)
        self.critic = self._critic.module

    def update(self, store: Any, episodes: Sequence[int], out_dir: Path, cfg: Any, seed: int = 0) -> dict[str, float]:
        cache_latents(self.model, store, episodes, out_dir / "latents")
        return awr_update(self.model, self._critic, load_cache(out_dir / "latents", episodes, cfg.discount), cfg,
                          seed=seed)

    def finish(self) -> None:
        self.model.unfreeze_backbone()  # the checkpoint is a normal (trainable) generalist again


def rl_stage(parent: str | Path, store: Any, task: str, out_dir: Path, cfg: Any, g: Any, seed: int = 0,
             progress: bool = True, feature_root: str = "") -> tuple[Path, dict[str, Any]]:
    """Stage 1 on ``task``: frozen backbone; rollouts -> latents cache -> AWR on the heads. Resumable.

    A compact parent (:mod:`flywheel.distill.ire_compact`) trains its head on the shared feature cache
    (``feature_root``, stage 2's ``sft.feature_root``: "" is ``features/`` next to the store);
    ``cfg.stage1`` other than awr runs an on-policy algorithm instead (:mod:`flywheel.distill.ire_onpolicy`)."""
    import torch
    from safetensors.torch import load_file, save_file

    import sim
    from flywheel.distill.compact import is_compact
    from flywheel.distill.generalist import env_kwargs
    from flywheel.distill.ire_onpolicy import check_stage1, onpolicy_stage

    if check_stage1(str(getattr(cfg, "stage1", "awr"))) != "awr":
        return onpolicy_stage(parent, store, task, out_dir, cfg, g, seed=seed, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "policy"
    summary_file = out_dir / "rl_stage.json"
    if summary_file.exists() and (final / "policy_config.json").exists():
        return final, json.loads(summary_file.read_text())
    state_file = out_dir / "rl_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"iteration": 0, "history": []}
    start = out_dir / "iter_latest"
    src = start if (start / "policy_config.json").exists() else parent
    if is_compact(parent):
        from flywheel.distill.ire_compact import CompactLearner

        learner: Any = CompactLearner(src, parent_finetune=json.loads(
            (Path(parent) / "policy_config.json").read_text())["config"]["finetune"], feature_root=feature_root)
    else:
        learner = VLALearner(src)
    model = learner.model
    if (out_dir / "critic.safetensors").exists():
        learner.critic.load_state_dict(load_file(str(out_dir / "critic.safetensors")))
    torch.manual_seed(seed)
    env = collect.make_env(task, privileged_state=False, **env_kwargs(g, parent))
    try:
        inst = env.unwrapped.instruction
        for it in range(int(state["iteration"]), int(cfg.rl_iterations)):
            name = f"ire/{out_dir.name}/{task}/iter{it}"
            agent = NoisyVLAAgent(model, inst, g.execute, cfg.exploration_noise, seed=seed + it,
                                  device=getattr(cfg, "device", "cpu"))
            interv = None
            if cfg.intervene:
                interv = sim.SimulatedIntervener(env, sim.expert(env, noise=0.3, seed=seed + it),
                                                 max_interventions=int(cfg.max_interventions))
            seeds = range(seed * 100_000 + it * 1000, seed * 100_000 + it * 1000 + int(cfg.episodes_per_iteration))
            st = collect.record_rollouts(store, env, agent, seeds, source="rl", collection=name,
                                         policy_version=f"{out_dir.name}/iter{it}", intervener=interv,
                                         progress=progress)
            model.to("cpu", torch.float32)  # the latent cache and the AWR updates run on the CPU
            eps = collect.select(store, task=task, source="rl", success=None,
                                 collection=[f"ire/{out_dir.name}/{task}/iter{i}" for i in range(it + 1)])
            m = learner.update(store, eps, out_dir, cfg, seed=seed + it)
            # a collection found in the store (a resumed or copied run) is reused: its success counts, its
            # interventions are the new episodes' only
            rec = {"iteration": it, "rollout_success": st.success_rate_all, "interventions": st.intervened_steps,
                   "reused_episodes": st.skipped, "episodes": len(eps), **m}
            log.info("iRe-VLA stage 1 %s: %s", task, rec)
            tmp = out_dir / "iter_tmp"
            model.save_pretrained(tmp)
            save_file({k: v.contiguous() for k, v in learner.critic.state_dict().items()},
                      str(out_dir / "critic.safetensors"))
            import shutil

            shutil.rmtree(start, ignore_errors=True)
            tmp.rename(start)
            state = {"iteration": it + 1, "history": [*state["history"], rec]}
            state_file.write_text(json.dumps(state, indent=2))
    finally:
        env.close()
    learner.finish()
    model.save_pretrained(final)
    rl_eps = collect.select(store, task=task, source="rl", success=None,
                            collection=[f"ire/{out_dir.name}/{task}/iter{i}" for i in range(int(cfg.rl_iterations))])
    summary = {"task": task, "history": state["history"], "episodes": rl_eps,
               "successes": [i for i in rl_eps if store.record(i).success]}
    summary_file.write_text(json.dumps(summary, indent=2))
    return final, summary


STAGE2_LABELS = ("successes", "operator")
STAGE2_WEIGHTINGS = ("episode", "step")


def stage1_collections(tasks: Sequence[str], stage1: str, iterations: int) -> list[str]:
    """The store collections this job's stage 1 wrote for rounds 1..len(tasks) (``tasks``: each round's task):
    AWR's one per iteration, an on-policy learner's one per round. Another stage-1 learner's rollouts in a shared
    store (same round and task) are not this job's and stay out of its stage 2."""
    from flywheel.distill.ire_onpolicy import collection_name

    if stage1 == "awr":
        return [f"ire/round{i}_rl/{t}/iter{k}" for i, t in enumerate(tasks, start=1) for k in range(iterations)]
    return [collection_name(f"round{i}_rl", t, stage1) for i, t in enumerate(tasks, start=1)]


def check_stage2_labels(labels: str, weighting: str = "episode") -> None:
    if labels not in STAGE2_LABELS:
        raise ValueError(f"method.stage2_rl_labels={labels!r}: use one of {STAGE2_LABELS}")
    if weighting not in STAGE2_WEIGHTINGS:
        raise ValueError(f"method.stage2_rl_weighting={weighting!r}: use one of {STAGE2_WEIGHTINGS}")


def stage2_episodes(store: Any, collections: Sequence[str], labels: str) -> list[int]:
    """Stage 2's episodes from stage 1's ``collections``: the successes (``labels="successes"``) or every
    rollout in which the operator took over (``"operator"``; only those steps are then trained on)."""
    check_stage2_labels(labels)
    if labels == "successes":
        return collect.select(store, source="rl", success=True, collection=list(collections))
    eps = collect.select(store, source="rl", success=None, collection=list(collections))
    return [i for i, n in zip(eps, labelled_steps(store, eps, "operator"), strict=True) if n]


def labelled_steps(store: Any, episodes: Sequence[int], labels: str) -> list[int]:
    """How many of each episode's steps stage 2 trains on: all of them (``successes``) or the operator's."""
    check_stage2_labels(labels)
    if labels == "successes":
        return [store.record(i).length for i in episodes]
    inter = store.read("intervention", 0, store.num_steps)  # one read, not one per episode
    spans = [store.record(i) for i in episodes]
    return [int(inter[r.start:r.end].sum()) for r in spans]


def sl_stage(parent: str | Path, store: Any, expert_eps: list[int], rl_eps: list[int], out_dir: Path,
             sft: Any, cfg: Any) -> Path:
    """Stage 2: supervised learning of the whole model on expert demos + every RL success (equal weight per step,
    or ``cfg.stage2_rl_fraction`` of the samples from ``rl_eps``, the RL successes). With ``cfg.stage2_rl_labels=operator``
    ``rl_eps`` are the assisted rollouts (:func:`stage2_episodes`), trained on their operator's steps only.

    ``cfg.stage2_finetune`` sets ``sft.finetune``; a compact parent with ``frozen`` trains its head on cached
    encoder features (the frozen-backbone stage of the compact family)."""
    from flywheel.distill.generalist import finetune

    sft = type(sft)(**{**sft.__dict__, "finetune": cfg.stage2_finetune}) if hasattr(sft, "__dict__") else sft
    labels = str(getattr(cfg, "stage2_rl_labels", "successes"))
    weighting = str(getattr(cfg, "stage2_rl_weighting", "episode"))
    check_stage2_labels(labels, weighting)
    counts = labelled_steps(store, rl_eps, labels) if weighting == "step" else None
    eps, weights = stage2_mix(expert_eps, rl_eps, float(getattr(cfg, "stage2_rl_fraction", 0.0)), counts)
    operator = labels == "operator"
    return finetune(parent, store, eps, out_dir, sft, weights=weights,
                    intervened_only=list(rl_eps) if operator else ())


def stage2_mix(expert_eps: Sequence[int], rl_success_eps: Sequence[int], rl_fraction: float,
               rl_steps: Sequence[int] | None = None) -> tuple[list[int], list[float] | None]:
    """Stage 2's episodes and per-episode sampling weights: ``None`` (every step equally likely) for
    ``rl_fraction`` 0 or no RL success, else weights giving the RL successes ``rl_fraction`` of the samples,
    split equally between them or, with ``rl_steps`` (each one's labelled steps), in proportion to those."""
    from flywheel.distill.rldg import mix_weights

    if not 0.0 <= rl_fraction < 1.0:
        raise ValueError(f"method.stage2_rl_fraction={rl_fraction}: give a fraction in [0, 1)")
    if rl_fraction == 0.0 or not rl_success_eps or not expert_eps:
        return list(expert_eps) + list(rl_success_eps), None
    eps, w = mix_weights(list(rl_success_eps), list(expert_eps), 1.0 - rl_fraction)
    if rl_steps is not None and w is not None:
        c = np.asarray(rl_steps, np.float64)
        if c.shape != (len(rl_success_eps),) or (c < 0).any() or c.sum() <= 0:
            raise ValueError(f"rl_steps: {len(c)} counts for {len(rl_success_eps)} RL episodes, >= 0, not all 0")
        w[:len(c)] = list(rl_fraction * c / c.sum())
    return eps, w


def build_job(cfg: Any, workdir: Path, store_path: Path, progress: bool = True) -> Any:
    """The resumable iRe-VLA job: expert demos, stage 0, then (stage 1, stage 2) per RL task, with evaluations.

    ``cfg`` is ``flywheel-distill``'s with ``method=ire_vla``: ``cfg.method`` holds the task groups, demos,
    budgets and this module's :class:`IReVLAConfig` fields; ``parent``, ``seed``, ``generalist`` and ``sft`` are shared.
    """
    from flywheel.data import EpisodeStore
    from flywheel.distill.generalist import (
        SFTConfig,
        ensure_backbone,
        env_kwargs,
        evaluate,
        final_checkpoint,
        finetune,
        new_generalist,
        store_stats,
    )
    from flywheel.distill.ire_onpolicy import check_stage1
    from flywheel.evaluate import HELDOUT_SEED, load_results, save_results
    from flywheel.job import Stage

    g, ire = cfg.generalist, cfg.method
    check_stage1(str(ire.stage1))
    check_stage2_labels(str(ire.stage2_rl_labels), str(ire.stage2_rl_weighting))  # before stage 1, not an hour in
    groups = {"expert": list(ire.expert_tasks), "rl": list(ire.rl_tasks), "unseen": list(ire.unseen_tasks)}
    eval_tasks = [t for ts in groups.values() for t in ts]
    spec_holder: dict[str, Any] = {}

    def spec() -> Any:
        if "spec" not in spec_holder:
            env = collect.make_env(eval_tasks[0], privileged_state=False, **env_kwargs(g, cfg.parent or None))
            spec_holder["spec"] = env.unwrapped.rig_spec
            env.close()
        return spec_holder["spec"]

    def store(mode: str = "a") -> Any:
        return EpisodeStore(store_path, mode, spec=spec(), image_codec="png")

    def sft_cfg(steps: int) -> SFTConfig:
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg.sft) if OmegaConf.is_config(cfg.sft) else dict(cfg.sft.__dict__)
        return SFTConfig(**{**d, "steps": int(steps)})

    def expert_collection(task: str) -> str:
        return str(ire.expert_collection).format(task=task)

    def expert_eps(s: Any) -> list[int]:
        return collect.select(s, task=groups["expert"], source="human",
                              collection=[expert_collection(t) for t in groups["expert"]])

    def demos(ctx: Any) -> dict[str, Any]:
        out = {}
        with store() as s:
            for t in groups["expert"]:
                env = collect.make_env(t, privileged_state=False, **env_kwargs(g, cfg.parent or None))
                try:
                    st = collect.record_rollouts(s, env, collect.ExpertAgent(env, ire.human_noise, cfg.seed),
                                                 range(int(ire.expert_demos)), source="human",
                                                 collection=expert_collection(t), progress=progress)
                finally:
                    env.close()
                out[t] = st.to_dict()
        return out

    def stage0(ctx: Any) -> dict[str, Any]:
        if cfg.parent:
            return {"checkpoint": str(cfg.parent)}
        d = ctx.stage_dir("stage0") / "sft"
        with store("r") as s:
            eps = expert_eps(s)
            parent = final_checkpoint(d) or new_generalist(g, s.spec, ensure_backbone(g, workdir), store_stats(s, eps))
            ckpt = finetune(parent, s, eps, d, sft_cfg(ire.stage0_steps))
        return {"checkpoint": str(ckpt), "episodes": len(eps)}

    def evaluation(prev: str) -> Any:
        def run(ctx: Any) -> dict[str, Any]:
            out = ctx.stage_dir(f"eval_{prev}")
            f = out / "results.json"
            ckpt = ctx.output(prev)["checkpoint"]
            if not f.exists():
                save_results(evaluate(ckpt, eval_tasks, int(ire.eval_episodes), g, seed=HELDOUT_SEED,
                                      progress=progress, device=ire.device), f)
            res = load_results(f)
            return {"results": str(f), "checkpoint": ckpt,
                    **{grp: float(np.mean([res[t].rate for t in ts])) if ts else None for grp, ts in groups.items()}}
        return run

    stages = [Stage("expert_demos", demos), Stage("stage0", stage0), Stage("eval_stage0", evaluation("stage0"))]
    prev = "stage0"
    for r, task in enumerate(groups["rl"], start=1):
        rl_name, sl_name = f"round{r}_rl", f"round{r}_sl"

        def rl(ctx: Any, prev: str = prev, task: str = task, rl_name: str = rl_name, r: int = r) -> dict[str, Any]:
            with store() as s:
                ckpt, summary = rl_stage(ctx.output(prev)["checkpoint"], s, task, ctx.stage_dir(rl_name), ire, g,
                                         seed=cfg.seed + r, progress=progress,
                                         feature_root=str(getattr(cfg.sft, "feature_root", "") or ""))
            return {"checkpoint": str(ckpt), "task": task, "rl_successes": len(summary["successes"]),
                    "rl_episodes": len(summary["episodes"]), "history": summary["history"]}

        def sl(ctx: Any, rl_name: str = rl_name, sl_name: str = sl_name, r: int = r) -> dict[str, Any]:
            with store("r") as s:
                names = stage1_collections(groups["rl"][:r], str(ire.stage1), int(ire.rl_iterations))
                rl_ok = stage2_episodes(s, names, str(ire.stage2_rl_labels))
                ckpt = sl_stage(ctx.output(rl_name)["checkpoint"], s, expert_eps(s), rl_ok,
                                ctx.stage_dir(sl_name) / "sft", sft_cfg(ire.stage2_steps), ire)
            key = "rl_successes" if str(ire.stage2_rl_labels) == "successes" else "rl_assisted"
            return {"checkpoint": str(ckpt), key: len(rl_ok)}

        stages += [Stage(rl_name, rl), Stage(f"eval_{rl_name}", evaluation(rl_name)),
                   Stage(sl_name, sl), Stage(f"eval_{sl_name}", evaluation(sl_name))]
        prev = sl_name

    def report(ctx: Any) -> dict[str, Any]:
        from flywheel.report import write_report

        evals = [s.name for s in stages if s.name.startswith("eval_")]
        results = {e[len("eval_"):]: load_results(ctx.output(e)["results"]) for e in evals}
        lines = ["| after | expert tasks | RL tasks | unseen tasks |", "| --- | --- | --- | --- |"]
        for e in evals:
            o = ctx.output(e)
            cells = [f"{o[k]:.2f}" if o[k] is not None else "-" for k in ("expert", "rl", "unseen")]
            lines.append(f"| {e[len('eval_'):]} | " + " | ".join(cells) + " |")
        groups_md = "\n".join(f"- {k}: {', '.join(v)}" for k, v in groups.items())
        md = write_report(workdir / "report.md", "iRe-VLA", results,
                          [("Mean success per task group", "\n".join(lines)), ("Task groups", groups_md)],
                          {"eval episodes per task": ire.eval_episodes, "held-out seeds from": HELDOUT_SEED})
        return {"report": str(md), "table": lines}

    stages.append(Stage("report", report))
    return stages
