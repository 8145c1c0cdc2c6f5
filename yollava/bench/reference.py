"""The Yo'LLaVA reference training loop, kept for benchmarking only (never used by ``yollava train``).

Exactly the way the reference code trains: the whole input-embedding and output-head matrices
(with the k+1 new rows) are parameters of AdamW, in the model's dtype (bf16 on a GPU); after every
step the frozen rows are copied back from the original matrices; all k+1 head rows train; the
vision tower runs on every step; logits are computed at every position; batch 1; a fixed number
of epochs with no early stop. Scoring is the full forward too (tower, every position, no cache).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from yollava.base import Base
from yollava.concept import ConceptParams, attach, concept_slots, init_concept
from yollava.config import Config, HeadRows
from yollava.forward import Batch, ImageRef, collate, pixel_values, reference_loss


class ReferenceLoop:
    """Full-matrix training of one concept on ``base``, swapped in while used as a context manager.

    Args:
        base: the frozen base; its embedding and head modules are replaced inside ``with`` and restored after.
        token_ids: the concept's token ids (identifier first), as :func:`yollava.concept.attach` gave them.
        init: starting rows, ``head_rows=all`` (k+1 head rows).
        lr / weight_decay: AdamW's (the reference uses torch's defaults besides lr).
    """

    def __init__(self, base: Base, token_ids: Sequence[int], init: ConceptParams, lr: float = 1e-3, weight_decay: float = 0.01):
        if init.head_rows.shape[0] != len(token_ids):
            raise ValueError("the reference loop trains all k+1 head rows: initialise the concept with head_rows=all")
        self.base = base
        embedding = base.model.get_input_embeddings()
        head = base.model.get_output_embeddings()
        self._original = (embedding, head)
        original_embed = getattr(embedding, "base", embedding).weight
        original_head = getattr(head, "base", head).weight
        rows = max(original_embed.shape[0], max(token_ids) + 1)
        dtype, device = original_embed.dtype, original_embed.device
        ids = torch.tensor(list(token_ids), device=device)
        with torch.no_grad():
            embed = torch.zeros((rows, original_embed.shape[1]), dtype=dtype, device=device)
            embed[: original_embed.shape[0]] = original_embed
            embed[ids] = init.embed_rows.to(device=device, dtype=dtype)
            weight = torch.zeros((rows, original_head.shape[1]), dtype=dtype, device=device)
            weight[: original_head.shape[0]] = original_head
            weight[ids] = init.head_rows.to(device=device, dtype=dtype)
        self.embed = nn.Embedding(rows, embed.shape[1], _weight=embed, device=device, dtype=dtype)
        self.head = nn.Linear(weight.shape[1], rows, bias=False, device=device, dtype=dtype)
        self.head.weight = nn.Parameter(weight)
        self.embed.weight.requires_grad_(True)
        self.head.weight.requires_grad_(True)
        # the reference keeps a clone of the full matrices and restores every row but the new ones
        self.frozen_embed = embed.detach().clone()
        self.frozen_head = weight.detach().clone()
        self.keep = torch.ones(rows, dtype=torch.bool, device=device)
        self.keep[ids] = False
        self.ids = ids
        self.optimizer = torch.optim.AdamW([self.embed.weight, self.head.weight], lr=lr, weight_decay=weight_decay)

    def __enter__(self) -> "ReferenceLoop":
        self.base.model.set_input_embeddings(self.embed)
        self.base.model.set_output_embeddings(self.head)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.base.model.set_input_embeddings(self._original[0])
        self.base.model.set_output_embeddings(self._original[1])

    def step(self, batch: Batch) -> float:
        """One reference step: full forward with pixel values and full logits, backward, AdamW, copy back."""
        loss = reference_loss(self.base, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.embed.weight[self.keep] = self.frozen_embed[self.keep]
            self.head.weight[self.keep] = self.frozen_head[self.keep]
        return float(loss.detach())

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The concept's current (embedding rows, head rows), fp32 on the CPU."""
        return self.embed.weight[self.ids].detach().float().cpu(), self.head.weight[self.ids].detach().float().cpu()


