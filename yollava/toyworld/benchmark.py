"""Planning and writing the toy benchmark in the published Yo'LLaVA layout (concepts, negative pool, QA files in the published schemas)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from yollava.errors import YollavaError
from yollava.evaluate.layout import DESCRIPTIONS_FILE, TEST, TEXT_QA_FILE, TRAIN, VISUAL_QA_FILE
from yollava.storage import artifact_lock, settle, staged_folder
from yollava.toyworld.render import render_scene
from yollava.toyworld.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COUNT_WORDS,
    DEFAULT_IMAGE_SIZE,
    FAMILIES,
    FINE_ATTRIBUTES,
    GENERATOR_VERSION,
    SIDE_WORDS,
    TEXT_QUESTIONS,
    VISUAL_QUESTIONS,
    Scene,
    Subject,
    describe_subject,
    item_rng,
    sample_scene,
    sample_subject,
    side_of,
    variant,
)

# File names of the layout, in one place (the splits and QA file names are the published dataset's).
BENCHMARK_FILE = "benchmark.json"
SUBJECTS_DIR = "subjects"  # subjects/<name>/subject.json and scenes.jsonl: what the images show
SUBJECT_FILE = "subject.json"
SCENES_FILE = "scenes.jsonl"
QA_TEXT_FILE = TEXT_QA_FILE  # yollava-text-only-qa.json (RAP / Yo'Chameleon schema)
QA_VISUAL_FILE = VISUAL_QA_FILE  # yollava-visual-qa.json (Yo'LLaVA schema)
DESCRIPTIONS = DESCRIPTIONS_FILE  # descriptions.json: subject -> true description (--descriptions)
POOL_DIR = "pool"
POOL_INDEX_FILE = "pool.jsonl"
TRAIN_DIR = TRAIN
TEST_DIR = TEST
IDENTIFIER_FORMAT = "<{name}>"
# the published files' placeholders (visual QA writes <sks>, text QA a bare sks); yollava.evaluate.qa_files
# replaces either with the concept's identifier
QA_PLACEHOLDER = "<sks>"
TEXT_QA_PLACEHOLDER = "sks"

log = logging.getLogger(__name__)

# Short invented names; beyond these, names get a numeric suffix ("bo-2").
CONCEPT_NAMES = (
    "bo", "mam", "kiki", "toodles", "pip", "nova", "rumi", "zuzu", "momo", "tibo",
    "lulu", "fifi", "kobe", "yuki", "nala", "ozzy", "remy", "suki", "tofu", "wren",
    "bixby", "coco", "dax", "elio", "fenna", "gigi", "hiro", "juno", "kai", "lumi",
    "milo", "nico", "otto", "pia", "quinn", "rosa", "sami", "teo", "uma", "vito",
)  # fmt: skip
MAX_CONCEPTS = 200
# Train scenes are mostly the subject alone (like a user's photos); test scenes always add others.
TRAIN_DISTRACTORS = (0, 0, 1)
TEST_DISTRACTORS = (1, 2, 3)
# Options per question: the published files have two (A, B)
N_OPTIONS = 2
# PNG zlib level 1: ~2x faster than the default level 6 for ~10 % larger files (~1 KB at 64 px).
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class ConceptSpec:
    """A benchmark concept: a named subject identity, possibly a lookalike of another concept."""

    name: str
    subject: Subject
    lookalike_of: str | None = None
    differs_in: str | None = None

    @property
    def identifier(self) -> str:
        """The concept's identifier in questions, e.g. ``<bo>``."""
        return IDENTIFIER_FORMAT.format(name=self.name)

    def to_dict(self) -> dict:
        """The ``subject.json`` content: name, attributes, description and lookalike link."""
        return {
            "name": self.name,
            "identifier": self.identifier,
            **self.subject.to_dict(),
            "is_person": self.subject.is_person,
            "description": describe_subject(self.subject),
            "lookalike_of": self.lookalike_of,
            "differs_in": self.differs_in,
        }


@dataclass(frozen=True)
class PoolItem:
    """One negative-pool image: its scene and, for planted lookalikes, the concept it mimics."""

    index: int
    scene: Scene
    lookalike_of: str | None = None
    differs_in: str | None = None


