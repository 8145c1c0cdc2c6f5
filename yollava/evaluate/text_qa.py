"""Text-only QA: the 400-question ``yollava-text-only-qa.json`` of RAP / Yo'Chameleon, no image, every option order.

"A" is correct in 390 of its 400 questions: asked in one order, a model that always says "A" scores
0.975; asked in both, 0.5 (see :mod:`yollava.evaluate.multiple_choice`).
"""

from __future__ import annotations

from typing import Callable

from yollava.evaluate.multiple_choice import count_prompts
from yollava.evaluate.qa_files import QAKind, Question
from yollava.evaluate.task import Outcome, Task, TaskInputs
from yollava.evaluate.visual_qa import multiple_choice_plan, run_multiple_choice
from yollava.methods.personalization import MethodContext, Personalization


class TextQA(Task):
    """Multiple-choice questions about the subject with no image at all."""

    name = QAKind.text.value

    def plan(self, inputs: TaskInputs, subject: str) -> tuple[list[Question], bool, int, dict]:
        return multiple_choice_plan(inputs, QAKind.text, subject)

    def size(self, plan: tuple[list[Question], bool, int, dict]) -> int:
        return count_prompts(plan[0])

    def run(self, ctx: MethodContext, person: Personalization, plan: tuple[list[Question], bool, int, dict],
            progress: Callable[[int], None] | None) -> Outcome:
        return run_multiple_choice(ctx, person, *plan, progress)
