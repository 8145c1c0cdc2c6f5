"""The yollava command line: each command is a thin call into the library."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from yollava.errors import YollavaError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Personalize a frozen LLaVA-1.5 with a learned soft prompt (Yo'LLaVA).")
concepts_app = typer.Typer(no_args_is_help=True, help="List, show and remove trained concepts.")
app.add_typer(concepts_app, name="concepts")

# soft_wrap: a long message stays one line in a log file (a terminal wraps it itself)
err = Console(stderr=True, soft_wrap=True)
out = Console()

STORE_HELP = "concept store folder"
MODEL_HELP = "base model: hub id, local checkpoint folder, 'toy' (the pretrained toy-world LLaVA) or 'tiny' (random, for tests)"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so redirection and test capture see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging() -> None:
    logger = logging.getLogger("yollava")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for noisy in ("transformers", "datasets", "httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _flush_denormals() -> None:
    """Treat subnormal floats as zero in this process (CPU training, set before any torch work).

    The toy LLaVA's compiled circuit exponentiates large negative logits and its gates send silu far
    negative: their subnormal results are slow on x86 CPUs. Measured on the shipped toy LLaVA: 48.1 ms
    -> 40.6 ms per concept-training step (2 threads). Values below 1.2e-38 become 0; GPUs are unaffected.
    """
    import torch

    torch.set_flush_denormal(True)


def _overrides(model: Optional[str], extra: Optional[List[str]], **mapped: Any) -> list[str]:
    items = [f"model.name={model}"] if model else []
    items += [f"{key}={value}" for key, value in mapped.items() if value is not None]
    return items + list(extra or [])


RECIPE_OPT = typer.Option(None, "--recipe", help="auto | recognition | recognition+conversation | full (data.recipe)")
CATEGORY_OPT = typer.Option(None, "--category", help="auto | person | other: which attribute questions (data.category)")

# Where negatives come from: the options train, build-data and retrieve share (see negative_options).
NEGATIVE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "negatives": (Optional[Path], typer.Option(None, "--negatives", help="folder of negative images (used as they are)")),
    "pool": (Optional[Path], typer.Option(None, "--pool", help="folder of candidate images to mine hard negatives from")),
    "index": (Optional[Path], typer.Option(None, "--index", help="index folder made by `yollava index build`")),
    "service": (Optional[str], typer.Option(None, "--service", help="clip-retrieval back-end URL (laion extra)")),
    "index_name": (Optional[str], typer.Option(None, "--index-name", help="index name on the --service")),
    "per_image": (Optional[int], typer.Option(None, "--per-image", help="hard negatives per positive (default: ~100 in total)")),
    "easy": (int, typer.Option(100, "--easy", help="random (easy) negatives from the pool")),
    "embedder": (Optional[str], typer.Option(None, "--embedder", help="image embedder for retrieval (default: LAION ViT-L/14; 'toy' for the toy world)")),
}


def negative_options(*, folder: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the negative-source options; it receives them as one ``source: NegativeSource``.

    typer reads a command's options from its signature, so the wrapper's signature is the command's
    own (without ``source``) plus these options, and the wrapper turns their values into the source.
    ``folder=False`` leaves out ``--negatives`` (a command that only mines).
    """
    names = [name for name in NEGATIVE_OPTIONS if folder or name != "negatives"]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "source"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=NEGATIVE_OPTIONS[name][1], annotation=NEGATIVE_OPTIONS[name][0])
                 for name in names]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(source=_negative_source(**values), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**command.__annotations__, **{name: NEGATIVE_OPTIONS[name][0] for name in names}}
        wrapper.__annotations__.pop("source", None)
        return wrapper

    return decorate


