"""What a task is to the harness: a plan made from files before the model loads, then a run on one personalization."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from yollava.evaluate.layout import Benchmark
from yollava.evaluate.qa_files import QAFile, QAKind
from yollava.methods.personalization import MethodContext, Personalization


@dataclass
class TaskInputs:
    """Everything tasks read from disk (checked before the model loads).

    Attributes:
        benchmark: the ``--data`` dataset.
        qa: the QA files by kind (``--qa``, or the dataset's own).
        generation: also score whole greedy answers (recognition, multiple choice).
        caption_negatives: other subjects' test photos per subject captioned for the false-mention rate.
        max_new_tokens: cap on every generated answer (None: each task's own length).
    """

    benchmark: Benchmark
    qa: dict[QAKind, QAFile] = field(default_factory=dict)
    generation: bool = True
    caption_negatives: int = 1
    max_new_tokens: int | None = None

    def tokens(self, default: int) -> int:
        """A task's generation length under the cap."""
        return default if self.max_new_tokens is None else min(default, self.max_new_tokens)


@dataclass
class Outcome:
    """A task's result for one (method, concept).

    Attributes:
        accuracy: the headline number (weighted recognition, letter accuracy, caption recall).
        scoring: how ``accuracy`` was scored.
        n_questions: images (recognition, caption) or questions (QA) asked.
        metrics: every other number of the task.
        items: per image / question details.
    """

    accuracy: float
    scoring: str
    n_questions: int
    metrics: dict[str, Any]
    items: list[dict[str, Any]]
    sources: dict[str, Any] = field(default_factory=dict)


class Task:
    """One evaluation task. Subclasses set ``name`` and implement the three methods."""

    name: ClassVar[str]

    def plan(self, inputs: TaskInputs, subject: str) -> Any:
        """What will be asked about ``subject`` (image paths, questions); raises YollavaError on bad input."""
        raise NotImplementedError

    def size(self, plan: Any) -> int:
        """Progress units :meth:`run` reports for ``plan``."""
        raise NotImplementedError

    def run(self, ctx: MethodContext, person: Personalization, plan: Any, progress: Callable[[int], None] | None) -> Outcome:
        """Score ``plan`` with the subject given as ``person``."""
        raise NotImplementedError