@torch.no_grad()
def reference_logprobs(base: Base, prompt_ids: list[int], image: ImageRef) -> torch.Tensor:
    """Next-token log-probabilities the reference way: tower + full forward + full logits, batch 1, no cache."""
    input_ids = torch.tensor([prompt_ids], device=base.device)
    values = pixel_values(base, [image.load()])
    logits = base.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=values, use_cache=False).logits
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


@dataclass
class ReferenceResult:
    """What a reference run produced: the best epoch's rows (as a concept) and its timing."""

    params: ConceptParams
    best_epoch: int
    best_weighted: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    steps: int = 0


def train_reference_concept(
    base: Base, config: Config, name: str, encoded: Sequence[Any], positives: Sequence[str], negatives: Sequence[str],
    eval_question: str, soft_prompt: str,
) -> ReferenceResult:
    """The reference recipe on an already built training set: ``config.train.epochs`` epochs, batch 1, no early stop.

    After each epoch, recognition on the training images is scored the reference way and the best
    epoch's rows are kept (as yollava does, so the two recipes differ only in how they compute).

    Args:
        base: the frozen base (the concept is attached to it for its token ids).
        config: lr, epochs and seed are read from ``config.train``; k and init from ``config.concept``.
        name: concept name.
        encoded: the tokenized samples (``yollava.train.encode_samples``), same as yollava trains on.
        positives / negatives: training images scored after each epoch.
        eval_question / soft_prompt: the recognition question and the concept's soft prompt text.
    """
    from yollava.batching import epoch_order
    from yollava.evaluate import YesNoScorer, weighted_accuracy
    from yollava.forward import FeatureCache

    wall0, cpu0 = time.perf_counter(), time.process_time()
    concept_config = dataclasses.replace(config.concept, head_rows=HeadRows.all)
    init = init_concept(base, name, concept_config, seed=config.train.seed)
    ids = attach(base, init)
    fmt_scorer = YesNoScorer(base, _chat_format(config), soft_prompt, eval_question, FeatureCache(base))
    prompt = fmt_scorer.prompt_ids
    loop = ReferenceLoop(base, ids, init, lr=config.train.lr)
    best = {"epoch": 0, "weighted": -1.0}
    best_rows = loop.rows()
    history = []
    steps = 0
    pad = base.tokenizer.pad_token_id or 0
    with loop:
        for epoch in range(config.train.epochs):
            losses = []
            for index in epoch_order(len(encoded), config.train.seed, epoch):
                sample = encoded[index]
                losses.append(loop.step(collate([(sample.input_ids, sample.labels, sample.images)], pad, base.device)))
                steps += 1
            hits = {True: 0, False: 0}
            for label, paths in ((True, positives), (False, negatives)):
                for path in paths:
                    logprobs = reference_logprobs(base, prompt, ImageRef(str(path)))
                    said_yes = bool(logprobs[fmt_scorer.yes_id] > logprobs[fmt_scorer.no_id])
                    hits[label] += said_yes == label
            weighted = weighted_accuracy(hits[True] / len(positives), hits[False] / len(negatives))
            history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses), "weighted": weighted})
            if weighted > best["weighted"]:
                best = {"epoch": epoch + 1, "weighted": weighted}
                best_rows = loop.rows()
    concept_slots(base).remove(name)
    params = ConceptParams(init.tokens, HeadRows.all, best_rows[0], best_rows[1])
    return ReferenceResult(params, best["epoch"], best["weighted"], history, time.perf_counter() - wall0, time.process_time() - cpu0, steps)


def _chat_format(config: Config):
    from yollava.prompts import ChatFormat

    return ChatFormat.load(config.prompt.template)


def save_reference_concept(result: ReferenceResult, base: Base, store: str | Path) -> Path:
    """Write the reference's best rows as a normal concept (``head_rows=all``) so the same evaluation loads it."""
    from yollava.concept import save_concept

    attach(base, result.params)
    try:
        return save_concept(result.params, base, store, {"training": {"reference_loop": True, "best_epoch": result.best_epoch, "seconds": result.seconds}})
    finally:
        concept_slots(base).remove(result.params.tokens.name)
