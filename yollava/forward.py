"""Running the frozen base with concept rows: cached image features, input embeddings, logits where needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from yollava.images import file_sha256, load_rgb
from yollava.base import Base
from yollava.prompts import IGNORE_INDEX


@dataclass(frozen=True)
class ImageRef:
    """An image on disk plus a variant name (``""`` or ``"hflip"``): each variant is cached separately."""

    path: str
    variant: str = ""

    def load(self) -> Image.Image:
        image = load_rgb(self.path)
        return ImageOps.mirror(image) if self.variant == "hflip" else image


def pixel_values(base: Base, images: Sequence[Image.Image]) -> torch.Tensor:
    """Preprocess PIL images with the base's image processor."""
    values = base.image_processor(list(images), return_tensors="pt")["pixel_values"]
    return values.to(device=base.device, dtype=base.dtype)


def image_features(base: Base, values: torch.Tensor) -> torch.Tensor:
    """Vision tower + projector output, ``[n_images, num_image_tokens, hidden]``.

    transformers 5 returns an output object whose ``pooler_output`` is a list per image;
    4.57 returns the tensor itself.
    """
    config = base.model.config
    out = base.model.model.get_image_features(
        pixel_values=values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    if hasattr(out, "pooler_output"):
        out = out.pooler_output
    if isinstance(out, (list, tuple)):
        out = torch.stack(list(out))
    return out


class FeatureCache:
    """Image features keyed by (file sha256, variant), computed once and reused every epoch.

    The vision tower and projector are frozen, so their output for an image never changes; at
    LLaVA-1.5 scale recomputing them costs more than the whole language-model step on a CPU.
    Features live on ``storage`` (CPU by default: 576x5120 bf16 = 5.9 MB per image for 13B).
    """

    def __init__(self, base: Base, enabled: bool = True, storage: str = "cpu"):
        self.base = base
        self.enabled = enabled
        self.storage = storage
        self._features: dict[tuple[str, str], torch.Tensor] = {}
        self._hashes: dict[str, str] = {}
        self.computed = 0

    def _key(self, ref: ImageRef) -> tuple[str, str]:
        if ref.path not in self._hashes:
            self._hashes[ref.path] = file_sha256(ref.path)
        return self._hashes[ref.path], ref.variant

    @torch.no_grad()
    def get(self, refs: Sequence[ImageRef]) -> torch.Tensor:
        """Features for ``refs`` in order, ``[len(refs), tokens, hidden]`` on the model's device."""
        if not self.enabled:
            self.computed += len(refs)
            return image_features(self.base, pixel_values(self.base, [r.load() for r in refs]))
        keys = [self._key(r) for r in refs]
        missing = [(k, r) for k, r in dict(zip(keys, refs)).items() if k not in self._features]
        if missing:
            feats = image_features(self.base, pixel_values(self.base, [r.load() for _, r in missing]))
            self.computed += len(missing)
            for (key, _), value in zip(missing, feats):
                self._features[key] = value.to(self.storage)
        return torch.stack([self._features[k] for k in keys]).to(self.base.device)

    def __len__(self) -> int:
        return len(self._features)


@dataclass
class Batch:
    """Right-padded token ids, labels and attention mask, plus the images in order of appearance."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    images: list[ImageRef]


def collate(items: Sequence[tuple[list[int], list[int], list[ImageRef]]], pad_id: int, device: torch.device) -> Batch:
    """Pad (ids, labels, images) triples into one batch."""
    length = max(len(ids) for ids, _, _ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    images: list[ImageRef] = []
    for row, (ids, labs, refs) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
        images.extend(refs)
    return Batch(input_ids.to(device), labels.to(device), mask.to(device), images)


def input_embeddings(base: Base, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings (concept rows included) with image features scattered into ``<image>`` slots."""
    embeds = base.model.get_input_embeddings()(input_ids)
    if features is None:
        return embeds
    mask = (input_ids == base.image_token_id).unsqueeze(-1)
    if int(mask.sum()) != features.shape[0] * features.shape[1]:
        raise ValueError(f"{int(mask.sum())} image positions but features for {features.shape[0]}x{features.shape[1]}")
    return embeds.masked_scatter(mask.expand_as(embeds), features.to(embeds.dtype))


def hidden_states(base: Base, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Last hidden states of the language model (no output head applied)."""
    embeds = input_embeddings(base, input_ids, features)
    out = base.model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def supervised_loss(base: Base, batch: Batch, cache: FeatureCache, head_at_supervised_only: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens.

    Fast path: cached image features, and the output head applied only at the positions that
    predict a supervised token (a few dozen of ~600; the head is the largest matmul at 32k vocab).
    ``head_at_supervised_only=False`` computes full logits, as the reference loop does.
    """
    features = cache.get(batch.images) if batch.images else None
    hidden = hidden_states(base, batch.input_ids, batch.attention_mask, features)
    targets = batch.labels[:, 1:]
    hidden = hidden[:, :-1]
    head = base.model.get_output_embeddings()
    if head_at_supervised_only:
        where = targets != IGNORE_INDEX
        logits = head(hidden[where])
        return F.cross_entropy(logits.float(), targets[where])
    logits = head(hidden)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def reference_loss(base: Base, batch: Batch) -> torch.Tensor:
    """The reference-style step: transformers' full forward with pixel values and full logits.

    Recomputes the vision tower every step and applies the head at every position; kept for
    benchmarking against :func:`supervised_loss` and as a cross-check of the fast path.
    """
    values = pixel_values(base, [r.load() for r in batch.images]) if batch.images else None
    out = base.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=values, use_cache=False)
    logits = out.logits[:, :-1]
    targets = batch.labels[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def next_token_logprobs(base: Base, prompts: Sequence[list[int]], refs: Sequence[Sequence[ImageRef]], cache: FeatureCache) -> torch.Tensor:
    """Log-probabilities of the token following each prompt, ``[len(prompts), vocab]`` (float32)."""
    rows = []
    for ids, images in zip(prompts, refs):
        input_ids = torch.tensor([ids], device=base.device)
        features = cache.get(list(images)) if images else None
        hidden = hidden_states(base, input_ids, torch.ones_like(input_ids), features)
        logits = base.model.get_output_embeddings()(hidden[:, -1])
        rows.append(torch.log_softmax(logits.float(), dim=-1)[0])
    return torch.stack(rows)


def to_path_refs(paths: Sequence[str | Path]) -> list[ImageRef]:
    return [ImageRef(str(p)) for p in paths]


def generation_inputs(base: Base, ids: list[int], refs: Sequence[ImageRef], cache: FeatureCache) -> dict[str, Any]:
    """``inputs_embeds`` + attention mask for ``model.generate`` (cached image features reused)."""
    input_ids = torch.tensor([ids], device=base.device)
    features = cache.get(list(refs)) if refs else None
    embeds = input_embeddings(base, input_ids, features)
    return {"inputs_embeds": embeds, "attention_mask": torch.ones_like(input_ids)}
