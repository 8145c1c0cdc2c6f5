"""Evaluation: one module per task (recognition, visual_qa, text_qa, caption), per file format (layout, qa_files), the harness and the report.

The most used names are re-exported here, imported on first use: the methods import
``yollava.evaluate.layout``, which must not pull in the tasks (they import the methods).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Benchmark": "layout",
    "open_benchmark": "layout",
    "yollava_split": "layout",
    "RecognitionResult": "recognition",
    "YesNoScorer": "recognition",
    "classify_answer": "recognition",
    "evaluate_concept": "recognition",
    "recognition_accuracy": "recognition",
    "weighted_accuracy": "recognition",
    "plan_evaluation": "harness",
    "run_evaluation": "harness",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'yollava.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"yollava.evaluate.{_EXPORTS[name]}"), name)
