"""The toy world's retrieval embedder, which sees what a subject *is* (``--embedder toy``; the trained toy CLIP is ``toy-clip``).

A LAION CLIP puts a photo of a dog next to other dogs: object category dominates its embedding,
then colour. The toy CLIP (yollava.toyworld.clip), trained contrastively on the toy world's
captions, hardly sees family at all (linear probes read it at 0.33), so the negatives mined with it
share the concept's family only 0.33 of the time against a base rate of 0.17, and the ablations
that hinge on *hard* negatives measure nothing (issue 18, docs/benchmarks.md).

The toy LLaVA already reads every attribute of every subject in a photo: its projector regresses
each patch onto the one-hot attribute slots of the subject drawn there (pretrain.circuit's image
code; a lone subject's family is read right 0.999 of the time). This embedder is that read, frozen,
used the way a CLIP image tower is used:

- the toy LLaVA's vision tower and projector (the shipped weights, frozen);
- the code slots of the patches averaged with each patch's subject flag as its weight (background
  patches count nothing), so the larger a subject, the more it counts, as in a photo;
- each attribute's slots weighted as a web-scale CLIP weighs them: category first, then colour
  (:data:`SLOT_WEIGHTS`, chosen on a second toy world, ``seed 1``, docs/benchmarks.md);
- L2-normalised by :class:`~yollava.retrieval.embed.Embedder`, so cosine similarity is the overlap
  of two photos' weighted attribute profiles.

It embeds images only (mining, indexes, the clip-retrieval back-end's image queries); a text query
needs a model with a text tower (``toy-clip``, the LAION CLIPs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from yollava.toyworld.pretrain import circuit as C

# weight of each attribute's slots in the embedding (attributes not named: 1)
SLOT_WEIGHTS: dict[str, float] = {"family": 5.0, "color": 2.0}


def slot_weights(weights: dict[str, float] | None = None) -> torch.Tensor:
    """One weight per code slot (:data:`~yollava.toyworld.pretrain.circuit.SLOTS`)."""
    chosen = SLOT_WEIGHTS if weights is None else weights
    return torch.tensor([float(chosen.get(attribute, 1.0)) for attribute, _ in C.SLOTS])


class AttributeTower(torch.nn.Module):
    """The toy LLaVA's vision tower and projector, read as subject-weighted attribute profiles."""

    def __init__(self, model: Any, weights: dict[str, float] | None = None):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.layer = model.config.vision_feature_layer
        # a buffer, so the embedder's fingerprint (and its cache key) changes with the weights
        self.register_buffer("slot_weights", slot_weights(weights))

    @property
    def output_dim(self) -> int:
        return len(C.SLOTS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states[self.layer]
        code = self.projector(hidden[:, 1:])  # drop CLS, as LLaVA's "default" feature selection does
        slots = code[..., C.IMAGE_CODE : C.IMAGE_CODE + len(C.SLOTS)]
        subject = code[..., C.SUBJECT].clamp(min=0.0)
        weight = subject / subject.sum(dim=1, keepdim=True).clamp(min=1e-6)
        return (slots * weight.unsqueeze(-1)).sum(dim=1) * self.slot_weights


class AttributeClip(torch.nn.Module):
    """Image-only CLIP-style wrapper: ``encode_image`` as open_clip models have it, ``visual`` for the fingerprint."""

    def __init__(self, model: Any, weights: dict[str, float] | None = None):
        super().__init__()
        self.visual = AttributeTower(model, weights)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


def create_attribute_clip(weights: dict[str, float] | None = None) -> tuple[AttributeClip, Callable[[Image.Image], torch.Tensor]]:
    """The embedder's model and preprocessing from the shipped toy LLaVA (``$YOLLAVA_TOY_LLAVA`` to use another build).

    Raises:
        YollavaError: the toy LLaVA's files are missing.
    """
    from yollava.toyworld.toy_llava import load_toy_base

    base = load_toy_base()
    model = AttributeClip(base.model, weights).eval()
    model.requires_grad_(False)
    return model, Preprocess(base.image_processor, base.model.config.vision_config.image_size)


class Preprocess:
    """The toy LLaVA's CLIP preprocessing of one PIL image; its repr is stable (it enters the embedder's fingerprint)."""

    def __init__(self, processor: Any, size: int):
        self.processor = processor
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ToyLlavaPreprocess(size={self.size})"
