"""A suite's reports from its results: summary.json, a markdown table (mean ± std over seeds, 95 % bootstrap over concepts) and plots.

Plots follow the suite's ``report.kind``: ``curve`` — positive / negative / weighted recognition
against the variant's value (the paper's Fig. 5, k and n); ``bars`` — weighted recognition per
variant beside the paper's numbers (Table 7); ``methods`` — the method table and accuracy against
personalization tokens per query (Table 5 / Fig. 4); ``table`` — bars per variant.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yollava.storage import atomic_path, write_json_atomic, write_text_atomic

# ``plan`` below is a yollava.ablate.runner.Plan (not imported: the runner imports this module)
Plan = Any

SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "results.md"
BOOTSTRAP_SAMPLES = 2000
RECOGNITION_METRICS = ("positive", "negative", "weighted")


def bootstrap_interval(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded)."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def metric_values(line: dict[str, Any]) -> dict[str, float]:
    """The numbers a line is summarized by: recognition's three accuracies, or a task's headline accuracy."""
    if line["task"] == "recognition":
        return {name: float(line["metrics"][name]) for name in RECOGNITION_METRICS}
    return {"accuracy": float(line["accuracy"])}


def summarize(lines: Sequence[dict[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per (variant, task): mean, std over seeds (of each seed's mean over concepts) and bootstrap CI over concepts.

    Returns:
        Rows in variant order, each with ``variant``, ``task``, ``method``, ``x``, ``concepts``, ``seeds``,
        ``tokens_per_query`` and per metric ``{mean, std_seeds, ci95, per_concept}``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        groups[(line["variant"], line["task"])].append(line)
    order = {name: i for i, name in enumerate(variants)}
    rows = []
    for (variant, task), group in sorted(groups.items(), key=lambda item: (order.get(item[0][0], 1e9), item[0][1])):
        concepts = sorted({g["concept"] for g in group})
        seeds = sorted({g["seed"] for g in group})
        metrics: dict[str, Any] = {}
        for name in metric_values(group[0]):
            by_concept = {c: statistics.fmean(metric_values(g)[name] for g in group if g["concept"] == c) for c in concepts}
            by_seed = [statistics.fmean(metric_values(g)[name] for g in group if g["seed"] == s) for s in seeds]
            metrics[name] = {
                "mean": statistics.fmean(by_concept.values()),
                "std_seeds": statistics.stdev(by_seed) if len(by_seed) > 1 else None,
                "ci95": bootstrap_interval(list(by_concept.values())),
                "per_concept": by_concept,
            }
        rows.append({
            "variant": variant, "task": task, "method": group[0]["method"], "x": group[0]["x"],
            "concepts": len(concepts), "seeds": len(seeds),
            "tokens_per_query": statistics.fmean(g["tokens_per_query"] for g in group),
            "metrics": metrics,
        })
    return rows


def costs(lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds: of each cell as it ran (trainings done inside it included), and of every distinct training.

    A training reused from an earlier run or another suite is counted at what it cost when it ran.
    """
    cells: dict[str, float] = {}
    trainings: dict[str, dict[str, Any]] = {}
    run_here: set[str] = set()
    for line in lines:
        cells[line["cell"]] = line["cell_cpu_s"]
        for training in line["trainings"]:
            trainings.setdefault(training["key"], training)
            if not training.get("reused"):
                run_here.add(training["key"])
    trained_here = [trainings[k] for k in run_here]
    return {
        "cells": len(cells),
        "cell_cpu_s_total": round(sum(cells.values()), 1),
        "trainings": len(trainings),
        "trainings_run_here": len(trained_here),
        "training_cpu_s_total": round(sum(t["cpu_s"] or 0.0 for t in trainings.values()), 1),
        "training_cpu_s_mean": round(statistics.fmean(t["cpu_s"] or 0.0 for t in trainings.values()), 1) if trainings else None,
        "threads": sorted({line.get("threads") for line in lines if line.get("threads")}),
    }


def _fmt(metric: dict[str, Any]) -> str:
    text = f"{metric['mean']:.3f}"
    if metric["std_seeds"] is not None:
        text += f" ± {metric['std_seeds']:.3f}"
    low, high = metric["ci95"]
    return text + f" [{low:.3f}, {high:.3f}]"


