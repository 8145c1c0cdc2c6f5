"""From samples to a loss: encoding in yollava's chat format, batching, image features in place, fresh name vectors, the per-sample loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from yollava.prompts import IGNORE_INDEX, ChatFormat, Turn, encode, render
from yollava.toyworld.pretrain.mix import ToySample
from yollava.toyworld.pretrain.vocabulary import NAME_TOKENS


@dataclass
class EncodedSample:
    """A sample's token ids and labels in our chat format, plus where it came from."""

    ids: list[int]
    labels: list[int]
    scene: int | None
    sample: ToySample


class SampleEncoder:
    """Renders samples with yollava.prompts (the exact format training and evaluation use) and tokenizes them."""

    def __init__(self, tokenizer: Any, image_token_id: int, num_image_tokens: int):
        self.tokenizer = tokenizer
        self.fmt = ChatFormat.load("llava_v1")
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.name_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(NAME_TOKENS)))

    def __call__(self, sample: ToySample, with_answer: bool = True) -> EncodedSample:
        turn = Turn(sample.user, sample.answer if with_answer else None, images=0 if sample.scene is None else 1)
        enc = encode(self.tokenizer, render(self.fmt, [turn], self.tokenizer.eos_token), self.image_token_id, self.num_image_tokens)
        return EncodedSample(enc.input_ids, enc.labels, sample.scene, sample)


@dataclass
class PretrainBatch:
    """Right-padded token ids, labels and attention mask of encoded samples, and the scenes of their images in order."""

    ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    scenes: list[int]


def collate_pretrain(items: Sequence[EncodedSample], pad_id: int) -> PretrainBatch:
    """Right-pad encoded samples into one batch (labels: the answer tokens only)."""
    length = max(len(e.ids) for e in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, e in enumerate(items):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.ids)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    return PretrainBatch(ids, labels, mask, [e.scene for e in items if e.scene is not None])


def embed_batch(model: LlavaForConditionalGeneration, batch: PretrainBatch, bank: Any) -> torch.Tensor:
    """Token embeddings with the projected features of each scene scattered into its image slots.

    ``bank[scene indices]``: the tower's selected features of those scenes (a tensor, or a
    :class:`~yollava.toyworld.pretrain.scenes.PixelBank`).
    """
    embeds = model.model.language_model.embed_tokens(batch.ids)
    if not batch.scenes:
        return embeds
    features = model.model.multi_modal_projector(bank[batch.scenes].to(embeds.dtype))
    where = (batch.ids == model.config.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(where.expand_as(embeds), features)


def replace_names(
    embeds: torch.Tensor, batch: PretrainBatch, name_ids: torch.Tensor, embedding: torch.Tensor, vocab_rows: int,
    generator: torch.Generator, p: float, low: float, high: float = 1.0,
) -> torch.Tensor:
    """Give placeholder names fresh vectors, so any new identifier row works as a name.

    A concept's identifier starts as ``concept.init`` says (default: vocabulary mean + 2 % noise)
    and is never one of the pool rows. With probability ``p`` per sample every name gets a vector
    mean + sigma * std * N(0, 1), sigma log-uniform in [``low``, ``high``] (one vector per distinct
    name, so "the same name" still means "the same vector"). Their answer positions lose their
    labels: the output head has no row for a vector that is not a token.
    """
    rows = embedding[:vocab_rows].detach()
    mean, std = rows.mean(0), rows.std(0)
    is_name = torch.isin(batch.ids, name_ids)
    for row in range(batch.ids.shape[0]):
        if not bool(is_name[row].any()) or float(torch.rand((), generator=generator)) >= p:
            continue
        for name_id in batch.ids[row][is_name[row]].unique().tolist():
            where = (batch.ids[row] == name_id).nonzero()[:, 0]
            sigma = math.exp(math.log(low) + (math.log(high) - math.log(low)) * float(torch.rand((), generator=generator)))
            vector = mean + sigma * std * torch.randn(mean.shape, generator=generator)
            embeds = embeds.index_put((torch.full_like(where, row), where), vector.expand(len(where), -1))
            batch.labels[row, where] = IGNORE_INDEX
    return embeds


def batch_loss(model: LlavaForConditionalGeneration, batch: PretrainBatch, embeds: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged per sample and then over the batch (the head runs only where the loss needs it).

    Per-sample averaging keeps a one-word "Yes." worth as much as a twenty-word caption: with a
    plain token mean the yes/no decisions, one token each, get a few per cent of the gradient.
    """
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False).last_hidden_state
    targets = batch.labels[:, 1:]
    where = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][where])
    losses = F.cross_entropy(logits.float(), targets[where], reduction="none")
    rows = where.nonzero()[:, 0]
    counts = where.sum(1).clamp(min=1).float()
    per_sample = torch.zeros(where.shape[0]).index_add_(0, rows, losses) / counts
    return per_sample[where.any(1)].mean()


@torch.no_grad()
def forward_hidden(model: LlavaForConditionalGeneration, encoder: SampleEncoder, items: Sequence[EncodedSample], bank: Any,
                   fresh: torch.Generator | None = None) -> tuple[torch.Tensor, PretrainBatch]:
    """The language model's last hidden states of a batch (no gradients), and the batch.

    ``fresh``: give every placeholder name a new identifier's vector, the way the default
    ``concept.init=mean`` makes one (vocabulary mean + 2 % noise).
    """
    batch = collate_pretrain(items, encoder.tokenizer.pad_token_id)
    embeds = embed_batch(model, batch, bank)
    if fresh is not None:
        embeds = replace_names(embeds, batch, encoder.name_ids, model.model.language_model.embed_tokens.weight,
                               len(encoder.tokenizer), fresh, p=1.0, low=0.02, high=0.02)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False).last_hidden_state
    return hidden, batch
