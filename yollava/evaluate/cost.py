"""What personalization costs over many queries: the soft prompt pays its training once, in-context pays its photos on every query.

Two accounts, from the same evaluation records:

- **measured** (seconds, the machine the records were made on): a method's training seconds per
  concept (the soft prompt's recorded ``yollava train`` wall time; 0 for methods that train nothing)
  and its seconds per recognition query (the recognition task's seconds over its questions, batched
  and cached as the harness runs them);
- **computed** for a LLaVA-1.5 size (13B by default) by the FLOP model of :mod:`yollava.bench.flops`:
  a query is the towers of its images and the language model over its prompt; the method's extra
  tokens are those it added on the measured model with each of its images re-counted at the real
  model's image length (576); the soft prompt's training is its recorded recipe (samples per epoch
  × epochs run) of cached-prefix steps plus one prefix pass per training image. Per-epoch scoring
  during training is left out (it is the same work as queries).

Total cost after ``q`` queries is ``train + q × query``; two methods break even at
``q* = (train_a − train_b) / (query_b − query_a)`` when one trains more and answers cheaper.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from yollava.bench import flops

SOFT_PROMPT = "soft-prompt"
# A recognition query without any personalization, in LLaVA-1.5 tokens beside its image: the system
# text and roles, and the question; a training step's suffix and supervised answer positions beside the
# soft prompt (yollava.bench's 13B sample: 44 suffix tokens with the soft prompt's 19, 8 supervised).
SYSTEM_TOKENS = 35
QUESTION_TOKENS = 12
TRAIN_SUFFIX_TOKENS = 25
TRAIN_SUPERVISED_TOKENS = 8


@dataclass(frozen=True)
class MethodCost:
    """One column's costs (means over its concepts).

    Attributes:
        column: the report column (method, with references for in-context).
        train_seconds: training wall seconds per concept (0 when the method trains nothing).
        query_seconds: seconds per recognition query.
        tokens_per_query: prompt tokens the method adds to a query on the measured model.
        images_per_query: images a query holds (the scene plus reference photos).
        samples_per_epoch: the soft prompt's training samples per epoch (None for the others).
        epochs_run: epochs the soft prompt trained (None for the others).
        train_images: distinct training images (their prefixes are computed once).
    """

    column: str
    method: str
    train_seconds: float
    query_seconds: float
    tokens_per_query: float
    images_per_query: int
    samples_per_epoch: float | None = None
    epochs_run: float | None = None
    train_images: float | None = None


def method_costs(records: Sequence[dict[str, Any]], column_of: Any) -> dict[str, MethodCost]:
    """Costs per column from the recognition records (columns without recognition are left out)."""
    by_column: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["task"] == "recognition" and record.get("n_questions"):
            by_column.setdefault(column_of(record), []).append(record)
    costs = {}
    for column, picked in by_column.items():
        info = [r.get("method_info") or {} for r in picked]

        def mean_of(key: str) -> float | None:
            values = [i[key] for i in info if i.get(key) is not None]
            return statistics.fmean(values) if values else None

        costs[column] = MethodCost(
            column=column, method=picked[0]["method"],
            train_seconds=statistics.fmean(float(r.get("train_seconds") or 0.0) for r in picked),
            query_seconds=statistics.fmean(r["seconds"] / r["n_questions"] for r in picked),
            tokens_per_query=statistics.fmean(float(r["tokens_per_query"]) for r in picked),
            images_per_query=1 + max(len(r.get("references") or []) for r in picked),
            samples_per_epoch=mean_of("samples_per_epoch"), epochs_run=mean_of("epochs_run"), train_images=mean_of("train_images"),
        )
    return costs


def break_even(trained: tuple[float, float], other: tuple[float, float]) -> float | None:
    """Queries after which ``trained`` (train, per query) costs less in total than ``other``; None if never (or always)."""
    (train_a, query_a), (train_b, query_b) = trained, other
    if query_b <= query_a or train_a <= train_b:
        return None
    return (train_a - train_b) / (query_b - query_a)


def computed_costs(costs: dict[str, MethodCost], arch: flops.Arch, measured_image_tokens: int) -> dict[str, dict[str, float]]:
    """Training and per-query FLOPs of each column at ``arch``'s size (see the module docstring).

    Args:
        costs: :func:`method_costs`.
        arch: the size to compute for (:func:`yollava.bench.scale_arch` is LLaVA-1.5-13B's).
        measured_image_tokens: positions one image took on the measured model (64 on the toy LLaVA).
    """
    prefix = SYSTEM_TOKENS + arch.image_tokens  # what a training step's cached prefix holds
    out = {}
    for column, cost in costs.items():
        references = cost.images_per_query - 1
        extra = cost.tokens_per_query - references * measured_image_tokens + references * arch.image_tokens
        query = cost.images_per_query * flops.tower(arch) + flops.lm_forward(arch, int(round(prefix + QUESTION_TOKENS + extra))) \
            + flops.head(arch, 1)
        train = 0.0
        if cost.samples_per_epoch and cost.epochs_run:
            step = flops.yollava_step(arch, prefix, TRAIN_SUFFIX_TOKENS + int(round(cost.tokens_per_query)), TRAIN_SUPERVISED_TOKENS)
            train = cost.samples_per_epoch * cost.epochs_run * step + (cost.train_images or 0.0) * flops.prefix_pass(arch, prefix)
        out[column] = {"train_flops": float(train), "query_flops": float(query), "extra_tokens": float(extra)}
    return out


def llava_13b_arch() -> flops.Arch:
    """LLaVA-1.5-13B's sizes (its config as :mod:`yollava.bench.scale` builds it, all 40 layers)."""
    from types import SimpleNamespace

    from yollava.bench.scale import LLAVA_13B_LAYERS, llava_13b_config

    ids = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0, convert_tokens_to_ids=lambda token: 32000)
    return flops.arch_of(llava_13b_config(LLAVA_13B_LAYERS, ids))


