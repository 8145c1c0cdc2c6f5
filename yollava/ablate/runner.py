"""Running a suite's cells: resumable (finished cells are skipped), shared work cached, parallel over processes and ranks.

Every cell goes through the same code as the commands: :func:`yollava.train.train_concept` (what
``yollava train`` runs) for the concepts it needs, then :func:`yollava.evaluate.harness.plan_evaluation`
and :func:`~yollava.evaluate.harness.run_evaluation` (what ``yollava eval`` runs) for its method and tasks.

The output folder holds one file per finished cell (``cells/<key>.json``, written atomically when
the cell ends), so a crash, Ctrl-C or ``kill -9`` loses at most the cells in flight; their trainings
resume from their last epoch checkpoint on the next run. Each process takes its share of the cells
(``rank``-th of every ``world``), then any cell no one has claimed (a claim is a ``flock`` on the
cell's lock file, dropped by the kernel when a process dies); whichever process finds every cell
finished writes ``results.jsonl`` and the reports from the cell files, so no cell is lost or doubled.

The cache folder is shared by suites: mined negatives under ``negatives/<negatives key>/``, trained
concepts under ``concepts/<training key>/`` (each with ``train.json``: what it cost), training runs
and checkpoints under ``runs/<training key>/``, image embeddings under ``embeddings/``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.console import Console

import yollava
from yollava.ablate.cells import AblationData, Cell, Training, digest, expand_cells
from yollava.ablate.suite import NegativesKind, ReportKind, Suite, load_suite
from yollava.config import Config, config_to_dict
from yollava.errors import YollavaError
from yollava.storage import (
    CONCEPT_JSON,
    NEGATIVES_DIR,
    LockedError,
    artifact_lock,
    link_or_copy_tree,
    staged_folder,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CELLS_DIR = "cells"
LOGS_DIR = "logs"
RESULTS_FILE = "results.jsonl"
TRAIN_RECORD = "train.json"
RESULT_FORMAT = "yollava-ablate-cell"
UNTRAINED_STORE = "untrained"  # store of methods that train nothing (their cached auto descriptions)
# How long a process waits for another one that trains (or mines for) the same concept.
SHARED_WAIT_S = 7 * 24 * 3600.0
POLL_S = 2.0


@dataclass
class Plan:
    """A suite expanded on a benchmark, with where its outputs and shared work go."""

    suite: Suite
    data: AblationData
    cells: list[Cell]
    out: Path
    cache: Path
    embedder: str
    overrides: tuple[str, ...] = ()
    command: str | None = None

    def cell_file(self, cell: Cell) -> Path:
        return self.out / CELLS_DIR / f"{cell.key}.json"

    def log_file(self, cell: Cell) -> Path:
        return self.out / LOGS_DIR / _slug(cell.variant) / f"{cell.concept}-seed{cell.seed}.log"

    def done(self) -> set[str]:
        """Keys of the finished cells (a cell file exists only once the cell is complete)."""
        folder = self.out / CELLS_DIR
        present = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
        return {c.key for c in self.cells} & present


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_.=" else "-" for ch in text.strip())
    return "-".join(part for part in keep.split("-") if part) or "variant"


def make_plan(suite: str | Path, data: str | Path, out: str | Path, cache: str | Path | None = None,
              concepts: Sequence[str] | None = None, seeds: int | None = None, overrides: Sequence[str] = (),
              embedder: str | None = None) -> Plan:
    """Load and validate a suite and expand its cells (no model is loaded).

    Args:
        suite: a shipped suite's name or a suite YAML file.
        data: the benchmark folder (published layout ``DIR/{train,test}/<subject>/``, optional ``DIR/pool/``).
        out: the suite's output folder.
        cache: the shared cache (default ``<out>/../cache``, shared by sibling suite folders).
        concepts: only these concepts.
        seeds: ``--seeds N``: seeds 0..N-1 instead of the suite's.
        overrides: ``key=value`` config overrides for every cell.
        embedder: retrieval embedder of mined negatives (default ``toy`` on a toy benchmark, else the
            LAION ViT-L/14).

    Raises:
        YollavaError: a bad suite, data, concept or override (one line).
    """
    spec = load_suite(suite, seeds)
    dataset = AblationData.open(data)
    if embedder is None:
        from yollava.retrieval.embed import DEFAULT_EMBEDDER

        embedder = "toy" if dataset.is_toy() else DEFAULT_EMBEDDER.value
    cells = expand_cells(spec, dataset, concepts, overrides, embedder)
    out = Path(out)
    plan = Plan(spec, dataset, cells, out, Path(cache) if cache else out.parent / "cache", embedder, tuple(overrides))
    check_evaluation(plan)
    return plan


def check_evaluation(plan: Plan) -> None:
    """Every (method, concept) the suite scores checked by the harness before anything runs (QA files, descriptions, refs).

    Raises:
        YollavaError: what ``yollava eval`` would refuse, naming the variant.
    """
    from yollava.evaluate.harness import plan_evaluation
    from yollava.methods import METHODS

    concepts = sorted({c.concept for c in plan.cells})
    seen: set[tuple[str, int]] = set()
    for cell in plan.cells:
        if (cell.method, cell.refs) in seen:
            continue
        seen.add((cell.method, cell.refs))
        try:
            if METHODS[cell.method].trains:  # the concepts are not trained yet: check the tasks' files only
                plan_evaluation(plan.data.root, concepts, list(cell.tasks), ["vanilla"], store=plan.cache / UNTRAINED_STORE,
                                caption_negatives=plan.suite.caption_negatives)
            else:
                plan_evaluation(plan.data.root, concepts, list(cell.tasks), [cell.method], store=plan.cache / UNTRAINED_STORE,
                                refs=cell.refs, caption_negatives=plan.suite.caption_negatives)
        except YollavaError as exc:
            raise YollavaError(f"variant '{cell.variant}' ({cell.method}): {exc}") from None


# ----------------------------------------------------------------------------- shared work


@dataclass
class Worker:
    """What one process keeps between cells: loaded bases and their caches (image features, prefix keys/values)."""

    plan: Plan
    rank: int = 0
    world: int = 1
    bases: dict[str, Any] = field(default_factory=dict)
    caches: dict[str, Any] = field(default_factory=dict)

    def base(self, config: Config):
        from yollava.forward import make_cache
        from yollava.models import load_base

        key = digest(config_to_dict(Config(model=config.model))["model"])
        if key not in self.bases:
            self.bases[key] = load_base(config.model)
            # one cache for every cell this process scores: a test photo's prefix is the same for every
            # concept, method and task (the harness's own sharing, across cells)
            self.caches[key] = make_cache(self.bases[key], config.train)
        return self.bases[key], self.caches[key]


def _linked_folder(folder: Path, files: Sequence[str]) -> Path:
    """A folder of hard links (or copies) of ``files``, made once and swapped in whole (yollava trains on folders)."""
    with artifact_lock(folder, wait=SHARED_WAIT_S):
        if folder.is_dir() and sorted(p.name for p in folder.iterdir()) == sorted(Path(f).name for f in files):
            return folder
        with staged_folder(folder) as staged:
            for path in files:
                try:
                    os.link(path, staged / Path(path).name)
                except OSError:
                    import shutil

                    shutil.copyfile(path, staged / Path(path).name)
    return folder


def positives_folder(plan: Plan, training: Training) -> Path:
    """The first n training photos of the concept as a folder (one per set of photos)."""
    return _linked_folder(plan.cache / "positives" / f"{training.concept}-{len(training.positives)}-{digest(list(training.positives), 8)}",
                          training.positives)


def prepare_negatives(plan: Plan, training: Training, positives: Path, console: Console) -> Path | None:
    """The training's negatives, mined (or sampled) once per negatives key with :func:`yollava.retrieval.mine.retrieve_negatives`.

    ``mined``: ``hard`` CLIP-kNN neighbours in ``DIR/pool`` (per photo: ``ceil(hard / n)``) plus ``easy``
    random pool images; ``random``: ``count`` random pool images and no hard ones.

    Returns:
        The stored negatives folder (``<cache>/negatives/<key>/<concept>/negatives``), or None for ``none``.
    """
    from yollava.retrieval.mine import default_per_image, negatives_dir, retrieve_negatives

    spec = training.negatives
    if spec.source == NegativesKind.none:
        return None
    root = plan.cache / "negatives" / training.negatives_key
    if spec.source == NegativesKind.random:
        per_image, easy = 0, spec.count
    else:
        per_image, easy = (default_per_image(len(training.positives), spec.hard) if spec.hard else 0), spec.easy
    with artifact_lock(root, wait=SHARED_WAIT_S):
        console.print(f"negatives for {training.concept}: {per_image} hard per photo + {easy} easy from {plan.data.pool} ({plan.embedder})",
                      highlight=False)
        retrieve_negatives(training.concept, positives, pool=plan.data.pool, per_image=per_image, n_easy=easy, embedder=plan.embedder,
                           store=root, seed=training.config.data.seed, cache_dir=plan.cache / "embeddings", progress=False)
    return negatives_dir(root, training.concept)


def ensure_trained(plan: Plan, worker: Worker, training: Training, console: Console) -> dict[str, Any]:
    """Train the concept of ``training`` as ``yollava train`` does, unless its store already holds it; resume a run a crash left behind.

    Returns:
        The training record (``train.json``): key, reused, CPU and wall seconds of the training, best epoch.
    """
    from yollava.data import NegativeSource
    from yollava.train import find_resumable_run, train_concept

    store = plan.cache / "concepts" / training.key
    record_file = store / TRAIN_RECORD
    with artifact_lock(store, wait=SHARED_WAIT_S, what=f"trained concept {training.concept} ({training.key})"):
        if record_file.is_file() and (store / training.concept / CONCEPT_JSON).is_file():
            return {**json.loads(record_file.read_text(encoding="utf-8")), "reused": True}
        runs = plan.cache / "runs" / training.key
        config = replace(training.config, train=replace(training.config.train, runs_dir=str(runs)))
        positives = positives_folder(plan, training)
        stored = prepare_negatives(plan, training, positives, console)
        if stored is not None:
            # the concept's own stored negatives, as `yollava retrieve` leaves them: train reads them from the store
            target = store / training.concept / NEGATIVES_DIR
            if not target.is_dir():
                with staged_folder(target, lock_target=store / training.concept) as staged:
                    link_or_copy_tree(stored, staged)
        try:
            find_resumable_run(runs, training.concept)
            resume = True
        except YollavaError:
            resume = False
        base, _ = worker.base(config)
        cpu, wall = time.process_time(), time.perf_counter()
        result = train_concept(config, training.concept, positives, NegativeSource(), store=store, resume=resume, base=base,
                               console=console, no_negatives=stored is None, overwrite=True)
        record = {
            "key": training.key, "concept": training.concept, "negatives_key": training.negatives_key,
            "cpu_s": round(time.process_time() - cpu, 2), "wall_s": round(time.perf_counter() - wall, 2), "resumed": resume,
            "best_epoch": result.best_epoch, "epochs_run": len(result.history), "best": result.best,
            "positives": len(training.positives), "negatives": training.negatives.key(), "threads": _threads(),
        }
        write_json_atomic(record_file, record)
    return {**record, "reused": False}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def cell_store(plan: Plan, cell: Cell) -> Path:
    """The concept store the cell is scored from: its own training's, or (``compose``) one holding every concept loaded together."""
    if not cell.trainings:
        return plan.cache / UNTRAINED_STORE
    if len(cell.trainings) == 1:
        return plan.cache / "concepts" / cell.trainings[0].key
    folder = plan.cache / "compose" / digest([t.key for t in cell.trainings])
    for training in cell.trainings:
        target = folder / training.concept
        if not (target / CONCEPT_JSON).is_file():
            with staged_folder(target, wait=SHARED_WAIT_S) as staged:
                link_or_copy_tree(plan.cache / "concepts" / training.key / training.concept, staged)
    return folder


