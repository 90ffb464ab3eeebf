"""Tiny random (and full-size random) VLM backbones, built locally without downloads.

Each family writes a directory that loads through the real
``AutoModelForImageTextToText`` / ``AutoProcessor`` path: the model config and
random weights (``save_pretrained``), a byte-level tokenizer built with the
``tokenizers`` library (every string tokenizes, no vocabulary file to fetch),
and the family's own image processor class.

Families: ``smolvlm`` (Idefics3, the SmolVLM architecture) and ``paligemma``.
(Qwen2-VL loads through the same generic path, but its processor needs
torchvision for the video processor, which this environment lacks.) ``smolvlm-500m`` is a random-weight backbone shaped like
SmolVLM-500M (about 0.5 B parameters), for latency benchmarks.

Usage::

    python -m policy.tiny --family smolvlm --out /tmp/tiny_smolvlm
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

FAMILIES = ("smolvlm", "paligemma", "smolvlm-500m")

_IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def byte_tokenizer(special: list[str], *, bos: str = "<s>", eos: str = "</s>", pad: str = "<pad>") -> Any:
    """A byte-level BPE tokenizer without merges: 256 byte tokens plus ``special``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for t in (pad, bos, eos, "<unk>"):
        vocab.setdefault(t, len(vocab))
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (pad, bos, eos, "<unk>")])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>"
    )


def _vocab_size(tokenizer: Any, multiple: int = 64) -> int:
    n = len(tokenizer)
    return ((n + multiple - 1) // multiple) * multiple


def _smolvlm(large: bool) -> tuple[Any, Any]:
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    special = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|im_start|>"]
    special += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = byte_tokenizer(special)
    if large:  # shaped like HuggingFaceTB/SmolVLM-500M-Instruct
        img, patch, scale = 512, 16, 4
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        text = dict(
            hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
            num_key_value_heads=5, vocab_size=49280, max_position_embeddings=8192,
        )
    else:
        img, patch, scale = 32, 8, 2
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        text = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=_vocab_size(tok), max_position_embeddings=512,
        )
    cfg = Idefics3Config(
        vision_config=dict(image_size=img, patch_size=patch, **vision),
        text_config=dict(model_type="llama", pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **text),
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    seq = (img // patch) ** 2 // scale**2
    improc = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": img}, max_image_size={"longest_edge": img}
    )
    proc = Idefics3Processor(image_processor=improc, tokenizer=tok, image_seq_len=seq, chat_template=_IDEFICS3_TEMPLATE)
    return cfg, proc


def _paligemma() -> tuple[Any, Any]:
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessorPil

    tok = byte_tokenizer(["<image>"], bos="<bos>", eos="<eos>")
    img, patch = 32, 8
    seq = (img // patch) ** 2
    improc = SiglipImageProcessorPil(size={"height": img, "width": img})
    improc.image_seq_length = seq
    proc = PaliGemmaProcessor(image_processor=improc, tokenizer=tok)
    cfg = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model", image_size=img, patch_size=patch, hidden_size=32,
            intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32,
        ),
        text_config=dict(
            model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=_vocab_size(proc.tokenizer),
            max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        ),
        projection_dim=32,
        image_token_id=proc.tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    return cfg, proc


def build_backbone_config(family: str) -> tuple[Any, Any]:
    """(model config, processor) of a random backbone of ``family``."""
    if family == "smolvlm":
        return _smolvlm(large=False)
    if family == "smolvlm-500m":
        return _smolvlm(large=True)
    if family == "paligemma":
        return _paligemma()
    raise ValueError(f"unknown backbone family {family!r}; choose one of {', '.join(FAMILIES)}")


def random_backbone(family: str, *, seed: int = 0) -> tuple[Any, Any]:
    """(random-weight ``AutoModelForImageTextToText``, its processor) of ``family``, in memory."""
    import torch
    from transformers import AutoModelForImageTextToText

    cfg, proc = build_backbone_config(family)
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32), proc


def make_tiny_backbone(family: str, out: str | Path, *, seed: int = 0) -> Path:
    """Write a random backbone of ``family`` (model + processor) to ``out`` and return the path."""
    model, proc = random_backbone(family, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=FAMILIES, required=True)
    ap.add_argument("--out", required=True, help="directory to write the backbone to")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = make_tiny_backbone(args.family, args.out, seed=args.seed)
    print(f"wrote {args.family} backbone to {path}")


if __name__ == "__main__":
    main()
