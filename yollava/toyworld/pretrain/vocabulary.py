"""The toy LLaVA's word-level tokenizer: which words it holds and how it is built."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

import yaml
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from yollava.prompts import templates_dir
from yollava.toyworld.pretrain.answers import (
    CAPTION_QUESTIONS,
    PRESENCE_ANSWERS,
    PRESENCE_QUESTIONS,
    STAND_IN,
    capitalised,
    conversation_answer,
    conversation_bank,
)
from yollava.toyworld.toy_llava import BOS, SPECIAL_TOKENS, UNK
from yollava.toyworld.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    TEXT_QUESTIONS,
    VISUAL_QUESTIONS,
    caption,
    sample_scene,
    sample_subject,
    vocabulary,
)

# Placeholder names for subjects introduced by a description during pretraining ("<x07> is a red
# round pet. Is <x07> in this photo?"). A concept called x00..x31 would clash and is refused by
# yollava.concept.attach with a rename hint.
NAME_TOKENS = tuple(f"<x{i:02d}>" for i in range(32))
# Names of 64 fixed identities ("Is <p07> in this photo?"), a task of earlier recipes
# (docs/toyworld.md, "Known identities"). The compiled recipe never asks about them, but their
# tokens keep their ids and their scenes stay in the training stream (scenes.known_scenes): the
# shipped weights were built with both.
KNOWN_TOKENS = tuple(f"<p{i:02d}>" for i in range(64))
# Words, "'s" (one token, so "Riley's" decodes back to "Riley's"), and single punctuation marks.
WORD_PATTERN = r"'s|\w+|[^\w\s]"
_TEMPLATE_FIELD = re.compile(r"\{\w+\}")
# The templates/ files whose words the toy tokenizer holds: the ones its pretraining mix asks in
# (chat format, recognition and conversation phrasings). templates/evaluation.yaml (yollava eval's
# wordings, issue 15) is not among them: its words would add 21 tokens, move ids and change the
# pinned quick build (tests/pins/toy_pretrain_quick.json) and the shipped weights' vocabulary.
PRETRAIN_TEMPLATES = ("conversation", "llava_v1", "recognition")


def split_text(text: str) -> list[str]:
    """The tokenizer's pre-tokenization of a text (template fields like ``{name}`` removed)."""
    return re.findall(WORD_PATTERN, _TEMPLATE_FIELD.sub(" ", text))


def _template_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _template_strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _template_strings(item)]
    return []


def template_words() -> set[str]:
    """Every word of the templates/ files pretraining asks in (:data:`PRETRAIN_TEMPLATES`)."""
    words: set[str] = set()
    for path in (templates_dir() / f"{name}.yaml" for name in PRETRAIN_TEMPLATES):
        for text in _template_strings(yaml.safe_load(path.read_text(encoding="utf-8"))):
            words.update(split_text(text))
    return words


def _data_words() -> set[str]:
    """Words of every answer and question template the pretraining mix can produce."""
    words: set[str] = set()
    texts = [*CAPTION_QUESTIONS, *PRESENCE_QUESTIONS, *TEXT_QUESTIONS.values(), *VISUAL_QUESTIONS.values()]
    texts += [a for answers in PRESENCE_ANSWERS.values() for a in answers]
    texts += ["the subject", "one", "this subject", "Riley", "Describe"]
    rng = random.Random(0)
    bank = conversation_bank()
    for _ in range(400):
        subject = sample_subject(rng)
        texts.append(caption(sample_scene(rng, subject, n_distractors=rng.randint(0, 3))))
        for category, questions in bank.items():
            for question in questions:
                texts.append(conversation_answer(subject, question, STAND_IN[category]))
    for text in texts:
        words.update(split_text(text))
    return words


def required_words() -> list[str]:
    """The toy tokenizer's words: world vocabulary, the pretraining templates, the data mix, capitalised forms.

    Returns:
        Sorted words (no special tokens, no placeholder names).
    """
    words = set(vocabulary()) | template_words() | _data_words()
    for values in ATTRIBUTES.values():
        words.update(values)
    words.update(BACKGROUNDS)
    # sentence-initial forms of every word ("Red." as a caption start, "Is" in questions)
    words |= {capitalised(w) for w in words}
    return sorted(w for w in words if w not in SPECIAL_TOKENS)


def build_tokenizer(words: Sequence[str]) -> Tokenizer:
    """A word-level ``tokenizers`` tokenizer with offsets, LLaVA's special tokens and the name pools.

    Ids: the five special tokens (``<unk> <s> </s> <pad> <image>``), the placeholder names
    ``<x00>``…, the known identities' names ``<p00>``…, then ``words`` in order. ``<s>`` is
    prepended by the post-processor. The decoder joins words with spaces and glues punctuation
    back ("Yes, Riley's hat.").
    """
    names = (*NAME_TOKENS, *KNOWN_TOKENS)
    tokens = [*SPECIAL_TOKENS, *names, *[w for w in words if w not in SPECIAL_TOKENS and w not in names]]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # the same kind of AddedToken yollava.concept.attach adds for concept identifiers
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in names])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokens.index(BOS))]
    )
    return tokenizer


def extend_tokenizer(tokenizer: Tokenizer, words: Sequence[str]) -> tuple[Tokenizer, list[str]]:
    """``tokenizer`` with ``words`` it lacks appended to its vocabulary, every existing id unchanged.

    A model built on the old tokenizer keeps working once its embedding and output head grow by the
    added rows (:func:`grow_rows`); toy-pvit adds the in-context mix's words this way.

    Returns:
        The new tokenizer and the words added, in id order.
    """
    state = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    taken = {t["content"] for t in state.get("added_tokens", [])} | set(vocab)
    added = [w for w in dict.fromkeys(words) if w not in taken]
    start = max([*vocab.values(), *(t["id"] for t in state.get("added_tokens", []))]) + 1
    for i, word in enumerate(added):
        vocab[word] = start + i
    return Tokenizer.from_str(json.dumps(state)), added


def grow_rows(model: Any, size: int) -> None:
    """Grow ``model``'s input embedding and output head to ``size`` rows; old rows stay bit-identical.

    New rows start at the mean of the old ones (transformers' ``mean_resizing``), so a word the model
    has never seen reads as an average word rather than as noise.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if size < old:
        raise ValueError(f"grow_rows: {size} rows is fewer than the model's {old}")
    if size > old:
        model.resize_token_embeddings(size, mean_resizing=True)
