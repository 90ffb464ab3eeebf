"""The generalist in the flywheel: build, supervised fine-tuning on store episodes, evaluation.

A thin adapter between the episode store (:mod:`flywheel.data`) and the VLA
(:mod:`policy`): :class:`VLABatches` turns the store loader's windows into the
batch dicts ``policy.train.train`` takes, :func:`finetune` trains a checkpoint
on selected episodes (resumable: ``policy.train`` resumes from the newest
checkpoint in its ``out_dir``), :func:`evaluate` runs a checkpoint on sim tasks
over seeded held-out episodes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.evaluate import HELDOUT_SEED, ChunkedPolicy, TaskResult, evaluate_task
from rig.spec import PROPRIO_KEYS, RigSpec

log = logging.getLogger(__name__)


@dataclass
class GeneralistConfig:
    """The tiny generalist the sim flywheel trains (a real transformers VLM backbone, random init)."""

    backbone: str = ""  # backbone directory; "" -> make a tiny random one under the job's workdir
    family: str = "smolvlm"  # policy.tiny family for the tiny backbone
    head: str = "token_learner"
    hidden_dim: int = 128
    num_tokens: int = 4
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 32
    execute: int = 1  # actions of each chunk executed before re-inferring (1: closed loop, best measured)
    seed: int = 0


@dataclass
class SFTConfig:
    """One supervised fine-tuning run (behaviour cloning of action chunks)."""

    steps: int = 400
    batch_size: int = 32
    # The sim flywheel's generalist is a tiny *random* backbone trained from scratch: its vision path
    # needs these rates (measured, docs/bench/distill.md); a pretrained VLM wants ~10x lower ones.
    lr: float = 3e-3
    backbone_lr: float = 1e-3
    warmup_steps: int = 50
    finetune: str = "full"  # full | lora | frozen
    save_every: int = 200
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present, bf16 autocast there) | cpu | cuda | cuda:N

    def validate(self) -> None:
        from policy.device import check_device

        check_device(self.device, "sft.device")


def env_kwargs(g: Any) -> dict[str, Any]:
    return {"cameras": tuple(g.cameras), "image_size": int(g.image_size)}


def ensure_backbone(g: Any, workdir: str | Path) -> str:
    """The backbone directory: ``g.backbone`` or a tiny random one made once under ``workdir``."""
    if g.backbone:
        return str(g.backbone)
    out = Path(workdir) / f"backbone_{g.family}"
    if not (out / "config.json").exists():
        from policy.tiny import make_tiny_backbone

        tmp = out.with_name(out.name + ".tmp")
        make_tiny_backbone(g.family, tmp, seed=int(g.seed))
        tmp.rename(out)
    return str(out)


def store_stats(store: Any, episodes: Sequence[int]) -> dict[str, Any]:
    """Normalisation statistics (proprio, actions) of the given episodes."""
    from policy.normalize import compute_stats

    recs = [store.record(i) for i in episodes]
    if not recs:
        raise ValueError("no episodes to compute normalisation statistics from")
    prop = np.concatenate([np.concatenate([store.read(k, r.start, r.end).reshape(r.length, -1)
                                           for k in PROPRIO_KEYS], -1) for r in recs])
    act = np.concatenate([store.read("action", r.start, r.end) for r in recs])
    stats = compute_stats(prop, act)
    # the gripper command is bimodal (+-1): keep its scale, and never divide by ~0
    for key in ("proprio", "actions"):
        stats[key]["std"] = [max(s, 1e-2) for s in stats[key]["std"]]
    return stats


def new_generalist(g: Any, spec: RigSpec, backbone: str, stats: Mapping[str, Any]) -> Any:
    """A fresh VLA (head randomly initialised) on ``backbone``."""
    import torch

    from policy.config import PolicyConfig
    from policy.model import VLA

    torch.manual_seed(int(g.seed))
    cfg = PolicyConfig(backbone=backbone, head=g.head, hidden_dim=int(g.hidden_dim), num_tokens=int(g.num_tokens))
    return VLA.from_backbone(cfg, spec, stats)


class VLABatches:
    """Iterable of VLA batch dicts over store episodes (spec keys, ``instruction``, action chunks).

    The selected episodes are read into memory once (small images: a few KB a frame), then
    batches of (observation, action chunk) windows are drawn at random, optionally with
    per-episode ``weights`` (e.g. to replay older data at a set fraction).
    """

    def __init__(self, store: Any, episodes: Sequence[int], spec: RigSpec, batch_size: int, seed: int = 0,
                 weights: Sequence[float] | None = None):
        episodes = [int(e) for e in episodes]
        if not episodes:
            raise ValueError("no episodes selected for training")
        self.keys = [f"images/{c}" for c in spec.camera_names] + list(PROPRIO_KEYS)
        h = spec.action.chunk_horizon
        recs = [store.record(e) for e in episodes]
        self.data = {k: np.concatenate([store.read(k, r.start, r.end) for r in recs]) for k in self.keys}
        acts = np.concatenate([store.read("action", r.start, r.end) for r in recs])
        lengths = np.array([r.length for r in recs])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ends = np.repeat(starts + lengths, lengths)
        step = np.arange(len(acts))
        raw = step[:, None] + np.arange(h)[None]
        self.is_pad = raw >= ends[:, None]
        self.actions = acts[np.minimum(raw, ends[:, None] - 1)]
        self.instruction = np.repeat(np.array([r.instruction or r.task for r in recs], dtype=object), lengths)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        self.p = None
        if weights is not None:  # per-episode sampling weights, spread over each episode's steps
            pw = np.repeat(np.asarray(weights, np.float64) / lengths, lengths)
            self.p = pw / pw.sum()

    def __len__(self) -> int:
        return max(1, len(self.actions) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(len(self)):
            idx = self.rng.choice(len(self.actions), size=self.batch_size, p=self.p)
            out: dict[str, Any] = {k: self.data[k][idx] for k in self.keys}
            out["instruction"] = [str(s) for s in self.instruction[idx]]
            out["actions"] = self.actions[idx]
            out["action_is_pad"] = self.is_pad[idx]
            yield out


def final_checkpoint(out_dir: str | Path) -> Path | None:
    from policy.train import checkpoint_dirs

    ckpts = checkpoint_dirs(out_dir)
    return ckpts[-1] if ckpts else None


def finetune(
    parent: str | Path | Any,
    store: Any,
    episodes: Sequence[int],
    out_dir: str | Path,
    sft: Any,
    *,
    weights: Sequence[float] | None = None,
) -> Path:
    """Fine-tune ``parent`` (a checkpoint directory or a VLA) on ``episodes``; returns the final checkpoint.

    Re-running after a kill resumes from the newest checkpoint in ``out_dir``;
    when the run already finished, it returns at once.
    """
    import torch

    from policy.config import TrainConfig
    from policy.model import VLA
    from policy.train import train

    out_dir = Path(out_dir)
    done = final_checkpoint(out_dir)
    if done is not None and int(done.name.split("_")[1]) >= int(sft.steps):
        return done
    model = VLA.from_checkpoint(parent) if isinstance(parent, (str, Path)) else parent
    if sft.finetune == "frozen":
        model.freeze_backbone()
    elif sft.finetune == "full" and model.cfg.finetune == "frozen":
        model.unfreeze_backbone()
    data = VLABatches(store, episodes, model.spec, sft.batch_size, seed=int(sft.seed), weights=weights)
    cfg = TrainConfig(out_dir=str(out_dir), steps=int(sft.steps), lr=float(sft.lr), backbone_lr=float(sft.backbone_lr),
                      warmup_steps=int(sft.warmup_steps), save_every=int(sft.save_every), keep_checkpoints=1,
                      log_every=10, resume=True, seed=int(sft.seed), amp=False)
    from policy.device import check_device, resolve_device

    dev = resolve_device(check_device(getattr(sft, "device", "auto"), "sft.device"), "sft.device")
    cfg.amp = dev.type == "cuda"  # bf16 autocast on CUDA
    torch.manual_seed(int(sft.seed))
    metrics = train(model, data, cfg, device=dev)
    log.info("fine-tuned on %d episodes: %s", len(episodes), metrics)
    ckpt = final_checkpoint(out_dir)
    assert ckpt is not None
    return ckpt


def evaluate(
    checkpoint: str | Path,
    tasks: Sequence[str],
    episodes: int,
    g: Any,
    *,
    seed: int = HELDOUT_SEED,
    progress: bool = True,
    device: str = "auto",
    cluster: Any = None,
) -> dict[str, TaskResult]:
    """Success per task over ``episodes`` seeded held-out episodes of the checkpoint.

    ``cluster`` (a :class:`flywheel.cluster.ClusterConfig`, ``kind=ray``) runs the episodes on Ray workers;
    the results equal the serial run's episode by episode.
    """
    import policy
    from flywheel.distill.collect import make_env
    from policy.device import resolve_device

    if cluster is not None and getattr(cluster, "kind", "local") == "ray":
        from flywheel.cluster import PolicySource, evaluate_tasks

        src = PolicySource(checkpoint=str(checkpoint), execute=int(g.execute), device=str(device),
                           env="collect", env_kwargs=env_kwargs(g))
        return evaluate_tasks(list(tasks), src, episodes, seed=seed, cluster=cluster, progress=progress)
    pol = policy.load(checkpoint, device=resolve_device(device))

    def agent(env: Any) -> ChunkedPolicy:
        return ChunkedPolicy(pol, env.unwrapped.instruction, execute=int(g.execute))

    out = {}
    for t in tasks:
        out[t] = evaluate_task(t, agent, episodes, seed=seed, show_progress=progress,
                               make_env=lambda task: make_env(task, privileged_state=False, **env_kwargs(g)))
        log.info("eval %s: %.2f (n=%d)", t, out[t].rate, episodes)
    return out