def _negative_source(negatives=None, pool=None, index=None, service=None, index_name=None, per_image=None, easy=100, embedder=None):
    from yollava.data import NegativeSource

    if sum(x is not None for x in (pool, index, service)) > 1:
        raise YollavaError("pass at most one of --pool DIR, --index IDX or --service URL --index-name NAME")
    if service is not None and not index_name:
        raise YollavaError("--service needs --index-name NAME (the index served there)")
    as_str = lambda value: None if value is None else str(value)  # noqa: E731
    return NegativeSource(folder=as_str(negatives), pool=as_str(pool), index=as_str(index), service=service,
                          index_name=index_name, per_image=per_image, easy=easy, embedder=embedder)


@app.command()
@negative_options()
def train(
    source: Any,
    concept: str = typer.Option(..., "--concept", help="concept name, e.g. bo: 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit"),
    images: Optional[Path] = typer.Option(None, "--images", help="folder of photos of the subject (positives)"),
    recipe: Optional[str] = RECIPE_OPT,
    category: Optional[str] = CATEGORY_OPT,
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML overlay of config keys"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="train.epochs"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing concept of this name"),
    resume: bool = typer.Option(False, "--resume", help="continue the newest unfinished run of this concept"),
    no_negatives: bool = typer.Option(False, "--no-negatives", help="train without negatives (the concept will answer Yes to everything)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE config overrides, e.g. train.lr=5e-4"),
) -> None:
    """Learn a concept's soft prompt from a few photos and save it to the store.

    Builds whatever is missing first: hard negatives (with --pool/--index/--service), the training
    set with conversation data (in <store>/<name>/data), then trains.
    """
    from yollava.config import load_config
    from yollava.train import train_concept

    _flush_denormals()
    cfg = load_config(config, _overrides(model, overrides, **{"train.epochs": epochs, "data.recipe": recipe, "data.category": category}))
    try:
        train_concept(cfg, concept, images, source, store=store, overwrite=overwrite, resume=resume, console=err, no_negatives=no_negatives)
    except KeyboardInterrupt:
        from yollava.train import find_resumable_run

        try:
            run = find_resumable_run(Path(cfg.train.runs_dir), concept)
        except YollavaError:
            err.print("interrupted before the first epoch's checkpoint: the concept store is untouched and there is "
                      "nothing to resume; run the same command again", highlight=False, soft_wrap=True)
        else:
            err.print(f"interrupted: the concept store is untouched; continue {run} with `yollava train --concept {concept} --resume`",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(130)


@app.command("build-data")
@negative_options()
def build_data(
    source: Any,
    concept: str = typer.Option(..., "--concept", help="concept name"),
    images: Path = typer.Option(..., "--images", help="folder of photos of the subject (positives)"),
    recipe: Optional[str] = RECIPE_OPT,
    category: Optional[str] = CATEGORY_OPT,
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML overlay of config keys"),
    overwrite: bool = typer.Option(False, "--overwrite", help="rebuild even if a matching training set is stored"),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE config overrides"),
) -> None:
    """Build a concept's training set (recognition + conversation samples) as an HF dataset."""
    from yollava.concept import validate_name
    from yollava.config import load_config
    from yollava.forward import make_cache
    from yollava.models import load_base
    from yollava.prepare import build_samples, gather_inputs

    cfg = load_config(config, _overrides(model, overrides, **{"data.recipe": recipe, "data.category": category}))
    validate_name(concept)
    inputs = gather_inputs(concept, images, source, store, cfg)  # fails before the (slow) base load
    base = load_base(cfg.model)
    built = build_samples(inputs, base, store, cfg, make_cache(base, cfg.train), err, rebuild=overwrite)
    info = built.info
    err.print(f"training set for '{concept}': recipe {info['recipe']}, category {info['category']}, {len(built.samples)} samples {info['counts']} in {store / concept / 'data'}")


def _load_for_chat(model: Optional[str], concepts: list[str], store: Path):
    """Load the base (the concepts' own base when --model is not given) and attach the concepts."""
    from yollava.concept import load_concept, read_record
    from yollava.config import load_config
    from yollava.models import load_base

    records = [read_record(store, name) for name in concepts]
    name = model or (records[0].base_model.id if records else None)
    cfg = load_config(overrides=[f"model.name={name}"] if name else None)
    base = load_base(cfg.model)
    artifacts = [load_concept(base, store, n) for n in concepts]
    return base, artifacts, cfg


@app.command()
def chat(
    concept: Optional[List[str]] = typer.Option(None, "--concept", help="concept(s) to load; repeat for several"),
    image: Optional[Path] = typer.Option(None, "--image", help="photo to talk about"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="ask once and exit (otherwise an interactive chat)"),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " (default: the concept's own base)"),
    store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="longest answer, in tokens"),
) -> None:
    """Talk about your concepts, with or without a photo (greedy decoding, streamed)."""
    from yollava.chat import ChatSession
    from yollava.images import load_rgb
    from yollava.prompts import ChatFormat

    if image is not None:
        load_rgb(image, option="--image")
    base, artifacts, cfg = _load_for_chat(model, list(concept or []), store)
    session = ChatSession(base, artifacts, ChatFormat.load(cfg.prompt.template), max_new_tokens)
    session.set_image(str(image) if image else None)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if prompt is not None:
        session.ask(prompt, on_text=stream)
        sys.stdout.write("\n")
        return
    names = ", ".join(a.params.tokens.identifier for a in artifacts) or "no concept"
    err.print(f"chatting with {names}; commands: /image PATH, /reset, /quit")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            err.print("conversation cleared")
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                session.set_image(path or None)
                err.print(f"image set to {path}; new conversation" if path else "image cleared; new conversation")
            except YollavaError as exc:
                err.print(f"error: {exc}")
            continue
        sys.stdout.write("assistant> ")
        session.ask(line, on_text=stream)
        sys.stdout.write("\n")