@dataclass
class BenchmarkPlan:
    """Everything the benchmark contains, decided from the seed before any pixel is drawn.

    Any single image is regenerated with :meth:`concept_scene` / :meth:`pool_item` and
    :func:`~yollava.toyworld.render.render_scene`.
    """

    seed: int
    image_size: int
    pool_size: int
    n_train: int
    n_test: int
    concepts: list[ConceptSpec]
    pool_lookalikes: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def identities(self) -> frozenset[Subject]:
        """Every concept's subject: no pool image and no distractor may show one."""
        return frozenset(c.subject for c in self.concepts)

    def concept(self, name: str) -> ConceptSpec:
        """The concept called ``name``.

        Raises:
            YollavaError: no such concept in the plan.
        """
        for spec in self.concepts:
            if spec.name == name:
                return spec
        raise YollavaError(f"concept {name!r} is not in this benchmark ({', '.join(c.name for c in self.concepts)})")

    def concept_scene(self, name: str, split: str, index: int) -> Scene:
        """Scene ``index`` of a concept's ``train`` or ``test`` split.

        Raises:
            YollavaError: unknown concept or split.
        """
        if split not in (TRAIN_DIR, TEST_DIR):
            raise YollavaError(f"split must be {TRAIN_DIR!r} or {TEST_DIR!r}, got {split!r}")
        spec = self.concept(name)
        rng = item_rng(self.seed, f"concept/{name}/{split}", index)
        n_distractors = rng.choice(TRAIN_DISTRACTORS if split == TRAIN_DIR else TEST_DISTRACTORS)
        return sample_scene(
            rng, spec.subject, image_size=self.image_size, n_distractors=n_distractors, exclude=self.identities
        )

    def pool_item(self, index: int) -> PoolItem:
        """Pool image ``index``: a random subject, or a planted one-attribute lookalike of a concept.

        Raises:
            YollavaError: index outside the pool.
        """
        if not 0 <= index < self.pool_size:
            raise YollavaError(f"pool index {index} outside 0..{self.pool_size - 1}")
        rng = item_rng(self.seed, "pool", index)
        identities = self.identities
        planted = self.pool_lookalikes.get(index)
        if planted is None:
            main = sample_subject(rng, exclude=identities)
        else:
            main = variant(self.concept(planted[0]).subject, planted[1], rng)
            while main in identities:
                main = variant(self.concept(planted[0]).subject, planted[1], rng)
        scene = sample_scene(
            rng, main, image_size=self.image_size, n_distractors=rng.randint(0, 3), exclude=identities, main_largest=True
        )
        return PoolItem(index, scene, *(planted or (None, None)))


