"""The model-side measurements every task is built from: next-token log-probabilities, answer likelihoods, greedy answers.

All deterministic (no sampling). Image features come from one :class:`~yollava.forward.FeatureCache`
shared by every task, method and concept of a run.
"""

from __future__ import annotations

from typing import Sequence

import torch

from yollava.base import Base
from yollava.chat import greedy_generate
from yollava.forward import FeatureCache, collate, next_token_logprobs, supervised_loss
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


def next_token_scores(base: Base, query: Query, token_ids: Sequence[int], cache: FeatureCache) -> list[float]:
    """Log-probabilities of ``token_ids`` as the first answer token of ``query``."""
    logprobs = next_token_logprobs(base, [query.ids], [query.images], cache)[0]
    return [float(logprobs[i]) for i in token_ids]


@torch.no_grad()
def answer_loglik(base: Base, fmt: ChatFormat, person: Personalization, question: str, scene: str | None, answer: str,
                  cache: FeatureCache) -> float:
    """Mean log-probability per token of ``answer`` (end-of-sequence included) as the reply to ``question``.

    The length normalisation keeps long options from losing for being long. Computed by the training
    loss (:func:`yollava.forward.supervised_loss`), so scoring and training read the same positions.
    """
    encoded, images = build_answered(base, fmt, person, question, scene, answer)
    batch = collate([(encoded.input_ids, encoded.labels, images)], base.tokenizer.pad_token_id or 0, base.device)
    return -float(supervised_loss(base, batch, cache))


def generate(base: Base, query: Query, cache: FeatureCache, max_new_tokens: int) -> str:
    """The greedy answer to ``query``."""
    return greedy_generate(base, query.ids, query.images, cache, max_new_tokens=max_new_tokens)


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