@app.command("eval")
def evaluate(
    concept: List[str] = typer.Option(..., "--concept", help="concept / subject to evaluate (repeat for several); its photos are DIR/{train,test}/NAME"),
    data: Path = typer.Option(..., "--data", help="dataset in the published Yo'LLaVA layout: DIR/{train,test}/<subject>/"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="recognition | visual-qa | text-qa | caption | all (repeat for several; default recognition)"),
    qa: Optional[List[Path]] = typer.Option(None, "--qa", help="a visual or text-only QA file (default: DIR/yollava-visual-qa.json, DIR/yollava-text-only-qa.json)"),
    method: Optional[List[str]] = typer.Option(None, "--method", help="soft-prompt | vanilla | description | auto-long | auto-short | in-context | all (repeat; default soft-prompt)"),
    refs: int = typer.Option(1, "--refs", help="reference photos per query for --method in-context (the first N of DIR/train/NAME)"),
    descriptions: Optional[Path] = typer.Option(None, "--descriptions", help="JSON subject -> description for --method description (default: DIR/descriptions.json)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write one record per (task, method, concept) here, with per-item details"),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " (default: the concepts' own base)"),
    store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP),
    generation: bool = typer.Option(True, "--generation/--no-generation", help="also score whole greedy answers (any answer that is not a coherent yes/no or an option counts wrong)"),
    caption_negatives: int = typer.Option(1, "--caption-negatives", help="test photos per other subject captioned for the caption false-mention rate"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="cap on every generated answer (default: each task's own length)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE config overrides, e.g. train.prefix_cache_gb=100 (how many test photos' prefixes stay on the GPU)"),
) -> None:
    """Score concepts on the Yo'LLaVA benchmark tasks, for every way of giving the model a subject.

    Recognition: the subject's test photos are positives, other subjects' negatives. Visual / text QA:
    multiple choice, every option order. Caption: recall of the identifier and false mentions.
    """
    from yollava.config import load_config
    from yollava.evaluate.harness import plan_evaluation, run_evaluation
    from yollava.forward import make_cache
    from yollava.models import load_base
    from yollava.prompts import ChatFormat
    from yollava.storage import write_json_atomic

    _flush_denormals()
    plan = plan_evaluation(data, list(concept), task, method, list(qa or []), store, refs, descriptions, generation, caption_negatives, max_new_tokens)
    name = model or plan.concept_base
    cfg = load_config(overrides=_overrides(name, overrides))
    base = load_base(cfg.model)
    # one cache for the whole run (train.prefix_cache*: image features and prefix keys/values), so
    # every test photo's prefix is computed once for every task, method and concept
    records = run_evaluation(plan, base, err, ChatFormat.load(cfg.prompt.template), make_cache(base, cfg.train))
    if len(plan.subjects) == 1:
        table = Table(title=f"<{plan.subjects[0]}> on {data} ({base.model_id})")
        for column in ("method", "task", "accuracy", "details", "n", "tokens"):
            table.add_column(column)
        for r in records:
            table.add_row(r["method"], r["task"], f"{r['accuracy']:.3f}", _details(r), str(r["n_questions"]), str(r["tokens_per_query"]))
    else:
        table = Table(title=f"{len(plan.subjects)} concepts on {data} ({base.model_id}): means over concepts (every record in --json)")
        for column in ("method", "task", "accuracy", "min", "max", "tokens"):
            table.add_column(column)
        for name in plan.methods:
            for task_name in plan.tasks:
                rows = [r for r in records if r["method"] == name and r["task"] == task_name]
                values = [r["accuracy"] for r in rows]
                table.add_row(name, task_name, f"{sum(values) / len(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}",
                              f"{sum(r['tokens_per_query'] for r in rows) / len(rows):.0f}")
    out.print(table)
    if json_path is not None:
        write_json_atomic(json_path, records)
        err.print(f"wrote {len(records)} results to {json_path}")