def tradeoff(records: Sequence[dict[str, Any]], column_of: Any, arch: flops.Arch | None = None,
             measured_image_tokens: int | None = None) -> dict[str, Any] | None:
    """The soft prompt (its first column) against every other column, measured and computed; None without soft-prompt recognition records.

    Returns:
        ``{"reference": the soft prompt's column, "costs": {column: MethodCost as dict}, "measured": {column: break-even queries or None},
        "computed": {"arch": ..., "costs": {...}, "break_even": {column: ...}}}``.
    """
    costs = method_costs(records, column_of)
    trained = sorted(c for c, v in costs.items() if v.method == SOFT_PROMPT)
    if not trained or len(costs) < 2:
        return None
    reference = trained[0]
    soft = costs[reference]
    measured = {c: break_even((soft.train_seconds, soft.query_seconds), (o.train_seconds, o.query_seconds))
                for c, o in costs.items() if c != reference}
    result: dict[str, Any] = {"reference": reference, "costs": {c: asdict(v) for c, v in costs.items()}, "measured": measured}
    if arch is not None and measured_image_tokens:
        computed = computed_costs(costs, arch, measured_image_tokens)
        s = computed[reference]
        result["computed"] = {
            "arch": asdict(arch), "costs": computed,
            "break_even": {c: break_even((s["train_flops"], s["query_flops"]), (v["train_flops"], v["query_flops"]))
                           for c, v in computed.items() if c != reference},
        }
    return result


def _queries_axis(points: Sequence[float | None]) -> float:
    finite = [p for p in points if p]
    return max(10.0, 3 * max(finite)) if finite else 1000.0


def plot_tradeoff(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Total cost against number of queries, soft prompt against each other column (measured; computed beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from yollava.storage import atomic_path

    panels = [("measured", "seconds on this machine", {c: (v["train_seconds"], v["query_seconds"]) for c, v in result["costs"].items()},
               result["measured"])]
    if "computed" in result:
        computed = result["computed"]
        panels.append(("computed", "FLOPs at LLaVA-1.5-13B size",
                       {c: (v["train_flops"], v["query_flops"]) for c, v in computed["costs"].items()}, computed["break_even"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
    axes = np.atleast_1d(axes)
    for ax, (_, unit, costs, even) in zip(axes, panels):
        top = _queries_axis(list(even.values()))
        q = np.linspace(0, top, 200)
        for column, (train, query) in costs.items():
            ax.plot(q, train + q * query, label=column, linewidth=2.2 if column == result["reference"] else 1.4)
        for column, at in even.items():
            if at:
                ax.axvline(at, color="grey", linestyle=":", linewidth=1)
                ax.annotate(f"= {column} at {at:,.0f}", (at, 0), textcoords="offset points", xytext=(3, 6), fontsize=7, rotation=90)
        ax.set(xlabel="queries", ylabel=f"total cost ({unit})")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def render_tradeoff(result: dict[str, Any]) -> str:
    """The trade-off as a markdown section (appended to the report's table)."""
    lines = ["", "## Cost: training once against reference photos on every query", "",
             "| | training s / concept | s / query | tokens / query | break-even queries (measured) |"
             + (" training FLOPs (13B) | FLOPs / query (13B) | break-even queries (13B) |" if "computed" in result else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if "computed" in result else "")]
    for column, cost in result["costs"].items():
        even = result["measured"].get(column)
        row = (f"| {column} | {cost['train_seconds']:.1f} | {cost['query_seconds']:.4f} | {cost['tokens_per_query']:.0f} | "
               + ("–" if column == result["reference"] else f"{even:,.0f}" if even else "never") + " |")
        if "computed" in result:
            c = result["computed"]["costs"][column]
            even13 = result["computed"]["break_even"].get(column)
            row += (f" {c['train_flops']:.3g} | {c['query_flops']:.3g} | "
                    + ("–" if column == result["reference"] else f"{even13:,.0f}" if even13 else "never") + " |")
        lines.append(row)
    lines += ["", f"Break-even: after that many queries {result['reference']}'s training has paid for itself against that "
              "method (\"never\": the other method is not dearer per query, or the soft prompt trains no longer). "
              "13B figures are computed by the FLOP model (yollava.bench.flops, 576 tokens per image), not measured."]
    return "\n".join(lines) + "\n"
