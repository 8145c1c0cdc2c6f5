"""Visual QA: the published ``yollava-visual-qa.json`` (one two-option question per test photo), every option order."""

from __future__ import annotations

from typing import Callable

from yollava.errors import YollavaError
from yollava.evaluate.multiple_choice import GENERATION_TOKENS, count_prompts, score_multiple_choice
from yollava.evaluate.qa_files import QAKind, Question
from yollava.evaluate.task import Outcome, Task, TaskInputs
from yollava.methods.personalization import MethodContext, Personalization

SCORING = "option-letter log-probability, mean over every option order"


def questions_for(inputs: TaskInputs, kind: QAKind, subject: str) -> list[Question]:
    """The subject's questions from the ``kind`` QA file.

    Raises:
        YollavaError: no such file was given or found, or it has no entry for ``subject``.
    """
    if kind not in inputs.qa:
        raise YollavaError(f"--task {kind.value} needs a QA file: pass --qa FILE (none found in --data {inputs.benchmark.root})")
    return inputs.qa[kind].for_subject(subject)


def multiple_choice_plan(inputs: TaskInputs, kind: QAKind, subject: str) -> tuple[list[Question], bool, int, dict]:
    """A QA task's plan: the subject's questions, generation on/off and length, and the file they came from."""
    questions = questions_for(inputs, kind, subject)
    qa = inputs.qa[kind]
    return questions, inputs.generation, inputs.tokens(GENERATION_TOKENS), {"qa_file": str(qa.path), "qa_sha256": qa.sha256}


def run_multiple_choice(ctx: MethodContext, person: Personalization, questions: list[Question], generation: bool, tokens: int,
                        source: dict, progress: Callable[[int], None] | None) -> Outcome:
    result = score_multiple_choice(ctx.base, ctx.fmt, person, questions, ctx.features, generation=generation, progress=progress,
                                   max_new_tokens=tokens)
    return Outcome(accuracy=result.letter, scoring=SCORING, n_questions=result.n_questions, metrics=result.summary(),
                   items=result.per_question, sources=source)


class MultipleChoiceTask(Task):
    """A QA file's two-option questions about the subject, asked in every option order (``kind`` names the file)."""

    kind: QAKind

    def plan(self, inputs: TaskInputs, subject: str) -> tuple[list[Question], bool, int, dict]:
        return multiple_choice_plan(inputs, self.kind, subject)

    def size(self, plan: tuple[list[Question], bool, int, dict]) -> int:
        return count_prompts(plan[0])

    def run(self, ctx: MethodContext, person: Personalization, plan: tuple[list[Question], bool, int, dict],
            progress: Callable[[int], None] | None) -> Outcome:
        return run_multiple_choice(ctx, person, *plan, progress)


class VisualQA(MultipleChoiceTask):
    """Multiple-choice questions about the subject in its test photos."""

    kind = QAKind.visual
    name = QAKind.visual.value