def _details(record: dict) -> str:
    """The secondary numbers of a result, for the eval command's table."""
    m = record["metrics"]
    if record["task"] == "recognition":
        text = f"pos {m['positive']:.3f} neg {m['negative']:.3f}"
        if m.get("generation"):
            text += f"; generated {m['generation']['weighted']:.3f} (coherent {m['generation']['coherent']:.2f})"
        return text
    if record["task"] == "caption":
        fm = m.get("false_mention")
        return "false mentions " + ("-" if fm is None else f"{fm:.3f} of {m['n_negative']}")
    text = f"likelihood {m['likelihood']:.3f}; 'A' rate {m['first_letter_rate']:.2f}"
    if m.get("generation") is not None:
        text += f"; generated {m['generation']:.3f}"
    return text


@app.command()
def report(
    results: List[Path] = typer.Argument(..., help="results files written by `yollava eval --json`"),
    out_dir: Path = typer.Option(..., "--out", help="folder for table.md, table.json, records.json and recognition_vs_tokens.png"),
    title: str = typer.Option("", "--title", help="heading of the markdown table"),
) -> None:
    """The paper's Table 5 from evaluation results: methods as columns, means over concepts, and a recognition-vs-tokens plot."""
    from yollava.evaluate.report import load_records, write_report

    paths = write_report(load_records(results), out_dir, title)
    out.print(paths["markdown"].read_text(encoding="utf-8"), markup=False, highlight=False)
    err.print("wrote " + ", ".join(str(p) for p in paths.values()))


toy_app = typer.Typer(no_args_is_help=True, help="The toy world: a procedural personalization benchmark that runs on a CPU.")
app.add_typer(toy_app, name="toy")


