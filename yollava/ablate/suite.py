"""Ablation suites as data: the YAML schema of ``templates/suites/*.yaml``, loading and validation (one line per mistake)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from yollava.errors import YollavaError
from yollava.prompts import templates_dir

SUITES_DIR = "suites"
# Config keys a suite may not set: the seed comes from the cell (``seeds``), the runs folder from the cache.
RESERVED_KEYS = ("train.seed", "data.seed", "train.runs_dir")


class NegativesKind(str, Enum):
    """Where a trained variant's negatives come from.

    ``mined``: ``hard`` CLIP-kNN neighbours of the positives (n·m ≈ ``hard``) and ``easy`` random pool
    images, as ``yollava train --pool`` does; ``random``: ``count`` random pool images (easy only);
    ``none``: no negatives (the concept learns to say Yes to everything).
    """

    mined = "mined"
    random = "random"
    none = "none"


class ReportKind(str, Enum):
    """How a suite's results are drawn: ``curve`` (accuracy against ``x``, Fig. 5), ``bars`` (Table 7),
    ``methods`` (Table 5 and accuracy against personalization tokens), ``table`` (a table and bars)."""

    curve = "curve"
    bars = "bars"
    methods = "methods"
    table = "table"


@dataclass
class NegativesSpec:
    """A variant's negatives (see :class:`NegativesKind`)."""

    source: NegativesKind = NegativesKind.mined
    hard: int = 100
    easy: int = 100
    count: int = 200

    def key(self) -> dict[str, Any]:
        """The fields that decide the images (others are ignored for this source)."""
        if self.source == NegativesKind.mined:
            return {"source": self.source.value, "hard": self.hard, "easy": self.easy}
        if self.source == NegativesKind.random:
            return {"source": self.source.value, "count": self.count}
        return {"source": self.source.value}


@dataclass
class VariantSpec:
    """One arm of a suite: a method plus config overrides and inputs; unset fields take the suite's."""

    name: str = ""
    method: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    positives: Optional[int] = None
    negatives: Optional[dict[str, Any]] = None
    refs: Optional[int] = None
    compose: Optional[int] = None
    x: Optional[float] = None


@dataclass
class ReportSpec:
    """What the report draws: ``kind``, the x axis label of a curve, and which task gets the plot."""

    kind: ReportKind = ReportKind.table
    x_label: str = ""
    log_x: bool = False


@dataclass
class SuiteFile:
    """The YAML schema of a suite (every key optional except ``name``; unknown keys fail)."""

    name: str = ""
    description: str = ""
    paper: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=lambda: ["recognition"])
    concepts: Any = "all"
    seeds: Any = 1
    method: str = "soft-prompt"
    positives: int = 5
    negatives: dict[str, Any] = field(default_factory=dict)
    refs: int = 1
    compose: int = 1
    overrides: list[str] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    grid: dict[str, Any] = field(default_factory=dict)
    report: ReportSpec = field(default_factory=ReportSpec)
    # what the evaluation harness asks (yollava eval's --generation, --caption-negatives, --max-new-tokens)
    generation: bool = False
    caption_negatives: int = 1
    max_new_tokens: Optional[int] = None


@dataclass(frozen=True)
class Variant:
    """A resolved variant: every input set, overrides in the order they apply (suite, then variant)."""

    name: str
    method: str
    overrides: tuple[str, ...]
    positives: int
    negatives: NegativesSpec
    refs: int
    compose: int
    x: float | None


@dataclass(frozen=True)
class Suite:
    """A validated suite: its variants, tasks, concepts (``None`` = all of the data's), seeds and report."""

    name: str
    path: str
    description: str
    paper: dict[str, Any]
    tasks: tuple[str, ...]
    concepts: tuple[str, ...] | None
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    report: ReportSpec
    generation: bool = False
    caption_negatives: int = 1
    max_new_tokens: int | None = None


# grid keys that set a variant field rather than a config key
VARIANT_FIELDS = {"method", "positives", "refs", "compose"}
NEGATIVE_FIELDS = {f"negatives.{f.name}" for f in fields(NegativesSpec)}


def suite_names() -> list[str]:
    """Names of the shipped suites (``templates/suites/*.yaml``)."""
    return sorted(p.stem for p in (templates_dir() / SUITES_DIR).glob("*.yaml"))


