"""Ablation and baseline suites (``yollava ablate``): suites as data, cells keyed by config hash, resumable parallel runs, reports."""

from yollava.ablate.cells import AblationData, Cell, Training, expand_cells
from yollava.ablate.runner import Plan, Request, make_plan, merge, run_share, run_suite
from yollava.ablate.suite import NegativesKind, NegativesSpec, Suite, Variant, load_suite, parse_suite, suite_names

__all__ = [
    "AblationData", "Cell", "NegativesKind", "NegativesSpec", "Plan", "Request", "Suite", "Training", "Variant",
    "expand_cells", "load_suite", "make_plan", "merge", "parse_suite", "run_share", "run_suite", "suite_names",
]
