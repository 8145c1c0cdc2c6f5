"""Cells: a suite expanded into variant × concept × seed units of work, each keyed by the hash of its resolved config and inputs.

Three keys, so that work is shared wherever its inputs match (across variants and across suites):

- the **negatives key**: concept, positives (sha256 of each photo), pool, embedder, negatives spec and
  seed — the same mined negatives for every k, recipe or method that asks for them;
- the **training key**: the negatives key plus the whole resolved config — one trained concept per
  key, reused by every cell (and suite) that would train the same thing;
- the **cell key**: the training key(s) plus method, tasks, references and the test data — a cell
  whose key has a result is skipped on a re-run, and a changed override re-runs only the cells whose
  resolved config it changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from yollava.ablate.suite import NegativesKind, NegativesSpec, Suite, Variant
from yollava.config import Config, config_to_dict, load_config
from yollava.errors import YollavaError
from yollava.evaluate.layout import DESCRIPTIONS_FILE, TEST, TEXT_QA_FILE, TRAIN, VISUAL_QA_FILE, Benchmark, open_benchmark
from yollava.images import file_sha256

# Bump when what a cell computes changes in a way its inputs do not show (its results are then redone).
CELL_FORMAT = 1
# Config keys that say where things go or run, not what is computed: left out of every key.
UNKEYED = ("model.device", "train.runs_dir", "train.prefix_cache_gb", "train.prefix_cache_cpu_gb")
# config keys added after cells were first keyed, each with the value that does exactly what yollava did
# before the key existed: at that value the key is left out of the hash, so cells and trainings that
# finished before it existed stay valid; any other value is hashed like every key
KEYED_ONLY_OFF = {"train.lr_schedule": "constant"}
POOL_DIR = "pool"  # the toy world's negative pool, DIR/pool/
TRAINED_METHODS = frozenset({"soft-prompt"})


def digest(payload: Any, length: int = 16) -> str:
    """Short sha256 of a JSON-able payload (sorted keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


def keyed_config(config: Config) -> dict[str, Any]:
    """The resolved config without the keys of :data:`UNKEYED`, nor those of :data:`KEYED_ONLY_OFF` at their old behaviour."""
    data = config_to_dict(config)
    for dotted in UNKEYED:
        section, key = dotted.split(".")
        data[section].pop(key, None)
    for dotted, old in KEYED_ONLY_OFF.items():
        section, key = dotted.split(".")
        if data[section].get(key) == old:
            del data[section][key]
    return data


def folder_fingerprint(folder: Path) -> str:
    """sha256 over a folder's file names and sizes (a 20,000-image pool takes well under a second)."""
    hasher = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            hasher.update(f"{path.name}\0{path.stat().st_size}\n".encode())
    return hasher.hexdigest()


@dataclass
class AblationData:
    """The ``--data`` benchmark (published layout, :func:`~yollava.evaluate.layout.open_benchmark`) and its optional ``pool/``."""

    benchmark: Benchmark

    @classmethod
    def open(cls, path: str | Path) -> "AblationData":
        """Raises: YollavaError: see :func:`~yollava.evaluate.layout.open_benchmark`; also no subject with both splits."""
        data = cls(open_benchmark(path))
        if not data.subjects():
            raise YollavaError(f"--data {data.root}: no subject has both {TRAIN}/<subject>/ and {TEST}/<subject>/")
        return data

    @property
    def root(self) -> Path:
        return self.benchmark.root

    def subjects(self) -> list[str]:
        """Subjects with training and test photos, sorted by name."""
        train = set(self.benchmark.subjects.get(TRAIN, []))
        return [s for s in self.benchmark.subjects.get(TEST, []) if s in train]

    def train_images(self, subject: str) -> list[str]:
        return self.benchmark.images(TRAIN, subject)

    @property
    def pool(self) -> Path | None:
        folder = self.root / POOL_DIR
        return folder if folder.is_dir() else None

    def is_toy(self) -> bool:
        """Whether this is a toy-world benchmark (``yollava toy generate``)."""
        from yollava.toyworld.benchmark import BENCHMARK_FILE

        return (self.root / BENCHMARK_FILE).is_file()

    def fingerprint(self) -> str:
        """sha256 over the test split's and the training photos' names and sizes and the QA / description files' bytes."""
        hasher = hashlib.sha256()
        for split in (TRAIN, TEST):
            folder = self.root / split
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.is_file():
                    hasher.update(f"{path.relative_to(self.root)}\0{path.stat().st_size}\n".encode())
        for name in (VISUAL_QA_FILE, TEXT_QA_FILE, DESCRIPTIONS_FILE):
            if (self.root / name).is_file():
                hasher.update(f"{name}\0{file_sha256(self.root / name)}\n".encode())
        return hasher.hexdigest()


@dataclass(frozen=True)
class Training:
    """One concept to train (or reuse): its config, photos, negatives and the keys they give."""

    concept: str
    config: Config = field(compare=False, hash=False)
    positives: tuple[str, ...]
    negatives: NegativesSpec
    negatives_key: str
    key: str

    def describe(self) -> dict[str, Any]:
        return {"concept": self.concept, "positives": len(self.positives), "negatives": self.negatives.key(),
                "negatives_key": self.negatives_key, "key": self.key}


@dataclass(frozen=True)
class Cell:
    """A unit of work: one variant of a suite on one concept with one seed.

    Attributes:
        suite / variant: where it comes from (not part of the key: suites share cells).
        concept / seed: the subject and the seed (``train.seed`` = ``data.seed`` = seed).
        method / tasks: what is scored (names of :data:`yollava.methods.METHODS` and
            :data:`yollava.evaluate.harness.TASKS`).
        config: the resolved config (suite overrides, variant overrides, command-line overrides, seed).
        trainings: the concepts the cell needs trained, its own first (``compose`` > 1 adds the others
            loaded with it); empty for methods that train nothing.
        refs: reference photos of ``in-context``.
        x: the variant's value on a plot axis (k, n, ...), if any.
        key: hash of everything above that decides the result.
    """

    suite: str
    variant: str
    concept: str
    seed: int
    method: str
    tasks: tuple[str, ...]
    config: Config = field(compare=False, hash=False)
    trainings: tuple[Training, ...]
    refs: int
    x: float | None
    key: str

    @property
    def label(self) -> str:
        return f"{self.variant} | {self.concept} | seed {self.seed}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (the plan file and every result record carry it)."""
        return {
            "key": self.key, "suite": self.suite, "variant": self.variant, "concept": self.concept, "seed": self.seed,
            "method": self.method, "tasks": list(self.tasks), "refs": self.refs, "x": self.x,
            "compose": [t.concept for t in self.trainings], "trainings": [t.describe() for t in self.trainings],
            "config": config_to_dict(self.config),
        }


@dataclass
class Fingerprints:
    """File fingerprints computed once per plan (hashing every photo is cheap, but not for every cell)."""

    data: AblationData
    _files: dict[str, str] = field(default_factory=dict)
    _pool: str | None = None
    _data: str | None = None

    def file(self, path: str) -> str:
        if path not in self._files:
            self._files[path] = file_sha256(path)
        return self._files[path]

    @property
    def pool(self) -> str | None:
        if self._pool is None and self.data.pool is not None:
            self._pool = folder_fingerprint(self.data.pool)
        return self._pool

    @property
    def dataset(self) -> str:
        if self._data is None:
            self._data = self.data.fingerprint()
        return self._data


def cell_config(variant: Variant, seed: int, overrides: Sequence[str]) -> Config:
    """The resolved config of a variant with a seed: suite + variant overrides, then the command line's, then the seed.

    Raises:
        YollavaError: an unknown key or bad value (naming the variant), or an override of a reserved key.
    """
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("train.seed", "data.seed"):
            raise YollavaError(f"override {item}: seeds are set per cell; use --seeds N or the suite's seeds")
        if key == "train.runs_dir":
            raise YollavaError(f"override {item}: training runs go into the --cache folder; remove it")
    try:
        return load_config(overrides=[*variant.overrides, *overrides, f"train.seed={seed}", f"data.seed={seed}"])
    except YollavaError as exc:
        raise YollavaError(f"variant '{variant.name}': {exc}") from None


def _training(concept: str, variant: Variant, config: Config, data: AblationData, prints: Fingerprints, embedder: str) -> Training:
    photos = data.train_images(concept)
    if len(photos) < variant.positives:
        raise YollavaError(f"variant '{variant.name}' needs {variant.positives} training photos of '{concept}'; "
                           f"{data.root / TRAIN / concept} has {len(photos)}: lower 'positives' or add photos")
    chosen = tuple(photos[: variant.positives])
    spec = variant.negatives
    if spec.source != NegativesKind.none and data.pool is None:
        raise YollavaError(f"variant '{variant.name}' needs {spec.source.value} negatives but {data.root} has no {POOL_DIR}/ folder; "
                           "add one (the toy world has it) or use negatives: {source: none}")
    negatives = {
        "concept": concept, "positives": [prints.file(p) for p in chosen], "spec": spec.key(),
        "pool": prints.pool if spec.source != NegativesKind.none else None,
        "embedder": embedder if spec.source == NegativesKind.mined else None,
        "seed": config.data.seed if spec.source != NegativesKind.none else None,
    }
    negatives_key = digest(negatives)
    key = digest({"format": CELL_FORMAT, "negatives": negatives_key, "config": keyed_config(config)})
    return Training(concept, config, chosen, spec, negatives_key, key)


def compose_partners(concept: str, concepts: Sequence[str], k: int) -> list[str]:
    """The ``k`` - 1 concepts loaded with ``concept``: the next ones in the suite's order, wrapping around."""
    start = list(concepts).index(concept)
    return [concepts[(start + i) % len(concepts)] for i in range(1, k)]


def expand_cells(suite: Suite, data: AblationData, concepts: Sequence[str] | None = None,
                 overrides: Sequence[str] = (), embedder: str = "toy") -> list[Cell]:
    """Every cell of a suite on a benchmark, in variant, concept, seed order.

    Args:
        suite: the validated suite.
        data: the benchmark.
        concepts: ``--concepts`` (default: the suite's, or all the benchmark's subjects).
        overrides: command-line ``key=value`` overrides for every cell.
        embedder: the retrieval embedder of mined negatives.

    Raises:
        YollavaError: unknown concepts, too few photos, a missing pool, bad overrides, or a compose
            group larger than the concepts (one line).
    """
    from yollava.concept import validate_name

    available = data.subjects()
    chosen = list(concepts) if concepts else list(suite.concepts or available)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
        raise YollavaError(f"concept '{unknown[0]}' is not a subject of {data.root} (subjects: {shown}); fix --concepts or the suite's concepts")
    if len(set(chosen)) != len(chosen):
        raise YollavaError("a concept is named twice; name each once")
    for name in chosen:
        validate_name(name)
    prints = Fingerprints(data)
    cells: list[Cell] = []
    for variant in suite.variants:
        if variant.compose > len(chosen):
            raise YollavaError(f"variant '{variant.name}' loads {variant.compose} concepts together but only {len(chosen)} are chosen; "
                               "pass more --concepts or drop the variant")
        for concept in chosen:
            for seed in suite.seeds:
                config = cell_config(variant, seed, overrides)
                trainings: tuple[Training, ...] = ()
                if variant.method in TRAINED_METHODS:
                    group = [concept, *compose_partners(concept, chosen, variant.compose)]
                    trainings = tuple(_training(c, variant, config, data, prints, embedder) for c in group)
                resolved = keyed_config(config)
                if not trainings:  # a method that trains nothing depends on the base and the prompt format only
                    resolved = {"model": resolved["model"], "prompt": resolved["prompt"]}
                key = digest({
                    "format": CELL_FORMAT, "concept": concept, "method": variant.method, "tasks": sorted(suite.tasks),
                    "refs": variant.refs if variant.method == "in-context" else None,
                    "evaluation": [suite.generation, suite.caption_negatives, suite.max_new_tokens],
                    "config": resolved, "trainings": [t.key for t in trainings], "data": prints.dataset,
                })
                cells.append(Cell(suite.name, variant.name, concept, seed, variant.method, suite.tasks, config, trainings,
                                  variant.refs, variant.x, key))
    return cells