def paper_value(paper: dict[str, Any], variant: str, metric: str) -> float | None:
    """The paper's number for a variant's metric, if the suite lists one (``paper.values.<variant>.<metric>``)."""
    value = (paper.get("values") or {}).get(variant, {})
    return value.get(metric) if isinstance(value, dict) else None


def markdown(plan: Plan, rows: Sequence[dict[str, Any]], cost: dict[str, Any], command: str | None) -> str:
    """The suite's results as a markdown page: one table per task, the paper's numbers where the suite gives them."""
    suite = plan.suite
    lines = [f"# Suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    concepts = sorted({c.concept for c in plan.cells})
    lines += [
        f"- data: `{plan.data.root}` ({len(concepts)} concepts), seeds {list(suite.seeds)}, overrides "
        f"`{' '.join(plan.overrides) or 'none'}`, negatives embedder `{plan.embedder}`",
        "- each cell: mean over concepts; ± std over seeds (when more than one); [95 % bootstrap interval over concepts]",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    if suite.paper.get("note"):
        lines.append(f"- paper: {suite.paper['note']}")
    lines.append("")
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        names = list(task_rows[0]["metrics"])
        header = ["variant", "method", *names, "tokens / query"]
        with_paper = any(paper_value(suite.paper, r["variant"], m) is not None for r in task_rows for m in names)
        if with_paper:
            header.append("paper")
        lines += [f"## {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in task_rows:
            cells = [row["variant"], row["method"], *[_fmt(row["metrics"][m]) for m in names], f"{row['tokens_per_query']:.0f}"]
            if with_paper:
                paper = [f"{m} {v:.3f}" for m in names if (v := paper_value(suite.paper, row["variant"], m)) is not None]
                cells.append(", ".join(paper) or "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Cost",
        "",
        f"- {cost['cells']} cells, {cost['cell_cpu_s_total']:.0f} CPU s as run now (trainings done in them included; "
        f"torch threads per process: {', '.join(str(t) for t in cost['threads']) or '?'})",
        f"- {cost['trainings']} distinct trainings ({cost['trainings_run_here']} run in this suite's cells, the rest reused), "
        f"{cost['training_cpu_s_total']:.0f} CPU s when they ran"
        + (f", {cost['training_cpu_s_mean']:.0f} s each on average" if cost["training_cpu_s_mean"] is not None else ""),
        "",
    ]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def _errors(metric: dict[str, Any]) -> list[float]:
    low, high = metric["ci95"]
    return [metric["mean"] - low, high - metric["mean"]]


def plot_curve(plan: Plan, rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Recognition positive / negative / weighted against the variant's value, 95 % intervals as error bars (Fig. 5)."""
    points = [r for r in rows if r["task"] == "recognition" and r["x"] is not None]
    if not points:
        return None
    points.sort(key=lambda r: r["x"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    xs = [r["x"] for r in points]
    for name, colour in zip(RECOGNITION_METRICS, ("#1b9e77", "#d95f02", "#7570b3")):
        ys = [r["metrics"][name]["mean"] for r in points]
        err = np.array([_errors(r["metrics"][name]) for r in points]).T
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name, color=colour)
        paper = [(r["x"], v) for r in points if (v := paper_value(plan.suite.paper, r["variant"], name)) is not None]
        if paper:
            ax.scatter(*zip(*paper), marker="x", color=colour, s=50, label=f"{name} (paper)")
    if plan.suite.report.log_x:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set(xlabel=plan.suite.report.x_label or "variant", ylabel="recognition accuracy (test)", ylim=(-0.02, 1.02),
           title=f"{plan.suite.name} ({points[0]['concepts']} concepts)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(plan: Plan, rows: Sequence[dict[str, Any]], path: Path, task: str = "recognition") -> Path | None:
    """One bar per variant (weighted recognition, or the task's accuracy) with its interval, the paper's value as a mark."""
    bars = [r for r in rows if r["task"] == task]
    if not bars:
        return None
    metric = "weighted" if task == "recognition" else "accuracy"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(bars) + 1.5), 3.6))
    xs = np.arange(len(bars))
    ax.bar(xs, [r["metrics"][metric]["mean"] for r in bars], yerr=np.array([_errors(r["metrics"][metric]) for r in bars]).T,
           capsize=4, color="#7570b3", label="this run")
    paper = [(i, v) for i, r in enumerate(bars) if (v := paper_value(plan.suite.paper, r["variant"], metric)) is not None]
    if paper:
        ax.scatter(*zip(*paper), marker="D", color="#d95f02", zorder=3, label="paper")
    ax.set_xticks(xs, [r["variant"] for r in bars], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=f"{metric} {task} (test)", ylim=(0, 1.02), title=f"{plan.suite.name} ({bars[0]['concepts']} concepts)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_tokens(plan: Plan, rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against personalization tokens per query, one point per variant (Fig. 4 / Table 5's last column)."""
    points = [r for r in rows if r["task"] == "recognition"]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for row in points:
        tokens = max(row["tokens_per_query"], 0.5)  # vanilla adds nothing: drawn at the axis' left end
        ax.errorbar([tokens], [row["metrics"]["weighted"]["mean"]], yerr=np.array([_errors(row["metrics"]["weighted"])]).T,
                    marker="o", capsize=3)
        ax.annotate(row["variant"], (tokens, row["metrics"]["weighted"]["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="personalization tokens per query (log)", ylabel="weighted recognition (test)", ylim=(0, 1.02),
           title=f"{plan.suite.name} ({points[0]['concepts']} concepts)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    return _save(fig, path)


def write_method_table(plan: Plan, records: Sequence[dict[str, Any]]) -> list[Path]:
    """``table5/``: ``yollava report``'s Table 5 (methods as columns) and recognition-vs-tokens plot, from the first seed's records.

    Variants of one method that differ only by config (not by references) would be one column there,
    so only the first variant of each column is drawn; the suite's own table has every variant.
    """
    from yollava.evaluate.report import column_of, write_report

    first_seed = min(plan.suite.seeds)
    owner: dict[str, str] = {}
    picked = []
    for record in records:
        if record["seed"] != first_seed:
            continue
        column = column_of(record)
        if owner.setdefault(column, record["variant"]) == record["variant"]:
            picked.append(record)
    if not picked:
        return []
    paths = write_report(picked, plan.out / "table5", title=f"suite {plan.suite.name} (seed {first_seed})")
    return [p.relative_to(plan.out) for p in paths.values()]


def write_reports(plan: Plan, lines: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]] = (),
                  command: str | None = None) -> dict[str, Any]:
    """``summary.json``, ``results.md`` and the plots of ``plan.suite.report.kind`` in the output folder."""
    from yollava.ablate.suite import ReportKind

    command = command or plan.command
    rows = summarize(lines, [v.name for v in plan.suite.variants])
    cost = costs(lines)
    kind = plan.suite.report.kind
    plots: list[Path | None] = []
    if kind == ReportKind.curve:
        plots.append(plot_curve(plan, rows, plan.out / "curve.png"))
    elif kind == ReportKind.methods:
        plots.append(plot_tokens(plan, rows, plan.out / "accuracy_vs_tokens.png"))
        plots.append(plot_bars(plan, rows, plan.out / "methods.png"))
        plots.extend(write_method_table(plan, records))
    else:
        plots.append(plot_bars(plan, rows, plan.out / "bars.png"))
    for task in dict.fromkeys(r["task"] for r in rows):
        if task != "recognition":
            plots.append(plot_bars(plan, rows, plan.out / f"bars_{task}.png", task))
    summary = {
        "suite": plan.suite.name, "description": plan.suite.description, "paper": plan.suite.paper,
        "data": str(plan.data.root), "seeds": list(plan.suite.seeds), "overrides": list(plan.overrides),
        "embedder": plan.embedder, "rows": rows, "cost": cost, "plots": [str(p.relative_to(plan.out) if p.is_absolute() else p) for p in plots if p is not None],
        "command": command,
    }
    write_json_atomic(plan.out / SUMMARY_FILE, summary)
    write_text_atomic(plan.out / MARKDOWN_FILE, markdown(plan, rows, cost, command))
    return summary