@toy_app.command("generate")
def toy_generate(
    out: Path = typer.Option(..., "--out", help="benchmark folder to create (Yo'LLaVA layout)"),
    concepts: int = typer.Option(20, "--concepts", help="number of personal concepts"),
    seed: int = typer.Option(0, "--seed", help="world seed (same seed, same bytes)"),
    pool: int = typer.Option(20000, "--pool", help="images in the negative pool"),
    image_size: int = typer.Option(64, "--image-size", help="image side in pixels"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing benchmark folder"),
) -> None:
    """Write the toy benchmark: concepts with train/test photos, lookalikes, a negative pool, QA files."""
    from yollava.toyworld.benchmark import generate_benchmark

    folder = generate_benchmark(out, n_concepts=concepts, seed=seed, pool_size=pool, image_size=image_size, overwrite=overwrite)
    err.print(f"wrote the toy benchmark to {folder}")


index_app = typer.Typer(no_args_is_help=True, help="Build and extend on-disk image indexes for hard-negative retrieval.")
app.add_typer(index_app, name="index")


@app.command()
@negative_options(folder=False)
def retrieve(
    source: Any,
    concept: str = typer.Option(..., "--concept", help="concept name"),
    images: Path = typer.Option(..., "--images", help="folder of photos of the subject (the queries)"),
    store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP),
    near_duplicate: float = typer.Option(0.95, "--near-duplicate", help="cosine at or above which a candidate counts as the subject itself"),
    seed: int = typer.Option(0, "--seed", help="seed of the easy-negative sample"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace negatives stored from another request"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="embedding/download cache (default $YOLLAVA_CACHE_DIR or ~/.cache/yollava)"),
) -> None:
    """Mine hard negatives (CLIP kNN around each photo) and easy ones into <store>/<name>/negatives/."""
    from yollava.retrieval.mine import retrieve_negatives

    negatives = retrieve_negatives(
        concept, images, pool=source.pool, index=source.index, service=source.service, index_name=source.index_name,
        per_image=source.per_image, n_easy=source.easy, embedder=source.embedder, store=store, near_duplicate=near_duplicate,
        seed=seed, overwrite=overwrite, cache_dir=cache_dir,
    )
    err.print(f"{len(negatives.hard)} hard and {len(negatives.easy)} easy negatives in {negatives.directory}" + (" (reused)" if negatives.reused else ""))


@index_app.command("build")
def index_build(
    out: Path = typer.Option(..., "--out", help="index folder to create"),
    images: Optional[Path] = typer.Option(None, "--images", help="folder of images (searched recursively)"),
    list_file: Optional[Path] = typer.Option(None, "--list", help="text file with one image path per line"),
    embedder: Optional[str] = NEGATIVE_OPTIONS["embedder"][1],
    kind: str = typer.Option("flat", "--kind", help="flat (exact) | ivf | ivf-pq (millions of images)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing index"),
) -> None:
    """Embed images and write a faiss index with a metadata table of paths."""
    from yollava.retrieval.index import build_index

    report = build_index(out, embedder, images=images, list_file=list_file, kind=kind, overwrite=overwrite)
    err.print(f"index {report.path}: {report.header.count} images ({report.header.kind}, {report.header.embedder}); "
              f"{report.duplicates} duplicates and {len(report.skipped)} unreadable files skipped")


@index_app.command("add")
def index_add(
    path: Path = typer.Option(..., "--index", help="index folder made by `yollava index build`"),
    images: Optional[Path] = typer.Option(None, "--images", help="folder of images to add"),
    list_file: Optional[Path] = typer.Option(None, "--list", help="text file with one image path per line"),
) -> None:
    """Add images to an index (same embedder; images already in it are skipped)."""
    from yollava.retrieval.index import add_to_index

    report = add_to_index(path, images=images, list_file=list_file)
    err.print(f"index {report.path}: added {report.added}, {report.already_indexed} already indexed, now {report.header.count} images")


@concepts_app.command("list")
def concepts_list(store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP)) -> None:
    """Every concept in the store with its status (ok, or damaged and why), base model and best recognition score."""
    from yollava.concept import list_concepts

    entries = list_concepts(store)
    if not entries:
        err.print(f"no concepts in {store}")
        return
    table = Table()
    for column in ("name", "status", "k", "base model", "best epoch", "weighted (train)"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        record = entry.record
        if record is None:
            table.add_row(entry.name, Text(entry.status, style="red"), "-", "-", "-", "-")
            continue
        training = record.training
        weighted = training.metrics.weighted if training else None
        table.add_row(entry.name, entry.status, str(record.k), record.base_model.id,
                      str(training.best_epoch) if training and training.best_epoch else "-",
                      f"{weighted:.3f}" if weighted is not None else "-")
    out.print(table)
    damaged = [e for e in entries if not e.ok]
    if damaged:
        err.print(f"{len(damaged)} of {len(entries)} concept(s) damaged; retrain each with --overwrite or remove it", highlight=False)


@concepts_app.command("show")
def concepts_show(name: str, store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP)) -> None:
    """Print a concept's record (concept.json, validated)."""
    from yollava.concept import read_record

    out.print_json(json.dumps(read_record(store, name).to_json_dict()))


