"""Builders of the RL app's parts from its composed config (``flywheel.rl.app.RLAppConfig``).

The env (sim, the rig through :mod:`flywheel.rig_env`, or any ``module:function`` factory),
the agent (with the generalist's frozen backbone as the encoder for latent RL),
the simulated intervener, the demos (the scripted operator or a store's human
episodes), the reward function, the rollout recorder, and the learner and
transport settings. A library: the ``flywheel-rl`` app and the distillation's
``sac`` specialist both build through it.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from flywheel.rl.learner import LearnerConfig
from flywheel.rl.sac import SACConfig
from flywheel.rl.transport import TransportConfig

REFINED_DIR = "reward_classifier"  # under out_dir: the classifier refined in the loop and its labelled frames


def make_env(cfg: Any, training: bool = False, rig_reward: Any = None) -> Any:
    """The env of ``cfg.env``; with ``agent.encoder=pretrained``, wrapped to add the frozen trunk's features.

    ``training`` with ``algo.reward=classifier``: the sim env does not end an episode on its own success
    test, so the classifier alone decides (as on the rig); evaluation envs keep the sim's test as the truth.
    On the rig (``env.kind=rig``) the classifier is the env's success test: ``rig_reward``, or the one of
    ``algo.classifier``; a training env with ``algo.review=operator`` puts its claims to the operator.
    """
    env = _make_env(cfg, training, rig_reward)
    if cfg.agent.encoder != "pretrained":
        return env
    from flywheel.rl.pretrained import FeatureEnv

    try:
        return FeatureEnv(env, featurizer(cfg), cfg.agent.image_keys)
    except Exception:
        env.close()
        raise


def featurizer(cfg: Any) -> Any:
    """The frozen EfficientNet-Lite0 trunk of ``agent.encoder=pretrained`` (``agent.pretrained_block``, at
    ``env.image_size``), resolved from the installed wheel once per process (the env and the eval env share it)."""
    from flywheel.rl.pretrained import shared_featurizer
    from policy.device import resolve_device

    return shared_featurizer(int(cfg.agent.pretrained_block), int(cfg.env.image_size),
                             device=str(resolve_device(cfg.device, "device")))


def _make_env(cfg: Any, training: bool = False, rig_reward: Any = None) -> Any:
    e = cfg.env
    kind = str(getattr(e, "kind", "sim"))
    if kind not in ("sim", "rig"):
        raise ValueError(f"env.kind={kind!r}: use sim or rig")
    if kind == "rig":  # the ROS env adapter on a running rig-up graph, with the reset routine
        from flywheel.rig_env import rl_rig_env

        review = training and check_review(cfg) == "operator"
        return rl_rig_env(cfg, reward_fn=rig_reward if rig_reward is not None else reward_fn(cfg),
                          review_timeout=float(cfg.algo.review_timeout) if review else 0.0)
    if e.factory:
        mod, _, fn = e.factory.partition(":")
        if not fn:
            raise ValueError(f"env.factory={e.factory!r}: write it as 'package.module:function'")
        return getattr(importlib.import_module(mod), fn)(**dict(e.factory_kwargs))
    import sim

    blind = training and getattr(cfg.algo, "reward", "success") == "classifier"  # no sim success signal
    return sim.make(e.task, cameras=tuple(e.cameras), image_size=int(e.image_size),
                    privileged_state=bool(e.privileged_state), terminate_on_success=not blind)


def sac_config(cfg: Any) -> SACConfig:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg.agent, resolve=True)
    return SACConfig(**d)


def build_agent(cfg: Any, env: Any) -> Any:
    import torch

    from flywheel.rl.sac import SACAgent, obs_shapes_of

    torch.manual_seed(int(cfg.seed))
    latent = None
    if cfg.agent.encoder == "latent":
        latent = latent_encoder(cfg)
    from policy.device import resolve_device

    return SACAgent(sac_config(cfg), obs_shapes_of(env.observation_space), latent_encoder=latent,
                    device=resolve_device(cfg.device, "device"))


def latent_encoder(cfg: Any) -> Any:
    """The generalist's frozen backbone features (iRe-VLA latent RL) from ``latent_policy=PATH``."""
    if not cfg.latent_policy:
        raise ValueError("agent.encoder=latent needs latent_policy=<generalist checkpoint dir>")
    import policy
    from policy.device import resolve_device

    return latent_encoder_from_policy(policy.load(cfg.latent_policy, device=resolve_device(cfg.device, "device")),
                                      cfg.latent_instruction)


