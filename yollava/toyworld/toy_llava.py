"""What ``--model toy`` needs at run time: the toy LLaVA's artifact format, architecture, tokenizer and loader.

Nothing here imports the renderer, the pretraining data mix or the benchmark planner: loading the
shipped model is a config, a tokenizer file and a safetensors file (``yollava/assets/toy_llava``).
Building it is ``yollava.toyworld.pretrain`` (``scripts/pretrain_toy.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from yollava.base import Base, clip_image_processor, count_image_tokens, freeze
from yollava.errors import YollavaError

MODEL_ID = "toy"
TOY_LLAVA_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy_llava"
# The toy CLIP's architecture as data (open_clip's model-config format); the toy LLaVA's tower is its vision trunk.
TOY_CLIP_CONFIG = Path(__file__).with_name("yollava-toy-clip.json")
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
QUALITY_FILE = "quality.json"
README_FILE = "README.md"
FORMAT = "yollava-toy-llava"
FORMAT_VERSION = 1

# LLaVA-1.5's special tokens (Llama tokenizer names); <s> is prepended, </s> ends every answer.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
UNK, BOS, EOS, PAD, IMAGE = SPECIAL_TOKENS
# Embedding rows are padded past the tokenizer to a multiple of this (like llava-hf's 32064 rows
# for 32002 tokens), so the "never resize the matrices" path of yollava.concept is exercised.
ROW_MULTIPLE = 64


def wrap_tokenizer(path: str | Path) -> Any:
    """``tokenizer.json`` as a transformers fast tokenizer, the same way on transformers 4.57 and 5.x.

    Raises:
        YollavaError: the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise YollavaError(f"toy LLaVA tokenizer {path} not found; run scripts/pretrain_toy.py")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_input_names=["input_ids", "attention_mask"], padding_side="right",
    )


@dataclass
class ToyLlavaArch:
    """Size of the toy LLaVA's language model (the vision tower is the toy CLIP's, fixed)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    # LLaVA-1.5 takes the second-to-last layer: the toy CLIP's last layer only feeds its CLS
    # output, so its patch outputs were never trained by the contrastive loss.
    vision_feature_layer: int = -2
    max_position_embeddings: int = 512
    # std of the language model's and projector's initial weights (transformers' default 0.02 is
    # sized for 768+ wide models)
    initializer_range: float = 0.02
    # attention heads of the vision tower (0: the toy CLIP's own). The weights do not change shape:
    # more heads split the same projections, which the dense vision stage then adapts.
    vision_attention_heads: int = 0
    # RoPE base. Content matching across positions (a description against image tokens 20-150
    # positions back) can only use the slowly rotating dimensions; a large base keeps most of them
    # still, the first few pairs still carry relative position.
    rope_theta: float = 10000.0
    # attention head size (0: hidden_size / num_attention_heads)
    head_dim: int = 0


def toy_clip_config() -> dict[str, Any]:
    """The toy CLIP's open_clip model config (``yollava/toyworld/yollava-toy-clip.json``)."""
    return json.loads(TOY_CLIP_CONFIG.read_text(encoding="utf-8"))


def vision_config(heads: int = 0) -> CLIPVisionConfig:
    """The transformers vision config of the toy CLIP's tower (see toyworld/clip.py), ``heads`` attention heads (0: its own)."""
    clip = toy_clip_config()
    vision = clip["vision_cfg"]
    width = vision["width"]
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=int(width * vision.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision["layers"], num_attention_heads=heads or width // vision.get("head_width", 64),
        image_size=vision["image_size"], patch_size=vision["patch_size"], num_channels=3,
        hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=clip["embed_dim"],
    )