@concepts_app.command("remove")
def concepts_remove(name: str, store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP)) -> None:
    """Delete a concept and everything stored with it."""
    from yollava.concept import remove_concept

    folder = remove_concept(store, name)
    err.print(f"removed {folder}")


@app.command()
def ablate(
    suite: str = typer.Option(..., "--suite", help="a shipped suite (paper-table5, tokens-k, images-n, dataset-recipe, method-choices, compose) or a suite YAML file"),
    data: Path = typer.Option(..., "--data", help="benchmark folder (e.g. from `yollava toy generate`)"),
    out: Path = typer.Option(..., "--out", help="the suite's output folder (cells, logs, results.jsonl, reports)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="trained concepts and mined negatives shared by suites (default: OUT/../cache)"),
    concepts: Optional[str] = typer.Option(None, "--concepts", help="comma-separated concepts (default: the suite's, or all)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="seeds 0..N-1 (default: the suite's)"),
    workers: int = typer.Option(1, "--workers", help="processes on this machine (each takes its share of the cells)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per process (default: cores / workers)"),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="retrieval embedder of mined negatives (default: toy on a toy benchmark)"),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " (model.name of every cell)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and which are finished; run nothing"),
    reuse: Optional[List[Path]] = typer.Option(None, "--reuse", help="an earlier run's results.jsonl: its cells whose keys match are taken instead of run (repeatable)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE config overrides for every cell, e.g. model.name=tiny train.epochs=1"),
) -> None:
    """Run a suite of variants x concepts x seeds: resumable, parallel (--workers, accelerate launch), with tables and plots.

    Every finished cell is kept: run the same command again after a crash or Ctrl-C to continue.
    Under `accelerate launch -m yollava ablate ...` each rank takes its share of the cells.
    """
    from yollava.ablate import Request, run_suite

    names = tuple(c.strip() for c in concepts.split(",") if c.strip()) if concepts else None
    command = "yollava " + " ".join(sys.argv[1:]) if sys.argv and Path(sys.argv[0]).name in ("yollava", "__main__.py") else None
    request = Request(suite=suite, data=str(data), out=str(out), cache=str(cache) if cache else None, concepts=names, seeds=seeds,
                      overrides=tuple(_overrides(model, overrides)), embedder=embedder, threads=threads, command=command,
                      reuse=tuple(str(p) for p in reuse or ()))
    if dry_run:
        plan = request.plan()
        finished = plan.done()
        table = Table(title=f"suite {plan.suite.name}: {len(plan.cells)} cells, {len(finished)} finished")
        for column in ("variant", "concept", "seed", "method", "trains", "key", "done"):
            table.add_column(column)
        for cell in plan.cells:
            table.add_row(cell.variant, cell.concept, str(cell.seed), cell.method, str(len(cell.trainings)), cell.key, "yes" if cell.key in finished else "")
        out_console = Console(width=160)
        out_console.print(table)
        return
    _flush_denormals()
    try:
        run_suite(request, workers=workers, console=err)
    except KeyboardInterrupt:
        err.print("interrupted: finished cells are kept; run the same command again to continue", highlight=False)
        raise typer.Exit(130)


@app.command("config")
def show_config(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML overlay"),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides"),
) -> None:
    """Print the fully resolved configuration (every valid key with its value)."""
    from yollava.config import config_to_yaml, load_config

    out.print(config_to_yaml(load_config(config, list(overrides or []))), highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="folder for the toy world, runs and concept store"),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " (default: toy when its weights are installed, else tiny)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs (default: train.epochs)"),
) -> None:
    """Offline quickstart: generate a small toy world, train <ozzy> on the toy LLaVA, chat about it, score recognition."""
    from yollava.demo import run_demo

    _flush_denormals()
    run_demo(out, model=model, epochs=epochs, console=err)


