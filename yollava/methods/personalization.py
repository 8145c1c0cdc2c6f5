"""What every method produces for a subject (a :class:`Personalization`) and how a question becomes a prompt from it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Sequence

import torch
from rich.console import Console

from yollava.base import Base
from yollava.errors import YollavaError
from yollava.evaluate.layout import TRAIN, Benchmark
from yollava.forward import FeatureCache, ImageRef, PrefixCache
from yollava.prompts import ChatFormat, Encoded, Turn, encode, load_template, render


@dataclass(frozen=True)
class Personalization:
    """How one subject is given to the model for every question of an evaluation.

    The user message of a query is ``[<image>\\n + reference text] x N``, then ``<image>\\n`` for the
    scene (if any; after reference photos followed by ``scene_text``), then ``prefix`` and the
    question: for a soft prompt exactly the training prompt (``<image>\\n<bo> is <bo_1>…<bo_16>.
    {question}``), for in-context PVIT's released format (``<image>\\nThis is <bo>.\\n<image>\\nAnswer
    the following question based on the image:\\n{question}``, PVIT's ``cli_personalize.py``).

    Attributes:
        method: the method's registry name.
        subject: the benchmark subject.
        identifier: how questions name the subject (``<bo>`` for a trained concept).
        prefix: text before the question (soft prompt, description; "" for vanilla).
        references: reference photos shown before the scene (in-context).
        reference_text: the text after each reference photo (``{name}`` is the identifier).
        scene_text: the text after the scene photo when reference photos came before it.
        train_seconds: training time of a trained method (None when nothing is trained).
        info: what the method used (description text, reference paths, concept record), for the results.
    """

    method: str
    subject: str
    identifier: str
    prefix: str = ""
    references: tuple[str, ...] = ()
    reference_text: str = "This is {name}.\n"
    scene_text: str = ""
    train_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def user_text(self, fmt: ChatFormat, question: str, scene: bool) -> str:
        """The first user message for ``question`` (image placeholders included)."""
        block = fmt.image_placeholder + self.reference_text.replace("{name}", self.identifier)
        refs = block * len(self.references)
        prefix = f"{self.prefix} " if self.prefix else ""
        scene_part = (fmt.image_placeholder + (self.scene_text if self.references else "")) if scene else ""
        return f"{refs}{scene_part}{prefix}{question}"

    def images(self, scene: str | None) -> list[ImageRef]:
        """The images of a query in the order of their placeholders: references, then the scene."""
        return [ImageRef(p) for p in self.references] + ([ImageRef(scene)] if scene else [])

    def bare(self) -> "Personalization":
        """The same naming with nothing about the subject (no prefix, no references)."""
        return replace(self, prefix="", references=())


@dataclass
class Query:
    """A prompt ready for the model: token ids (images expanded) and its images in order."""

    ids: list[int]
    images: list[ImageRef]


def build_query(base: Base, fmt: ChatFormat, person: Personalization, question: str, scene: str | None) -> Query:
    """The generation prompt (ending with the assistant role) for ``question`` about ``scene`` (None: text only)."""
    segments = render(fmt, [Turn(person.user_text(fmt, question, scene is not None), None)], base.tokenizer.eos_token)
    return Query(encode(base.tokenizer, segments, base.image_token_id, base.num_image_tokens).input_ids, person.images(scene))


def build_answered(base: Base, fmt: ChatFormat, person: Personalization, question: str, scene: str | None, answer: str) -> tuple[Encoded, list[ImageRef]]:
    """The prompt with ``answer`` as the assistant's reply, labelled on the answer tokens (EOS included)."""
    segments = render(fmt, [Turn(person.user_text(fmt, question, scene is not None), answer)], base.tokenizer.eos_token)
    return encode(base.tokenizer, segments, base.image_token_id, base.num_image_tokens), person.images(scene)


def tokens_per_query(base: Base, fmt: ChatFormat, person: Personalization) -> int:
    """Prompt tokens the personalization adds to a query (prefix + reference blocks, images expanded).

    Measured on the base's own tokenizer as the length difference between a recognition prompt with
    and without the personalization (576 per reference photo on LLaVA-1.5, 64 on the toy model).
    """
    question = f"Is {person.identifier} in this photo?"
    full = build_query(base, fmt, person, question, scene="_")
    bare = build_query(base, fmt, person.bare(), question, scene="_")
    return len(full.ids) - len(bare.ids)


