"""The model-side measurements every task is built from: next-token log-probabilities, answer likelihoods, greedy answers.

All deterministic (no sampling). One cache serves every task, method and concept of a run: a
:class:`~yollava.forward.PrefixCache` (``yollava eval``'s), whose prefix of a prompt with an image
(system text, ``USER:``, the image) is the same for every question, concept and method asked about
that image, so it is computed once; or a plain :class:`~yollava.forward.FeatureCache`. Prompts are
scored and answered in batches on it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from yollava.base import Base
from yollava.chat import greedy_generate_batch
from yollava.forward import FeatureCache, PrefixCache, collate, next_token_logprobs, supervised_loss
from yollava.methods.personalization import Personalization, Query, build_answered, build_query
from yollava.prompts import IGNORE_INDEX, ChatFormat
from yollava.errors import YollavaError


def first_answer_tokens(base: Base, fmt: ChatFormat, person: Personalization, question: str, answers: Sequence[str]) -> list[int]:
    """The first token of each answer as the model would write it after the assistant role.

    Read from the tokenization of the whole answered prompt, so it is right for any tokenizer (" Yes"
    and " A" are single tokens in LLaVA's); the answered prompt must start with the generation prompt.

    Raises:
        ValueError: the chat template tokenizes the prompt differently once an answer follows.
        YollavaError: two answers share their first token (they could not be told apart).
    """
    prompt = build_query(base, fmt, person, question, scene="_").ids
    first = []
    for answer in answers:
        encoded, _ = build_answered(base, fmt, person, question, "_", answer)
        start = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
        if encoded.input_ids[:start] != prompt:
            raise ValueError("generation prompt differs from the training prompt; check the chat template")
        first.append(encoded.input_ids[start])
    if len(set(first)) != len(first):
        raise YollavaError(f"the tokenizer gives the answers {', '.join(map(repr, answers))} a shared first token; they cannot be scored apart")
    return first


Cache = FeatureCache | PrefixCache


def cache_for(has_images: bool, cache: Cache) -> Cache:
    """The cache a prompt is run on: the shared one, except a text-only prompt's features cache.

    A prompt without an image has no image prefix to share; with no concept token either (vanilla,
    descriptions), its cached prefix would be the whole prompt, an entry per question that no other
    prompt reuses, taking the prefix budget that the test photos' prefixes (reused by every concept
    and method) need. Such prompts run whole, ~100 tokens each.
    """
    return cache.features if isinstance(cache, PrefixCache) and not has_images else cache


def next_token_scores(base: Base, query: Query, token_ids: Sequence[int], cache: Cache) -> list[float]:
    """Log-probabilities of ``token_ids`` as the first answer token of ``query``."""
    return next_token_scores_batch(base, [query], token_ids, cache)[0]


def next_token_scores_batch(base: Base, queries: Sequence[Query], token_ids: Sequence[int] | Sequence[Sequence[int]],
                            cache: Cache) -> list[list[float]]:
    """Log-probabilities of ``token_ids`` as the first answer token of each query, scored in batches.

    Args:
        token_ids: one list for every query, or one list per query.
    """
    per_query = [list(t) for t in token_ids] if token_ids and isinstance(token_ids[0], (list, tuple)) else [list(token_ids)] * len(queries)
    out: list[list[float] | None] = [None] * len(queries)
    for has_images in (True, False):
        rows = [i for i, q in enumerate(queries) if bool(q.images) == has_images]
        if not rows:
            continue
        logprobs = next_token_logprobs(base, [queries[i].ids for i in rows], [queries[i].images for i in rows], cache_for(has_images, cache))
        for row, i in enumerate(rows):
            out[i] = [float(logprobs[row, t]) for t in per_query[i]]
    return out  # type: ignore[return-value]


@torch.no_grad()
def answer_loglik(base: Base, fmt: ChatFormat, person: Personalization, question: str, scene: str | None, answer: str,
                  cache: Cache) -> float:
    """Mean log-probability per token of ``answer`` (end-of-sequence included) as the reply to ``question``.

    The length normalisation keeps long options from losing for being long. Computed by the training
    loss (:func:`yollava.forward.supervised_loss`), so scoring and training read the same positions
    (on a prefix cache: the suffix after the cached prefix, as training steps run).
    """
    encoded, images = build_answered(base, fmt, person, question, scene, answer)
    batch = collate([(encoded.input_ids, encoded.labels, images)], base.tokenizer.pad_token_id or 0, base.device)
    return -float(supervised_loss(base, batch, cache_for(bool(images), cache)))


def generate(base: Base, query: Query, cache: Cache, max_new_tokens: int) -> str:
    """The greedy answer to ``query``."""
    return generate_batch(base, [query], cache, max_new_tokens)[0]


def generate_batch(base: Base, queries: Sequence[Query], cache: Cache, max_new_tokens: int) -> list[str]:
    """The greedy answers to ``queries``, decoded together (:func:`yollava.chat.greedy_generate_batch`:
    each equals its answer alone; prompts about one image share its cached prefix)."""
    out: list[str | None] = [None] * len(queries)
    for has_images in (True, False):
        rows = [i for i, q in enumerate(queries) if bool(q.images) == has_images]
        if rows:
            answers = greedy_generate_batch(base, [queries[i].ids for i in rows], [queries[i].images for i in rows],
                                            cache_for(has_images, cache), max_new_tokens)
            for i, answer in zip(rows, answers):
                out[i] = answer
    return out  # type: ignore[return-value]


def context_length(base: Base) -> int | None:
    """The language model's trained context (max position embeddings), if the config states one."""
    return getattr(base.model.config.text_config, "max_position_embeddings", None)


def check_fits(base: Base, query: Query, what: str) -> None:
    """Refuse a prompt longer than the base's context (in-context with many reference photos).

    Raises:
        YollavaError: the prompt does not fit.
    """
    limit = context_length(base)
    if limit is not None and len(query.ids) + 64 > limit:
        raise YollavaError(f"{what}: the prompt has {len(query.ids)} tokens but {base.model_id} takes {limit}; pass fewer --refs")