# ----------------------------------------------------------------------------- one cell


@contextmanager
def _cell_log(path: Path) -> Iterator[Console]:
    """A console writing the cell's log file, and the yollava logger copied into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        console = Console(file=handle, width=120, soft_wrap=True, force_terminal=False)
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger = logging.getLogger("yollava")
        logger.addHandler(handler)
        try:
            yield console
        finally:
            logger.removeHandler(handler)


def run_cell(plan: Plan, worker: Worker, cell: Cell) -> dict[str, Any]:
    """Train what the cell needs (or reuse it), score it through the evaluation harness, write ``cells/<key>.json``; returns that record."""
    from yollava.evaluate.harness import plan_evaluation, run_evaluation
    from yollava.prompts import ChatFormat

    cpu, wall = time.process_time(), time.perf_counter()
    with _cell_log(plan.log_file(cell)) as console:
        console.rule(f"{cell.label} ({cell.key}), {time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()}")
        trainings = [ensure_trained(plan, worker, t, console) for t in cell.trainings]
        store = cell_store(plan, cell)
        companions = {cell.concept: [t.concept for t in cell.trainings[1:]]} if len(cell.trainings) > 1 else None
        evaluation = plan_evaluation(plan.data.root, [cell.concept], list(cell.tasks), [cell.method], store=store, refs=cell.refs,
                                     generation=plan.suite.generation, caption_negatives=plan.suite.caption_negatives,
                                     max_new_tokens=plan.suite.max_new_tokens, companions=companions)
        base, cache = worker.base(cell.config)
        eval_cpu = time.process_time()
        records = run_evaluation(evaluation, base, console, ChatFormat.load(cell.config.prompt.template), cache)
        result = {
            "format": RESULT_FORMAT, "format_version": 1, "cell": cell.describe(), "records": records,
            "trainings": trainings, "cpu_s": round(time.process_time() - cpu, 2), "wall_s": round(time.perf_counter() - wall, 2),
            "eval_cpu_s": round(time.process_time() - eval_cpu, 2),
            "threads": _threads(), "model": base.describe(), "data": str(plan.data.root), "yollava_version": yollava.__version__,
            "rank": worker.rank, "world": worker.world, "pid": os.getpid(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        summary = ", ".join(f"{r['task']} {r['accuracy']:.3f}" for r in records)
        console.print(f"done: {summary}; {result['cpu_s']:.0f} s CPU, {result['wall_s']:.0f} s wall", highlight=False)
    write_json_atomic(plan.cell_file(cell), result)
    return result


# ----------------------------------------------------------------------------- the loop


def share(cells: Sequence[Cell], rank: int, world: int) -> list[Cell]:
    """This process's cells first (every ``world``-th from ``rank``), then everyone else's (taken when unclaimed)."""
    own = [c for i, c in enumerate(cells) if i % world == rank]
    rest = [c for i, c in enumerate(cells) if i % world != rank]
    return own + rest


def run_share(plan: Plan, rank: int = 0, world: int = 1, on_cell=None) -> int:
    """Run every unfinished cell this process can claim, its own share first.

    Args:
        plan: the plan.
        rank / world: this process's place among all processes running the plan.
        on_cell: called after each finished cell with its result.

    Returns:
        How many cells this process ran.
    """
    worker = Worker(plan, rank, world)
    ran = 0
    (plan.out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    for cell in share(plan.cells, rank, world):
        if plan.cell_file(cell).is_file():
            continue
        try:
            with artifact_lock(plan.out / CELLS_DIR / cell.key, what=f"cell {cell.label}"):
                if plan.cell_file(cell).is_file():  # finished by another process meanwhile
                    continue
                log.info("cell %s (%s)", cell.label, cell.key)
                result = run_cell(plan, worker, cell)
        except LockedError:
            continue  # another process runs it
        ran += 1
        if on_cell is not None:
            on_cell(result)
    return ran


def write_plan(plan: Plan) -> None:
    """``plan.json``: the suite, the command's settings and every cell with its key (rewritten by every run)."""
    write_json_atomic(plan.out / PLAN_FILE, {
        "suite": plan.suite.name, "suite_file": plan.suite.path, "data": str(plan.data.root), "cache": str(plan.cache.resolve()),
        "embedder": plan.embedder, "overrides": list(plan.overrides), "seeds": list(plan.suite.seeds), "command": plan.command,
        "cells": [c.describe() for c in plan.cells],
    })


