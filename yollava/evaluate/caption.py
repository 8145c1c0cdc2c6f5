"""Caption recall (MyVLM's protocol) and its missing half, the false-mention rate.

The base captions each of the subject's test photos ("Give a short caption for this photo." after
the method's personalization); recall is the share of captions that name the subject's identifier.
A model that writes ``<bo>`` into every caption has recall 1 and is not personalized, so the same is
asked of other subjects' test photos: the false-mention rate is the share of those captions that
name ``<bo>`` anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from yollava.base import Base
from yollava.evaluate.answers import mentions
from yollava.evaluate.layout import TEST
from yollava.evaluate.scoring import generate_batch
from yollava.evaluate.task import Outcome, Task, TaskInputs
from yollava.forward import SCORE_BATCH, FeatureCache, PrefixCache
from yollava.methods.personalization import MethodContext, Personalization, build_query, evaluation_template
from yollava.prompts import ChatFormat


@dataclass
class CaptionResult:
    """``recall`` on the subject's photos, ``false_mention`` on other subjects' photos."""

    recall: float
    false_mention: float | None
    n_positive: int
    n_negative: int
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_image")
        return out


def score_captions(
    base: Base,
    fmt: ChatFormat,
    person: Personalization,
    positives: Sequence[str],
    negatives: Sequence[str],
    features: FeatureCache | PrefixCache,
    progress: Callable[[int], None] | None = None,
    max_new_tokens: int | None = None,
) -> CaptionResult:
    """Caption every image greedily and count the captions that name ``person.identifier``.

    Args:
        positives: the subject's test photos.
        negatives: other subjects' test photos (may be empty: no false-mention rate then).
        progress: called with the number of captions written after each batch.
        max_new_tokens: caption length (None: templates/evaluation.yaml's).
    """
    template = evaluation_template()["caption"]
    tokens = max_new_tokens or template["max_new_tokens"]
    per_image = []
    labelled = [(True, str(p)) for p in positives] + [(False, str(p)) for p in negatives]
    for start in range(0, len(labelled), SCORE_BATCH):  # decoded a batch at a time, each photo's prefix from the shared cache
        chunk = labelled[start : start + SCORE_BATCH]
        captions = generate_batch(base, [build_query(base, fmt, person, template["question"], path) for _, path in chunk], features, tokens)
        for (label, path), caption in zip(chunk, captions):
            per_image.append({"image": path, "label": label, "caption": caption, "mentions": mentions(caption, person.identifier)})
        if progress:
            progress(len(chunk))
    pos = [r["mentions"] for r in per_image if r["label"]]
    neg = [r["mentions"] for r in per_image if not r["label"]]
    return CaptionResult(recall=sum(pos) / len(pos), false_mention=sum(neg) / len(neg) if neg else None,
                         n_positive=len(pos), n_negative=len(neg), per_image=per_image)


class Caption(Task):
    """Captions of the subject's test photos (recall) and of other subjects' (false mentions)."""

    name = "caption"

    def plan(self, inputs: TaskInputs, subject: str) -> tuple[list[str], list[str], int]:
        positives = inputs.benchmark.images(TEST, subject)
        others = [s for s in inputs.benchmark.subjects[TEST] if s != subject]
        negatives = [p for other in others for p in inputs.benchmark.images(TEST, other)[: inputs.caption_negatives]]
        return positives, negatives, inputs.tokens(evaluation_template()["caption"]["max_new_tokens"])

    def size(self, plan: tuple[list[str], list[str], int]) -> int:
        return len(plan[0]) + len(plan[1])

    def run(self, ctx: MethodContext, person: Personalization, plan: tuple[list[str], list[str], int],
            progress: Callable[[int], None] | None) -> Outcome:
        positives, negatives, tokens = plan
        result = score_captions(ctx.base, ctx.fmt, person, positives, negatives, ctx.features, progress, tokens)
        return Outcome(accuracy=result.recall, scoring="share of the subject's test captions naming the identifier",
                       n_questions=result.n_positive, metrics=result.summary(), items=result.per_image,
                       sources={"question": evaluation_template()["caption"]["question"]})
