"""The two published multiple-choice QA formats, read into one :class:`Question` type.

Visual QA (``yollava-visual-qa.json``, Yo'LLaVA repository)::

    {"bo": {"./yollava-data/test/bo/3.png": {"question": "What is <sks> holding?",
                                             "options": {"A": "A ball", "B": "A stick"},
                                             "correct_answer": "A"}}}

Text-only QA (``yollava-text-only-qa.json``, RAP and Yo'Chameleon repositories)::

    {"bo": {"0": {"question": "Is sks a dog or a cat?", "option": {"A": "Dog", "B": "Cat"},
                  "correct_answer": "A"}}}

The kind of file is told by its entry keys (image paths or question numbers); ``options`` and
``option`` are accepted in both. The placeholder (``<sks>`` or a bare ``sks`` word) is replaced by
the concept's identifier when the question is asked: ``sks's breed`` becomes ``<bo>'s breed`` while
``whiskers`` stays ``whiskers`` (a plain ``str.replace("sks", ...)``, as the reference scripts do,
turns it into ``whi<bo>ers`` and ``<sks>`` into ``<<bo>>``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from yollava.errors import YollavaError
from yollava.evaluate.layout import Benchmark
from yollava.images import IMAGE_SUFFIXES, file_sha256
from yollava.prompts import LETTERS

PLACEHOLDER = "sks"
_PLACEHOLDER_RE = re.compile(r"<sks>|\bsks\b")


class QAKind(str, Enum):
    """Which task a QA file belongs to (the names are ``--task`` values)."""

    visual = "visual-qa"
    text = "text-qa"


def personalize(text: str, identifier: str) -> str:
    """Replace the benchmark placeholder (``<sks>``, or ``sks`` as a whole word) by ``identifier``."""
    return _PLACEHOLDER_RE.sub(lambda _: identifier, text)


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as the file states it (placeholder still in place).

    Attributes:
        subject: the subject the question is about.
        key: the entry's key in the file (the image path for visual QA, the number for text QA).
        question: the question text.
        options: ``(letter, text)`` pairs in the file's order.
        correct: the correct option's letter.
        image: the resolved image path (visual QA), None for text QA.
    """

    subject: str
    key: str
    question: str
    options: tuple[tuple[str, str], ...]
    correct: str
    image: str | None = None

    @property
    def option_texts(self) -> list[str]:
        return [text for _, text in self.options]

    @property
    def correct_text(self) -> str:
        return dict(self.options)[self.correct]

    def asked(self, identifier: str) -> tuple[str, list[str], str]:
        """(question, option texts in file order, correct text) with the placeholder replaced by ``identifier``."""
        return (personalize(self.question, identifier), [personalize(t, identifier) for t in self.option_texts],
                personalize(self.correct_text, identifier))


@dataclass
class QAFile:
    """A QA file's questions per subject.

    Attributes:
        path: the file.
        kind: visual or text QA.
        questions: subject -> questions in file order.
        sha256: content hash (recorded with every result).
    """

    path: Path
    kind: QAKind
    questions: dict[str, list[Question]]
    sha256: str

    def for_subject(self, subject: str) -> list[Question]:
        """The questions about ``subject``.

        Raises:
            YollavaError: the file has no entry for ``subject``.
        """
        if subject not in self.questions:
            raise YollavaError(
                f"--qa {self.path}: no questions about '{subject}' (subjects in the file: {', '.join(sorted(self.questions)[:8])}"
                f"{' ...' if len(self.questions) > 8 else ''}); pass a --concept the file covers or another --qa file"
            )
        return self.questions[subject]


def _is_image_path(key: str) -> bool:
    return Path(key).suffix.lower() in IMAGE_SUFFIXES


