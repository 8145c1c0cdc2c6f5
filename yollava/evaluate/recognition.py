"""Recognition: Yes/No first-token log-probabilities and greedy answers on labelled images, and ``evaluate_concept``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from yollava.chat import greedy_generate
from yollava.errors import YollavaError
from yollava.forward import FeatureCache, ImageRef, PrefixCache, next_token_logprobs
from yollava.base import Base
from yollava.prompts import IGNORE_INDEX, ChatFormat, RecognitionBank, Turn, encode, render


def weighted_accuracy(positive: float, negative: float) -> float:
    """Yo'LLaVA's recognition score: 0.5·acc(positives) + 0.5·acc(negatives)."""
    return 0.5 * positive + 0.5 * negative


@dataclass
class RecognitionResult:
    """Recognition accuracies (log-probability scoring; generation scoring when asked)."""

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
    """Asks one question about images (e.g. "Is <bo> in this photo?") and reads the first answer token's Yes / No log-probabilities.

    Deterministic (no sampling). The Yes/No ids are read from the tokenization of real answers in
    the chat format, so they are right for any tokenizer (" Yes" is one token in LLaVA's).
    """

    def __init__(self, base: Base, fmt: ChatFormat, prefix: str, question: str, cache: FeatureCache | PrefixCache):
        self.base = base
        self.cache = cache
        eos = base.tokenizer.eos_token
        self.prompt_ids = self._ids(render(fmt, [Turn(question, None, images=1)], eos, prefix))
        first = []
        for word in ("Yes", "No"):
            encoded = encode(base.tokenizer, render(fmt, [Turn(question, word, images=1)], eos, prefix), base.image_token_id, base.num_image_tokens)
            start = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
            if encoded.input_ids[:start] != self.prompt_ids:
                raise ValueError("generation prompt differs from the training prompt; check the chat template")
            first.append(encoded.input_ids[start])
        self.yes_id, self.no_id = first
        if self.yes_id == self.no_id:
            raise YollavaError("the tokenizer gives 'Yes' and 'No' the same first token; recognition cannot be scored")

    def _ids(self, segments: Sequence[Any]) -> list[int]:
        return encode(self.base.tokenizer, segments, self.base.image_token_id, self.base.num_image_tokens).input_ids

    def logprobs(self, images: Sequence[str]) -> list[tuple[float, float]]:
        """(log p(Yes), log p(No)) of the first answer token, for each image.

        Scored in batches; with a :class:`yollava.forward.PrefixCache` an image's prefix keys/values
        are computed once and shared by every question, concept and method asked about it.
        """
        if not images:
            return []
        logprobs = next_token_logprobs(self.base, [self.prompt_ids] * len(images), [[ImageRef(str(p))] for p in images], self.cache)
        return [(float(row[self.yes_id]), float(row[self.no_id])) for row in logprobs]


def classify_answer(text: str) -> str:
    """"yes", "no" or "other" for a generated answer (anything else counts as wrong)."""
    words = text.strip().lower().lstrip("\"'(").split()
    if not words:
        return "other"
    head = words[0].strip(".,!:;\"'")
    return head if head in ("yes", "no") else "other"


def recognition_accuracy(
    base: Base,
    fmt: ChatFormat,
    prefix: str,
    question: str,
    positives: Sequence[str],
    negatives: Sequence[str],
    cache: FeatureCache | PrefixCache,
    generate: Callable[[list[int], list[ImageRef]], str] | None = None,
    progress: Callable[[int], None] | None = None,
    require_negatives: bool = True,
) -> RecognitionResult:
    """Score recognition on labelled images.

    Args:
        base: base with the concept(s) attached.
        fmt: chat format.
        prefix: soft prompt(s) placed before the question ("" for vanilla LLaVA).
        question: the recognition question naming the identifier.
        positives / negatives: image paths.
        cache: image-feature cache (shared with training).
        generate: optional greedy generator ``(prompt_ids, images) -> text`` for generation accuracy,
            where any answer that is not Yes/No counts as wrong.
        progress: called with 1 after each image.
        require_negatives: when False, no negatives is allowed (a concept trained without any): the
            negative accuracy is then reported as 0 over 0 images and ``weighted`` is the positive accuracy.

    Raises:
        YollavaError: no positive images, or no negative ones when they are required.
    """
    if not positives or (require_negatives and not negatives):
        raise YollavaError(f"recognition needs positive and negative images (got {len(positives)} and {len(negatives)})")
    scorer = YesNoScorer(base, fmt, prefix, question, cache)
    per_image: list[dict[str, Any]] = []
    gen_counts = {"positive_correct": 0, "negative_correct": 0, "other": 0}
    for label, paths in ((True, positives), (False, negatives)):
        scores = scorer.logprobs(list(paths))
        for path, (lp_yes, lp_no) in zip(paths, scores):
            record: dict[str, Any] = {"image": str(path), "label": label, "logp_yes": lp_yes, "logp_no": lp_no, "predicted": lp_yes > lp_no}
            if generate is not None:
                text = generate(scorer.prompt_ids, [ImageRef(str(path))])
                verdict = classify_answer(text)
                record["generated"] = text
                gen_counts["other"] += verdict == "other"
                if verdict == ("yes" if label else "no"):
                    gen_counts["positive_correct" if label else "negative_correct"] += 1
            per_image.append(record)
            if progress:
                progress(1)
    pos = [r["predicted"] for r in per_image if r["label"]]
    neg = [not r["predicted"] for r in per_image if not r["label"]]
    def scores(positive_hits: float, negative_hits: float) -> tuple[float, float, float]:
        positive = positive_hits / len(pos)
        if not neg:
            return positive, 0.0, positive
        negative = negative_hits / len(neg)
        return positive, negative, weighted_accuracy(positive, negative)

    pos_acc, neg_acc, weighted = scores(sum(pos), sum(neg))
    generation = None
    if generate is not None:
        g_pos, g_neg, g_weighted = scores(gen_counts["positive_correct"], gen_counts["negative_correct"])
        generation = {"positive": g_pos, "negative": g_neg, "weighted": g_weighted, "other": gen_counts["other"]}
    return RecognitionResult(
        positive=pos_acc, negative=neg_acc, weighted=weighted,
        n_positive=len(pos), n_negative=len(neg),
        yes_rate=sum(r["predicted"] for r in per_image) / len(per_image),
        generation=generation, per_image=per_image,
    )


@dataclass(frozen=True)
class Prompting:
    """How a recognition question names the subject and what text precedes it.

    Attributes:
        identifier: the subject's name in the question (``<bo>`` with a soft prompt, a plain name otherwise).
        prefix: text before the question: the soft prompt, a description, or nothing (vanilla).
    """

    identifier: str
    prefix: str = ""

    @classmethod
    def soft_prompt(cls, tokens: Any) -> "Prompting":
        """A trained concept (its :class:`~yollava.concept.ConceptTokens`; the concept must be attached)."""
        return cls(tokens.identifier, tokens.soft_prompt)

    @classmethod
    def vanilla(cls, name: str) -> "Prompting":
        """The base asked about a name it knows nothing about."""
        return cls(name)

    @classmethod
    def described(cls, name: str, description: str) -> "Prompting":
        """The base told what the subject looks like, in words, before the question."""
        return cls(name, f"{name} is {description}.")


def evaluate_concept(
    base: Base,
    prompting: Prompting,
    positives: Sequence[str],
    negatives: Sequence[str],
    features: FeatureCache | PrefixCache,
    fmt: ChatFormat | None = None,
    generation: bool = False,
    progress: Callable[[int], None] | None = None,
    require_negatives: bool = True,
) -> RecognitionResult:
    """Recognition of one subject: "Can you see if <bo> is in this photo?" on its positives and negatives.

    The one scoring path of training (each epoch, on the training photos), ``yollava eval``, the demo
    and the benchmarks; ``prompting`` says how the subject is given to the model.

    Args:
        base: the base, with the concept attached when ``prompting`` uses its soft prompt.
        prompting: :meth:`Prompting.soft_prompt`, :meth:`Prompting.vanilla` or :meth:`Prompting.described`.
        positives / negatives: image paths.
        features: the image-feature cache (shared with training and other concepts).
        fmt: chat format (default ``llava_v1``).
        generation: also score greedy answers (8 new tokens; anything but Yes/No counts as wrong).
        progress: called with 1 after each image.
        require_negatives: see :func:`recognition_accuracy`.
    """
    fmt = fmt or ChatFormat.load("llava_v1")
    generate = (lambda ids, refs: greedy_generate(base, ids, refs, features, max_new_tokens=8)) if generation else None
    question = RecognitionBank.load().eval_prompt(prompting.identifier)
    return recognition_accuracy(base, fmt, prompting.prefix, question, positives, negatives, features, generate, progress, require_negatives)
