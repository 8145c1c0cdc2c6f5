"""Multiple-choice scoring shared by visual QA and text QA: option letters in every order, option likelihoods, whole greedy answers.

The published text QA has "A" correct in 390 of its 400 questions, so a model that always says "A"
would score 0.975 there. Every question is therefore asked once per rotation of its options (for
two options: both orders; for n options each option stands at each letter exactly once) and its
score is the mean over the orders: a model with a fixed letter preference scores 1/n.

Three scorings, all deterministic:

- ``letter`` (the headline): the options listed after the question, "Answer with the option's
  letter from the given choices directly." (LLaVA-1.5's own multiple-choice format), and the
  letter with the highest first-token log-probability among the options' letters;
- ``likelihood``: the question alone, and the option whose text has the highest mean log-probability
  per token as the answer (length-normalised; no letters, so no position to be biased by);
- ``generation`` (optional): the greedy answer to the letter prompt, judged whole
  (:func:`yollava.evaluate.answers.judge_choice`): an answer that is not an option counts wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from yollava.base import Base
from yollava.evaluate.answers import judge_choice, refusal
from yollava.evaluate.qa_files import Question
from yollava.evaluate.scoring import answer_loglik, first_answer_tokens, generate_batch, next_token_scores_batch
from yollava.forward import SCORE_BATCH, FeatureCache, PrefixCache
from yollava.methods.personalization import Personalization, Query, build_query
from yollava.prompts import LETTERS, ChatFormat, multiple_choice_prompt

GENERATION_TOKENS = 16


@dataclass
class MultipleChoiceResult:
    """Accuracies over the questions (each the mean over its option orders for ``letter`` / ``generation``).

    Attributes:
        letter: letter log-probability accuracy (the headline).
        likelihood: length-normalised option-likelihood accuracy.
        generation: whole greedy answers' accuracy (None when not asked).
        n_questions: questions asked.
        n_prompts: letter prompts asked (questions x orders).
        first_letter_rate: share of letter predictions that were "A" (1/n for an unbiased model).
        unanswered: share of generated answers that picked no option.
        refused: share of generated answers that refused ("Sorry, <bo> is not in the image.",
            "I don't know who <bo> is."; :func:`yollava.evaluate.answers.refusal`), counted among the unanswered.
    """

    letter: float
    likelihood: float
    generation: float | None
    n_questions: int
    n_prompts: int
    first_letter_rate: float
    unanswered: float | None = None
    refused: float | None = None
    per_question: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_question")
        return out


def letter_prompt(question: str, options: Sequence[str]) -> str:
    """The question with its options lettered A, B, ... in the given order (:func:`yollava.prompts.multiple_choice_prompt`)."""
    return multiple_choice_prompt(question, options)


def rotations(options: Sequence[str]) -> list[list[str]]:
    """Every cyclic order of ``options``: each option at each position exactly once."""
    return [list(options[r:]) + list(options[:r]) for r in range(len(options))]


def count_prompts(questions: Sequence[Question]) -> int:
    """Letter prompts :func:`score_multiple_choice` asks (for progress totals)."""
    return sum(len(q.options) for q in questions)


def score_multiple_choice(
    base: Base,
    fmt: ChatFormat,
    person: Personalization,
    questions: Sequence[Question],
    features: FeatureCache | PrefixCache,
    generation: bool = False,
    progress: Callable[[int], None] | None = None,
    max_new_tokens: int = GENERATION_TOKENS,
) -> MultipleChoiceResult:
    """Ask every question about ``person``'s subject in every option order and score it three ways.

    Args:
        base: the base (concept attached for a soft prompt).
        fmt: chat format.
        person: how the subject is given; its identifier replaces the questions' placeholder.
        questions: the subject's questions (``image`` set for visual QA, None for text QA).
        features: the run's shared cache (image features, prefix keys/values).
        generation: also score whole greedy answers to the letter prompt.
        progress: called with the number of letter prompts scored after each batch.
        max_new_tokens: length of the greedy answers.
    """
    # every letter prompt of every question first, then scored (and answered) in batches: prompts
    # about one photo share its cached prefix, and the progress moves batch by batch
    asked: list[tuple[int, list[str], list[int], Query]] = []  # (question index, order, letter token ids, query)
    posed = []
    for index, item in enumerate(questions):
        question, options, correct = item.asked(person.identifier)
        posed.append((item, question, options, correct))
        letters = list(LETTERS[: len(options)])
        for order in rotations(options):
            text = letter_prompt(question, order)
            asked.append((index, order, first_answer_tokens(base, fmt, person, text, letters), build_query(base, fmt, person, text, item.image)))
    orders: list[list[dict[str, Any]]] = [[] for _ in questions]
    first_letter = 0
    for start in range(0, len(asked), SCORE_BATCH):
        chunk = asked[start : start + SCORE_BATCH]
        scores = next_token_scores_batch(base, [query for *_, query in chunk], [ids for _, _, ids, _ in chunk], features)
        answers = generate_batch(base, [query for *_, query in chunk], features, max_new_tokens) if generation else None
        for row, ((index, order, _, _), letter_scores) in enumerate(zip(chunk, scores)):
            correct = posed[index][3]
            letters = list(LETTERS[: len(order)])
            picked = max(range(len(order)), key=lambda i: letter_scores[i])
            record: dict[str, Any] = {"order": order, "letter_logprobs": dict(zip(letters, letter_scores)), "predicted": letters[picked],
                                      "correct": order[picked] == correct}
            if answers is not None:
                chosen = judge_choice(answers[row], list(zip(letters, order)))
                record.update(generated=answers[row], generated_choice=chosen, refusal=refusal(answers[row]) if chosen is None else None,
                              generated_correct=chosen is not None and order[letters.index(chosen)] == correct)
            first_letter += picked == 0
            orders[index].append(record)
        if progress:
            progress(len(chunk))
    prompts = len(asked)
    per_question: list[dict[str, Any]] = []
    for (item, question, options, correct), asked_orders in zip(posed, orders):
        likelihoods = [answer_loglik(base, fmt, person, question, item.image, option, features) for option in options]
        best = max(range(len(options)), key=lambda i: likelihoods[i])
        entry: dict[str, Any] = {
            "subject": item.subject, "key": item.key, "image": item.image, "question": question, "options": options,
            "correct_answer": correct, "letter": sum(o["correct"] for o in asked_orders) / len(asked_orders), "orders": asked_orders,
            "option_logliks": dict(zip(options, likelihoods)), "likelihood": float(options[best] == correct),
        }
        if generation:
            entry["generation"] = sum(o["generated_correct"] for o in asked_orders) / len(asked_orders)
        per_question.append(entry)
    n = len(per_question)
    mean = lambda key: sum(q[key] for q in per_question) / n  # noqa: E731
    unanswered = refused = None
    if generation:
        unanswered = sum(o["generated_choice"] is None for q in per_question for o in q["orders"]) / prompts
        refused = sum(o["refusal"] is not None for q in per_question for o in q["orders"]) / prompts
    return MultipleChoiceResult(
        letter=mean("letter"), likelihood=mean("likelihood"), generation=mean("generation") if generation else None,
        n_questions=n, n_prompts=prompts, first_letter_rate=first_letter / prompts, unanswered=unanswered, refused=refused, per_question=per_question,
    )
