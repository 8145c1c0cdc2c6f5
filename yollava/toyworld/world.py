"""The toy world: attribute vocabulary, subjects, seeded scene sampling, scene graphs and text."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields
from functools import lru_cache

from yollava.errors import YollavaError

# Bump when sampling, layout or rendering changes: the same seed then gives other images.
GENERATOR_VERSION = "1"
DEFAULT_IMAGE_SIZE = 64
# Below 32 px the patterns (3-4 px period) and accessories stop being legible.
MIN_IMAGE_SIZE = 32

FAMILIES = ("person", "pet", "object", "landmark", "vehicle", "plant")
SHAPES = ("round", "square", "triangular", "diamond")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "black")
PATTERNS = ("plain", "striped", "dotted", "checkered")
ACCESSORIES = ("none", "hat", "scarf", "bag", "flag")
ACCESSORY_COLORS = ("red", "yellow", "green", "blue", "white", "black")
SIZES = ("small", "medium", "large")
BACKGROUNDS = ("park", "beach", "room", "street", "snow", "night")

# Attribute name -> allowed values; the order is the order of Subject's fields.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "family": FAMILIES,
    "shape": SHAPES,
    "color": COLORS,
    "pattern": PATTERNS,
    "accessory": ACCESSORIES,
    "accessory_color": ACCESSORY_COLORS,
    "size": SIZES,
}
# The attributes a lookalike may differ in: small on screen, so only hard negatives separate them.
FINE_ATTRIBUTES = ("pattern", "accessory", "accessory_color")
# Families the Yo'LLaVA recipe treats as people (other question set, stand-in name "Riley").
PERSON_FAMILIES = frozenset({"person"})

# Subject height as a fraction of the image side, before a per-scene jitter of +-10 %.
SIZE_FRACTION = {"small": 0.36, "medium": 0.46, "large": 0.58}
SCALE_JITTER = 0.10
# Width / height of each family's silhouette (pets and vehicles are wide, people tall).
ASPECT = {"person": 0.6, "pet": 1.25, "object": 0.8, "landmark": 0.62, "vehicle": 1.3, "plant": 0.62}
# A distractor may cover at most this fraction of the smaller of two boxes; the main subject is
# drawn last, so it is never hidden, and distractors stay mostly visible.
MAX_OVERLAP = 0.25
PLACEMENT_TRIES = 24

BACKGROUND_PHRASES = {
    "park": "in a park",
    "beach": "on a beach",
    "room": "in a room",
    "street": "on a street",
    "snow": "in the snow",
    "night": "at night",
}
COUNT_WORDS = ("zero", "one", "two", "three")
SIDE_WORDS = ("left", "right")

# Question templates; "{name}" is the concept identifier (e.g. "<bo>"), never a vocabulary word.
TEXT_QUESTIONS = {
    "family": "What kind of subject is {name}?",
    "shape": "What shape is {name}?",
    "color": "What color is {name}?",
    "pattern": "What pattern does {name} have?",
    "accessory": "What accessory does {name} have?",
    "accessory_color": "What color is the {accessory} of {name}?",
    "size": "How big is {name}?",
}
VISUAL_QUESTIONS = {
    "background": "Where is {name} in this photo?",
    "side": "Is {name} on the left or the right of this photo?",
    "count": "How many other subjects are in this photo with {name}?",
    "neighbor": "What else is in this photo with {name}?",
}
CAPTION_WORDS = ("a", "an", "with", "next", "to", "and")
PUNCTUATION = ("?", ".", ",")
_WORD_RE = re.compile(r"[a-z]+|[?.,]")


@dataclass(frozen=True)
class Subject:
    """One subject's identity: every attribute that decides how it looks (not where it stands)."""

    family: str
    shape: str
    color: str
    pattern: str
    accessory: str
    accessory_color: str | None
    size: str

    def __post_init__(self) -> None:
        for name, allowed in ATTRIBUTES.items():
            value = getattr(self, name)
            if name == "accessory_color" and self.accessory == "none":
                if value is not None:
                    raise YollavaError(f"subject: accessory_color must be null when accessory is none, got {value!r}")
                continue
            if value not in allowed:
                raise YollavaError(f"subject: {name}={value!r} is not one of {', '.join(allowed)}")
        if self.accessory_color == self.color:
            # Same-coloured accessories vanish into the body; the world never makes them.
            raise YollavaError(f"subject: accessory_color equals color ({self.color}); pick another colour")

    @property
    def is_person(self) -> bool:
        """Whether the Yo'LLaVA recipe treats this subject as a person."""
        return self.family in PERSON_FAMILIES

    def to_dict(self) -> dict[str, str | None]:
        """The attributes as a JSON-ready dict (field order)."""
        # Not dataclasses.asdict: its deep copy made 10 % of benchmark writing time.
        return {name: getattr(self, name) for name in ATTRIBUTES}

    @classmethod
    def from_dict(cls, data: dict) -> Subject:
        """Build a subject from :meth:`to_dict` output, ignoring keys that are not attributes.

        Args:
            data: mapping with every attribute key.

        Returns:
            The validated subject.

        Raises:
            YollavaError: an attribute is missing or has a value the world does not know.
        """
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise YollavaError(f"subject: missing attribute(s) {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})

    def differences(self, other: Subject) -> list[str]:
        """Names of the attributes in which ``other`` differs from this subject."""
        return [n for n in ATTRIBUTES if getattr(self, n) != getattr(other, n)]


@dataclass(frozen=True)
class PlacedSubject:
    """A subject standing in a scene; ``box`` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    subject: Subject
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        """JSON-ready dict: the subject's attributes plus ``box``."""
        return {**self.subject.to_dict(), "box": list(self.box)}


@dataclass(frozen=True)
class Scene:
    """A scene graph: everything the renderer needs, so an image is a pure function of it.

    ``subjects[0]`` is the main subject (the concept, or the pool image's labelled subject);
    the rest are distractors, drawn before it.
    """

    image_size: int
    background: str
    horizon: int
    subjects: tuple[PlacedSubject, ...]

    @property
    def main(self) -> PlacedSubject:
        """The labelled subject (first in the graph)."""
        return self.subjects[0]

    @property
    def distractors(self) -> tuple[PlacedSubject, ...]:
        """Every subject but the main one."""
        return self.subjects[1:]

    def to_dict(self) -> dict:
        """JSON-ready scene graph."""
        return {
            "image_size": self.image_size,
            "background": self.background,
            "horizon": self.horizon,
            "subjects": [p.to_dict() for p in self.subjects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Rebuild a scene from :meth:`to_dict` output.

        Args:
            data: a scene graph as written by the generator.

        Returns:
            The scene.

        Raises:
            YollavaError: a key is missing or a value is not one the world knows.
        """
        try:
            if data["background"] not in BACKGROUNDS:
                raise YollavaError(f"scene: unknown background {data['background']!r}")
            subjects = tuple(
                PlacedSubject(Subject.from_dict(s), tuple(int(v) for v in s["box"])) for s in data["subjects"]
            )
            return cls(int(data["image_size"]), data["background"], int(data["horizon"]), subjects)
        except KeyError as exc:
            raise YollavaError(f"scene: missing key {exc.args[0]!r}") from exc


def item_rng(seed: int, stream: str, index: int) -> random.Random:
    """The random source of one item, so any image can be regenerated alone.

    Args:
        seed: the world seed.
        stream: what the item belongs to, e.g. ``"pool"`` or ``"concept/bo/test"``.
        index: the item's index in its stream.

    Returns:
        A ``random.Random`` seeded from the string ``"{seed}:{stream}:{index}"`` (string seeds are
        hashed with SHA-512, stable across Python runs and platforms).
    """
    return random.Random(f"{GENERATOR_VERSION}:{seed}:{stream}:{index}")


def sample_subject(rng: random.Random, *, with_accessory: bool = False, exclude: frozenset = frozenset()) -> Subject:
    """Draw a uniformly random subject that is not in ``exclude``.

    Args:
        rng: random source.
        with_accessory: never draw accessory "none" (benchmark concepts always wear one, so that
            accessory-colour lookalikes exist).
        exclude: subjects that must not be drawn (e.g. the benchmark's concept identities).

    Returns:
        The subject.
    """
    while True:
        color = rng.choice(COLORS)
        accessory = rng.choice(ACCESSORIES[1:] if with_accessory else ACCESSORIES)
        accessory_color = None if accessory == "none" else rng.choice([c for c in ACCESSORY_COLORS if c != color])
        subject = Subject(
            family=rng.choice(FAMILIES),
            shape=rng.choice(SHAPES),
            color=color,
            pattern=rng.choice(PATTERNS),
            accessory=accessory,
            accessory_color=accessory_color,
            size=rng.choice(SIZES),
        )
        if subject not in exclude:
            return subject


def variant(subject: Subject, attribute: str, rng: random.Random) -> Subject:
    """A copy of ``subject`` that differs in exactly ``attribute`` (a lookalike).

    Args:
        subject: the original.
        attribute: one of :data:`FINE_ATTRIBUTES` or any other attribute except accessory "none"
            transitions, which would change two attributes (accessory and its colour).
        rng: random source for the new value.

    Returns:
        The lookalike subject.

    Raises:
        YollavaError: the attribute is unknown or has no other valid value for this subject.
    """
    if attribute not in ATTRIBUTES:
        raise YollavaError(f"variant: unknown attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
    current = getattr(subject, attribute)
    if attribute == "accessory":
        if subject.accessory == "none":
            raise YollavaError("variant: a subject without accessory has no one-attribute accessory variant")
        options = [a for a in ACCESSORIES[1:] if a != current]
    elif attribute == "accessory_color":
        if subject.accessory == "none":
            raise YollavaError("variant: a subject without accessory has no accessory colour to change")
        options = [c for c in ACCESSORY_COLORS if c not in (current, subject.color)]
    elif attribute == "color":
        options = [c for c in COLORS if c not in (current, subject.accessory_color)]
    else:
        options = [v for v in ATTRIBUTES[attribute] if v != current]
    return Subject(**{**subject.to_dict(), attribute: rng.choice(options)})


def subject_box_size(subject: Subject, image_size: int, rng: random.Random) -> tuple[int, int]:
    """Width and height in pixels of a subject drawn at this scene's scale (jittered +-10 %)."""
    scale = 1.0 + rng.uniform(-SCALE_JITTER, SCALE_JITTER)
    height = max(8, round(SIZE_FRACTION[subject.size] * image_size * scale))
    width = max(6, min(image_size, round(height * ASPECT[subject.family])))
    return width, height


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _place(width: int, height: int, image_size: int, horizon: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A box whose feet stand on the ground (below the horizon) and which fits in the image."""
    x0 = rng.randint(0, image_size - width)
    low = max(height, horizon + 2)
    y1 = rng.randint(min(low, image_size), image_size)
    return (x0, y1 - height, x0 + width, y1)


def sample_scene(
    rng: random.Random,
    main: Subject,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_distractors: int = 0,
    exclude: frozenset = frozenset(),
    main_largest: bool = False,
) -> Scene:
    """Put ``main`` into a random scene with up to ``n_distractors`` other subjects.

    Args:
        rng: random source (use :func:`item_rng` so the item can be regenerated alone).
        main: the labelled subject.
        image_size: side of the square image in pixels (>= 32).
        n_distractors: how many distractors to try to place (0-3); one that finds no free spot in
            24 tries is left out, and the scene graph lists only what was placed.
        exclude: identities no distractor may have (the main subject is always excluded too).
        main_largest: a photo *of* ``main``, as a web photo is of what its caption names: every
            distractor is of a smaller size class (a small main subject stands alone). The
            negative pool is drawn so; a concept's own photos are not.

    Returns:
        The scene graph.

    Raises:
        YollavaError: image_size below 32 or n_distractors outside 0-3.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise YollavaError(f"image_size {image_size} is too small; use at least {MIN_IMAGE_SIZE} px")
    if not 0 <= n_distractors <= 3:
        raise YollavaError(f"n_distractors {n_distractors} must be between 0 and 3")
    background = rng.choice(BACKGROUNDS)
    horizon = rng.randint(round(0.40 * image_size), round(0.62 * image_size))
    main_box = _place(*subject_box_size(main, image_size, rng), image_size, horizon, rng)
    placed = [PlacedSubject(main, main_box)]
    banned = exclude | {main}
    smaller = SIZES[: SIZES.index(main.size)] if main_largest else SIZES
    for _ in range(n_distractors if smaller else 0):
        other = sample_subject(rng, exclude=banned)
        if other.size not in smaller:
            other = Subject(**{**other.to_dict(), "size": rng.choice(smaller)})
            if other in banned:
                continue
        width, height = subject_box_size(other, image_size, rng)
        for _ in range(PLACEMENT_TRIES):
            box = _place(width, height, image_size, horizon, rng)
            if all(_overlap(box, p.box) <= MAX_OVERLAP for p in placed):
                placed.append(PlacedSubject(other, box))
                break
    return Scene(image_size, background, horizon, tuple(placed))


def article(word: str) -> str:
    """English indefinite article for the word that follows it."""
    return "an" if word[0] in "aeiou" else "a"


def describe_subject(subject: Subject) -> str:
    """Short English description, e.g. "a small red striped round pet with a blue hat".

    Args:
        subject: the subject.

    Returns:
        Lowercase words from :func:`vocabulary`, no punctuation.
    """
    words = f"{subject.size} {subject.color} {subject.pattern} {subject.shape} {subject.family}"
    text = f"{article(words)} {words}"
    if subject.accessory != "none":
        text += f" with {article(subject.accessory_color)} {subject.accessory_color} {subject.accessory}"
    return text


def caption(scene: Scene, *, background: bool = True) -> str:
    """Caption of a scene: the main subject in full, the place, then each distractor's colour and family.

    Args:
        scene: the scene graph.
        background: name the place ("in a park"); the toy CLIP trains without it so that its
            image embedding ranks neighbours by subject, not by backdrop.

    Returns:
        e.g. "a small red striped round pet with a blue hat in a park next to a green plant and
        a black vehicle" (lowercase vocabulary words, no punctuation).
    """
    text = describe_subject(scene.main.subject)
    if background:
        text += f" {BACKGROUND_PHRASES[scene.background]}"
    others = [f"{article(p.subject.color)} {p.subject.color} {p.subject.family}" for p in scene.distractors]
    if others:
        text += " next to " + " and ".join(others)
    return text


def side_of(placed: PlacedSubject, image_size: int) -> str:
    """"left" or "right": which half of the image holds the centre of the subject's box."""
    return "left" if placed.box[0] + placed.box[2] < image_size else "right"


def split_words(text: str) -> list[str]:
    """Lowercase word-level tokens of a text: words and the marks ``? . ,``; other characters drop."""
    return _WORD_RE.findall(text.lower())


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    words: set[str] = set(PUNCTUATION) | set(CAPTION_WORDS) | set(COUNT_WORDS) | set(SIDE_WORDS)
    for values in ATTRIBUTES.values():
        words.update(values)
    words.update(BACKGROUNDS)
    for text in (*BACKGROUND_PHRASES.values(), *TEXT_QUESTIONS.values(), *VISUAL_QUESTIONS.values()):
        words.update(split_words(re.sub(r"\{\w+\}", " ", text)))
    return tuple(sorted(words))


def vocabulary() -> list[str]:
    """Every word-level token the world's text can produce (captions, descriptions, questions, answers).

    Returns:
        Sorted lowercase tokens, including the punctuation marks ``? . ,``. Concept identifiers
        such as ``<bo>`` are not part of it: they are added per concept.
    """
    return list(_vocabulary())
