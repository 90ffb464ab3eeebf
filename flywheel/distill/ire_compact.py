"""iRe-VLA stage 1 on a compact generalist: AWR of the head on cached frozen-encoder features.

The compact family's frozen part is its image encoder, whose features the shared
:class:`policy.feature_cache.FeatureCache` already holds (``features/`` next to the store), so
stage 1 needs no latent cache of its own: every rollout's frames are encoded once there, and the
critic (a keypoint-MLP :class:`policy.compact.CompactHead` with one output) and the action head
train on those features, the instruction embedding and the normalised proprio. The update is the
same advantage-weighted regression as the VLM family's (:func:`flywheel.distill.ire_vla.awr_update`),
with the compact family's masked L1 as the per-sample regression loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from rig.spec import PROPRIO_KEYS


class CompactLearner:
    """Stage 1's learner for a compact parent: the model (encoder frozen), its critic, the AWR update."""

    def __init__(self, path: str | Path, parent_finetune: str | None = None, feature_root: str = "") -> None:
        from policy.compact import CompactHead, CompactVLA

        self.feature_root = str(feature_root)  # the feature cache's root ("" -> features/ next to the store)
        self.model = CompactVLA.from_checkpoint(path)
        if self.model.cfg.head == "flow":
            raise ValueError(f"{path}: iRe-VLA stage 1 regresses the action chunk; the compact head 'flow' "
                             "samples it (use head mlp or token_learner)")
        self.parent_finetune = parent_finetune or self.model.cfg.finetune
        self.model.freeze_backbone()
        c = self.model.cfg
        ccfg = dataclasses.replace(c, head="mlp", hidden_dim=min(int(c.hidden_dim), 256))
        self.critic = CompactHead(ccfg, self.model.spec.camera_names, self.model.encoder.out_shape,
                                  self.model.text.dim, self.model.spec.proprio_dim, 1, 1)

    def finish(self) -> None:
        """The parent's encoder setting again (frozen G0s stay frozen)."""
        if self.parent_finetune != "frozen":
            self.model.unfreeze_backbone(self.parent_finetune)

    def data(self, store: Any, episodes: Sequence[int], discount: float) -> dict[str, Any]:
        """Cached features, instruction embeddings, normalised proprio/action chunks and returns of ``episodes``
        (every step, read through the store loader's feature-cache mode)."""
        from flywheel.data.loader import EpisodeDataset
        from flywheel.distill.compact import feature_cache
        from flywheel.distill.ire_vla import discounted_returns

        m = self.model
        cache = feature_cache(m, store, SimpleNamespace(feature_root=self.feature_root, frame_stride=1))
        keys = [f"images/{c}" for c in m.spec.camera_names] + list(PROPRIO_KEYS)
        ds = EpisodeDataset(store, episodes=list(episodes), obs_keys=keys, horizon=m.spec.action.chunk_horizon,
                            features=cache)
        b = ds.__getitems__(np.arange(len(ds)))
        ret = np.concatenate([discounted_returns(bool(store.record(e).success), store.record(e).length, discount)
                              for e in ds.episodes])
        texts = sorted(set(b["instruction"]))
        emb = np.asarray(m.text.embed(texts), np.float32)
        which = np.array([texts.index(t) for t in b["instruction"]])
        proprio = np.concatenate([b[k].numpy().reshape(len(ds), -1) for k in PROPRIO_KEYS], -1)
        return {"features": {c: b[f"features/{c}"].numpy() for c in m.spec.camera_names}, "text": emb[which],
                "proprio": m.normalizer.normalize("proprio", proprio).astype(np.float32),
                "actions": m.normalizer.normalize("actions", b["actions"].numpy()).astype(np.float32),
                "is_pad": b["action_is_pad"].numpy(), "ret": ret.astype(np.float32)}

    def update(self, store: Any, episodes: Sequence[int], out_dir: Path, cfg: Any, seed: int = 0) -> dict[str, float]:
        """Critic regression of the return, then advantage-weighted regression of the action head."""
        import torch

        from policy.compact import masked_l1

        d = self.data(store, episodes, float(cfg.discount))
        n = len(d["ret"])
        g = torch.Generator().manual_seed(seed)
        head = self.model.head
        copt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        aopt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=cfg.head_lr)
        head.train()
        self.critic.train()
        closs = aloss = 0.0
        for _ in range(int(cfg.head_updates)):
            i = torch.randint(0, n, (min(int(cfg.batch_size), n),), generator=g).numpy()
            feats = {c: torch.from_numpy(f[i]).float() for c, f in d["features"].items()}
            text, prop = torch.from_numpy(d["text"][i]), torch.from_numpy(d["proprio"][i])
            ret = torch.from_numpy(d["ret"][i])
            lc = torch.nn.functional.mse_loss(self.critic(feats, text, prop).view(-1), ret)
            copt.zero_grad()
            lc.backward()
            copt.step()
            with torch.no_grad():
                adv = ret - self.critic(feats, text, prop).view(-1)
                w = torch.exp(adv / cfg.beta).clamp(max=cfg.max_weight)
            per = masked_l1(head(feats, text, prop), torch.from_numpy(d["actions"][i]),
                            torch.from_numpy(d["is_pad"][i]), per_sample=True)
            la = (w * per).sum() / w.sum().clamp_min(1e-6)
            aopt.zero_grad()
            la.backward()
            aopt.step()
            closs, aloss = float(lc.detach()), float(la.detach())
        head.eval()
        return {"critic_loss": closs, "actor_loss": aloss, "samples": n, "mean_return": float(d["ret"].mean())}
