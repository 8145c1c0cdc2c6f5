"""Evaluation: one module per task (``recognition``) and per benchmark layout (``splits``)."""

from yollava.evaluate.recognition import (
    Prompting,
    RecognitionResult,
    YesNoScorer,
    classify_answer,
    evaluate_concept,
    recognition_accuracy,
    weighted_accuracy,
)
from yollava.evaluate.splits import yollava_split

__all__ = [
    "Prompting",
    "RecognitionResult",
    "YesNoScorer",
    "classify_answer",
    "evaluate_concept",
    "recognition_accuracy",
    "weighted_accuracy",
    "yollava_split",
]