def concept_names(n_concepts: int, seed: int) -> list[str]:
    """``n_concepts`` distinct names, shuffled by seed (suffixed "-2", "-3"… past the 40 base names)."""
    names = list(CONCEPT_NAMES)
    item_rng(seed, "names", 0).shuffle(names)
    rounds = -(-n_concepts // len(names))
    pool = [name if r == 0 else f"{name}-{r + 1}" for r in range(rounds) for name in names]
    return pool[:n_concepts]


def plan_concepts(n_concepts: int, seed: int, *, lookalike_fraction: float = 0.3) -> list[ConceptSpec]:
    """Choose the concept identities: base concepts over all families, then lookalikes of some.

    Args:
        n_concepts: how many concepts (1-200).
        seed: world seed.
        lookalike_fraction: share of concepts that copy another concept but one fine attribute
            (pattern, accessory or accessory colour, in turn); at least one when n_concepts >= 2,
            at most half.

    Returns:
        Base concepts first, then lookalikes, each lookalike naming its original.

    Raises:
        YollavaError: n_concepts out of range.
    """
    if not 1 <= n_concepts <= MAX_CONCEPTS:
        raise YollavaError(f"--concepts {n_concepts}: choose between 1 and {MAX_CONCEPTS}")
    rng = item_rng(seed, "concepts", 0)
    n_lookalikes = 0 if n_concepts < 2 else max(1, min(n_concepts // 2, round(n_concepts * lookalike_fraction)))
    names = concept_names(n_concepts, seed)
    families = list(FAMILIES)
    rng.shuffle(families)
    chosen: set[Subject] = set()
    specs: list[ConceptSpec] = []
    for i in range(n_concepts - n_lookalikes):
        while True:
            subject = sample_subject(rng, with_accessory=True, exclude=frozenset(chosen))
            if subject.family == families[i % len(families)]:
                break
        chosen.add(subject)
        specs.append(ConceptSpec(names[len(specs)], subject))
    for j in range(n_lookalikes):
        original = specs[j]
        attribute = FINE_ATTRIBUTES[j % len(FINE_ATTRIBUTES)]
        subject = variant(original.subject, attribute, rng)
        while subject in chosen:
            subject = variant(original.subject, attribute, rng)
        chosen.add(subject)
        specs.append(ConceptSpec(names[len(specs)], subject, original.name, attribute))
    return specs


def plan_benchmark(
    n_concepts: int = 20,
    seed: int = 0,
    pool_size: int = 20000,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    n_train: int = 10,
    n_test: int = 10,
    pool_lookalikes_per_concept: int = 10,
    lookalike_fraction: float = 0.3,
) -> BenchmarkPlan:
    """Decide the whole benchmark from its seed (cheap: no images are drawn).

    Args:
        n_concepts: number of concepts.
        seed: world seed; the same arguments always give the same plan.
        pool_size: number of negative-pool images.
        image_size: image side in pixels (>= 32).
        n_train: images per concept in ``train/``.
        n_test: images per concept in ``test/``.
        pool_lookalikes_per_concept: pool images per concept whose main subject differs from the
            concept in exactly one fine attribute (the hard negatives retrieval should find).
        lookalike_fraction: share of concepts that are lookalikes of another concept.

    Returns:
        The plan.

    Raises:
        YollavaError: a count is out of range.
    """
    if pool_size < 1:
        raise YollavaError(f"pool_size {pool_size} must be at least 1")
    if n_train < 1 or n_test < 1:
        raise YollavaError(f"n_train {n_train} and n_test {n_test} must be at least 1")
    if image_size < 32:
        raise YollavaError(f"image_size {image_size} is too small; use at least 32 px")
    concepts = plan_concepts(n_concepts, seed, lookalike_fraction=lookalike_fraction)
    planted = min(pool_size, pool_lookalikes_per_concept * len(concepts))
    slots = item_rng(seed, "pool-plan", 0).sample(range(pool_size), planted)
    pool_lookalikes = {
        index: (concepts[k % len(concepts)].name, FINE_ATTRIBUTES[(k // len(concepts)) % len(FINE_ATTRIBUTES)])
        for k, index in enumerate(slots)
    }
    return BenchmarkPlan(seed, image_size, pool_size, n_train, n_test, concepts, pool_lookalikes)


def _place_answers(questions: list[dict], rng, offset: int) -> list[dict]:
    """Put each correct answer at a position such that positions are balanced per option count.

    ``offset`` rotates where the cycle starts, so summed over concepts the balance holds too.
    """
    by_count: dict[int, list[dict]] = {}
    for q in questions:
        by_count.setdefault(len(q["wrong"]) + 1, []).append(q)
    for n_options, group in by_count.items():
        positions = [(offset + k) % n_options for k in range(len(group))]
        rng.shuffle(positions)
        for q, position in zip(group, positions):
            wrong = list(q.pop("wrong"))
            rng.shuffle(wrong)
            q["options"] = wrong[:position] + [q.pop("correct")] + wrong[position:]
            q["answer"] = position
    return questions


def _wrong_options(correct: str, candidates: list[str], n_wrong: int, rng, prefer: str | None) -> list[str]:
    """``n_wrong`` distinct wrong answers; ``prefer`` (a lookalike's value) goes first when valid."""
    others = [c for c in candidates if c != correct]
    picked = [prefer] if prefer in others else []
    rest = [c for c in others if c not in picked]
    rng.shuffle(rest)
    return (picked + rest)[:n_wrong]


def text_questions(spec: ConceptSpec, partner: ConceptSpec | None, seed: int, offset: int) -> list[dict]:
    """Text-only two-option questions about a concept's attributes, one per attribute.

    Args:
        spec: the concept.
        partner: its lookalike partner, whose differing value is used as the wrong option.
        seed: world seed.
        offset: rotation of the balanced answer positions (the concept's index).

    Returns:
        Question dicts with ``attribute``, ``question`` (bare ``sks`` placeholder), ``options`` and
        ``answer`` (the correct option's index).
    """
    rng = item_rng(seed, f"qa/{spec.name}/text", 0)
    subject = spec.subject
    questions = []
    for attribute, template in TEXT_QUESTIONS.items():
        correct = getattr(subject, attribute)
        candidates = [v for v in ATTRIBUTES[attribute] if v != "none"]
        if attribute == "accessory_color":
            candidates = [c for c in candidates if c != subject.color]
        prefer = getattr(partner.subject, attribute) if partner else None
        text = template.format(name=TEXT_QA_PLACEHOLDER, accessory=subject.accessory)
        wrong = _wrong_options(correct, candidates, N_OPTIONS - 1, rng, prefer)
        questions.append({"attribute": attribute, "question": text, "correct": correct, "wrong": wrong})
    return _place_answers(questions, rng, offset)


def visual_questions(spec: ConceptSpec, scenes: list[Scene], seed: int, offset: int) -> list[dict]:
    """One two-option question per test image about the concept in it (place, side, count, neighbour).

    The kinds rotate from image to image; a kind that does not apply to an image (no clear side, no
    neighbour) passes to the next one.

    Args:
        spec: the concept.
        scenes: its test scenes, in file order.
        seed: world seed.
        offset: rotation of the balanced answer positions (the concept's index).

    Returns:
        Question dicts like :func:`text_questions` plus ``image`` (``test/<name>/NNN.png``).
    """
    rng = item_rng(seed, f"qa/{spec.name}/visual", 0)
    kinds = list(VISUAL_QUESTIONS)
    questions = []
    for i, scene in enumerate(scenes):
        size = scene.image_size
        present = {p.subject.family for p in scene.subjects}
        for kind in kinds[i % len(kinds):] + kinds[: i % len(kinds)]:
            centre = (scene.main.box[0] + scene.main.box[2]) / 2
            if kind == "background":
                correct, wrong = scene.background, _wrong_options(scene.background, list(BACKGROUNDS), 1, rng, None)
            elif kind == "side":
                # A subject straddling the middle has no clear side: skip rather than guess.
                if abs(centre - size / 2) < size / 10:
                    continue
                correct = side_of(scene.main, size)
                wrong = [w for w in SIDE_WORDS if w != correct]
            elif kind == "count":
                correct = COUNT_WORDS[len(scene.distractors)]
                wrong = _wrong_options(correct, list(COUNT_WORDS), 1, rng, None)
            else:
                absent = [f for f in FAMILIES if f not in present]
                if not scene.distractors or not absent:
                    continue
                correct = rng.choice(sorted({p.subject.family for p in scene.distractors}))
                wrong = _wrong_options(correct, absent, 1, rng, None)
            questions.append({
                "image": f"{TEST_DIR}/{spec.name}/{i:03d}.png",
                "attribute": kind,
                "question": VISUAL_QUESTIONS[kind].format(name=QA_PLACEHOLDER),
                "correct": correct,
                "wrong": wrong,
            })
            break
    return _place_answers(questions, rng, offset)


def published_entry(question: dict, options_key: str) -> dict:
    """A question in the published files' schema: ``question``, lettered options, ``correct_answer``."""
    letters = "ABCDEFGHIJ"
    return {
        "question": question["question"],
        options_key: {letters[i]: option for i, option in enumerate(question["options"])},
        "correct_answer": letters[question["answer"]],
    }


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _save_png(scene: Scene, path: Path) -> None:
    render_scene(scene).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _progress(enabled: bool):
    """A bar on a terminal, about ten log lines per task off one, nothing when disabled."""
    if not enabled:
        return Progress(disable=True)
    from rich.console import Console

    from yollava.progress import progress_bar

    return progress_bar(Console(stderr=True))


def read_benchmark(path: str | Path) -> dict:
    """The ``benchmark.json`` of a generated benchmark, after the storage protocol's recovery.

    Raises:
        YollavaError: no benchmark at ``path`` or an unreadable summary.
    """
    folder = settle(Path(path))
    if folder is None or not (folder / BENCHMARK_FILE).is_file():
        raise YollavaError(f"{path}: no toy benchmark here (no {BENCHMARK_FILE}); create one with `yollava toy generate --out {path}`")
    try:
        summary = json.loads((folder / BENCHMARK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise YollavaError(f"{folder / BENCHMARK_FILE}: unreadable ({exc.__class__.__name__}); generate the benchmark again with --overwrite") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("concepts"), list):
        raise YollavaError(f"{folder / BENCHMARK_FILE}: not a benchmark summary; generate the benchmark again with --overwrite")
    return summary


def generate_benchmark(
    out_dir: str | Path,
    n_concepts: int = 20,
    seed: int = 0,
    pool_size: int = 20000,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    n_train: int = 10,
    n_test: int = 10,
    pool_lookalikes_per_concept: int = 10,
    lookalike_fraction: float = 0.3,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the toy benchmark in the Yo'LLaVA layout, atomically.

    Layout under ``out_dir`` (the published yollava-data layout, split first): ``train/<name>/NNN.png``
    and ``test/<name>/NNN.png`` per concept; ``yollava-visual-qa.json`` (one question per test photo,
    the Yo'LLaVA repository's schema) and ``yollava-text-only-qa.json`` (one question per attribute,
    the RAP / Yo'Chameleon schema), both with the ``<sks>`` placeholder; ``descriptions.json``
    (subject -> its true description, for ``yollava eval --method description``);
    ``subjects/<name>/subject.json`` and ``subjects/<name>/scenes.jsonl`` (the scene graph of every
    image, paths relative to ``out_dir``); ``benchmark.json``; ``pool/NNNNN.png`` with
    ``pool/pool.jsonl`` (path relative to ``pool/``, main-subject attributes, planted-lookalike link
    and scene graph per line). Everything is written into ``.<out_dir>.tmp-*`` first and
    swapped into place at the end, so a crash never leaves a half-written benchmark.

    Args:
        out_dir: destination folder (must not exist unless ``overwrite``).
        n_concepts: number of concepts (1-200).
        seed: world seed; same arguments give byte-identical files.
        pool_size: number of negative-pool images.
        image_size: image side in pixels (>= 32).
        n_train: images per concept in ``train/``.
        n_test: images per concept in ``test/``.
        pool_lookalikes_per_concept: planted one-fine-attribute lookalikes per concept in the pool.
        lookalike_fraction: share of concepts that are lookalikes of another concept.
        overwrite: replace an existing ``out_dir``.
        progress: show a rich progress bar (counts, rate, ETA).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        YollavaError: ``out_dir`` exists (without ``overwrite``), a count is out of range, another process
            is writing it, or a write failed (one line; nothing was changed).
    """
    out = Path(out_dir)
    # Locked from the existence check to the swap; written into .<out>.tmp-* and swapped in whole
    # (storage.staged_folder), so a crash or a kill leaves the old benchmark or none, and the next
    # run deletes what a killed one left.
    with artifact_lock(out, what=f"toy benchmark {out}"):
        settle(out)
        if out.exists() and not overwrite:
            raise YollavaError(f"--out {out}: already exists; pass --overwrite or choose another folder")
        plan = plan_benchmark(
            n_concepts,
            seed,
            pool_size,
            image_size,
            n_train=n_train,
            n_test=n_test,
            pool_lookalikes_per_concept=pool_lookalikes_per_concept,
            lookalike_fraction=lookalike_fraction,
        )
        started = time.perf_counter()
        with staged_folder(out) as tmp:
            counts = _write_all(plan, tmp, progress)
            _write_json(tmp / BENCHMARK_FILE, _benchmark_summary(plan, counts))
    total = counts["concept_images"] + counts["pool_images"]
    log.info("wrote %d images to %s in %.1f s", total, out, time.perf_counter() - started)
    return out


def _write_all(plan: BenchmarkPlan, root: Path, show_progress: bool) -> dict:
    """Write concepts then pool into ``root``; returns the counts for ``benchmark.json``."""
    n_concept_images = len(plan.concepts) * (plan.n_train + plan.n_test)
    counts = {"concept_images": n_concept_images, "pool_images": plan.pool_size, "qa_text": 0, "qa_visual": 0}
    with _progress(show_progress) as bar:
        concept_task = bar.add_task("concepts", total=n_concept_images, info="", log_every=max(1, n_concept_images // 10))
        pool_task = bar.add_task("pool", total=plan.pool_size, info="", log_every=max(1, plan.pool_size // 10))
        text_qa: dict[str, dict] = {}
        visual_qa: dict[str, dict] = {}
        for offset, spec in enumerate(plan.concepts):
            text, visual = _write_concept(plan, spec, root, offset, lambda: bar.advance(concept_task))
            text_qa[spec.name] = {str(i): published_entry(q, "option") for i, q in enumerate(text)}
            visual_qa[spec.name] = {q["image"]: published_entry(q, "options") for q in visual}
            counts["qa_text"] += len(text)
            counts["qa_visual"] += len(visual)
        _write_json(root / QA_TEXT_FILE, text_qa)
        _write_json(root / QA_VISUAL_FILE, visual_qa)
        _write_json(root / DESCRIPTIONS, {spec.name: describe_subject(spec.subject) for spec in plan.concepts})
        pool = root / POOL_DIR
        pool.mkdir()
        width = max(5, len(str(plan.pool_size - 1)))
        with open(pool / POOL_INDEX_FILE, "w", encoding="utf-8") as index_file:
            for i in range(plan.pool_size):
                item = plan.pool_item(i)
                name = f"{i:0{width}d}.png"
                _save_png(item.scene, pool / name)
                record = {
                    "path": name,
                    "index": i,
                    "attributes": item.scene.main.subject.to_dict(),
                    "lookalike_of": item.lookalike_of,
                    "differs_in": item.differs_in,
                    "scene": item.scene.to_dict(),
                }
                index_file.write(json.dumps(record) + "\n")
                bar.advance(pool_task)
    return counts


def _write_concept(plan: BenchmarkPlan, spec: ConceptSpec, root: Path, offset: int, tick) -> tuple[list[dict], list[dict]]:
    """One concept's images, scene graphs and subject.json; returns its (text, visual) questions."""
    scenes_by_split: dict[str, list[Scene]] = {}
    records = []
    for split, count in ((TRAIN_DIR, plan.n_train), (TEST_DIR, plan.n_test)):
        (root / split / spec.name).mkdir(parents=True)
        scenes_by_split[split] = []
        for i in range(count):
            scene = plan.concept_scene(spec.name, split, i)
            path = f"{split}/{spec.name}/{i:03d}.png"
            _save_png(scene, root / path)
            scenes_by_split[split].append(scene)
            records.append({"path": path, "split": split, "index": i, "scene": scene.to_dict()})
            tick()
    meta = root / SUBJECTS_DIR / spec.name
    meta.mkdir(parents=True)
    with open(meta / SCENES_FILE, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    partner = _partner(plan, spec)
    subject = spec.to_dict()
    subject["pool_lookalikes"] = sum(1 for name, _ in plan.pool_lookalikes.values() if name == spec.name)
    _write_json(meta / SUBJECT_FILE, subject)
    return text_questions(spec, partner, plan.seed, offset), visual_questions(spec, scenes_by_split[TEST_DIR], plan.seed, offset)


def _partner(plan: BenchmarkPlan, spec: ConceptSpec) -> ConceptSpec | None:
    """The concept ``spec`` is a lookalike of, or the first lookalike of ``spec``."""
    if spec.lookalike_of:
        return plan.concept(spec.lookalike_of)
    return next((c for c in plan.concepts if c.lookalike_of == spec.name), None)


def _benchmark_summary(plan: BenchmarkPlan, counts: dict) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": plan.seed,
        "image_size": plan.image_size,
        "n_concepts": len(plan.concepts),
        "n_train": plan.n_train,
        "n_test": plan.n_test,
        "pool_size": plan.pool_size,
        "pool_main_largest": True,  # every pool image is a photo of its main subject (world.sample_scene)
        "identifier_format": IDENTIFIER_FORMAT,
        "concepts": [c.name for c in plan.concepts],
        "lookalikes": [
            {"concept": c.name, "lookalike_of": c.lookalike_of, "differs_in": c.differs_in}
            for c in plan.concepts
            if c.lookalike_of
        ],
        "pool_lookalikes": len(plan.pool_lookalikes),
        "counts": counts,
        "files": {
            "train": f"{TRAIN_DIR}/<name>/",
            "test": f"{TEST_DIR}/<name>/",
            "subject": f"{SUBJECTS_DIR}/<name>/{SUBJECT_FILE}",
            "scenes": f"{SUBJECTS_DIR}/<name>/{SCENES_FILE}",
            "qa_text": QA_TEXT_FILE,
            "qa_visual": QA_VISUAL_FILE,
            "descriptions": DESCRIPTIONS,
            "pool_index": f"{POOL_DIR}/{POOL_INDEX_FILE}",
        },
    }
