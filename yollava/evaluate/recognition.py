"""Recognition: "Can you see if <bo> is in this photo?" on labelled images, by Yes/No log-probability and by whole greedy answers.

:func:`evaluate_concept` is the one scoring path of training (each epoch, on the training photos),
``yollava eval``, the demo and the benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from yollava.base import Base
from yollava.errors import YollavaError
from yollava.evaluate.answers import ABSENT, NO, OTHER, UNKNOWN, YES, judge_yes_no, refusal
from yollava.evaluate.scoring import first_answer_tokens, generate_batch, next_token_scores_batch
from yollava.evaluate.task import Outcome, Task, TaskInputs
from yollava.forward import SCORE_BATCH, FeatureCache, PrefixCache
from yollava.methods.personalization import MethodContext, Personalization, Query, build_query
from yollava.prompts import ChatFormat, RecognitionBank

# long enough for every answer of templates/recognition.yaml ("No, this is someone or something else, not <bo>.")
GENERATION_TOKENS = 24


def weighted_accuracy(positive: float, negative: float) -> float:
    """Yo'LLaVA's recognition score: 0.5·acc(positives) + 0.5·acc(negatives)."""
    return 0.5 * positive + 0.5 * negative


@dataclass
class RecognitionResult:
    """Recognition accuracies (log-probability scoring; generation scoring when asked).

    ``generation`` holds positive / negative / weighted accuracy of whole greedy answers, ``other``
    (answers that are neither a coherent yes nor a coherent no, all scored wrong),
    ``coherent`` (the share that is a coherent yes or no) and the refusals among the answers,
    ``refused_absent`` ("Sorry, <bo> is not in the image.") and ``refused_unknown`` ("I don't know
    who <bo> is."): both are judged "no".
    """

    positive: float
    negative: float
    weighted: float
    n_positive: int
    n_negative: int
    yes_rate: float
    generation: dict[str, float] | None = None
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_image")
        return out


class YesNoScorer:
    """Asks one question about images and reads the first answer token's Yes / No log-probabilities.

    Args:
        prefix: the text before the question (a soft prompt; "" for none), or a whole
            :class:`Personalization` (reference photos too).
    """

    def __init__(self, base: Base, fmt: ChatFormat, prefix: str | Personalization, question: str, cache: FeatureCache | PrefixCache):
        self.base = base
        self.cache = cache
        self.person = prefix if isinstance(prefix, Personalization) else Personalization(method="", subject="", identifier="", prefix=prefix)
        self.prompt_ids = build_query(base, fmt, self.person, question, scene="_").ids
        self.yes_id, self.no_id = first_answer_tokens(base, fmt, self.person, question, ["Yes", "No"])

    def query(self, image: str) -> Query:
        return Query(self.prompt_ids, self.person.images(image))

    def logprobs(self, images: Sequence[str]) -> list[tuple[float, float]]:
        """(log p(Yes), log p(No)) of the first answer token, for each image.

        Scored in batches; with a :class:`yollava.forward.PrefixCache` an image's prefix keys/values
        are computed once and shared by every question, concept and method asked about it.
        """
        scores = next_token_scores_batch(self.base, [self.query(str(p)) for p in images], [self.yes_id, self.no_id], self.cache)
        return [(lp_yes, lp_no) for lp_yes, lp_no in scores]


def classify_answer(text: str) -> str:
    """"yes", "no" or "other" for a whole generated answer (see :func:`yollava.evaluate.answers.judge_yes_no`)."""
    return judge_yes_no(text)


def recognition_accuracy(
    base: Base,
    fmt: ChatFormat,
    person: Personalization | str,
    question: str,
    positives: Sequence[str],
    negatives: Sequence[str],
    cache: FeatureCache | PrefixCache,
    generation: bool = False,
    progress: Callable[[int], None] | None = None,
    require_negatives: bool = True,
    max_new_tokens: int = GENERATION_TOKENS,
) -> RecognitionResult:
    """Score recognition on labelled images.

    Args:
        base: base with the concept(s) attached.
        fmt: chat format.
        person: how the subject is given (a :class:`Personalization`, or just the text before the question).
        question: the recognition question naming the identifier.
        positives / negatives: image paths.
        cache: image-feature or prefix cache (shared with training, other concepts and methods).
        generation: also score whole greedy answers; any answer that is not a coherent yes/no counts wrong.
        progress: called with the number of images scored after each batch.
        require_negatives: when False, no negatives is allowed (a concept trained without any): the
            negative accuracy is then reported as 0 over 0 images and ``weighted`` is the positive accuracy.
        max_new_tokens: length of the greedy answers.

    Raises:
        YollavaError: no positive images, or no negative ones when they are required.
    """
    if not positives or (require_negatives and not negatives):
        raise YollavaError(f"recognition needs positive and negative images (got {len(positives)} and {len(negatives)})")
    scorer = YesNoScorer(base, fmt, person, question, cache)
    per_image: list[dict[str, Any]] = []
    # in chunks of one scoring batch: the progress moves, and the chunk's answers decode together
    labelled = [(True, str(p)) for p in positives] + [(False, str(p)) for p in negatives]
    for start in range(0, len(labelled), SCORE_BATCH):
        chunk = labelled[start : start + SCORE_BATCH]
        logprobs = scorer.logprobs([path for _, path in chunk])
        answers = generate_batch(base, [scorer.query(path) for _, path in chunk], cache, max_new_tokens) if generation else None
        for row, ((label, path), (lp_yes, lp_no)) in enumerate(zip(chunk, logprobs)):
            record: dict[str, Any] = {"image": path, "label": label, "logp_yes": lp_yes, "logp_no": lp_no, "predicted": lp_yes > lp_no}
            if answers is not None:
                record["generated"] = answers[row]
                record["verdict"] = judge_yes_no(answers[row])
                record["refusal"] = refusal(answers[row])
            per_image.append(record)
        if progress:
            progress(len(chunk))
    pos = [r for r in per_image if r["label"]]
    neg = [r for r in per_image if not r["label"]]

    def scores(hit: Callable[[dict[str, Any]], bool]) -> tuple[float, float, float]:
        positive = sum(map(hit, pos)) / len(pos)
        if not neg:
            return positive, 0.0, positive
        negative = sum(map(hit, neg)) / len(neg)
        return positive, negative, weighted_accuracy(positive, negative)

    pos_acc, neg_acc, weighted = scores(lambda r: r["predicted"] == r["label"])
    summary = None
    if generation:
        g_pos, g_neg, g_weighted = scores(lambda r: r["verdict"] == (YES if r["label"] else NO))
        other = sum(r["verdict"] == OTHER for r in per_image)
        summary = {"positive": g_pos, "negative": g_neg, "weighted": g_weighted, "other": other,
                   "coherent": 1 - other / len(per_image),
                   "refused_absent": sum(r["refusal"] == ABSENT for r in per_image),
                   "refused_unknown": sum(r["refusal"] == UNKNOWN for r in per_image)}
    return RecognitionResult(
        positive=pos_acc, negative=neg_acc, weighted=weighted, n_positive=len(pos), n_negative=len(neg),
        yes_rate=sum(r["predicted"] for r in per_image) / len(per_image), generation=summary, per_image=per_image,
    )


def evaluate_concept(
    base: Base,
    person: Personalization,
    positives: Sequence[str],
    negatives: Sequence[str],
    features: FeatureCache | PrefixCache,
    fmt: ChatFormat | None = None,
    generation: bool = False,
    progress: Callable[[int], None] | None = None,
    require_negatives: bool = True,
    max_new_tokens: int = GENERATION_TOKENS,
) -> RecognitionResult:
    """Recognition of one subject: the Yo'LLaVA evaluation question on its positives and negatives.

    Args:
        base: the base, with the concept attached when ``person`` uses its soft prompt.
        person: how the subject is given (:func:`yollava.methods.soft_prompt.concept_personalization`
            for a trained concept, or any method's :class:`Personalization`).
        positives / negatives: image paths.
        features: the image-feature or prefix cache (shared with training, other concepts and methods).
        fmt: chat format (default ``llava_v1``).
        generation: also score whole greedy answers.
        progress: called with the number of images scored after each batch.
        require_negatives: see :func:`recognition_accuracy`.
        max_new_tokens: length of the greedy answers.
    """
    fmt = fmt or ChatFormat.load("llava_v1")
    question = RecognitionBank.load().eval_prompt(person.identifier)
    return recognition_accuracy(base, fmt, person, question, positives, negatives, features, generation, progress, require_negatives, max_new_tokens)



class Recognition(Task):
    """The subject's test photos are positives, every other subject's test photos negatives."""

    name = "recognition"

    def plan(self, inputs: TaskInputs, subject: str) -> tuple[list[str], list[str], bool, int]:
        positives, negatives = inputs.benchmark.test_split(subject)
        return positives, negatives, inputs.generation, inputs.tokens(GENERATION_TOKENS)

    def size(self, plan: tuple[list[str], list[str], bool, int]) -> int:
        return len(plan[0]) + len(plan[1])

    def run(self, ctx: MethodContext, person: Personalization, plan: tuple[list[str], list[str], bool, int],
            progress: Callable[[int], None] | None) -> Outcome:
        positives, negatives, generation, tokens = plan
        result = evaluate_concept(ctx.base, person, positives, negatives, ctx.features, ctx.fmt, generation=generation,
                                  progress=progress, max_new_tokens=tokens)
        return Outcome(accuracy=result.weighted, scoring="yes/no first-token log-probability, weighted 0.5 pos + 0.5 neg",
                       n_questions=result.n_positive + result.n_negative, metrics=result.summary(), items=result.per_image,
                       sources={"question": RecognitionBank.load().eval_question})
