"""Building a concept's training set: recognition samples for every image, plus text-only samples."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from yollava.config import DataConfig
from yollava.errors import YollavaError
from yollava.images import scan_image_dir
from yollava.prompts import RecognitionBank

log = logging.getLogger(__name__)


class SampleKind(str, Enum):
    """What a training sample teaches."""

    recognition_positive = "recognition_positive"
    recognition_negative_hard = "recognition_negative_hard"
    recognition_negative_easy = "recognition_negative_easy"
    conversation = "conversation"


@dataclass(frozen=True)
class Sample:
    """One question/answer pair; ``image`` is a path, or None for text-only samples."""

    question: str
    answer: str
    kind: str
    image: str | None = None
    variant: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageSets:
    """The images a concept trains on: positives and negatives (hard ones first when known)."""

    positives: list[str]
    negatives_hard: list[str]
    negatives_easy: list[str]

    @property
    def negatives(self) -> list[str]:
        return self.negatives_hard + self.negatives_easy


def collect_images(images_dir: str | Path, negatives_dir: str | Path | None, config: DataConfig) -> ImageSets:
    """Scan the positive folder and the optional negative folder (sampled down to ``max_negatives``).

    Raises:
        YollavaError: missing/empty folders or no valid image in them.
    """
    positives = [str(p) for p in scan_image_dir(images_dir, what="positive image", option="--images").valid]
    negatives: list[str] = []
    if negatives_dir is not None:
        negatives = [str(p) for p in scan_image_dir(negatives_dir, what="negative image", option="--negatives").valid]
        if len(negatives) > config.max_negatives:
            negatives = sorted(random.Random(config.seed).sample(negatives, config.max_negatives))
            log.info("sampled %d of the negatives (data.max_negatives)", config.max_negatives)
    overlap = set(positives) & set(negatives)
    if overlap:
        raise YollavaError(f"{len(overlap)} image(s) are both positive and negative; keep --images and --negatives separate")
    return ImageSets(positives=positives, negatives_hard=[], negatives_easy=negatives)


def positive_repeats(n_positive: int, n_negative: int, config: DataConfig) -> int:
    """How many recognition samples each positive image gets so the classes balance.

    With 5 positives against 200 negatives and ratio 1.0, each positive is asked 40 different
    ways; without this, training collapses to answering "No" (DESIGN.md §2).
    """
    if n_positive == 0:
        return 0
    return max(config.min_positive_repeats, math.ceil(config.positive_ratio * n_negative / n_positive))


def recognition_samples(images: ImageSets, identifier: str, bank: RecognitionBank, config: DataConfig) -> list[Sample]:
    """Recognition Q/A for every image, questions and answers drawn from the bank (seeded)."""
    rng = random.Random(config.seed)
    samples: list[Sample] = []
    repeats = positive_repeats(len(images.positives), len(images.negatives), config)
    variants = ["", "hflip"] if config.hflip else [""]
    for path in images.positives:
        for index in range(repeats):
            question, answer = bank.sample(rng, identifier, positive=True)
            variant = variants[index % len(variants)]
            samples.append(Sample(question, answer, SampleKind.recognition_positive.value, path, variant, source=path))
    for kind, paths in ((SampleKind.recognition_negative_hard, images.negatives_hard), (SampleKind.recognition_negative_easy, images.negatives_easy)):
        for path in paths:
            question, answer = bank.sample(rng, identifier, positive=False)
            samples.append(Sample(question, answer, kind.value, path, source=path))
    return samples


def load_text_samples(path: str | Path, identifier: str) -> list[Sample]:
    """Text-only samples from a .jsonl/.json file or a saved HF dataset folder.

    Each record needs ``question`` and ``answer``; ``{name}`` in either is replaced by the
    identifier. Records with an ``image`` are refused: text-only samples teach the latent tokens
    what the image would have shown.

    Raises:
        YollavaError: unreadable file or malformed records.
    """
    path = Path(path)
    records: list[dict[str, Any]]
    if path.is_dir():
        from datasets import load_from_disk  # heavy import, only when used

        try:
            records = list(load_from_disk(str(path)))
        except Exception as exc:  # datasets raises several classes for a wrong folder
            raise YollavaError(f"data.text_samples={path}: not a saved HF dataset ({exc.__class__.__name__}); pass a .jsonl file") from exc
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                records = json.loads(text)
            else:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise YollavaError(f"data.text_samples={path}: invalid JSON at line {exc.lineno}; one {{question, answer}} object per line") from exc
    else:
        raise YollavaError(f"data.text_samples={path}: no such file; pass a .jsonl of {{question, answer}} records")
    samples = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not record.get("question") or not record.get("answer"):
            raise YollavaError(f"data.text_samples={path}: record {index} lacks 'question' or 'answer'")
        if record.get("image"):
            raise YollavaError(f"data.text_samples={path}: record {index} has an image; text-only samples must not")
        samples.append(
            Sample(
                question=str(record["question"]).replace("{name}", identifier),
                answer=str(record["answer"]).replace("{name}", identifier),
                kind=str(record.get("kind", SampleKind.conversation.value)),
                source=str(path),
            )
        )
    return samples


def summarize(samples: Sequence[Sample]) -> dict[str, int]:
    """Counts per kind (recorded in the concept's training summary)."""
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.kind] = counts.get(sample.kind, 0) + 1
    return dict(sorted(counts.items()))
