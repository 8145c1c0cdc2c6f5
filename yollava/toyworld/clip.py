"""The toy CLIP: a tiny open_clip model registered from a JSON config, its word tokenizer and loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from yollava.errors import YollavaError
# The architecture as data (open_clip's registry reads the file; its stem is the model name). The
# toy LLaVA's loader reads it too, without open_clip, so it lives there.
from yollava.toyworld.toy_llava import TOY_CLIP_CONFIG, toy_clip_config, vision_config
from yollava.toyworld.world import split_words, vocabulary

TOY_CLIP_MODEL_NAME = TOY_CLIP_CONFIG.stem
TOY_CLIP_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy_clip"
WEIGHTS_FILE = "toy_clip.safetensors"
VOCAB_FILE = "vocab.json"
METRICS_FILE = "metrics.json"
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")
PAD_ID, START_ID, END_ID, UNK_ID = range(len(SPECIAL_TOKENS))


class ToyTokenizer:
    """Word-level tokenizer over the toy world's vocabulary, called like open_clip's tokenizers.

    Ids: ``<pad>``=0, ``<start>``=1, ``<end>``=2 (the text tower pools at ``<end>``, the
    config's ``eos_id``), ``<unk>``=3, then the words in the order given.
    """

    def __init__(self, words: list[str], context_length: int = 32):
        self.tokens = list(SPECIAL_TOKENS) + list(words)
        if len(set(self.tokens)) != len(self.tokens):
            raise YollavaError("toy tokenizer: duplicate words in the vocabulary")
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return len(self.tokens)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 32) -> ToyTokenizer:
        """Load the word list saved by :meth:`save` (ids must not move once a model is trained).

        Raises:
            YollavaError: the file is missing or not a JSON list of words after the special tokens.
        """
        path = Path(path)
        if not path.is_file():
            raise YollavaError(f"toy tokenizer: {path} not found; run scripts/pretrain_toy_clip.py")
        tokens = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(tokens, list) or tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise YollavaError(f"toy tokenizer: {path} must be a JSON list starting with {list(SPECIAL_TOKENS)}")
        return cls(tokens[len(SPECIAL_TOKENS) :], context_length)

    def save(self, path: str | Path) -> None:
        """Write the token list (special tokens first) as JSON."""
        Path(path).write_text(json.dumps(self.tokens, indent=0) + "\n", encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        """Ids of a text's words (unknown words -> ``<unk>``), without start/end tokens."""
        return [self.ids.get(word, UNK_ID) for word in split_words(text)]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Words of the ids, special tokens dropped."""
        ids = ids.tolist() if torch.is_tensor(ids) else ids
        return " ".join(self.tokens[i] for i in ids if i >= len(SPECIAL_TOKENS))

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids ``[batch, context_length]``: ``<start> words… <end> <pad>…``, cut to fit.

        Args:
            texts: one text or a list.
            context_length: override of the default (32; the longest caption has 29 tokens).

        Returns:
            A LongTensor.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [START_ID, *self.encode(text)[: length - 2], END_ID]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def register_toy_clip_config() -> str:
    """Add the toy config to open_clip's model registry (idempotent).

    Returns:
        The model name to pass to ``open_clip.create_model_and_transforms``.
    """
    if TOY_CLIP_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(TOY_CLIP_CONFIG)
    return TOY_CLIP_MODEL_NAME


def create_toy_clip(
    pretrained: bool = True,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[open_clip.CLIP, object, ToyTokenizer]:
    """Build the toy CLIP through open_clip's factory, with the shipped weights.

    Args:
        pretrained: load the weights (safetensors only, via open_clip's checkpoint loader);
            False gives a randomly initialised model (for training).
        weights: a safetensors file to load instead of the shipped one.
        device: torch device.

    Returns:
        ``(model, preprocess, tokenizer)``: the model in eval mode, open_clip's inference image
        transform (PIL -> normalised 3x64x64 tensor) and the word tokenizer.

    Raises:
        YollavaError: the weights are missing, are not a .safetensors file, or do not match the
            config.
    """
    name = register_toy_clip_config()
    checkpoint = None
    if pretrained:
        checkpoint = Path(weights) if weights is not None else TOY_CLIP_ASSETS / WEIGHTS_FILE
        if checkpoint.suffix != ".safetensors":
            raise YollavaError(f"toy CLIP weights {checkpoint}: only .safetensors files are loaded")
        if not checkpoint.is_file():
            raise YollavaError(f"toy CLIP weights {checkpoint} not found; run scripts/pretrain_toy_clip.py")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(checkpoint) if checkpoint else None, device=device
        )
    except RuntimeError as exc:
        raise YollavaError(f"toy CLIP weights {checkpoint} do not fit {TOY_CLIP_CONFIG.name}: {exc}") from exc
    model.eval()
    config = toy_clip_config()["text_cfg"]
    vocab_file = TOY_CLIP_ASSETS / VOCAB_FILE
    words = ToyTokenizer.from_file(vocab_file).tokens[len(SPECIAL_TOKENS) :] if vocab_file.is_file() else vocabulary()
    tokenizer = ToyTokenizer(words, config["context_length"])
    if tokenizer.vocab_size > config["vocab_size"]:
        raise YollavaError(
            f"toy tokenizer has {tokenizer.vocab_size} ids but the model embeds {config['vocab_size']}; "
            f"raise text_cfg.vocab_size in {TOY_CLIP_CONFIG.name} and retrain"
        )
    return model, preprocess, tokenizer


def images_to_tensor(images) -> torch.Tensor:
    """Batch of RGB uint8 arrays ``[N, H, W, 3]`` (at the model's size) -> normalised ``[N, 3, H, W]``.

    Equal to open_clip's ``preprocess`` for images already at 64 px, without PIL round trips
    (training draws ~150 images/s and cannot afford per-image transforms).
    """
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def hf_vision_state_dict(model: open_clip.CLIP) -> dict[str, torch.Tensor]:
    """The vision tower's weights under transformers ``CLIPVisionModel`` names (no prefix).

    open_clip packs q, k, v into one ``in_proj`` matrix; transformers keeps three. The output
    projection ``visual.proj`` ([width, embed_dim], used as ``x @ proj``) is not part of
    ``CLIPVisionModel`` and is returned as ``visual_projection.weight`` (its transpose) for
    ``CLIPVisionModelWithProjection``.
    """
    visual = model.visual
    out = {
        "embeddings.class_embedding": visual.class_embedding,
        "embeddings.patch_embedding.weight": visual.conv1.weight,
        "embeddings.position_embedding.weight": visual.positional_embedding,
        "pre_layrnorm.weight": visual.ln_pre.weight,
        "pre_layrnorm.bias": visual.ln_pre.bias,
        "post_layernorm.weight": visual.ln_post.weight,
        "post_layernorm.bias": visual.ln_post.bias,
        "visual_projection.weight": visual.proj.t(),
    }
    for i, block in enumerate(visual.transformer.resblocks):
        prefix = f"encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        out.update({
            prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.q_proj.bias": qb,
            prefix + "self_attn.k_proj.weight": k, prefix + "self_attn.k_proj.bias": kb,
            prefix + "self_attn.v_proj.weight": v, prefix + "self_attn.v_proj.bias": vb,
            prefix + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            prefix + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            prefix + "layer_norm1.weight": block.ln_1.weight, prefix + "layer_norm1.bias": block.ln_1.bias,
            prefix + "layer_norm2.weight": block.ln_2.weight, prefix + "layer_norm2.bias": block.ln_2.bias,
            prefix + "mlp.fc1.weight": block.mlp.c_fc.weight, prefix + "mlp.fc1.bias": block.mlp.c_fc.bias,
            prefix + "mlp.fc2.weight": block.mlp.c_proj.weight, prefix + "mlp.fc2.bias": block.mlp.c_proj.bias,
        })  # fmt: skip
    return {key: value.detach().clone().contiguous() for key, value in out.items()}


def to_hf_vision_model(model: open_clip.CLIP):
    """A transformers ``CLIPVisionModelWithProjection`` with the toy CLIP's vision weights.

    Its ``image_embeds`` equal ``model.encode_image`` and its hidden states are what a LLaVA
    vision tower exposes; ``.vision_model`` is the plain ``CLIPVisionModel`` trunk.

    Returns:
        The model in eval mode.
    """
    from transformers import CLIPVisionModelWithProjection

    # toy_llava.vision_config maps the config: width -> hidden_size, width / head_width -> heads,
    # mlp_ratio * width -> intermediate_size, exact GELU -> "gelu" (transformers defaults to quick_gelu)
    hf = CLIPVisionModelWithProjection(vision_config())
    weights = hf_vision_state_dict(model)
    target = hf.state_dict()
    # transformers 4.x prefixes the trunk with "vision_model."; 5.x keeps that name as a module too.
    renamed = {}
    for key in target:
        bare = key.removeprefix("vision_model.")
        if bare not in weights:
            raise YollavaError(f"transformers CLIP vision weight {key} has no toy CLIP counterpart")
        renamed[key] = weights[bare]
    hf.load_state_dict(renamed, strict=True)
    return hf.eval()