def plain_name(base: Base, subject: str) -> str:
    """How a method that trains nothing names the subject: ``<subject>`` as plain text.

    A base whose tokenizer cannot spell it (the toy LLaVA's word-level vocabulary turns ``bo`` into
    ``<unk>``) gets its first free name token instead (``<x00>``, a name it reads as "a subject
    introduced in this prompt"), so every untrained method asks about a name rather than ``<unk>``.
    """
    name = f"<{subject}>"
    tokenizer = base.tokenizer
    ids = tokenizer(name, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids and base.free_names:
        return base.free_names[0]
    return name


def base_fingerprint(base: Base) -> str:
    """A short hash of the base's id and of slices of its embedding and head weights (cache keys: a retrained base differs)."""
    digest = hashlib.sha256(repr(sorted(base.describe().items())).encode())
    for matrix in (base.model.get_input_embeddings().weight, base.model.get_output_embeddings().weight):
        digest.update(matrix.detach().flatten()[:4096].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class MethodInputs:
    """What methods may need besides the model; checked before the model loads.

    Attributes:
        benchmark: the ``--data`` dataset (training photos in ``train/<subject>/``).
        store: the concept store (trained concepts, cached auto descriptions).
        refs: reference photos per query for ``in-context`` (``--refs``).
        descriptions: subject -> description text (``--descriptions``), or None.
        descriptions_file: where ``descriptions`` came from (for messages and results).
        max_new_tokens: cap on generated text (auto descriptions), None for the template's lengths.
        companions: subject -> other concepts of the store loaded with it (``soft-prompt``: attached
            and their soft prompts after its own, as ``yollava chat --concept a --concept b`` does).
    """

    benchmark: Benchmark
    store: Path
    refs: int = 1
    descriptions: dict[str, str] | None = None
    descriptions_file: str | None = None
    max_new_tokens: int | None = None
    companions: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def train_images(self, subject: str) -> list[str]:
        return self.benchmark.images(TRAIN, subject)


@dataclass
class MethodContext:
    """A loaded base and what it shares across methods and concepts (one cache: image features and prefix keys/values)."""

    inputs: MethodInputs
    base: Base
    fmt: ChatFormat
    features: FeatureCache | PrefixCache
    console: Console | None = None


class Method:
    """How a subject is given to the model. Subclasses set ``name`` and implement :meth:`personalize`.

    ``check`` runs before the model loads, so a bad input fails with one line and nothing written.
    Methods with ``trains = False`` are given ``ctx.base.plain()`` by the harness: its tokenizer
    predates every concept, so ``<bo>`` is plain text for them.
    """

    name: ClassVar[str]
    trains: ClassVar[bool] = False

    def check(self, inputs: MethodInputs, subject: str) -> None:
        """Raise :class:`YollavaError` if this method cannot run for ``subject`` with ``inputs``."""

    def personalize(self, ctx: MethodContext, subject: str) -> ContextManager[Personalization]:
        """Set up ``subject`` on ``ctx.base`` for the duration of a ``with`` block (attach, then detach)."""
        raise NotImplementedError


def evaluation_template() -> dict[str, Any]:
    """``templates/evaluation.yaml``: the tasks' and prompting methods' wording."""
    return load_template("evaluation")


def description_prefix(description: str, identifier: str) -> str:
    """A description as the text before a question, naming the subject by ``identifier``.

    A description that names the subject itself (``<sks> is a charming Shiba Inu ...``, the placeholder
    of the published description files) keeps its wording with the placeholder replaced; any other
    (``a small red striped round pet``, or a base's own summary ``A small red ...``) becomes
    ``{identifier} is {description}.``, a leading article lower-cased.
    """
    from yollava.evaluate.qa_files import personalize

    text = " ".join(personalize(description, identifier).split())
    if identifier in text:
        return text if text.endswith((".", "!", "?")) else text + "."
    first, _, rest = text.partition(" ")
    if first in ("A", "An", "The"):
        text = f"{first.lower()} {rest}"
    return evaluation_template()["description"]["prefix"].replace("{name}", identifier).replace("{description}", text.rstrip(". "))


def first_n_references(inputs: MethodInputs, subject: str, n: int) -> list[str]:
    """The first ``n`` training photos of ``subject`` (sorted by name).

    Raises:
        YollavaError: ``n`` < 1 or more than the subject's training photos.
    """
    photos = inputs.train_images(subject)
    if n < 1:
        raise YollavaError(f"--refs {n}: pass at least 1 reference photo")
    if n > len(photos):
        raise YollavaError(f"--refs {n}: {TRAIN}/{subject}/ has only {len(photos)} photo(s); pass --refs {len(photos)} or fewer")
    return photos[:n]


def references_of(paths: Sequence[str]) -> list[dict[str, str]]:
    """Paths with content hashes, for result records."""
    from yollava.images import file_sha256

    return [{"path": str(p), "sha256": file_sha256(p)} for p in paths]