def suite_path(name_or_file: str | Path) -> Path:
    """A shipped suite's file by name, or the given YAML file.

    Raises:
        YollavaError: neither a shipped suite nor an existing file.
    """
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise YollavaError(f"--suite {path}: no such file; pass a suite YAML or one of: {', '.join(suite_names())}")
        return path
    shipped = templates_dir() / SUITES_DIR / f"{name_or_file}.yaml"
    if not shipped.is_file():
        raise YollavaError(f"--suite {name_or_file}: no such suite; choose one of {', '.join(suite_names())} or pass a YAML file")
    return shipped


def _fail(source: str, message: str) -> YollavaError:
    return YollavaError(f"suite {source}: {message}")


def _schema(source: str, raw: Any, schema: type, where: str) -> Any:
    """``raw`` checked against a dataclass schema: unknown keys and wrong types fail naming the key."""
    if not isinstance(raw, dict):
        raise _fail(source, f"{where or 'the file'} must be a mapping of keys, not {type(raw).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(raw))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        named = f"{where}.{key}" if where else str(key)
        if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
            valid = ", ".join(f.name for f in fields(schema))
            raise _fail(source, f"unknown key '{named}'; valid keys: {valid}") from None
        raise _fail(source, f"bad value for '{named}': {str(exc).splitlines()[0]}") from None


def _negatives(source: str, base: NegativesSpec, raw: dict[str, Any] | None, where: str) -> NegativesSpec:
    if not raw:
        return base
    merged = {**{f.name: getattr(base, f.name) for f in fields(NegativesSpec)}, **raw}
    spec: NegativesSpec = _schema(source, merged, NegativesSpec, where)
    for name in ("hard", "easy", "count"):
        if getattr(spec, name) < 0:
            raise _fail(source, f"{where}.{name} must be >= 0")
    if spec.source == NegativesKind.mined and spec.hard + spec.easy == 0:
        raise _fail(source, f"{where}: mined negatives need hard or easy > 0 (or source: none)")
    return spec


def _listing(value: Any, what: str, source: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _fail(source, f"{what} must be a list, not {type(value).__name__}")


def _seeds(source: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise _fail(source, f"seeds must be a count or a list of integers, not {value!r}")
    seeds = list(range(value)) if isinstance(value, int) else list(value)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise _fail(source, f"seeds {value!r}: give a count >= 1 or distinct integers >= 0")
    return tuple(seeds)


def parse_suite(raw: Any, source: str, methods: tuple[str, ...], tasks: tuple[str, ...], seeds: int | None = None) -> Suite:
    """Validate a suite mapping and resolve its variants (grid expanded).

    Args:
        raw: the YAML's content.
        source: how messages name the suite (its name and file).
        methods: the method names (:data:`yollava.methods.METHODS`).
        tasks: the task names (:data:`yollava.evaluate.harness.TASKS`).
        seeds: ``--seeds N`` (replaces the suite's seeds by 0..N-1).

    Raises:
        YollavaError: unknown keys, unknown method or task, an empty grid or no variant, bad values,
            reserved config keys, two variants that would be the same cell (one line each).
    """
    spec: SuiteFile = _schema(source, raw, SuiteFile, "")
    if not spec.name:
        raise _fail(source, "needs a 'name'")
    for task in spec.tasks:
        if task not in tasks:
            raise _fail(source, f"unknown task '{task}'; choose from {', '.join(tasks)}")
    if not spec.tasks:
        raise _fail(source, "tasks is empty; name at least one of " + ", ".join(tasks))
    if len(set(spec.tasks)) != len(spec.tasks):
        raise _fail(source, "a task is listed twice; list each once")
    if spec.caption_negatives < 0 or (spec.max_new_tokens is not None and spec.max_new_tokens < 1):
        raise _fail(source, "caption_negatives must be >= 0 and max_new_tokens >= 1")
    concepts = None
    if spec.concepts != "all":
        names = _listing(spec.concepts, "concepts", source)
        if not names or not all(isinstance(n, str) for n in names):
            raise _fail(source, "concepts must be 'all' or a non-empty list of names")
        concepts = tuple(names)
    suite_seeds = _seeds(source, spec.seeds if seeds is None else seeds)
    defaults = NegativesSpec()
    base_negatives = _negatives(source, defaults, spec.negatives, "negatives")
    base = Variant(name="", method=spec.method, overrides=tuple(spec.overrides), positives=spec.positives,
                   negatives=base_negatives, refs=spec.refs, compose=spec.compose, x=None)

    variants: list[Variant] = []
    for index, entry in enumerate(spec.variants):
        where = f"variants[{index}]"
        item: VariantSpec = _schema(source, entry, VariantSpec, where)
        if not item.name:
            raise _fail(source, f"{where} needs a 'name'")
        variants.append(Variant(
            name=item.name, method=item.method or base.method, overrides=base.overrides + tuple(item.overrides),
            positives=base.positives if item.positives is None else item.positives,
            negatives=_negatives(source, base.negatives, item.negatives, f"{where}.negatives"),
            refs=base.refs if item.refs is None else item.refs, compose=base.compose if item.compose is None else item.compose,
            x=item.x,
        ))
    if spec.grid:
        axes = []
        for key, values in spec.grid.items():
            values = _listing(values, f"grid.{key}", source)
            if not values:
                raise _fail(source, f"grid.{key} is empty; give it at least one value")
            axes.append([(key, value) for value in values])
        for combination in itertools.product(*axes):
            variants.append(_grid_variant(source, base, combination))
    if not variants:
        raise _fail(source, "has no variants: the grid is empty and no 'variants' are listed")

    seen: dict[str, str] = {}
    names: set[str] = set()
    for variant in variants:
        _check_variant(source, variant, methods)
        if variant.name in names:
            raise _fail(source, f"two variants are called '{variant.name}'; give each its own name")
        names.add(variant.name)
        same = json.dumps([variant.method, variant.overrides, variant.positives, variant.negatives.key(), variant.refs, variant.compose])
        if same in seen:
            raise _fail(source, f"variants '{seen[same]}' and '{variant.name}' are the same cell; remove one")
        seen[same] = variant.name
    return Suite(name=spec.name, path=source, description=spec.description.strip(), paper=dict(spec.paper),
                 tasks=tuple(spec.tasks), concepts=concepts, seeds=suite_seeds, variants=tuple(variants), report=spec.report,
                 generation=spec.generation, caption_negatives=spec.caption_negatives, max_new_tokens=spec.max_new_tokens)


def _grid_variant(source: str, base: Variant, combination: tuple[tuple[str, Any], ...]) -> Variant:
    """The base variant with one grid point applied; named ``key=value, ...`` (short key names)."""
    variant = base
    negatives: dict[str, Any] = {}
    overrides = list(base.overrides)
    label = []
    x = None
    for key, value in combination:
        short = key.split(".")[-1]
        label.append(f"{short}={value}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            x = float(value)
        if key in VARIANT_FIELDS:
            variant = replace(variant, **{key: value})
        elif key in NEGATIVE_FIELDS:
            negatives[key.split(".", 1)[1]] = value
        elif key.startswith("negatives."):
            raise _fail(source, f"unknown grid key '{key}'; negatives keys: {', '.join(sorted(NEGATIVE_FIELDS))}")
        else:
            overrides.append(f"{key}={value}")
    variant = replace(variant, overrides=tuple(overrides), name=", ".join(label), x=x if len(combination) == 1 else None)
    if negatives:
        variant = replace(variant, negatives=_negatives(source, variant.negatives, negatives, "grid"))
    return variant


def _check_variant(source: str, variant: Variant, methods: tuple[str, ...]) -> None:
    where = f"variant '{variant.name}'"
    if variant.method not in methods:
        raise _fail(source, f"{where}: unknown method '{variant.method}'; choose from {', '.join(methods)}")
    if not isinstance(variant.positives, int) or variant.positives < 1:
        raise _fail(source, f"{where}: positives must be >= 1")
    if not isinstance(variant.refs, int) or variant.refs < 1:
        raise _fail(source, f"{where}: refs must be >= 1")
    if not isinstance(variant.compose, int) or variant.compose < 1:
        raise _fail(source, f"{where}: compose must be >= 1")
    if variant.compose > 1 and variant.method != "soft-prompt":
        raise _fail(source, f"{where}: compose loads trained concepts together; it needs method soft-prompt, not {variant.method}")
    for item in variant.overrides:
        if not isinstance(item, str) or "=" not in item:
            raise _fail(source, f"{where}: override {item!r} is not key=value")
        key = item.split("=", 1)[0].strip()
        if key in RESERVED_KEYS:
            raise _fail(source, f"{where}: {key} is set per cell (seeds and the cache decide it); remove the override")


def load_suite(name_or_file: str | Path, seeds: int | None = None) -> Suite:
    """Read and validate a shipped suite (by name) or a suite YAML file.

    Raises:
        YollavaError: see :func:`parse_suite`; also a missing file or invalid YAML.
    """
    path = suite_path(name_or_file)
    source = f"{path.stem} ({path})"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise _fail(source, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(source, f"unreadable ({exc.__class__.__name__})") from None
    from yollava.evaluate.harness import TASKS
    from yollava.methods import METHODS

    return parse_suite(raw, source, tuple(METHODS), tuple(TASKS), seeds)