def llava_config(arch: ToyLlavaArch, tokenizer: Any) -> LlavaConfig:
    """The LlavaConfig of the toy model: toy CLIP vision tower, tiny Llama, 2-layer GELU projector."""
    rows = math.ceil(len(tokenizer) / ROW_MULTIPLE) * ROW_MULTIPLE
    text = LlamaConfig(
        hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_attention_heads, vocab_size=rows,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=False,
        initializer_range=arch.initializer_range, rope_theta=arch.rope_theta,
        **({"head_dim": arch.head_dim} if arch.head_dim else {}),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision_config(arch.vision_attention_heads), text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=arch.vision_feature_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )


def set_generation_defaults(model: LlavaForConditionalGeneration, tokenizer: Any) -> None:
    """Pad, EOS and BOS ids of the toy tokenizer in the model's generation config."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def save_toy_llava(out: str | Path, model: LlavaForConditionalGeneration, tokenizer_json: Any, arch: ToyLlavaArch, extra: dict[str, Any]) -> None:
    """Write ``model.safetensors``, ``config.json`` (our own small schema) and ``tokenizer.json``.

    The config stores constructor arguments rather than transformers' serialised config, so the
    same file builds the model on transformers 4.57 and 5.x.

    Args:
        tokenizer_json: a ``tokenizers.Tokenizer`` (its ``save`` writes ``tokenizer.json``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_json.save(str(out / TOKENIZER_FILE))
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": asdict(arch), **extra}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def free_names(tokenizer: Any) -> tuple[str, ...]:
    """The placeholder names ``<x00>``... of the tokenizer, in order: pretraining introduces subjects by them."""
    return tuple(sorted(t for t in tokenizer.get_vocab() if re.fullmatch(r"<x\d\d>", t)))


def toy_llava_folder() -> Path:
    """Where ``--model toy`` loads from: ``$YOLLAVA_TOY_LLAVA`` if set (a model built with
    ``scripts/pretrain_toy.py --out DIR``), else the shipped ``yollava/assets/toy_llava``."""
    override = os.environ.get("YOLLAVA_TOY_LLAVA")
    return Path(override) if override else TOY_LLAVA_ASSETS


def toy_llava_available() -> bool:
    """Whether the pretrained toy LLaVA's weights are installed where :func:`toy_llava_folder` points."""
    return (toy_llava_folder() / WEIGHTS_FILE).is_file()


def load_toy_base(path: str | Path | None = None) -> Base:
    """Load the pretrained toy LLaVA as a frozen yollava :class:`~yollava.base.Base` (CPU, fp32).

    Args:
        path: folder with model.safetensors, config.json and tokenizer.json (default: the shipped
            ``yollava/assets/toy_llava``, or ``$YOLLAVA_TOY_LLAVA``).

    Returns:
        The base; ``model_id`` is ``"toy"`` (what concept files record).

    Raises:
        YollavaError: a file is missing or the weights do not fit the config.
    """
    folder = Path(path) if path is not None else toy_llava_folder()
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise YollavaError(f"toy LLaVA: {folder / name} is missing; run scripts/pretrain_toy.py to build it")
    record = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise YollavaError(f"toy LLaVA: {folder / CONFIG_FILE} is not a {FORMAT} v{FORMAT_VERSION} config; rebuild it")
    tokenizer = wrap_tokenizer(folder / TOKENIZER_FILE)
    arch = ToyLlavaArch(**record["arch"])
    model = LlavaForConditionalGeneration(llava_config(arch, tokenizer))
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    except RuntimeError as exc:
        raise YollavaError(f"toy LLaVA: {folder / WEIGHTS_FILE} does not fit {CONFIG_FILE} ({str(exc).splitlines()[0]})") from exc
    set_generation_defaults(model, tokenizer)
    freeze(model)
    return Base(
        model=model, tokenizer=tokenizer, image_processor=clip_image_processor(model.config.vision_config.image_size),
        model_id=MODEL_ID, revision=record.get("revision"), image_token_id=model.config.image_token_id,
        num_image_tokens=count_image_tokens(model.config), base_tokenizer_size=len(tokenizer),
        free_names=free_names(tokenizer),
    )
