"""Personalization benchmark on the toy world: train + eval every concept, vanilla baseline, JSON + table + plot.

For each concept of a benchmark written by `yollava toy generate`, this trains a concept with yollava's
defaults (first 5 train photos, k=16; negatives: a seeded random sample of the pool, or hard
negatives mined from it with --retrieval) and scores recognition on the test split (the concept's test
photos are positives, every other concept's are negatives). It also scores the vanilla base asked
about the concept with no soft prompt. Lookalike concepts are reported separately. CPU and wall time
per concept are measured in the same run.

    python scripts/bench_toyworld.py --data toyworld --model toy --out bench/toy
    python scripts/bench_toyworld.py --data toyworld --model tiny --concepts 2 --epochs 1   # mechanics only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from yollava.base import Base  # noqa: E402
from yollava.concept import detach, load_concept  # noqa: E402
from yollava.config import load_config  # noqa: E402
from yollava.data import NegativeSource  # noqa: E402
from yollava.evaluate.layout import TRAIN, open_benchmark  # noqa: E402
from yollava.evaluate.recognition import evaluate_concept  # noqa: E402
from yollava.forward import PrefixCache  # noqa: E402
from yollava.methods.personalization import Personalization, description_prefix, plain_name  # noqa: E402
from yollava.methods.soft_prompt import concept_personalization  # noqa: E402
from yollava.models import load_base  # noqa: E402
from yollava.storage import write_json_atomic, write_text_atomic  # noqa: E402
from yollava.toyworld.benchmark import read_benchmark  # noqa: E402
from yollava.train import train_concept  # noqa: E402


def link_folder(folder: Path, files: list[Path]) -> Path:
    """A folder of symlinks (yollava trains on folders; the benchmark keeps its files where they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = folder / path.name
        if not target.exists():
            target.symlink_to(path.resolve())
    return folder


def concept_config(name: str, work: Path, args: argparse.Namespace):
    overrides = [f"model.name={args.model}", f"train.runs_dir={work / 'runs'}", f"data.seed={args.seed}", f"train.seed={args.seed}"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    overrides.append(f"data.recipe={args.recipe}")
    overrides.extend(args.set)
    return load_config(overrides=overrides)


def run_concept(name: str, data: Path, work: Path, args: argparse.Namespace, base: Base, features: PrefixCache, console: Console) -> dict:
    """Train one concept on the shared base, score it on the test split, then detach it."""
    subject = json.loads((data / "subjects" / name / "subject.json").read_text())
    positives = sorted((data / TRAIN / name).glob("*.png"))[: args.positives]
    pos_dir = link_folder(work / "positives" / name, positives)
    config = concept_config(name, work, args)
    if args.retrieval:
        source = NegativeSource(pool=str(data / "pool"), embedder="toy")
    else:
        pool = sorted((data / "pool").glob("*.png"))
        sample = random.Random(f"{args.seed}-{name}").sample(pool, args.negatives)
        source = NegativeSource(folder=str(link_folder(work / "negatives" / name, sample)))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train_concept(config, name, pos_dir, source, store=work / "concepts", overwrite=True, base=base, console=console)
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    artifact = load_concept(base, work / "concepts", name)
    test_pos, test_neg = open_benchmark(data).test_split(name)
    try:
        trained = evaluate_concept(base, concept_personalization(artifact.params.tokens), test_pos, test_neg, features)
    finally:
        detach(base, name)
    # vanilla: the same question about the concept by a plain name, no soft prompt; the toy tokenizer
    # cannot spell <name>, so the toy model gets one of its free name tokens (plain_name)
    plain = base.plain()  # its tokenizer predates the concept, so <name> is plain text again
    called = plain_name(plain, name)
    vanilla = evaluate_concept(plain, Personalization("vanilla", name, called), test_pos, test_neg, features)
    # prompting baseline: the subject's true description in the prompt under that name
    prefix = description_prefix(subject["description"], called)
    described = evaluate_concept(plain, Personalization("description", name, called, prefix=prefix), test_pos, test_neg, features)
    return {
        "concept": name, "lookalike_of": subject.get("lookalike_of"), "differs_in": subject.get("differs_in"),
        "description": subject.get("description"),
        "trained": trained.summary(), "vanilla": vanilla.summary(), "described": described.summary(),
        "train_cpu_s": train_cpu, "train_wall_s": train_wall, "epochs_run": len(result.history), "best_epoch": result.best_epoch,
    }


def summarize(results: list[dict]) -> dict:
    def mean(rows: list[dict], key: str, which: str = "trained") -> float | None:
        values = [r[which][key] for r in rows]
        return statistics.fmean(values) if values else None

    look = [r for r in results if r["lookalike_of"]]
    plain = [r for r in results if not r["lookalike_of"]]
    weighted = [r["trained"]["weighted"] for r in results]
    return {
        "concepts": len(results),
        "trained_weighted_mean": mean(results, "weighted"),
        "trained_weighted_min": min(weighted), "trained_weighted_max": max(weighted),
        "trained_weighted_stdev": statistics.pstdev(weighted),
        "trained_positive_mean": mean(results, "positive"), "trained_negative_mean": mean(results, "negative"),
        "vanilla_weighted_mean": mean(results, "weighted", "vanilla"),
        "described_weighted_mean": mean(results, "weighted", "described"),
        "lookalikes_weighted_mean": mean(look, "weighted"), "others_weighted_mean": mean(plain, "weighted"),
        "train_cpu_s_mean": statistics.fmean(r["train_cpu_s"] for r in results),
        "train_wall_s_mean": statistics.fmean(r["train_wall_s"] for r in results),
        "epochs_run_mean": statistics.fmean(r["epochs_run"] for r in results) if all("epochs_run" in r for r in results) else None,
    }


def markdown(results: list[dict], summary: dict, args: argparse.Namespace) -> str:
    lines = [
        f"# Toy-world personalization benchmark (model `{args.model}`, {args.positives} positives, "
        f"{'retrieved' if args.retrieval else f'{args.negatives} random'} negatives, recipe `{args.recipe}`"
        f"{', overrides `' + ' '.join(args.set) + '`' if args.set else ''})",
        "",
        "| concept | lookalike of | vanilla weighted | described weighted | trained positive | trained negative | trained weighted | train CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, v = r["trained"], r["vanilla"]
        lines.append(f"| {r['concept']} | {r['lookalike_of'] or ''} | {v['weighted']:.3f} | {r['described']['weighted']:.3f} | {t['positive']:.3f} | {t['negative']:.3f} | {t['weighted']:.3f} | {r['train_cpu_s']:.0f} |")
    s = summary
    lines += [
        "",
        f"- trained weighted recognition: mean {s['trained_weighted_mean']:.3f} (min {s['trained_weighted_min']:.3f}, max {s['trained_weighted_max']:.3f}, sd {s['trained_weighted_stdev']:.3f})",
        f"- vanilla weighted recognition: mean {s['vanilla_weighted_mean']:.3f}; with the true description in the prompt: {s['described_weighted_mean']:.3f}",
        f"- lookalike concepts: {s['lookalikes_weighted_mean'] if s['lookalikes_weighted_mean'] is None else round(s['lookalikes_weighted_mean'], 3)}; others: {s['others_weighted_mean'] if s['others_weighted_mean'] is None else round(s['others_weighted_mean'], 3)}",
        f"- training time per concept: {s['train_cpu_s_mean']:.0f} s CPU, {s['train_wall_s_mean']:.0f} s wall",
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["concept"] for r in results]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 3.6))
    ax.bar([i - 0.27 for i in x], [r["vanilla"]["weighted"] for r in results], width=0.27, label="vanilla", color="#bbbbbb")
    ax.bar(list(x), [r["described"]["weighted"] for r in results], width=0.27, label="description in prompt", color="#7570b3")
    colours = ["#d95f02" if r["lookalike_of"] else "#1b9e77" for r in results]
    ax.bar([i + 0.27 for i in x], [r["trained"]["weighted"] for r in results], width=0.27, label="trained (orange: lookalike)", color=colours)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(list(x), names, rotation=60, fontsize=8)
    ax.set(ylabel="weighted recognition (test)", ylim=(0, 1.02))
    # above the axes: inside, it hides the bars of the last concepts
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="benchmark folder from `yollava toy generate`")
    parser.add_argument("--model", default="toy")
    parser.add_argument("--out", type=Path, default=Path("bench/toy"))
    parser.add_argument("--concepts", type=int, default=0, help="only the first N concepts (0 = all)")
    parser.add_argument("--positives", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=200, help="random pool negatives (without --retrieval)")
    parser.add_argument("--retrieval", action="store_true", help="mine hard + easy negatives from the pool with the toy CLIP")
    parser.add_argument("--recipe", default="recognition", help="data.recipe")
    parser.add_argument("--epochs", type=int, default=0, help="override train.epochs (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for every concept, e.g. train.lr=3e-4")
    parser.add_argument("--shard", default="", help="K/N: only every N-th concept from the K-th (run N processes, then --merge)")
    parser.add_argument("--resume", action="store_true", help="keep the concepts already in --out's results.partial.json (same settings assumed)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="combine these shards' --out folders into --out")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as `yollava train` does (see yollava.cli._flush_denormals)
    console = Console(stderr=True)
    names = read_benchmark(args.data)["concepts"]
    if args.concepts:
        names = names[: args.concepts]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        done = {r["concept"]: r for folder in args.merge for r in json.loads((folder / "results.partial.json").read_text())}
        results = [done[n] for n in names if n in done]
    else:
        if args.shard:
            k, n = (int(x) for x in args.shard.split("/"))
            names = names[k::n]
        partial = args.out / "results.partial.json"
        # one base trains and scores every concept in turn (each is detached after it is scored);
        # the test photos' features are computed once for all of them
        base = load_base(concept_config(names[0], args.out / "work", args).model) if names else None
        features = PrefixCache(base) if base is not None else None
        done = {r["concept"]: r for r in json.loads(partial.read_text())} if args.resume and partial.is_file() else {}
        results = []
        for index, name in enumerate(names, 1):
            if name in done:
                console.print(f"[{index}/{len(names)}] {name}: kept from {partial}")
                results.append(done[name])
                continue
            console.rule(f"[{index}/{len(names)}] {name}")
            results.append(run_concept(name, args.data, args.out / "work", args, base, features, console))
            write_json_atomic(partial, results)
    summary = summarize(results)
    write_json_atomic(args.out / "results.json", {"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "concepts": results})
    write_text_atomic(args.out / "results.md", markdown(results, summary, args))
    plot(results, args.out / "results.png")
    console.print(markdown(results, summary, args))


if __name__ == "__main__":
    main()
