"""The reward classifier refined in the loop from the operator's verdicts on the agent's own episodes (HIL-SERL).

A classifier chosen for its precision on the operator's episodes is fooled by the agent's: in sim one firing in
three rewarded a failure (docs/bench/rl.md). HIL-SERL's remedy is the operator: when the classifier ends an
episode, the operator confirms or rejects the success (one key press per claimed success, never a label per frame).

* The actor asks its ``reviewer`` (:class:`flywheel.rl.actor.Actor`); a rejected success is relabelled before the
  transition reaches any buffer: no reward, and not a terminal (the episode was cut short, so the critic
  bootstraps). In sim the reviewer is the sim's own success test at that step (:func:`sim_reviewer`), standing
  in for the operator; the run counts the verdicts it used.
* :class:`RefiningReward` (the classifier reward that keeps its episode's frames) turns each verdict into labelled
  frames: a rejection makes the episode's last ``negatives_per_episode`` frames negatives (the frames that fooled
  it and the ones leading there), a confirmation makes the firing frames positives. Every ``every`` verdicts it
  fine-tunes the classifier's trainable head (the trunk stays frozen) for ``steps`` balanced batches on those
  frames and a base set: the demo buffer's frames, positive where the operator's success reward is (the frames
  the classifier was made from are not kept with it).
* After each refinement (and at the end of the run) the classifier and its labelled frames are saved
  (``save_dir``: ``out_dir/reward_classifier/``), and a resumed run loads them, so a refinement is never lost.

The threshold and the consecutive-frames rule stay as chosen: a refinement moves the scores, and the per-episode
check against the sim's test (``reward_false_positive``, ``reward_missed``) measures what it did to both errors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flywheel.rl.reward_classifier import ClassifierReward, RewardClassifier

log = logging.getLogger(__name__)

CLASSIFIER_FILE, LABELS_FILE = "reward_classifier.safetensors", "reward_labels.npz"


@dataclass
class RefineConfig:
    every: int = 10  # fine-tune after this many new verdicts (0: relabel the buffer only, never retrain)
    steps: int = 100  # gradient steps per refinement
    batch_size: int = 64  # half positives, half negatives (of which half the rejected frames, once there are some)
    lr: float = 3e-4
    negatives_per_episode: int = 10  # a rejected episode's last frames that become negatives
    max_frames: int = 20_000  # labelled frames kept (oldest dropped first)

    def __post_init__(self) -> None:
        if int(self.every) < 0 or int(self.steps) < 1 or int(self.batch_size) < 2 or int(self.negatives_per_episode) < 1:
            raise ValueError(f"RefineConfig: every >= 0, steps >= 1, batch_size >= 2, negatives_per_episode >= 1 "
                             f"(got {self})")


def sim_reviewer(step: Any) -> bool:
    """The simulated operator's verdict on a classifier success: the sim's own test at that step."""
    return bool(step.info.get("is_success", False))


class RefiningReward(ClassifierReward):
    """A :class:`ClassifierReward` whose :meth:`verdict` on each success it claimed refines the classifier."""

    def __init__(self, model: RewardClassifier, cfg: RefineConfig, *, features_from_obs: bool = False,
                 save_dir: str | os.PathLike | None = None, seed: int = 0) -> None:
        super().__init__(model, features_from_obs=features_from_obs, keep_frames=True)
        self.cfg = cfg
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.rng = np.random.default_rng(seed)
        self.keys = list(model.cfg.image_keys)
        self.labelled: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}  # one (1, ...) tensor per frame
        self.labels: list[bool] = []
        self.base: Any = None  # a replay buffer whose frames (next_obs/features/<camera>, reward) are the base set
        self.counts = {"verdicts": 0, "rejected": 0, "refinements": 0}
        self._pending = 0
        self._opt: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------- verdicts
    def set_base(self, buffer: Any) -> None:
        """Frames of a replay buffer (the demo buffer) as the base set: positive where its reward is."""
        from flywheel.rl.pretrained import feature_key

        missing = [f"next_obs/{feature_key(k)}" for k in self.keys if f"next_obs/{feature_key(k)}" not in buffer.data]
        if missing:
            raise KeyError(f"the base buffer holds no {missing}: refining needs the agent's pretrained features of "
                           f"the classifier's cameras {self.keys}")
        self.base = buffer

    def verdict(self, success: bool) -> None:
        """The operator's verdict on the success this classifier just claimed (the episode's last frame)."""
        if not self.frames:
            raise RuntimeError("a verdict without a scored frame: call it after the classifier fired")
        self.counts["verdicts"] += 1
        self.counts["rejected"] += int(not success)
        frames = self.frames[-int(self.model.cfg.consecutive):] if success else \
            self.frames[-int(self.cfg.negatives_per_episode):]
        for x in frames:
            for k in self.keys:
                self.labelled[k].append(x[k])
            self.labels.append(bool(success))
        extra = len(self.labels) - int(self.cfg.max_frames)
        if extra > 0:
            for k in self.keys:
                del self.labelled[k][:extra]
            del self.labels[:extra]
        self._pending += 1
        if self.cfg.every and self._pending >= int(self.cfg.every):
            self.refine()

    # ------------------------------------------------------------ refining
    def _pool(self) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray, np.ndarray]:
        """(the labelled frames stacked, their labels, base positive indices, base negative indices)."""
        own = {k: torch.cat(v) if v else torch.zeros(0) for k, v in self.labelled.items()}
        y = np.asarray(self.labels, bool)
        if self.base is None:
            return own, y, np.zeros(0, int), np.zeros(0, int)
        r = np.asarray(self.base.data["reward"][: len(self.base)]) > 0
        return own, y, np.flatnonzero(r), np.flatnonzero(~r)

    def _draw(self, own: dict[str, torch.Tensor], own_idx: np.ndarray, base_idx: np.ndarray,
              n: int) -> dict[str, torch.Tensor]:
        """``n`` frames drawn from the labelled frames ``own_idx`` and the base frames ``base_idx``."""
        from flywheel.rl.pretrained import feature_key

        pick = self.rng.integers(0, len(own_idx) + len(base_idx), n)
        mine, theirs = own_idx[pick[pick < len(own_idx)]], base_idx[pick[pick >= len(own_idx)] - len(own_idx)]
        out = {}
        for k in self.keys:
            parts = [own[k][torch.as_tensor(mine)]] if len(mine) else []
            if len(theirs):
                parts.append(torch.from_numpy(self.base.data[f"next_obs/{feature_key(k)}"][np.sort(theirs)]))
            out[k] = torch.cat(parts)
        return out

    def refine(self) -> dict[str, float]:
        """Fine-tune the classifier's head on the labelled frames and the base set; save both."""
        self._pending = 0
        own, y, base_pos, base_neg = self._pool()
        own_pos, own_neg = np.flatnonzero(y), np.flatnonzero(~y)
        if len(own_pos) + len(base_pos) == 0 or len(own_neg) + len(base_neg) == 0:
            log.warning("reward refinement skipped: no %s frames yet",
                        "positive" if len(own_pos) + len(base_pos) == 0 else "negative")
            return {}
        model = self.model
        if self._opt is None:
            self._opt = torch.optim.Adam(model.parameters(), lr=float(self.cfg.lr))
        half = int(self.cfg.batch_size) // 2
        losses = []
        model.train()
        for _ in range(int(self.cfg.steps)):
            pos = self._draw(own, own_pos, base_pos, half)
            if len(own_neg) and len(base_neg):  # half the negatives from the frames that fooled it
                hard = self._draw(own, own_neg, np.zeros(0, int), half // 2)
                easy = self._draw(own, np.zeros(0, int), base_neg, half - half // 2)
                neg = {k: torch.cat([hard[k], easy[k]]) for k in self.keys}
            else:
                neg = self._draw(own, own_neg, base_neg, half)
            x = {k: torch.cat([pos[k], neg[k]]) for k in self.keys}
            target = torch.cat([torch.ones(half), torch.zeros(len(neg[self.keys[0]]))])
            loss = F.binary_cross_entropy_with_logits(model(x), target)
            self._opt.zero_grad(set_to_none=True)
            loss.backward()
            self._opt.step()
            losses.append(loss.item())
        model.eval()
        self.counts["refinements"] += 1
        k = max(1, len(losses) // 10)
        out = {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
               "labelled_frames": float(len(y))}
        log.info("reward classifier refined (%d verdicts, %d rejected): loss %.3f -> %.3f on %d labelled frames",
                 self.counts["verdicts"], self.counts["rejected"], out["loss_first"], out["loss_last"], len(y))
        if self.save_dir is not None:
            self.save(self.save_dir)
        return out

    # ---------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> None:
        """The refined classifier and its labelled frames (atomically, each)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (CLASSIFIER_FILE + ".tmp")
        self.model.save(tmp)
        os.replace(tmp, d / CLASSIFIER_FILE)
        own, y, _, _ = self._pool()
        arrays = {f"frames/{k}": v.numpy() for k, v in own.items()}
        tmp_npz = d / (LABELS_FILE + ".tmp.npz")
        np.savez(tmp_npz, labels=y, counts=np.array([self.counts[c] for c in sorted(self.counts)], np.int64),
                 **arrays)
        os.replace(tmp_npz, d / LABELS_FILE)

    def load(self, directory: str | os.PathLike) -> bool:
        """Resume from what :meth:`save` wrote in ``directory``; False when nothing is there."""
        d = Path(directory)
        if not (d / CLASSIFIER_FILE).exists():
            return False
        saved = RewardClassifier.load(d / CLASSIFIER_FILE)
        if saved.cfg.image_keys != self.model.cfg.image_keys or saved.cfg.encoder_id != self.model.cfg.encoder_id:
            raise ValueError(f"{d / CLASSIFIER_FILE} is another classifier (cameras {saved.cfg.image_keys}, trunk "
                             f"{saved.cfg.encoder_id!r}) than algo.classifier's; remove it or point out_dir elsewhere")
        self.model.load_state_dict(saved.state_dict())
        self.model.cfg.threshold = saved.cfg.threshold
        self.model.eval()
        if (d / LABELS_FILE).exists():
            with np.load(d / LABELS_FILE, allow_pickle=False) as z:
                self.labels = [bool(v) for v in z["labels"]]
                self.labelled = {k: list(torch.from_numpy(z[f"frames/{k}"]).split(1)) if len(z["labels"]) else []
                                 for k in self.keys}
                self.counts = dict(zip(sorted(self.counts), (int(c) for c in z["counts"]), strict=True))
        return True
