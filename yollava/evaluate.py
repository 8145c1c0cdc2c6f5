"""Every metric: recognition by Yes/No first-token log-probability and by greedy generation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from yollava.errors import YollavaError
from yollava.forward import FeatureCache, ImageRef, next_token_logprobs
from yollava.images import scan_image_dir
from yollava.base import Base
from yollava.prompts import IGNORE_INDEX, ChatFormat, Turn, encode, render


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


class RecognitionScorer:
    """Asks "Is <bo> in this photo?" and compares the first answer token's Yes vs No log-probability.

    Deterministic (no sampling). The Yes/No ids are read from the tokenization of real answers in
    the chat format, so they are right for any tokenizer (" Yes" is one token in LLaVA's).
    """

    def __init__(self, base: Base, fmt: ChatFormat, prefix: str, question: str, cache: FeatureCache):
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

    def p_yes(self, images: Sequence[str]) -> list[tuple[float, float]]:
        """(log p(Yes), log p(No)) for each image, scored in batches (prefix keys/values shared when the cache holds them)."""
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
    cache: FeatureCache,
    generate: Callable[[list[int], list[ImageRef]], str] | None = None,
    progress: Callable[[int], None] | None = None,
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

    Raises:
        YollavaError: no positive or no negative images.
    """
    if not positives or not negatives:
        raise YollavaError(f"recognition needs positive and negative images (got {len(positives)} and {len(negatives)})")
    scorer = RecognitionScorer(base, fmt, prefix, question, cache)
    per_image: list[dict[str, Any]] = []
    gen_counts = {"positive_correct": 0, "negative_correct": 0, "other": 0}
    for label, paths in ((True, positives), (False, negatives)):
        scores = scorer.p_yes(list(paths))
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
    pos_acc, neg_acc = sum(pos) / len(pos), sum(neg) / len(neg)
    generation = None
    if generate is not None:
        g_pos = gen_counts["positive_correct"] / len(pos)
        g_neg = gen_counts["negative_correct"] / len(neg)
        generation = {"positive": g_pos, "negative": g_neg, "weighted": weighted_accuracy(g_pos, g_neg), "other": gen_counts["other"]}
    return RecognitionResult(
        positive=pos_acc, negative=neg_acc, weighted=weighted_accuracy(pos_acc, neg_acc),
        n_positive=len(pos), n_negative=len(neg),
        yes_rate=sum(r["predicted"] for r in per_image) / len(per_image),
        generation=generation, per_image=per_image,
    )


def yollava_split(data_dir: str | Path, subject: str, split: str = "test") -> tuple[list[str], list[str]]:
    """Positives and negatives from a Yo'LLaVA-layout dataset (``DIR/<subject>/<split>/*``).

    The subject's own images are positives; every other subject's images of the split are negatives.

    Raises:
        YollavaError: missing folder or subject.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise YollavaError(f"--data {root}: no such directory; pass a dataset laid out as DIR/<subject>/{split}/")
    subjects = sorted(p.name for p in root.iterdir() if (p / split).is_dir())
    if subject not in subjects:
        raise YollavaError(
            f"--data {root}: no {subject}/{split}/ folder (subjects: {', '.join(subjects[:8]) or 'none'}); pass --subject NAME"
        )
    positives = [str(p) for p in scan_image_dir(root / subject / split, what="test image", option="--data").valid]
    negatives: list[str] = []
    for other in subjects:
        if other != subject:
            negatives.extend(str(p) for p in scan_image_dir(root / other / split, what="test image", option="--data").valid)
    if not negatives:
        raise YollavaError(f"--data {root}: only one subject, so there are no negatives; add other subjects' {split}/ folders")
    return positives, negatives
