"""A concept's training set: recognition samples for every image, conversation samples answered by the base, storage as an HF dataset."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from yollava.config import Category, DataConfig, Recipe
from yollava.errors import YollavaError
from yollava.images import file_sha256, scan_image_dir
from yollava.prompts import RecognitionBank, load_template
from yollava.storage import DATA_DIR, DATA_INFO, dump_json, settle, staged_folder

log = logging.getLogger(__name__)


class SampleKind(str, Enum):
    """What a training sample teaches."""

    recognition_positive = "recognition_positive"
    recognition_negative_hard = "recognition_negative_hard"
    recognition_negative_easy = "recognition_negative_easy"
    conversation = "conversation"


@dataclass(frozen=True)
class Sample:
    """One question/answer pair; ``image`` is a path, or None for text-only samples."""

    question: str
    answer: str
    kind: str
    image: str | None = None
    variant: str = ""
    source: str = ""
    provenance: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageSets:
    """The images a concept trains on: positives and negatives (hard ones first when known).

    ``origin`` maps a stored negative file to where it came from (original path or URL).
    """

    positives: list[str]
    negatives_hard: list[str]
    negatives_easy: list[str]
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def negatives(self) -> list[str]:
        return self.negatives_hard + self.negatives_easy


def collect_images(images_dir: str | Path, negatives_dir: str | Path | None, config: DataConfig) -> ImageSets:
    """Scan the positive folder and the optional negative folder (sampled down to ``max_negatives``).

    Raises:
        YollavaError: missing/empty folders or no valid image in them.
    """
    positives = [str(p) for p in scan_image_dir(images_dir, what="positive image", option="--images").valid]
    negatives: list[str] = []
    if negatives_dir is not None:
        negatives = [str(p) for p in scan_image_dir(negatives_dir, what="negative image", option="--negatives").valid]
        if len(negatives) > config.max_negatives:
            negatives = sorted(random.Random(config.seed).sample(negatives, config.max_negatives))
            log.info("sampled %d of the negatives (data.max_negatives)", config.max_negatives)
    overlap = set(positives) & set(negatives)
    if overlap:
        raise YollavaError(f"{len(overlap)} image(s) are both positive and negative; keep --images and --negatives separate")
    return ImageSets(positives=positives, negatives_hard=[], negatives_easy=negatives)


def positive_repeats(n_positive: int, n_negative: int, config: DataConfig) -> int:
    """How many recognition samples each positive image gets so the classes balance.

    With 5 positives against 200 negatives and ratio 1.0, each positive is asked 40 different
    ways; without this, training collapses to answering "No" (seen in our probes; the reference data
    for one subject carried 67 positive Q/A on 4 photos against ~214 negatives).
    """
    if n_positive == 0:
        return 0
    return max(config.min_positive_repeats, math.ceil(config.positive_ratio * n_negative / n_positive))


def recognition_samples(images: ImageSets, identifier: str, bank: RecognitionBank, config: DataConfig) -> list[Sample]:
    """Recognition Q/A for every image, questions and answers drawn from the bank (seeded)."""
    rng = random.Random(config.seed)
    samples: list[Sample] = []
    repeats = positive_repeats(len(images.positives), len(images.negatives), config)
    variants = ["", "hflip"] if config.hflip else [""]
    for path in images.positives:
        for index in range(repeats):
            question, answer = bank.sample(rng, identifier, positive=True)
            variant = variants[index % len(variants)]
            samples.append(Sample(question, answer, SampleKind.recognition_positive.value, path, variant, source=path))
    for kind, paths in ((SampleKind.recognition_negative_hard, images.negatives_hard), (SampleKind.recognition_negative_easy, images.negatives_easy)):
        for path in paths:
            question, answer = bank.sample(rng, identifier, positive=False)
            samples.append(Sample(question, answer, kind.value, path, source=images.origin.get(path, path)))
    return samples


def load_text_samples(path: str | Path, identifier: str) -> list[Sample]:
    """Text-only samples from a .jsonl/.json file or a saved HF dataset folder.

    Each record needs ``question`` and ``answer``; ``{name}`` in either is replaced by the
    identifier. Records with an ``image`` are refused: text-only samples teach the latent tokens
    what the image would have shown.

    Raises:
        YollavaError: unreadable file or malformed records.
    """
    path = Path(path)
    records: list[dict[str, Any]]
    if path.is_dir():
        from datasets import load_from_disk  # heavy import, only when used

        try:
            records = list(load_from_disk(str(path)))
        except Exception as exc:  # datasets raises several classes for a wrong folder
            raise YollavaError(f"data.text_samples={path}: not a saved HF dataset ({exc.__class__.__name__}); pass a .jsonl file") from exc
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                records = json.loads(text)
            else:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise YollavaError(f"data.text_samples={path}: invalid JSON at line {exc.lineno}; one {{question, answer}} object per line") from exc
    else:
        raise YollavaError(f"data.text_samples={path}: no such file; pass a .jsonl of {{question, answer}} records")
    samples = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not record.get("question") or not record.get("answer"):
            raise YollavaError(f"data.text_samples={path}: record {index} lacks 'question' or 'answer'")
        if record.get("image"):
            raise YollavaError(f"data.text_samples={path}: record {index} has an image; text-only samples must not")
        samples.append(
            Sample(
                question=str(record["question"]).replace("{name}", identifier),
                answer=str(record["answer"]).replace("{name}", identifier),
                kind=str(record.get("kind", SampleKind.conversation.value)),
                source=str(path),
            )
        )
    return samples


def summarize(samples: Sequence[Sample]) -> dict[str, int]:
    """Counts per kind (recorded in the concept's training summary)."""
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.kind] = counts.get(sample.kind, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- conversation data


@dataclass(frozen=True)
class ConversationBank:
    """Attribute questions per category with the stand-in name (templates/conversation.yaml)."""

    category_question: str
    stand_in: dict[str, str]
    aliases: dict[str, tuple[str, ...]]
    questions: dict[str, tuple[str, ...]]
    version: int

    @classmethod
    def load(cls, name: str = "conversation") -> "ConversationBank":
        data = load_template(name)
        cats = ("person", "other")
        return cls(
            category_question=data["category_question"],
            stand_in={c: data[c]["stand_in"] for c in cats},
            aliases={c: tuple(sorted(data[c]["aliases"], key=len, reverse=True)) for c in cats},
            questions={c: tuple(data[c]["questions"]) for c in cats},
            version=int(data["version"]),
        )

    def personalize(self, text: str, category: str, identifier: str) -> str:
        """Replace the stand-in (and its spellings) by the identifier, longest spelling first."""
        for alias in self.aliases[category]:
            text = text.replace(alias, identifier)
        return text


class Answerer(Protocol):
    """The frozen base as the training set needs it (built by :func:`yollava.prepare.base_answerer`).

    Attributes:
        model_id: recorded as the answers' provenance.
    """

    model_id: str

    def answer(self, image: str, questions: Sequence[str]) -> list[str]:
        """Greedy answers to each question while looking at ``image``."""

    def yes(self, question: str, images: Sequence[str]) -> list[bool]:
        """Whether the answer to ``question`` about each image starts with Yes rather than No."""


def detect_category(answerer: Answerer, positives: Sequence[str], bank: ConversationBank) -> str:
    """"person" or "other": the base model's Yes/No verdict on each positive, majority vote."""
    votes = answerer.yes(bank.category_question, positives)
    return "person" if sum(votes) * 2 > len(votes) else "other"


def conversation_samples(
    answerer: Answerer, positives: Sequence[str], identifier: str, category: str, bank: ConversationBank,
    progress: Callable[[int], None] | None = None,
) -> list[Sample]:
    """Ask the base model every attribute question about every positive, then store it text-only.

    The model sees the photo and a neutral stand-in name ("Riley" / "this subject"); the stand-in is
    replaced by the identifier in question and answer, and the sample is stored without the photo.
    """
    stand_in = bank.stand_in[category]
    questions = bank.questions[category]
    samples = []
    for path in positives:
        answers = answerer.answer(path, [q.replace("{name}", stand_in) for q in questions])
        for question, answer in zip(questions, answers):
            if not answer:
                continue  # an empty answer teaches nothing; it is counted in the summary
            samples.append(Sample(
                question=question.replace("{name}", identifier),
                answer=bank.personalize(answer, category, identifier),
                kind=SampleKind.conversation.value,
                source=path,
                provenance=f"answered by {answerer.model_id} looking at {Path(path).name} as '{stand_in}'",
            ))
        if progress:
            progress(len(questions))
    return samples


# ----------------------------------------------------------------------------- stored training set

DATA_FEATURES = {
    "image": "string", "question": "string", "answer": "string", "kind": "string",
    "variant": "string", "source": "string", "provenance": "string",
}


def save_training_set(samples: Sequence[Sample], folder: str | Path, info: dict[str, Any], lock_target: str | Path | None = None) -> Path:
    """Store samples as an HF dataset at ``folder`` (+ our ``training_set.json``), replacing it as one unit.

    ``datasets.load_from_disk(folder)`` reads it as it is. Staged and swapped in by
    :func:`yollava.storage.staged_folder` under the lock of ``lock_target`` (default: the folder
    holding it, i.e. the concept's), so a crash leaves the old set or the new one, never a mix.

    Raises:
        YollavaError: another process writes the concept, or a write failed (one line; nothing changed).
    """
    from datasets import Dataset, Features, Value

    folder = Path(folder)
    features = Features({key: Value(kind) for key, kind in DATA_FEATURES.items()})
    rows = [{key: getattr(s, key) for key in DATA_FEATURES} for s in samples]
    with staged_folder(folder, lock_target=lock_target or folder.parent) as staged:
        Dataset.from_list(rows, features=features).save_to_disk(str(staged))
        (staged / DATA_INFO).write_text(dump_json(info), encoding="utf-8")
    return folder


def load_training_set(folder: str | Path) -> tuple[list[Sample], dict[str, Any]]:
    """Read a stored training set (samples, info), after the storage protocol's recovery.

    Raises:
        YollavaError: missing or damaged folder.
    """
    from datasets import load_from_disk

    folder = Path(folder)
    settle(folder.parent)
    found = settle(folder, lock_target=folder.parent) or folder
    try:
        info = json.loads((found / DATA_INFO).read_text(encoding="utf-8"))
        dataset = load_from_disk(str(found))
        samples = [Sample(**{key: row[key] for key in DATA_FEATURES}) for row in dataset]
    except Exception as exc:  # datasets/json raise several classes for a damaged folder
        raise YollavaError(f"{folder}: damaged training set ({exc.__class__.__name__}); rebuild it with `yollava build-data ... --overwrite`") from exc
    if not isinstance(info, dict):
        raise YollavaError(f"{folder / DATA_INFO}: not a training-set record; rebuild it with `yollava build-data ... --overwrite`")
    return samples, info


# ----------------------------------------------------------------------------- building it all


@dataclass
class NegativeSource:
    """Where a concept's negatives come from: a plain folder and/or retrieval (pool, index or service)."""

    folder: str | None = None
    pool: str | None = None
    index: str | None = None
    service: str | None = None
    index_name: str | None = None
    per_image: int | None = None
    easy: int = 100
    embedder: str | None = None

    @property
    def retrieval(self) -> bool:
        return any(x is not None for x in (self.pool, self.index, self.service))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather_images(name: str, images_dir: str | Path, store: str | Path, source: NegativeSource, config: DataConfig) -> ImageSets:
    """Positives from ``images_dir``; negatives retrieved now, or stored by an earlier ``yollava retrieve``, plus a folder.

    Raises:
        YollavaError: bad folders, retrieval failures (one line each).
    """
    base_sets = collect_images(images_dir, source.folder, config)
    hard: list[str] = []
    easy: list[str] = []
    origin: dict[str, str] = {}
    negative_set = None
    if source.retrieval:
        from yollava.retrieval.mine import retrieve_negatives

        negative_set = retrieve_negatives(
            name, images_dir, pool=source.pool, index=source.index, service=source.service, index_name=source.index_name,
            per_image=source.per_image, n_easy=source.easy, embedder=source.embedder, store=store, seed=config.seed,
        )
    else:
        from yollava.retrieval.mine import RETRIEVAL_FILE, negatives_dir, read_negatives

        stored = negatives_dir(store, name)
        settle(stored.parent)
        found = settle(stored, lock_target=stored.parent)  # a crash mid-swap leaves them in .negatives.old
        if found is not None and (found / RETRIEVAL_FILE).is_file():
            negative_set = read_negatives(name, store)
            log.info("using the %d negatives stored by `yollava retrieve` in %s", len(negative_set.records), negative_set.directory)
    if negative_set is not None:
        for record in negative_set.records:
            path = str(negative_set.directory / record.file)
            origin[path] = record.source
            (hard if record.kind == "hard" else easy).append(path)
    return ImageSets(base_sets.positives, hard, easy + base_sets.negatives_easy, origin)


def resolve_recipe(recipe: Recipe, images: ImageSets) -> Recipe:
    """``auto`` → ``full`` with hard negatives, else ``recognition+conversation``.

    Raises:
        YollavaError: ``full`` without hard negatives.
    """
    if recipe == Recipe.auto:
        return Recipe.full if images.negatives_hard else Recipe.recognition_conversation
    if recipe == Recipe.full and not images.negatives_hard:
        raise YollavaError(
            "recipe 'full' needs retrieved hard negatives: pass --pool DIR, --index IDX or --service URL --index-name NAME "
            "(or run `yollava retrieve` first), or choose --recipe recognition+conversation"
        )
    return recipe


def training_set_key(name: str, images: ImageSets, recipe: Recipe, config: DataConfig, answered_by: str | None = None) -> dict[str, Any]:
    """What a stored training set was built from; a stored set is reused only when this matches.

    ``answered_by`` (the base's id) counts only for recipes with conversation data: its answers are in them.
    """
    text = config.text_samples
    conversation = recipe in (Recipe.recognition_conversation, Recipe.full)
    return {
        "answered_by": {"model": answered_by, "max_new_tokens": config.conversation_max_new_tokens} if conversation else None,
        "name": name,
        "recipe": recipe.value,
        "category": config.category.value,
        "positives": sorted(file_sha256(p) for p in images.positives),
        "negatives_hard": sorted(images.negatives_hard) if recipe == Recipe.full else [],
        "negatives_easy": sorted(images.negatives_easy),
        "positive_ratio": config.positive_ratio,
        "hflip": config.hflip,
        "seed": config.seed,
        "text_samples": None if not text else {"path": str(text), "sha256": file_sha256(text) if Path(text).is_file() else None},
    }


def build_training_set(
    answerer: Answerer | None, name: str, images: ImageSets, store: str | Path, config: DataConfig,
    rebuild: bool = False, progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
    save_to: str | Path | None = None,
) -> tuple[list[Sample], dict[str, Any]]:
    """Build (or reuse) ``<store>/<name>/data/``: recognition samples, conversation samples, text samples.

    Args:
        answerer: the frozen base (answers the conversation questions; identifies the category);
            only asked when the recipe has conversation data and no matching set is stored.
        name: concept name.
        images: positives and negatives from :func:`gather_images`.
        store: concept store.
        config: data settings (recipe, category, balance, seed).
        rebuild: ignore a stored set even if it matches.
        progress / on_total: progress callbacks for the conversation generation.
        save_to: where a newly built set is written (default the store's ``data/``); a training run
            passes its own folder so the store changes only when the concept is saved with it.
            A matching set there is reused first.

    Returns:
        (samples, info) where info records the key, resolved recipe and category, and counts.

    Raises:
        ValueError: conversation data is needed but no answerer was given.
    """
    from yollava.concept import ConceptTokens, concept_dir

    recipe = resolve_recipe(config.recipe, images)
    key = training_set_key(name, images, recipe, config, getattr(answerer, "model_id", None))
    stored = concept_dir(store, name) / DATA_DIR
    folder = Path(save_to) if save_to is not None else stored
    for candidate in dict.fromkeys([folder, stored]) if not rebuild else ():
        settle(candidate.parent)
        if settle(candidate, lock_target=candidate.parent) is None:
            continue
        try:
            samples, info = load_training_set(candidate)
        except YollavaError as exc:
            log.warning("%s; rebuilding it", exc)
            continue
        if info.get("key") == key:
            log.info("reusing the training set in %s (%d samples)", candidate, len(samples))
            return samples, info
        log.info("the training set in %s was built from other inputs; rebuilding it", candidate)
    identifier = ConceptTokens(name, 0).identifier
    kept = images if recipe == Recipe.full else ImageSets(images.positives, [], images.negatives_easy, images.origin)
    samples = recognition_samples(kept, identifier, RecognitionBank.load(), config)
    category = None
    if recipe in (Recipe.recognition_conversation, Recipe.full):
        if answerer is None:
            raise ValueError(f"recipe {recipe.value} needs the base model to answer the conversation questions")
        bank = ConversationBank.load()
        category = config.category.value if config.category != Category.auto else detect_category(answerer, images.positives, bank)
        if on_total:
            on_total(len(images.positives) * len(bank.questions[category]))
        samples += conversation_samples(answerer, images.positives, identifier, category, bank, progress)
    if config.text_samples:
        samples += load_text_samples(config.text_samples, identifier)
    info = {
        "key": key, "recipe": recipe.value, "category": category, "counts": summarize(samples),
        "base_model": getattr(answerer, "model_id", None), "format_version": 1,
    }
    save_training_set(samples, folder, info)
    return samples, info
