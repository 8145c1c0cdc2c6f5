"""A FLOP model of one training step, one score and one prefix, for the reference loop and for yollava's cached-prefix path.

Multiply-adds count 2 FLOPs. Decoder weights are frozen in both loops, so a backward through a
frozen linear layer costs one matmul (the input gradient), the same as its forward; attention's
backward costs twice its forward (scores and values). Only the reference computes weight gradients,
for its two full vocabulary matrices (the head's is a full matmul; the embedding's a scatter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arch:
    """The sizes the FLOP model needs (read from a LlavaConfig by :func:`arch_of`)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_tokens: int  # patches + class token (577 for ViT-L/14 at 336 px)
    image_tokens: int  # positions one image takes in the language model (576)

    def with_layers(self, layers: int) -> "Arch":
        return Arch(**{**self.__dict__, "layers": layers})


def arch_of(config: Any) -> Arch:
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    patches = (vision.image_size // vision.patch_size) ** 2
    image_tokens = patches + (1 if config.vision_feature_select_strategy == "full" else 0)
    return Arch(
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
        heads=text.num_attention_heads, kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_dim=head_dim, vocab=text.vocab_size, vision_hidden=vision.hidden_size,
        vision_intermediate=vision.intermediate_size, vision_layers=vision.num_hidden_layers,
        vision_tokens=patches + 1, image_tokens=image_tokens,
    )


def layer_linear(arch: Arch) -> int:
    """Forward FLOPs of one decoder layer's matmuls for one token (q, k, v, o projections and the gated MLP)."""
    h = arch.hidden
    qkvo = h * arch.heads * arch.head_dim * 2 + h * arch.kv_heads * arch.head_dim * 2
    return 2 * (qkvo + 3 * h * arch.intermediate)


def attention(arch: Arch, queries: int, keys_before: int) -> int:
    """Forward FLOPs of one layer's attention: ``queries`` tokens, the i-th attending to ``keys_before + i + 1`` keys."""
    keys = queries * keys_before + queries * (queries + 1) // 2
    return 2 * 2 * arch.heads * arch.head_dim * keys


def tower(arch: Arch) -> int:
    """Vision tower + projector forward for one image (ViT layers, then a 2-layer MLP into the LM)."""
    v, t = arch.vision_hidden, arch.vision_tokens
    per_layer = 2 * t * (4 * v * v + 2 * v * arch.vision_intermediate) + 2 * 2 * t * t * v
    projector = 2 * arch.image_tokens * (v * arch.hidden + arch.hidden * arch.hidden)
    return arch.vision_layers * per_layer + projector


def lm_forward(arch: Arch, tokens: int, keys_before: int = 0) -> int:
    return arch.layers * (tokens * layer_linear(arch) + attention(arch, tokens, keys_before))


def lm_backward(arch: Arch, tokens: int, keys_before: int = 0) -> int:
    """Input gradients only (frozen weights): linear as its forward, attention twice its forward."""
    return arch.layers * (tokens * layer_linear(arch) + 2 * attention(arch, tokens, keys_before))


def head(arch: Arch, positions: int) -> int:
    return 2 * arch.hidden * arch.vocab * positions


ADAMW_FLOPS_PER_NUMBER = 12  # moments, bias corrections, update, weight decay: a memory-bound pass


def reference_step(arch: Arch, tokens: int, images: int = 1) -> int:
    """The Yo'LLaVA step: tower, full forward and backward over every position, full logits, AdamW over two vocab x hidden matrices."""
    logits = head(arch, tokens)
    return (
        images * tower(arch) + lm_forward(arch, tokens) + lm_backward(arch, tokens)
        + logits + 2 * logits  # head forward, input and weight gradients
        + ADAMW_FLOPS_PER_NUMBER * 2 * arch.vocab * arch.hidden
    )


def yollava_step(arch: Arch, prefix: int, suffix: int, supervised: int) -> int:
    """The cached-prefix step: forward and backward over the suffix only, head at supervised positions."""
    return lm_forward(arch, suffix, prefix) + lm_backward(arch, suffix, prefix) + 2 * head(arch, supervised)


def prefix_pass(arch: Arch, prefix: int, images: int = 1) -> int:
    """Once per image: tower + the frozen prefix's forward (keys/values kept)."""
    return images * tower(arch) + lm_forward(arch, prefix)


def reference_score(arch: Arch, tokens: int) -> int:
    """One recognition score the reference way: tower + full forward + full logits, no cache."""
    return tower(arch) + lm_forward(arch, tokens) + head(arch, tokens)


def yollava_score(arch: Arch, prefix: int, suffix: int) -> int:
    """One recognition score on a cached prefix: the suffix's forward + the head at the last position."""
    return lm_forward(arch, suffix, prefix) + head(arch, 1)
