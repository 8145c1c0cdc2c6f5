"""``yollava report``: evaluation records -> the paper's Table 5 (methods as columns) as markdown + JSON, and the recognition-vs-tokens plot."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from yollava.errors import YollavaError
from yollava.evaluate import cost
from yollava.evaluate.harness import RESULT_FORMAT
from yollava.methods import METHODS
from yollava.storage import atomic_path, write_json_atomic, write_text_atomic

REPORT_MD = "table.md"
REPORT_JSON = "table.json"
REPORT_PLOT = "recognition_vs_tokens.png"
REPORT_COST_PLOT = "cost_vs_queries.png"
REPORT_RECORDS = "records.json"  # the records without their per-item details


@dataclass(frozen=True)
class Row:
    """A table row: its label, the task whose records it reads, and how to read one record."""

    key: str
    label: str
    task: str | None
    value: Callable[[dict[str, Any]], float | None]


def _metric(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def read(record: dict[str, Any]) -> float | None:
        value: Any = record["metrics"]
        for key in path:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        return float(value)
    return read


ROWS = (
    Row("positive", "recognition: positive", "recognition", _metric("positive")),
    Row("negative", "recognition: negative", "recognition", _metric("negative")),
    Row("weighted", "recognition: **weighted**", "recognition", _metric("weighted")),
    Row("visual_qa", "visual QA (letter)", "visual-qa", _metric("letter")),
    Row("text_qa", "text QA (letter)", "text-qa", _metric("letter")),
    Row("caption_recall", "caption recall", "caption", _metric("recall")),
    Row("caption_false_mention", "caption false mentions (lower is better)", "caption", _metric("false_mention")),
    Row("tokens", "personalization tokens per query", None, lambda r: float(r["tokens_per_query"])),
    Row("train_seconds", "training seconds per concept", None, lambda r: None if r.get("train_seconds") is None else float(r["train_seconds"])),
    Row("weighted_generation", "recognition weighted, whole greedy answers", "recognition", _metric("generation", "weighted")),
    Row("coherent", "recognition answers that are a coherent yes/no", "recognition", _metric("generation", "coherent")),
    Row("visual_qa_likelihood", "visual QA (option likelihood)", "visual-qa", _metric("likelihood")),
    Row("visual_qa_generation", "visual QA (whole greedy answers)", "visual-qa", _metric("generation")),
    Row("text_qa_likelihood", "text QA (option likelihood)", "text-qa", _metric("likelihood")),
    Row("text_qa_generation", "text QA (whole greedy answers)", "text-qa", _metric("generation")),
    Row("first_letter_text_qa", "text QA: share of letter answers that are \"A\"", "text-qa", _metric("first_letter_rate")),
)
HEADLINE = 9  # rows above the rule: the paper's table


def load_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Records from ``yollava eval --json`` files (arrays of records).

    Raises:
        YollavaError: a file is missing, not JSON, or holds something else.
    """
    records: list[dict[str, Any]] = []
    if not paths:
        raise YollavaError("pass at least one results file (written by `yollava eval --json PATH`)")
    for path in map(Path, paths):
        if not path.is_file():
            raise YollavaError(f"{path}: no such results file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise YollavaError(f"{path}: not valid JSON ({exc})") from exc
        items = data if isinstance(data, list) else [data]
        for index, record in enumerate(items):
            if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT:
                raise YollavaError(f"{path}: entry {index} is not a yollava eval result; pass files written by `yollava eval --json`")
            records.append(record)
    return records


def column_of(record: dict[str, Any], with_model: bool = False) -> str:
    """The table column of a record: the method, with its reference count for in-context, and its model with ``with_model``."""
    column = record["method"]
    if record["method"] == "in-context":
        refs = record.get("refs") or len(record.get("references") or [])
        column = f"in-context ({refs} ref{'s' if refs != 1 else ''})"
    return f"{column} on {record['model']['id']}" if with_model else column


def column_reader(records: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """:func:`column_of` for these records: the model joins the column name when they span several models."""
    several = len({r["model"]["id"] for r in records}) > 1
    return lambda record: column_of(record, with_model=several)


def _columns(records: Sequence[dict[str, Any]], column: Callable[[dict[str, Any]], str]) -> list[str]:
    order = {name: i for i, name in enumerate(METHODS)}
    seen = {column(r): (r["model"]["id"], order.get(r["method"], len(order)), r.get("refs") or 0) for r in records}
    return sorted(seen, key=lambda c: seen[c])


def build_table(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over concepts per (row, column), with the concepts each cell covers.

    Raises:
        YollavaError: two records for the same (task, column, concept) (the same run given twice?).
    """
    column_of = column_reader(records)
    seen: set[tuple[str, str, str]] = set()
    for r in records:
        key = (r["task"], column_of(r), r["concept"])
        if key in seen:
            raise YollavaError(f"two results for task {key[0]}, method {key[1]}, concept {key[2]}; pass each run's file once")
        seen.add(key)
    columns = _columns(records, column_of)
    cells: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        cells[row.key] = {}
        for column in columns:
            picked = [r for r in records if column_of(r) == column and (row.task is None or r["task"] == row.task)]
            if row.task is None:  # one value per concept, whatever the task
                picked = list({r["concept"]: r for r in picked}.values())
            values = {r["concept"]: row.value(r) for r in picked}
            values = {c: v for c, v in values.items() if v is not None}
            if values:
                cells[row.key][column] = {"mean": statistics.fmean(values.values()), "n": len(values), "per_concept": values}
    models = sorted({r["model"]["id"] for r in records})
    concepts = sorted({r["concept"] for r in records})
    return {"columns": columns, "rows": [{"key": r.key, "label": r.label} for r in ROWS], "cells": cells,
            "models": models, "concepts": concepts, "data": sorted({r["data"] for r in records})}


def _format(value: float, key: str) -> str:
    if key == "tokens":
        return f"{value:.0f}"
    if key == "train_seconds":
        return f"{value:.0f}"
    return f"{value:.3f}"


def render_markdown(table: dict[str, Any], title: str = "") -> str:
    """The table as markdown: the paper's rows first, then the other scorings."""
    columns = table["columns"]
    lines = [f"# {title or 'Evaluation'}", "",
             f"Model {', '.join(table['models'])}; data {', '.join(table['data'])}; {len(table['concepts'])} concepts. "
             "Each cell is the mean over concepts (n in the JSON).", "",
             "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    partial = []
    for index, row in enumerate(table["rows"]):
        if index == HEADLINE:
            lines.append("| *other scorings* |" + " |" * len(columns))
        cells = table["cells"][row["key"]]
        values = []
        for column in columns:
            cell = cells.get(column)
            if cell is None:
                values.append("–")
                continue
            values.append(_format(cell["mean"], row["key"]))
            if cell["n"] != len(table["concepts"]) and row["key"] not in ("tokens", "train_seconds"):
                partial.append(f"{row['label']} / {column}: {cell['n']} of {len(table['concepts'])} concepts")
        lines.append(f"| {row['label']} | " + " | ".join(values) + " |")
    if partial:
        lines += ["", "Cells over fewer concepts: " + "; ".join(partial) + "."]
    return "\n".join(lines) + "\n"


def plot_recognition_vs_tokens(table: dict[str, Any], path: str | Path) -> Path:
    """Weighted recognition against personalization tokens per query (log x), one point per method (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weighted, tokens = table["cells"]["weighted"], table["cells"]["tokens"]
    points = [(c, tokens[c]["mean"], weighted[c]["mean"]) for c in table["columns"] if c in weighted and c in tokens]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for column, x, y in points:
        shown = max(x, 1.0)  # 0 tokens (vanilla) sits at 1 on the log axis
        ax.scatter([shown], [y], s=40)
        ax.annotate(f"{column} ({x:.0f})", (shown, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="personalization tokens per query (log; 0 drawn at 1)", ylabel="weighted recognition", ylim=(0.0, 1.02))
    ax.set_title(", ".join(table["models"]), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(records: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> dict[str, Path]:
    """Write ``table.md``, ``table.json``, ``records.json`` (every record but its items) and ``recognition_vs_tokens.png`` into ``out``.

    Returns:
        The written paths by kind.
    """
    table = build_table(records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / REPORT_MD, "json": out / REPORT_JSON, "records": out / REPORT_RECORDS}
    write_text_atomic(paths["markdown"], render_markdown(table, title))
    write_json_atomic(paths["json"], table)
    write_json_atomic(paths["records"], [{k: v for k, v in r.items() if k != "items"} for r in records])
    if table["cells"]["weighted"]:
        paths["plot"] = plot_recognition_vs_tokens(table, out / REPORT_PLOT)
    tokens = {r.get("image_tokens") for r in records} - {None}
    costs = cost.tradeoff(records, column_reader(records), cost.llava_13b_arch(), tokens.pop() if len(tokens) == 1 else None)
    if costs is not None:
        table["cost"] = costs
        write_json_atomic(paths["json"], table)
        write_text_atomic(paths["markdown"], render_markdown(table, title) + cost.render_tradeoff(costs))
        paths["cost_plot"] = cost.plot_tradeoff(costs, out / REPORT_COST_PLOT, title)
    return paths