def _demo_world(folder: Path, source: Any, model: Optional[str], overrides: Optional[List[str]]):
    """``serve --demo``: the toy world photos to teach from (generated once) and its pool as the negatives."""
    from dataclasses import replace

    from yollava.demo import DEMO_EPOCHS
    from yollava.toyworld.benchmark import BENCHMARK_FILE, generate_benchmark

    world = folder / "toyworld"
    if not (world / BENCHMARK_FILE).is_file():
        err.print(f"generating the demo's toy world in {world} (once) ...", highlight=False)
        generate_benchmark(world, n_concepts=3, pool_size=1000, n_train=5, overwrite=world.exists(), progress=err.is_terminal)
    err.print(f"teach from the photos in {world / 'train'}; negatives come from {world / 'pool'}", highlight=False)
    source = replace(source, pool=str(world / "pool"), embedder="toy")
    extra = [f"train.epochs={DEMO_EPOCHS}", f"train.runs_dir={folder / 'runs'}", *(overrides or [])]
    return source, model or "toy", folder / "concepts", extra


@app.command()
@negative_options()
def serve(
    source: Any,
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    store: Path = typer.Option(Path("concepts"), "--store", help=STORE_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but 127.0.0.1/localhost needs --auth or --insecure-no-auth"),
    port: int = typer.Option(7860, "--port", help="port to listen on"),
    auth: Optional[str] = typer.Option(None, "--auth", help="USER:PASS: the page asks for this login"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="serve a network --host without a login (anyone who reaches it can teach, chat and remove)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML overlay of config keys (training settings of the page)"),
    demo: Optional[Path] = typer.Option(None, "--demo", help="offline, in one command: the toy model, a 3-concept toy world in DIR/toyworld (generated if missing; its pool gives the negatives), concepts in DIR/concepts, 4 epochs"),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE config overrides, e.g. train.epochs=4"),
) -> None:
    """Open the web page: teach a concept from photos, watch it train, chat with it, compare soft prompt and in-context.

    The page offers the negatives given here (one of --pool, --index or --service, and/or
    --negatives); the browser picks one of them and never names a path.
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise YollavaError("yollava serve needs the web extra (gradio): pip install -e '.[web]'") from None
    from yollava.config import load_config
    from yollava.models import load_base
    from yollava.web.server import WebServer, exposure, negative_choices, parse_auth

    login = parse_auth(auth)
    reach = exposure(host, login, insecure_no_auth)  # refuses an open network address before anything loads
    if demo is not None:
        source, model, store, overrides = _demo_world(demo, source, model, overrides)
    cfg = load_config(config, _overrides(model, overrides))
    choices = negative_choices(source)
    _flush_denormals()
    err.print(f"loading base model {cfg.model.name} ...", highlight=False)
    server = WebServer(cfg, store, load_base(cfg.model), choices, console=err)
    from yollava.web.app import build_app, launch

    try:
        try:
            launch(build_app(server), host, port, login, block=False, quiet=True)
        except OSError as exc:
            raise YollavaError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port") from None
        shown = f"[{host}]" if ":" in host else host
        err.print(f"yollava serve: open http://{shown}:{port} — {reach}; Ctrl-C stops it", highlight=False, soft_wrap=True)
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        err.print("stopping: a training still running is cancelled and the concept store is left as it was", highlight=False)
    finally:
        server.close()


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    from yollava.progress import quiet_third_party_bars

    quiet_third_party_bars()
    _setup_logging()
    try:
        app()
    except YollavaError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