def _entry(path: Path, subject: str, key: str, value: Any) -> tuple[str, tuple[tuple[str, str], ...], str]:
    where = f"{path}: entry {subject!r} -> {key!r}"
    if not isinstance(value, dict):
        raise YollavaError(f"{where}: expected an object with question, options and correct_answer, got {type(value).__name__}")
    question = value.get("question")
    if not isinstance(question, str) or not question.strip():
        raise YollavaError(f"{where}: 'question' must be a non-empty string")
    present = [k for k in ("options", "option") if k in value]
    if len(present) != 1:
        raise YollavaError(f"{where}: needs exactly one of 'options' / 'option' (an object of lettered answers)")
    options = value[present[0]]
    if not isinstance(options, dict) or len(options) < 2:
        raise YollavaError(f"{where}: '{present[0]}' must be an object with at least two lettered answers (A, B, ...)")
    letters = list(options)
    if letters != list(LETTERS[: len(letters)]):
        raise YollavaError(f"{where}: option letters must be {', '.join(LETTERS[: len(letters)])} in order, got {', '.join(map(str, letters))}")
    texts = list(options.values())
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise YollavaError(f"{where}: every option must be a non-empty string")
    if len({t.strip().lower() for t in texts}) != len(texts):
        raise YollavaError(f"{where}: two options have the same text, so the answer cannot be told apart")
    correct = value.get("correct_answer")
    if correct not in options:
        raise YollavaError(f"{where}: 'correct_answer' must be one of {', '.join(letters)}, got {correct!r}")
    return question, tuple((letter, options[letter].strip()) for letter in letters), correct


def read_qa_file(path: str | Path, benchmark: Benchmark | None = None, subjects: Sequence[str] | None = None,
                 expect: QAKind | None = None) -> QAFile:
    """Read and validate a visual or text-only QA file.

    Every entry's schema is checked; image paths are resolved (against ``benchmark``, by their
    ``<split>/<subject>/<file>`` tail) only for the ``subjects`` that will be asked.

    Args:
        path: the JSON file.
        benchmark: the ``--data`` dataset (needed to resolve a visual file's image paths).
        subjects: the subjects to be asked (None: all).
        expect: the kind the caller needs; another kind is refused with a hint.

    Returns:
        The questions per subject.

    Raises:
        YollavaError: unreadable or malformed file (the message names the file and the entry),
            mixed entry kinds, an image path that resolves nowhere, or a file of the other kind.
    """
    path = Path(path)
    if not path.is_file():
        raise YollavaError(f"--qa {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise YollavaError(f"--qa {path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise YollavaError(f"--qa {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict) or not data:
        raise YollavaError(f"--qa {path}: expected an object of subject -> entries, got {type(data).__name__ if data else 'an empty file'}")
    kinds: set[QAKind] = set()
    raw: dict[str, list[tuple[str, str, tuple[tuple[str, str], ...], str]]] = {}
    for subject, entries in data.items():
        if not isinstance(entries, dict) or not entries:
            raise YollavaError(f"{path}: entry {subject!r}: expected a non-empty object of questions")
        for key, value in entries.items():
            kinds.add(QAKind.visual if _is_image_path(key) else QAKind.text)
            raw.setdefault(subject, []).append((key, *_entry(path, subject, key, value)))
    if len(kinds) > 1:
        raise YollavaError(f"{path}: mixes image-path entries (visual QA) with numbered entries (text QA); split it into two files")
    kind = kinds.pop()
    if expect is not None and kind != expect:
        what = "a visual QA file (its entries are image paths)" if kind == QAKind.visual else "a text-only QA file (its entries are question numbers)"
        raise YollavaError(f"--qa {path}: is {what}; pass it with --task {kind.value}")
    wanted = set(raw) if subjects is None else set(subjects)
    questions: dict[str, list[Question]] = {}
    for subject, items in raw.items():
        out = []
        for key, question, options, correct in items:
            image = None
            if kind == QAKind.visual and subject in wanted:
                if benchmark is None:
                    raise ValueError("a visual QA file needs the benchmark to resolve its image paths")
                image = benchmark.resolve(key, where=f"{path}: entry {subject!r} -> {key!r}")
            out.append(Question(subject, key, question, options, correct, image))
        questions[subject] = out
    return QAFile(path=path, kind=kind, questions=questions, sha256=file_sha256(path))
