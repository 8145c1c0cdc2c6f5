"""Judging generated answers whole: a yes/no answer, a multiple-choice answer, a caption that names the subject.

A generated answer counts as correct only if all of it says the right thing. "Yes, <ozzy> is not in
this photo." starts with "Yes" but is not a yes: it is judged ``other`` and scored wrong, as is any
answer that is neither an option letter nor an option's text.
"""

from __future__ import annotations

import re
from typing import Sequence

YES, NO, OTHER = "yes", "no", "other"
NEGATIONS = frozenset({"not", "no", "none", "never", "cannot", "nobody", "nothing", "neither", "nor", "nowhere"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _negated(words: Sequence[str]) -> bool:
    return any(w in NEGATIONS or w.endswith("n't") for w in words)


def judge_yes_no(text: str) -> str:
    """``yes``, ``no`` or ``other`` for a whole generated answer.

    The first word must be yes/no, and the rest must agree with it: after "Yes" no negation
    ("not", "no", "cannot", "...n't"); after "No" nothing, or a negation ("No, <bo> is not here.").
    "Yes, <bo> is not in this photo." and "No, <bo> is in this photo." are ``other``.
    """
    words = _words(text)
    if not words or words[0] not in (YES, NO):
        return OTHER
    rest = words[1:]
    if words[0] == YES:
        return YES if not _negated(rest) else OTHER
    return NO if not rest or _negated(rest) else OTHER


def _norm(text: str) -> str:
    return " ".join(_words(text))


def judge_choice(text: str, options: Sequence[tuple[str, str]]) -> str | None:
    """The option letter a whole generated answer picks, or None when it picks none.

    Accepted: the letter alone ("B", "B.", "(B)", "B)"), the letter followed by that option's text
    ("B. Grey"), or the option's text alone ("grey", case and final punctuation ignored). A letter
    followed by another option's text, or any other sentence, picks nothing.
    """
    stripped = text.strip()
    letters = {letter: _norm(option) for letter, option in options}
    match = re.fullmatch(r"\(?([A-Z])\)?[.):]?(?:\s+(.*))?", stripped, flags=re.DOTALL)
    if match and match.group(1) in letters:
        letter, tail = match.group(1), match.group(2)
        if tail is None or _norm(tail) == letters[letter]:
            return letter
        return None
    said = _norm(stripped)
    picked = [letter for letter, option in letters.items() if option == said]
    return picked[0] if len(picked) == 1 else None


def mentions(caption: str, identifier: str) -> bool:
    """Whether a caption names the subject (its identifier, e.g. ``<bo>``, anywhere; case ignored)."""
    return identifier.lower() in caption.lower()
