"""A registry of frozen LLaVA bases: hub id or local checkpoint, ``tiny`` (random, offline) and ``toy`` (pretrained toy world)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from yollava import hub
from yollava.base import Base, clip_image_processor, count_image_tokens, freeze
from yollava.config import ModelConfig, Quantization
from yollava.errors import YollavaError

log = logging.getLogger(__name__)

TINY = "tiny"
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# transformers 5 renamed from_pretrained's torch_dtype= to dtype=
DTYPE_KWARG = "dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise YollavaError(f"model.device={name} but no CUDA device is available; use model.device=cpu")
    return name


def _resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise YollavaError(f"model.dtype={name} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _tiny_tokenizer_dir() -> Path:
    return Path(str(resources.files("yollava") / "assets" / "tiny" / "tokenizer"))


def tiny_tokenizer() -> Any:
    """The committed byte-level BPE tokenizer, wrapped the same way on transformers 4.57 and 5.x.

    Built from ``tokenizer.json`` alone (a saved tokenizer_config.json names a class that only
    exists in 5.x). ``model_input_names`` leaves out token_type_ids, which 4.57's generate rejects.
    """
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(_tiny_tokenizer_dir() / "tokenizer.json"),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_input_names=["input_ids", "attention_mask"], padding_side="right",
    )


def build_tiny_base(seed: int = 0, extra_rows: int = 8, hidden_size: int = 64) -> Base:
    """A small random LLaVA for tests: same transformers class, offline, well under a second.

    It cannot learn a concept (prompt tuning on a random frozen net stays at chance); it exists to
    test mechanics. Its embedding matrix has ``extra_rows`` more rows than the tokenizer, like the
    llava-hf checkpoints (32064 rows, 32002 tokens), so the "never shrink" path is always exercised.

    Args:
        seed: torch seed for the random weights.
        extra_rows: unused padding rows past the tokenizer.
        hidden_size: language-model width (tests build a second size to check base refusal).
    """
    tokenizer = tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=len(tokenizer) + extra_rows, max_position_embeddings=1024,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    freeze(model)
    return Base(
        model=model, tokenizer=tokenizer, image_processor=clip_image_processor(vision.image_size),
        model_id=TINY, revision=None, image_token_id=image_token_id,
        num_image_tokens=count_image_tokens(config), base_tokenizer_size=len(tokenizer),
    )


TOY = "toy"


def build_toy_base() -> Base:
    """The toy world's pretrained LLaVA (shipped in the package; see yollava/toyworld/toy_llava.py)."""
    from yollava.toyworld.toy_llava import load_toy_base

    return load_toy_base()


def place(base: Base, config: ModelConfig) -> Base:
    """Move a locally built base to ``config.device`` / ``config.dtype`` (builders build on the CPU in fp32).

    Raises:
        YollavaError: an unusable device or dtype, or quantization asked of a built model.
    """
    if config.quantization != Quantization.none:
        raise YollavaError(f"model.quantization={config.quantization.value} applies to hub checkpoints; '{config.name}' is built locally, use model.quantization=none")
    device = _resolve_device(config.device)
    dtype = _resolve_dtype(config.dtype, device)
    if (base.device.type, base.dtype) != (torch.device(device).type, dtype):
        base.model.to(device=device, dtype=dtype)
    return base


# Locally built bases by name; every other ``model.name`` is a hub id or a checkpoint folder.
BUILDERS: dict[str, Callable[[], Base]] = {TINY: build_tiny_base, TOY: build_toy_base}


def _quantization_config(kind: Quantization, device: str) -> Any:
    if kind == Quantization.none:
        return None
    if not device.startswith("cuda"):
        raise YollavaError(f"model.quantization={kind.value} needs a CUDA GPU; use model.quantization=none on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise YollavaError("model.quantization needs bitsandbytes: pip install 'yollava[quant]'") from exc
    if kind == Quantization.int8:
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4"
    )


def load_base(config: ModelConfig) -> Base:
    """Load and freeze a LLaVA base.

    Args:
        config: ``name`` is a hub id (default ``llava-hf/llava-1.5-13b-hf``), a local directory of a
            ``LlavaForConditionalGeneration`` checkpoint, or a name in :data:`BUILDERS` (``tiny``, ``toy``);
            ``device``/``dtype`` apply to every kind, so ``base.device``/``base.dtype`` always hold.

    Returns:
        A frozen :class:`Base` with the model on its device (accelerate places it on GPU).

    Raises:
        YollavaError: the checkpoint cannot be found or loaded, or the device/dtype is unusable.
    """
    if config.name in BUILDERS:
        return place(BUILDERS[config.name](), config)
    device = _resolve_device(config.device)
    dtype = _resolve_dtype(config.dtype, device)
    kwargs: dict[str, Any] = {DTYPE_KWARG: dtype, "revision": config.revision, "use_safetensors": True}
    quant = _quantization_config(config.quantization, device)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}
    local = Path(config.name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise YollavaError(f"--model {config.name}: directory has no config.json; pass a LLaVA checkpoint folder or a hub id")
    source = nullcontext()
    if not local.exists():
        why = hub.unavailable_reason()
        if why is not None:
            if hub.cached_file(config.name, "config.json", config.revision) is None:
                raise YollavaError(
                    f"cannot load model '{config.name}': it is not in the local Hugging Face cache and {why}; connect once to "
                    "download it (kept in the cache afterwards), or use --model toy (the pretrained toy-world model, offline)"
                )
            source = hub.offline()  # cached: load it without a minute of retried requests
    try:
        with source:
            model = LlavaForConditionalGeneration.from_pretrained(config.name, **kwargs)
            processor = AutoProcessor.from_pretrained(config.name, revision=config.revision)
    except (OSError, ValueError) as exc:
        raise YollavaError(
            f"cannot load model '{config.name}' ({hub.short_reason(exc, 200)}); check the id or path, your network/HF cache, "
            "or use --model toy (the pretrained toy-world model, offline)"
        ) from exc
    if not device.startswith("cuda"):
        model.to(device)
    freeze(model)
    tokenizer = processor.tokenizer
    image_token_id = model.config.image_token_id
    return Base(
        model=model, tokenizer=tokenizer, image_processor=processor.image_processor,
        model_id=config.name, revision=getattr(model.config, "_commit_hash", None) or config.revision,
        image_token_id=image_token_id, num_image_tokens=count_image_tokens(model.config),
        base_tokenizer_size=len(tokenizer),
    )
