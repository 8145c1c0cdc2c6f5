"""The cost account of the report: break-even queries, measured and computed at LLaVA-1.5-13B size."""

from __future__ import annotations

import json

import pytest

from yollava.bench import flops
from yollava.evaluate import cost
from yollava.evaluate.report import build_table, column_reader, write_report


def record(method: str, model: str = "toy", *, train: float | None = None, seconds: float = 1.0, questions: int = 100,
           tokens: int = 0, references: int = 0, concept: str = "bo", info: dict | None = None) -> dict:
    return {"format": "yollava-eval", "task": "recognition", "method": method, "concept": concept, "accuracy": 0.9,
            "metrics": {"positive": 0.9, "negative": 0.9, "weighted": 0.9}, "n_questions": questions, "tokens_per_query": tokens,
            "train_seconds": train, "seconds": seconds, "references": [f"r{i}.png" for i in range(references)],
            "refs": references or None, "model": {"id": model}, "image_tokens": 64, "data": "toyworld", "method_info": info or {}}


SOFT_INFO = {"samples_per_epoch": 300, "epochs_run": 15, "train_images": 110}


def test_break_even_is_where_the_totals_cross():
    assert cost.break_even((100.0, 0.1), (0.0, 0.6)) == pytest.approx(200.0)
    assert cost.break_even((100.0, 0.6), (0.0, 0.1)) is None  # dearer per query too: never pays off
    assert cost.break_even((0.0, 0.1), (0.0, 0.6)) is None  # trains nothing more: cheaper from the first query


def test_measured_and_13b_tradeoff_of_the_soft_prompt_against_in_context():
    records = [record("soft-prompt", train=60.0, seconds=2.0, tokens=19, info=SOFT_INFO),
               record("in-context", seconds=12.0, tokens=64 + 7, references=1), record("vanilla", seconds=1.5)]
    result = cost.tradeoff(records, column_reader(records), cost.llava_13b_arch(), 64)
    assert result["reference"] == "soft-prompt"
    # measured: 60 s of training against (0.12 - 0.02) s saved per query
    assert result["measured"]["in-context (1 ref)"] == pytest.approx(60.0 / (0.12 - 0.02))
    assert result["measured"]["vanilla"] is None  # vanilla is cheaper per query: the soft prompt buys accuracy, not speed
    arch = cost.llava_13b_arch()
    computed = result["computed"]["costs"]
    # the reference photo is re-counted at 576 tokens; its tower runs on every query
    assert computed["in-context (1 ref)"]["extra_tokens"] == 576 + 7
    gap = computed["in-context (1 ref)"]["query_flops"] - computed["soft-prompt"]["query_flops"]
    assert gap > flops.tower(arch) + flops.lm_forward(arch, 500)
    prefix = cost.SYSTEM_TOKENS + 576
    step = flops.yollava_step(arch, prefix, cost.TRAIN_SUFFIX_TOKENS + 19, cost.TRAIN_SUPERVISED_TOKENS)
    assert computed["soft-prompt"]["train_flops"] == pytest.approx(300 * 15 * step + 110 * flops.prefix_pass(arch, prefix))
    assert result["computed"]["break_even"]["in-context (1 ref)"] == pytest.approx(computed["soft-prompt"]["train_flops"] / gap, rel=1e-3)


def test_no_tradeoff_without_a_trained_soft_prompt():
    records = [record("vanilla"), record("in-context", references=1, tokens=71)]
    assert cost.tradeoff(records, column_reader(records)) is None


def test_report_writes_the_cost_section_and_plot_and_names_models_when_several(tmp_path):
    records = [record("soft-prompt", train=60.0, seconds=2.0, tokens=19, info=SOFT_INFO),
               record("in-context", seconds=12.0, tokens=71, references=1),
               record("in-context", model="toy-pvit", seconds=12.0, tokens=71, references=1)]
    table = build_table(records)
    assert table["columns"] == ["soft-prompt on toy", "in-context (1 ref) on toy", "in-context (1 ref) on toy-pvit"]
    paths = write_report(records, tmp_path / "report", "toy")
    markdown = paths["markdown"].read_text()
    assert "## Cost: training once" in markdown and "| in-context (1 ref) on toy-pvit | 0.0 | 0.1200 | 71 | 600 |" in markdown
    assert paths["cost_plot"].stat().st_size > 5000
    saved = json.loads(paths["json"].read_text())["cost"]
    assert saved["reference"] == "soft-prompt on toy" and saved["measured"]["in-context (1 ref) on toy"] == pytest.approx(600.0)