def latent_encoder_from_policy(pol: Any, instruction: str = "") -> Any:
    """A frozen image encoder from a loaded generalist: uint8 images (B, H, W, 3) -> (B, D).

    The backbone sees the image in each of its camera slots with zero proprioception and
    the task instruction; its last hidden states are mean-pooled over the attention mask.
    """
    import torch

    model = pol.model
    cams = model.spec.camera_names

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        imgs = images.cpu().numpy()
        b = imgs.shape[0]
        batch: dict[str, Any] = {f"images/{c}": imgs for c in cams}
        batch.update({"state/ee_pos": np.zeros((b, 3), np.float32), "state/ee_quat": np.tile([1, 0, 0, 0], (b, 1)).astype(
            np.float32), "state/gripper_width": np.zeros((b, 1), np.float32), "instruction": [instruction] * b})
        f = model.features(batch, device=pol.device)
        m = f["mask"].unsqueeze(-1).float()
        return ((f["hidden"].float() * m).sum(1) / m.sum(1).clamp(min=1.0)).to(images.device)

    return encode


def make_intervener(cfg: Any, env: Any) -> Any:
    """The simulated operator of ``cfg.intervention`` (None when disabled); ``flywheel-vla-rl`` builds its own with it."""
    if not cfg.intervention.enabled:
        return None
    import sim

    i = cfg.intervention
    expert = sim.expert(env, noise=float(i.noise), seed=int(cfg.seed) + 1)
    return sim.SimulatedIntervener(env, expert, disagreement=i.disagreement, patience=i.patience,
                                   stall_steps=i.stall_steps, takeover_steps=i.takeover_steps,
                                   criterion=i.criterion, max_interventions=int(i.max_interventions) or None)


def load_demos(cfg: Any, env: Any, agent: Any) -> tuple[dict[str, np.ndarray] | None, dict[str, float]]:
    if int(cfg.demos.num) <= 0:
        return None, {}
    if cfg.demos.store:
        from flywheel.data import EpisodeStore
        from flywheel.rl.buffers import episodes_to_transitions

        store = EpisodeStore(cfg.demos.store, mode="r")
        eps = store.episodes(source="human", success=True)[: int(cfg.demos.num)]
        if not eps:
            raise ValueError(f"{cfg.demos.store}: no successful source=human episodes to use as demos")
        if cfg.agent.encoder == "pretrained":  # the trunk's features of each recorded frame, once
            from flywheel.rl.pretrained import with_features

            eps = with_features(eps, featurizer(cfg), env.image_keys)
        batch = episodes_to_transitions(eps, agent.obs_keys, agent.cfg.gripper_fixed)
        return batch, {"demo_episodes": float(len(eps)), "demo_transitions": float(len(batch["reward"]))}
    import sim
    from flywheel.rl.actor import collect_demos

    expert = sim.expert(env, noise=float(cfg.demos.noise), seed=int(cfg.seed) + 2)
    return collect_demos(env, expert, int(cfg.demos.num), agent.obs_keys, seed=int(cfg.seed) + 3,
                         max_attempts=int(cfg.demos.max_attempts))


def reward_fn(cfg: Any, env: Any = None) -> Any:
    """The reward classifier of ``algo.reward=classifier`` as the actor's reward function (None otherwise).

    When the observations of ``env`` (the actor's) carry the same frozen trunk's features of the classifier's
    cameras (``agent.encoder=pretrained``), the classifier reads them instead of running the trunk again (the rig
    env runs it below that wrapper, on raw frames: no ``env`` there). With
    ``algo.review`` set it is a :class:`flywheel.rl.reward_refine.RefiningReward` that learns from the
    operator's verdicts, resumed from ``out_dir/reward_classifier/`` when a refined copy is there (beside the
    learner's checkpoint directory, which the learner replaces whole on every save)."""
    a = cfg.algo
    if a.reward != "classifier":
        return None
    from flywheel.rl.reward_classifier import ClassifierReward, RewardClassifier

    if not a.classifier:
        raise ValueError("algo.reward=classifier needs algo.classifier=<path to the reward classifier .safetensors>")
    model = RewardClassifier.load(a.classifier)
    reuse = _features_match(env, model)
    if check_review(cfg) == "none":
        return ClassifierReward(model, features_from_obs=reuse)
    from pathlib import Path

    from omegaconf import OmegaConf

    from flywheel.rl.reward_refine import RefineConfig, RefiningReward

    rc = a.refine if isinstance(a.refine, RefineConfig) else RefineConfig(**OmegaConf.to_container(a.refine))
    save_dir = Path(cfg.out_dir) / REFINED_DIR
    fn = RefiningReward(model, rc, features_from_obs=reuse, save_dir=save_dir, seed=int(cfg.seed))
    if bool(getattr(cfg.role, "resume", True)):
        fn.load(save_dir)
    return fn