def merge(plan: Plan) -> Path | None:
    """Write ``results.jsonl`` (one line per cell and task, plan order) and the reports once every cell is finished.

    Returns:
        The results file, or None while cells are missing.
    """
    from yollava.ablate.report import write_reports

    if len(plan.done()) < len(plan.cells):
        return None
    lines = []
    records = []  # the harness's own records (items left out), for yollava report's Table 5
    for cell in plan.cells:
        result = json.loads(plan.cell_file(cell).read_text(encoding="utf-8"))
        for record in result["records"]:
            lines.append(dump_line(cell, result, record))
            records.append({**{k: v for k, v in record.items() if k != "items"}, "variant": cell.variant, "seed": cell.seed})
    path = plan.out / RESULTS_FILE
    # every rank that finds the last cell done may get here: the lock makes them write one after the other
    with artifact_lock(path, wait=SHARED_WAIT_S):
        write_text_atomic(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
        write_reports(plan, lines, records)
    return path


def dump_line(cell: Cell, result: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """One results.jsonl line: the cell, one task's scores, what its trainings cost, the resolved config."""
    described = result["cell"]
    return {
        "suite": cell.suite, "variant": cell.variant, "concept": cell.concept, "seed": cell.seed, "method": cell.method,
        "task": record["task"], "cell": cell.key, "x": cell.x, "accuracy": record["accuracy"], "metrics": record["metrics"],
        "n_questions": record["n_questions"], "tokens_per_query": record["tokens_per_query"], "scoring": record.get("scoring"),
        "compose": described["compose"], "refs": cell.refs if cell.method == "in-context" else None,
        "inputs": described["trainings"],
        "trainings": [{k: t.get(k) for k in ("key", "concept", "reused", "resumed", "cpu_s", "wall_s", "best_epoch", "epochs_run")}
                      for t in result["trainings"]],
        "cell_cpu_s": result["cpu_s"], "cell_wall_s": result["wall_s"], "threads": result.get("threads"), "rank": result.get("rank"),
        "config": described["config"], "model": result["model"]["id"], "yollava_version": result["yollava_version"],
        "identifier": record.get("identifier"), "prefix": record.get("prefix"),
        "harness": {k: record.get(k) for k in HARNESS_FIELDS},
    }


# the harness record's fields a results.jsonl line keeps beside its own (what --reuse needs to give the
# reports, Table 5's costs included, the same record back)
HARNESS_FIELDS = ("format", "format_version", "model", "data", "train_seconds", "seconds", "image_tokens", "references",
                  "method_info", "sources", "templates", "yollava_version")
LINE_RECORD_FIELDS = ("task", "method", "concept", "accuracy", "scoring", "n_questions", "tokens_per_query", "metrics",
                      "identifier", "prefix", "refs")


def _read_results(path: Path) -> dict[str, list[dict[str, Any]]]:
    """An earlier run's ``results.jsonl``, its lines grouped by cell key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YollavaError(f"--reuse {path}: cannot read it ({exc.strerror or exc}); pass an earlier run's {RESULTS_FILE}") from None
    grouped: dict[str, list[dict[str, Any]]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key, task = line["cell"], line["task"]
            if not isinstance(key, str) or not isinstance(task, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise YollavaError(f"--reuse {path}: line {number} is not a yollava ablate results line; pass an earlier run's {RESULTS_FILE}") from None
        grouped.setdefault(key, []).append(line)
    return grouped


def reuse_results(plan: Plan, paths: Sequence[str | Path]) -> int:
    """Take the cells of earlier runs' ``results.jsonl`` files whose keys this plan has and has not finished.

    A key is the hash of everything that decides a cell's result, so a line with this plan's key is this
    cell's result. Each becomes a cell file (marked ``reused_from``); its per-question items, which
    results.jsonl does not keep, are not restored.

    Returns:
        How many cells were taken.

    Raises:
        YollavaError: an unreadable or malformed file, a cell whose tasks are not all in the file, or (for a
            methods suite, whose Table 5 needs them) lines from a yollava that did not keep the harness fields.
    """
    done = plan.done()
    wanted = {c.key: c for c in plan.cells if c.key not in done}
    taken = 0
    for path in map(Path, paths):
        for key, lines in _read_results(path).items():
            cell = wanted.pop(key, None)
            if cell is None:
                continue
            tasks = {line["task"] for line in lines}
            if tasks != set(cell.tasks):
                raise YollavaError(f"--reuse {path}: cell {key} ({cell.label}) has tasks {sorted(tasks)}, the suite asks "
                                   f"{sorted(cell.tasks)}; the file is damaged")
            if plan.suite.report.kind == ReportKind.methods and any("harness" not in line for line in lines):
                raise YollavaError(f"--reuse {path}: its lines come from a yollava that did not keep the evaluation records "
                                   "Table 5 needs; run those cells again instead")
            records = []
            for line in sorted(lines, key=lambda line: list(cell.tasks).index(line["task"])):
                record = {k: line.get(k) for k in LINE_RECORD_FIELDS}
                record.update(line.get("harness") or {"model": {"id": line.get("model")}, "yollava_version": line.get("yollava_version")})
                records.append(record)
            first = lines[0]
            result = {
                "format": RESULT_FORMAT, "format_version": 1, "cell": cell.describe(), "records": records,
                "trainings": first.get("trainings") or [], "cpu_s": first.get("cell_cpu_s"), "wall_s": first.get("cell_wall_s"),
                "eval_cpu_s": None, "threads": first.get("threads"), "model": {"id": first.get("model")}, "data": str(plan.data.root),
                "yollava_version": first.get("yollava_version"), "rank": first.get("rank"), "world": None, "pid": None,
                "finished": None, "reused_from": str(path),
            }
            write_json_atomic(plan.cell_file(cell), result)
            taken += 1
    return taken


# ----------------------------------------------------------------------------- processes


def environment_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (``accelerate launch``, ``torchrun``: RANK / WORLD_SIZE)."""
    try:
        return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise YollavaError("RANK / WORLD_SIZE in the environment are not integers") from None


def _device_for_rank(overrides: Sequence[str]) -> list[str]:
    """Under a multi-GPU launcher each rank uses its own GPU (LOCAL_RANK), unless model.device is set."""
    if any(o.split("=", 1)[0].strip() == "model.device" for o in overrides):
        return list(overrides)
    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return [*overrides, f"model.device=cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"]
    return list(overrides)


@dataclass(frozen=True)
class Request:
    """What every process of a run needs to rebuild the same plan (picklable, for worker processes)."""

    suite: str
    data: str
    out: str
    cache: str | None
    concepts: tuple[str, ...] | None
    seeds: int | None
    overrides: tuple[str, ...]
    embedder: str | None
    threads: int | None = None
    command: str | None = None
    reuse: tuple[str, ...] = ()  # earlier runs' results.jsonl files whose matching cells are taken, not run

    def plan(self) -> Plan:
        plan = make_plan(self.suite, self.data, self.out, self.cache, self.concepts, self.seeds, self.overrides, self.embedder)
        plan.command = self.command
        return plan


def _setup_process(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as `yollava train` does (yollava.cli._flush_denormals)


def _worker_main(request: Request, rank: int, world: int, log_path: str) -> None:
    """A ``--workers`` process: output to its log, then its share of the cells."""
    handle = open(log_path, "a", buffering=1, encoding="utf-8")
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle
    logging.basicConfig(level=logging.INFO, format=f"[worker {rank}] %(levelname)s: %(message)s", stream=handle, force=True)
    _setup_process(request.threads)
    plan = request.plan()
    try:
        ran = run_share(plan, rank, world)
    except KeyboardInterrupt:
        sys.exit(130)
    log.info("worker %d/%d: ran %d cell(s)", rank, world, ran)
    merge(plan)


class CellBar:
    """One bar over the suite's cells (finished ones counted from the output folder), with ETA; lines in a log."""

    def __init__(self, plan: Plan, console: Console):
        from yollava.progress import progress_bar

        self.plan = plan
        self.progress = progress_bar(console, every=1)
        self.started = len(plan.done())
        self.task = None

    def __enter__(self) -> "CellBar":
        self.progress.__enter__()
        self.task = self.progress.add_task(f"{self.plan.suite.name} cells", total=len(self.plan.cells), completed=self.started,
                                           info="", log_every=1)
        return self

    def refresh(self, info: str = "") -> None:
        self.progress.update(self.task, completed=len(self.plan.done()), info=info)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)


def run_suite(request: Request, workers: int = 1, console: Console | None = None) -> Plan:
    """``yollava ablate``: plan, run this process's share (or ``workers`` processes'), merge when all cells are done.

    Raises:
        YollavaError: a bad request (before anything runs).
    """
    console = console or Console(stderr=True)
    if workers < 1:
        raise YollavaError(f"--workers {workers}: pass 1 or more")
    rank, world = environment_rank()
    request = replace(request, overrides=tuple(_device_for_rank(request.overrides)))
    plan = request.plan()
    plan.out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_plan(plan)
        if request.reuse:
            taken = reuse_results(plan, request.reuse)
            console.print(f"reused {taken} finished cell(s) from {', '.join(request.reuse)}", highlight=False)
    done = len(plan.done())
    console.print(f"suite {plan.suite.name}: {len(plan.cells)} cells ({len(plan.suite.variants)} variants x "
                  f"{len({c.concept for c in plan.cells})} concepts x {len(plan.suite.seeds)} seeds), {done} finished; "
                  f"out {plan.out}, cache {plan.cache}" + (f"; rank {rank} of {world}" if world > 1 else ""), highlight=False)
    if workers == 1:
        _setup_process(request.threads)
        if rank == 0:
            with CellBar(plan, console) as bar:
                def finished(result: dict[str, Any]) -> None:
                    cell = result["cell"]
                    bar.refresh(f"{cell['variant']} {cell['concept']} s{cell['seed']}: "
                                + ", ".join(f"{r['task']} {r['accuracy']:.3f}" for r in result["records"]))
                run_share(plan, rank, world, on_cell=finished)
        else:
            run_share(plan, rank, world)
    else:
        _spawn(request, plan, rank, world, workers, console)
    results = merge(plan)
    missing = len(plan.cells) - len(plan.done())
    if results is not None:
        console.print(f"all {len(plan.cells)} cells finished: {results}, {plan.out / 'summary.json'}, {plan.out / 'results.md'}", highlight=False)
    else:
        console.print(f"{missing} cell(s) not finished here (other ranks or processes run them; the last to finish writes "
                      f"{RESULTS_FILE}); run the same command again to continue", highlight=False)
    return plan


def _spawn(request: Request, plan: Plan, rank: int, world: int, workers: int, console: Console) -> None:
    """``workers`` processes, each a rank of ``world * workers``; the bar polls the output folder until they exit."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = request.threads or max(1, (os.cpu_count() or 1) // workers)
    request = replace(request, threads=threads)
    logs = plan.out / LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(workers):
        global_rank = rank * workers + index
        path = logs / f"worker-{global_rank}.log"
        process = context.Process(target=_worker_main, args=(request, global_rank, world * workers, str(path)), daemon=False)
        process.start()
        processes.append(process)
    console.print(f"{workers} worker processes ({threads} thread(s) each), logs in {logs}/worker-*.log", highlight=False)
    try:
        with CellBar(plan, console) as bar:
            while any(p.is_alive() for p in processes):
                bar.refresh(f"{sum(p.is_alive() for p in processes)} workers running")
                for p in processes:
                    p.join(timeout=POLL_S / len(processes))
            bar.refresh("workers done")
    except KeyboardInterrupt:
        for p in processes:
            p.join(timeout=30)
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode not in (0, None)]
    if failed:
        index, code = failed[0]
        raise YollavaError(f"worker {rank * workers + index} exited with code {code}; see {logs}/worker-{rank * workers + index}.log "
                           "and run the same command again (finished cells are kept)")
