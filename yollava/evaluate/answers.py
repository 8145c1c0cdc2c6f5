"""Judging generated answers whole: a yes/no answer, a multiple-choice answer, a caption that names the subject.

A generated answer counts as correct only if all of it says the right thing. "Yes, <ozzy> is not in
this photo." starts with "Yes" but is not a yes: it is judged ``other`` and scored wrong, as is any
answer that is neither an option letter nor an option's text.

PVIT-style models refuse instead of saying "No": "Sorry, <bo> is not in the image." (the named
subject is absent) or "I don't know who <bo> is." (the name was never introduced). Both are a no to
"Is <bo> in this photo?" (:func:`refusal`, :func:`judge_yes_no`); in a multiple-choice answer they
pick no option, and the tasks count them apart (``refused``).
"""

from __future__ import annotations

import re
from typing import Sequence

YES, NO, OTHER = "yes", "no", "other"
# kinds of refusal (:func:`refusal`)
ABSENT, UNKNOWN = "absent", "unknown"
NEGATIONS = frozenset({"not", "no", "none", "never", "cannot", "nobody", "nothing", "neither", "nor", "nowhere"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _negated(words: Sequence[str]) -> bool:
    return any(w in NEGATIONS or w.endswith("n't") for w in words)


# "the subject is not in the picture": a negation or an absence word, and a word for the picture
_PICTURES = frozenset({"image", "images", "photo", "photos", "picture", "pictures", "scene", "snapshot", "photograph", "frame", "here"})
_ABSENCE = frozenset({"absent", "missing", "lacks", "lack", "excludes", "exclude", "fails", "unable", "without"})
# "the name was never introduced": a word about knowing who someone is or what they look like,
# with a word that says the model cannot
_KNOWING = frozenset({
    "know", "known", "knowing", "knowledge", "who", "identity", "identify", "recognize", "recognise", "recognition", "familiar",
    "unfamiliar", "aware", "unaware", "acquainted", "privy", "looks", "look", "appearance", "describe", "describing",
    "description", "visualize", "visualise", "details", "information", "data", "database", "memory", "reference", "clue", "clueless", "face",
})
_WHO = frozenset({"know", "known", "knowledge", "who", "familiar", "unfamiliar", "aware", "unaware", "acquainted", "privy",
                  "memory", "database", "description", "describe", "recognize", "recognise", "identify"})
_CANNOT = frozenset({
    "unable", "unclear", "lack", "beyond", "unknown", "unaware", "unfamiliar", "clueless", "impossible", "isn't", "not", "no",
    "cannot", "never",
})


def _expanded(words: Sequence[str]) -> list[str]:
    """"can't" -> "cannot", "don't" -> "do not" (both spellings of a refusal match one pattern)."""
    out: list[str] = []
    for w in words:
        if w in ("can't", "cannot"):
            out.append("cannot")
        elif w.endswith("n't"):
            out += [w[:-3], "not"]
        else:
            out.append(w)
    return out


def refusal(text: str) -> str | None:
    """Whether a whole answer refuses, PVIT's two ways: :data:`ABSENT`, :data:`UNKNOWN`, or None.

    ``unknown``: the model does not know who the name is or what it looks like ("I don't know who
    <bo> is.", "Sorry, I'm not familiar with <bo>.", "I can't say what <bo> looks like."): a word
    about knowing, recognising or appearance with a word that says it cannot. ``absent``: a negation or an absence word together with a word for
    the picture ("Sorry, <bo> is not in the image.", "<bo> is absent from the photo.", "I can't
    find <bo> in this picture."). An answer with "yes" in it is never a refusal.
    """
    words = _words(text)
    if not words or YES in words:
        return None
    plain = _expanded(words)
    # a picture word decides for absence unless the answer is about who the name is
    # ("There's no appearance of <bo> in this image." is absence; "No image or description of <bo>
    # is known to me." is not)
    absent = any(w in _PICTURES for w in words) and (_negated(words) or any(w in _ABSENCE for w in words))
    if absent and not any(w in _WHO for w in plain):
        return ABSENT
    if any(w in _KNOWING for w in plain) and any(w in _CANNOT for w in plain):
        return UNKNOWN
    return ABSENT if absent else None


def judge_yes_no(text: str) -> str:
    """``yes``, ``no`` or ``other`` for a whole generated answer.

    The first word must be yes/no, and the rest must agree with it: after "Yes" no negation
    ("not", "no", "cannot", "...n't"); after "No" nothing, or a negation ("No, <bo> is not here.").
    "Yes, <bo> is not in this photo." and "No, <bo> is in this photo." are ``other``. A refusal
    (:func:`refusal`: "Sorry, <bo> is not in the image.", "I don't know who <bo> is.") is ``no``.
    """
    words = _words(text)
    if not words or words[0] not in (YES, NO):
        return NO if refusal(text) else OTHER
    rest = words[1:]
    if words[0] == YES:
        return YES if not _negated(rest) else OTHER
    if not rest or _negated(rest):
        return NO
    # "No trace of <bo> in this picture." ("No" is no answer word there: no comma or stop after it)
    if not re.match(r"\s*no\s*[,.!;:]", text, flags=re.IGNORECASE) and refusal(text):
        return NO
    return OTHER


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