def _features_match(env: Any, model: Any) -> bool:
    """``env`` (a :class:`flywheel.rl.pretrained.FeatureEnv`) already adds the classifier's own trunk features of
    its cameras, so the classifier need not run the trunk again."""
    keys, feat = getattr(env, "image_keys", None), getattr(env, "featurizer", None)
    return (keys is not None and feat is not None and model.trunk is not None
            and set(model.cfg.image_keys) <= set(keys) and feat.encoder_id == model.cfg.encoder_id)


REVIEWS = ("none", "sim", "operator")


def check_review(cfg: Any) -> str:
    """``algo.review``, checked against the reward and the env kind."""
    review = str(getattr(cfg.algo, "review", "none"))
    rig = str(getattr(getattr(cfg, "env", None), "kind", "sim")) == "rig"
    if review not in REVIEWS:
        raise ValueError(f"algo.review={review!r}: use one of {', '.join(REVIEWS)}")
    if review != "none" and cfg.algo.reward != "classifier":
        raise ValueError("algo.review judges the classifier's successes: it needs algo.reward=classifier")
    if review == "sim" and rig:
        raise ValueError("algo.review=sim reads the sim's success test; the rig has none (env.kind=rig): "
                         "use algo.review=operator")
    if review == "operator" and not rig:
        raise ValueError("algo.review=operator asks the operator on the rig (env.kind=rig); in sim the sim's test "
                         "stands in for them: algo.review=sim")
    if review == "operator" and not float(cfg.algo.review_timeout) > 0:
        raise ValueError(f"algo.review_timeout={cfg.algo.review_timeout!r}: seconds to wait for the verdict, > 0")
    return review


def make_reviewer(cfg: Any) -> Any:
    """The actor's reviewer of the classifier's claimed successes (``algo.review``): in sim the sim's own test
    standing in for the operator; None otherwise (``operator``: the rig env asks the operator itself, see
    :class:`robot.env.RosRigEnv`)."""
    if check_review(cfg) != "sim":
        return None
    from flywheel.rl.reward_refine import sim_reviewer

    return sim_reviewer


def make_recorder(cfg: Any, env: Any) -> Any:
    if not cfg.role.record_to:
        return None
    from flywheel.data import EpisodeStore
    from flywheel.rl.actor import RolloutRecorder

    u = env.unwrapped
    spec = getattr(u, "rig_spec", None)
    store = EpisodeStore(cfg.role.record_to, mode="a", spec=spec)
    return RolloutRecorder(store, task=str(getattr(u, "task_id", cfg.env.task)),
                           instruction=str(getattr(u, "instruction", "")), policy_version=f"rl:{cfg.out_dir}")


def learner_config(cfg: Any) -> LearnerConfig:
    from omegaconf import OmegaConf

    return LearnerConfig(**OmegaConf.to_container(cfg.learner, resolve=True))


def transport_config(cfg: Any, agent: Any) -> TransportConfig:
    """The transport settings; an unset frame cap is sized from this agent's largest message (frame_cap)."""
    from omegaconf import OmegaConf

    from flywheel.rl.buffers import transition_layout
    from flywheel.rl.learner import weights_to_bytes
    from flywheel.rl.transport import frame_cap

    tcfg = TransportConfig(**OmegaConf.to_container(cfg.transport, resolve=True))
    if not tcfg.max_frame_bytes:
        tcfg.max_frame_bytes = frame_cap(transition_layout(agent.obs_shapes), int(tcfg.send_every),
                                         len(weights_to_bytes(agent)))
    return tcfg
