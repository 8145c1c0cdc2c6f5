"""The writing commands under fault injection: each prepares an old artifact, writes a new one, and reads it back.

A scenario's ``command(ws)`` is the library call behind one CLI command, writing the *new* version
over the *old* one that ``prepare(ws)`` left; ``read(ws)`` is what a reader sees, through the same
functions the commands use to read (so their recovery runs), as a small fingerprint. It raises if
what it finds is broken. Everything a scenario needs is derived from the workspace path, so a child
process (see faults.run_killed) can run it from the path alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
from PIL import Image

from conftest import QuadrantColours, make_image, preprocess
from yollava.config import ConceptConfig, DataConfig, Recipe
from yollava.retrieval.embed import Embedder

NAME = "bo"


def colour_embedder() -> Embedder:
    return Embedder("colour", QuadrantColours(), preprocess, dim=12, fingerprint="colour-v1")


def _picture(vector: np.ndarray, path: Path) -> Path:
    quadrants = ((np.clip(vector.reshape(2, 2, 3), -1, 1) + 1) * 127.5).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.kron(quadrants, np.ones((8, 8, 1), dtype=np.uint8))).save(path)
    return path


def _pictures(folder: Path, n: int, seed: int, centre: np.ndarray | None = None, spread: float = 1.0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        vector = rng.uniform(-1, 1, 12) * spread + (0 if centre is None else centre)
        _picture(vector, folder / f"img{seed}_{i:03d}.png")


def _subject_world(ws: Path, positives: int = 4) -> None:
    """Positives around one colour layout and a 30-image pool, half of them lookalikes."""
    rng = np.random.default_rng(0)
    subject = rng.uniform(-0.6, 0.6, 12)
    for i in range(positives):
        _picture(subject + rng.normal(0, 0.03, 12), ws / "pos" / f"p{i}.png")
    for i in range(15):
        _picture(subject + rng.normal(0, 0.35, 12), ws / "pool" / f"look{i:02d}.png")
    _pictures(ws / "pool", 15, seed=1)


# ----------------------------------------------------------------------------- retrieve


def _retrieve(ws: Path, per_image: int, n_easy: int, overwrite: bool) -> None:
    from yollava.retrieval.index import FolderBackend
    from yollava.retrieval.mine import retrieve_hard_negatives

    embedder = colour_embedder()
    backend = FolderBackend(ws / "pool", embedder, cache_dir=ws / "cache", progress=False)
    retrieve_hard_negatives(NAME, ws / "pos", backend, embedder, store=ws / "store", per_image=per_image, n_easy=n_easy,
                            overwrite=overwrite, cache_dir=ws / "cache", progress=False)


def retrieve_prepare(ws: Path) -> None:
    _subject_world(ws)
    _retrieve(ws, per_image=1, n_easy=2, overwrite=False)


def retrieve_command(ws: Path) -> None:
    _retrieve(ws, per_image=2, n_easy=3, overwrite=True)


def negatives_fingerprint(ws: Path) -> Hashable:
    from yollava.errors import YollavaError
    from yollava.retrieval.mine import read_negatives

    try:
        stored = read_negatives(NAME, ws / "store")
    except YollavaError as exc:
        if "no negatives for" in str(exc):
            return None
        raise
    return tuple(r.sha256 for r in stored.records)


# ----------------------------------------------------------------------------- build-data


def _images(ws: Path):
    from yollava.data import NegativeSource, gather_images

    return gather_images(NAME, ws / "pos", ws / "store", NegativeSource(folder=str(ws / "neg")), DataConfig(recipe=Recipe.recognition))


def _build(ws: Path, seed: int, rebuild: bool) -> None:
    from yollava.data import build_training_set

    build_training_set(None, NAME, _images(ws), ws / "store", DataConfig(recipe=Recipe.recognition, seed=seed), rebuild=rebuild)


def build_data_prepare(ws: Path) -> None:
    for i in range(3):
        make_image(ws / "pos" / f"p{i}.png", (200 + 10 * i, 30, 30), size=32)
    for i in range(3):
        make_image(ws / "neg" / f"n{i}.png", (30, 30 + 40 * i, 200), shape="square", size=32)
    _build(ws, seed=0, rebuild=False)


def build_data_command(ws: Path) -> None:
    _build(ws, seed=1, rebuild=True)


def training_set_fingerprint(ws: Path) -> Hashable:
    from yollava.data import load_training_set

    folder = ws / "store" / NAME / "data"
    if not folder.exists() and not (folder.parent / ".data.old").exists() and not (ws / "store" / f".{NAME}.old").exists():
        return None
    samples, info = load_training_set(folder)
    return info["key"]["seed"], tuple((s.question, s.answer, Path(s.image).name) for s in samples)


# ----------------------------------------------------------------------------- index build / add


def _index_pools(ws: Path) -> None:
    _pictures(ws / "pool_a", 6, seed=2)
    _pictures(ws / "pool_b", 9, seed=3)


def index_prepare(ws: Path) -> None:
    from yollava.retrieval.index import build_index

    _index_pools(ws)
    build_index(ws / "idx", colour_embedder(), images=ws / "pool_a", cache_dir=ws / "cache", progress=False)


def index_build_command(ws: Path) -> None:
    from yollava.retrieval.index import build_index

    build_index(ws / "idx", colour_embedder(), images=ws / "pool_b", overwrite=True, cache_dir=ws / "cache", progress=False)


def index_add_command(ws: Path) -> None:
    from yollava.retrieval.index import add_to_index

    add_to_index(ws / "idx", colour_embedder(), images=ws / "pool_b", cache_dir=ws / "cache", progress=False)


def index_fingerprint(ws: Path) -> Hashable:
    from yollava.retrieval.index import load_index

    index = load_index(ws / "idx")
    assert len(index) == len(index.paths) == len(index.sha256)
    return tuple(sorted(index.sha256))


# ----------------------------------------------------------------------------- toy generate

TOY = dict(n_concepts=1, pool_size=2, image_size=32, n_train=1, n_test=1, pool_lookalikes_per_concept=1, progress=False)


def toy_prepare(ws: Path) -> None:
    from yollava.toyworld.benchmark import generate_benchmark

    generate_benchmark(ws / "bench", seed=0, **TOY)


def toy_command(ws: Path) -> None:
    from yollava.toyworld.benchmark import generate_benchmark

    generate_benchmark(ws / "bench", seed=1, overwrite=True, **TOY)


def toy_fingerprint(ws: Path) -> Hashable:
    import json

    from yollava.evaluate.layout import SPLITS, open_benchmark
    from yollava.evaluate.qa_files import read_qa_file
    from yollava.methods.description import read_descriptions
    from yollava.toyworld.benchmark import (
        DESCRIPTIONS, POOL_DIR, POOL_INDEX_FILE, QA_TEXT_FILE, QA_VISUAL_FILE, SCENES_FILE, SUBJECT_FILE, SUBJECTS_DIR, read_benchmark,
    )

    summary = read_benchmark(ws / "bench")
    # the published-layout reader behind every --data (yollava eval, train's photos): recovery, then DIR/{train,test}/<subject>/
    benchmark = open_benchmark(ws / "bench")
    folder = benchmark.root
    # a reader of the benchmark uses every file its summary promises
    listed = [json.loads(line)["path"] for line in (folder / POOL_DIR / POOL_INDEX_FILE).read_text().splitlines()]
    assert len(listed) == summary["pool_size"] and all((folder / POOL_DIR / p).is_file() for p in listed)
    concepts = summary["concepts"]
    for concept in concepts:
        for split in SPLITS:
            assert len(benchmark.images(split, concept)) == summary[f"n_{split}"]
        json.loads((folder / SUBJECTS_DIR / concept / SUBJECT_FILE).read_text())
        json.loads((folder / SUBJECTS_DIR / concept / SCENES_FILE).read_text().splitlines()[0])
    # both QA files as yollava eval reads them (schema checked, every image resolved), and the descriptions
    text = read_qa_file(folder / QA_TEXT_FILE, benchmark, concepts)
    visual = read_qa_file(folder / QA_VISUAL_FILE, benchmark, concepts)
    assert all(text.for_subject(c) and visual.for_subject(c) for c in concepts)
    assert set(read_descriptions(folder / DESCRIPTIONS)) == set(concepts)
    return summary["seed"], tuple(concepts)


# ----------------------------------------------------------------------------- train's final save


_BASE = []


def _save(ws: Path, seed: int, extra: dict, data: Path) -> None:
    """Save a concept of ``seed``'s rows the way train's final step does (attached to one reused tiny base)."""
    from yollava.concept import attached, init_concept, save_concept
    from yollava.models import build_tiny_base

    if not _BASE:
        _BASE.append(build_tiny_base())
    params = init_concept(_BASE[0], NAME, ConceptConfig(k=2), seed=seed)
    with attached(_BASE[0], params):
        save_concept(params, _BASE[0], ws / "store", extra, data=data)


def _training_set(folder: Path, seed: int) -> None:
    from yollava.data import Sample, save_training_set

    samples = [Sample(f"Is <bo> here? ({seed}/{i})", "Yes", "recognition_positive", f"/p{i}.png") for i in range(3)]
    save_training_set(samples, folder, {"key": {"seed": seed}, "recipe": "recognition", "category": None})


def train_save_prepare(ws: Path) -> None:
    _subject_world(ws, positives=2)
    _retrieve(ws, per_image=1, n_easy=1, overwrite=False)  # the concept's negatives, kept across saves
    shutil.rmtree(ws / "pool")
    _training_set(ws / "old_run" / "data", seed=0)
    _save(ws, 0, {"training": {"best_epoch": 1, "metrics": {"weighted": 0.5}}}, ws / "old_run" / "data")
    shutil.rmtree(ws / "old_run")
    _training_set(ws / "run" / "data", seed=1)  # what the new run built, in its own folder


def train_save_command(ws: Path) -> None:
    _save(ws, 1, {"training": {"best_epoch": 2, "metrics": {"weighted": 0.75}}}, ws / "run" / "data")


def concept_fingerprint(ws: Path) -> Hashable:
    """Record, weights, training set and negatives of the stored concept: they must belong to one version."""
    from yollava.concept import read_concept
    from yollava.data import load_training_set

    record, tensors = read_concept(ws / "store", NAME)
    _, info = load_training_set(ws / "store" / NAME / "data")
    negatives = negatives_fingerprint(ws)
    assert negatives is not None
    return record.weights_sha256, record.training.best_epoch, info["key"]["seed"], negatives


@dataclass(frozen=True)
class Scenario:
    """One writing command under test."""

    prepare: Callable[[Path], None]
    command: Callable[[Path], None]
    read: Callable[[Path], Hashable]
    skip: tuple[str, ...] = ("cache",)  # folders where stale temp files are tolerated (the embedding cache)


SCENARIOS: dict[str, Scenario] = {
    "train-save": Scenario(train_save_prepare, train_save_command, concept_fingerprint),
    "retrieve": Scenario(retrieve_prepare, retrieve_command, negatives_fingerprint),
    "build-data": Scenario(build_data_prepare, build_data_command, training_set_fingerprint),
    "index-build": Scenario(index_prepare, index_build_command, index_fingerprint),
    "index-add": Scenario(index_prepare, index_add_command, index_fingerprint),
    "toy-generate": Scenario(toy_prepare, toy_command, toy_fingerprint),
}
