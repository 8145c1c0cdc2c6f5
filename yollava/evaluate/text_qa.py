"""Text-only QA: the 400-question ``yollava-text-only-qa.json`` of RAP / Yo'Chameleon, no image, every option order.

"A" is correct in 390 of its 400 questions: asked in one order, a model that always says "A" scores
0.975; asked in both, 0.5 (see :mod:`yollava.evaluate.multiple_choice`).
"""

from __future__ import annotations

from yollava.evaluate.qa_files import QAKind
from yollava.evaluate.visual_qa import MultipleChoiceTask


class TextQA(MultipleChoiceTask):
    """Multiple-choice questions about the subject with no image at all."""

    kind = QAKind.text
    name = QAKind.text.value
