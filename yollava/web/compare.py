"""The Compare tab's measurement: one photo and one question, asked with the learned soft prompt and with in-context reference photos.

Both prompts come from the evaluation suite's methods (:mod:`yollava.methods`), so the page shows
exactly what ``yollava eval --method soft-prompt --method in-context`` scores: the soft prompt in
front of the question, or PVIT's ``<image>\\nThis is <name>.\\n`` block per reference photo before
the scene. Each side reports its greedy answer, the first answer token's Yes/No probabilities and
how many prompt tokens the personalization costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from yollava.errors import YollavaError
from yollava.evaluate.scoring import check_fits, first_answer_tokens, generate, next_token_scores
from yollava.forward import FeatureCache
from yollava.methods import MethodContext, MethodInputs, build_query, get_method, tokens_per_query
from yollava.methods.in_context import InContext
from yollava.methods.soft_prompt import SoftPrompt, concept_personalization
from yollava.web.assistant import MAX_QUESTION_CHARS, Assistant

MAX_REFERENCES = 5
SOFT_PROMPT = SoftPrompt.name
IN_CONTEXT = InContext.name


@dataclass(frozen=True)
class MethodAnswer:
    """One side of the comparison.

    Attributes:
        method: :data:`SOFT_PROMPT` or :data:`IN_CONTEXT`.
        identifier: how the question named the subject for this method.
        question: the question as asked (the concept's ``<name>`` replaced by ``identifier``).
        answer: the greedy answer.
        p_yes: P(Yes) / (P(Yes) + P(No)) of the first answer token.
        logp_yes / logp_no: the two log-probabilities themselves.
        tokens: prompt tokens the personalization adds to the question (images expanded).
        references: the reference photos shown before the scene (in-context only).
    """

    method: str
    identifier: str
    question: str
    answer: str
    p_yes: float
    logp_yes: float
    logp_no: float
    tokens: int
    references: tuple[str, ...] = ()


@dataclass
class _StoredReferences(MethodInputs):
    """Method inputs whose training photos are a concept's stored uploads rather than a benchmark's ``train/`` folder."""

    photos: tuple[str, ...] = ()

    def train_images(self, subject: str) -> list[str]:
        return list(self.photos)


def compare(assistant: Assistant, name: str, scene: str, question: str, references: Sequence[str], max_new_tokens: int = 64) -> list[MethodAnswer]:
    """Ask ``question`` about ``scene`` with concept ``name``'s soft prompt, then with ``references`` in context.

    Runs under the assistant's lock (one model use at a time); the in-context side runs on the
    base with no concept attached and its tokenizer from before any concept, as ``yollava eval`` does.

    Raises:
        YollavaError: a bad question, no reference photo, or what loading the concept raises.
    """
    question = (question or "").strip()
    if not question:
        raise YollavaError("type a question first, e.g. Is <name> in this photo?")
    if len(question) > MAX_QUESTION_CHARS:
        raise YollavaError(f"the question has {len(question)} characters; ask in at most {MAX_QUESTION_CHARS}")
    if not references:
        raise YollavaError(f"no training photo of '{name}' is on this machine any more, so in-context has no reference to show")
    references = tuple(references[:MAX_REFERENCES])
    identifier = f"<{name}>"
    with assistant.lock:
        base, fmt = assistant.base, assistant.fmt
        cache = FeatureCache(base)
        artifact = assistant.use([name])[0]
        soft = concept_personalization(artifact.params.tokens)
        answers = [_ask(base, fmt, soft, SOFT_PROMPT, question, identifier, scene, cache, max_new_tokens)]
        assistant.release()
        # the evaluation suite's in-context method itself, on the base as loaded (its tokenizer predates every concept)
        plain = base.plain()
        inputs = _StoredReferences(benchmark=None, store=assistant.store, refs=len(references), photos=references)  # type: ignore[arg-type]
        ctx = MethodContext(inputs=inputs, base=plain, fmt=fmt, features=cache)
        with get_method(IN_CONTEXT).personalize(ctx, name) as person:
            answers.append(_ask(plain, fmt, person, IN_CONTEXT, question, identifier, scene, cache, max_new_tokens))
    return answers


def _ask(base: Any, fmt: Any, person: Any, method: str, question: str, identifier: str, scene: str, cache: FeatureCache,
         max_new_tokens: int) -> MethodAnswer:
    """One method's answer, Yes/No probabilities and personalization tokens."""
    asked = question.replace(identifier, person.identifier)
    query = build_query(base, fmt, person, asked, scene)
    check_fits(base, query, method)
    yes_id, no_id = first_answer_tokens(base, fmt, person, asked, ["Yes", "No"])
    logp_yes, logp_no = next_token_scores(base, query, [yes_id, no_id], cache)
    answer = generate(base, query, cache, max_new_tokens)
    top = max(logp_yes, logp_no)
    p_yes = math.exp(logp_yes - top) / (math.exp(logp_yes - top) + math.exp(logp_no - top))
    return MethodAnswer(method, person.identifier, asked, answer, p_yes, logp_yes, logp_no, tokens_per_query(base, fmt, person),
                        tuple(person.references))
