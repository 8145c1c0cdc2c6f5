"""``auto-long`` / ``auto-short``: the base describes the subject itself from its training photos (the paper's automatic descriptions).

The base captions every training photo (``templates/evaluation.yaml`` ``auto_description.caption_question``);
``auto-long`` puts the captions in front of the question (the paper's ~1.3k-token variant on
LLaVA-1.5), ``auto-short`` the base's own one-sentence summary of them (~16 tokens). Both are
generated once per subject and base and cached next to the concept, in
``<store>/<subject>/auto_description.json``, keyed by the base's fingerprint, the photos' hashes and
the prompts. The cache is written under the concept's lock (``yollava.concept.concept_lock``).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from yollava.chat import greedy_generate
from yollava.methods.personalization import (
    Method, MethodContext, MethodInputs, Personalization, base_fingerprint, build_query, description_prefix,
    evaluation_template, plain_name, references_of,
)
from yollava.concept import concept_dir, concept_lock
from yollava.storage import AUTO_DESCRIPTION, LockedError, settle, write_json_atomic

FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def auto_description_record(ctx: MethodContext, subject: str) -> dict[str, Any]:
    """The captions and summary of ``subject``'s training photos by ``ctx.base`` (cached; generated when missing or stale).

    Returns:
        The cache record: ``captions`` (one per photo), ``summary``, and what they were made from.
    """
    template = evaluation_template()
    prompts = dict(template["auto_description"])
    cap = ctx.inputs.max_new_tokens
    for key in ("caption_max_new_tokens", "summary_max_new_tokens"):
        prompts[key] = prompts[key] if cap is None else min(prompts[key], cap)
    photos = ctx.inputs.train_images(subject)
    key = {
        "format_version": FORMAT_VERSION,
        "base": ctx.base.describe(),
        "base_fingerprint": base_fingerprint(ctx.base),
        "template_version": template["version"],
        "prompts": prompts,
        "photos": references_of(photos),
    }
    cached = _read_cache(ctx.inputs.store, subject)
    if cached.get("key") == json.loads(json.dumps(key)):
        return cached
    bare = Personalization(method="auto", subject=subject, identifier="")
    captions = []
    for photo in photos:
        query = build_query(ctx.base, ctx.fmt, bare, prompts["caption_question"], scene=photo)
        captions.append(greedy_generate(ctx.base, query.ids, query.images, ctx.features, prompts["caption_max_new_tokens"]))
    joined = " ".join(c.strip() for c in captions)
    query = build_query(ctx.base, ctx.fmt, bare, prompts["summary_question"].replace("{captions}", joined), scene=None)
    summary = greedy_generate(ctx.base, query.ids, [], ctx.features, prompts["summary_max_new_tokens"])
    record = {"key": key, "subject": subject, "captions": captions, "summary": summary}
    _write_cache(ctx.inputs.store, subject, record)
    return record


def _read_cache(store: str | Path, subject: str) -> dict[str, Any]:
    """The cached record in ``<store>/<subject>/`` (read like the concept: recovery first), or {} when none is readable."""
    folder = settle(concept_dir(store, subject))
    path = folder / AUTO_DESCRIPTION if folder is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cache(store: str | Path, subject: str, record: dict[str, Any]) -> None:
    """Store the record in the concept's folder under the concept's lock (the folder is swapped whole by
    ``yollava train``: a write outside the lock could land in the middle of a swap and break it).

    The descriptions are generated before the lock is taken (minutes on a real model); when another
    process holds it (a training run saving this concept), the record is used but not cached.
    """
    folder = concept_dir(store, subject)
    try:
        with concept_lock(store, subject):
            settle(folder)  # finish an interrupted swap before writing into the folder
            write_json_atomic(folder / AUTO_DESCRIPTION, record)
    except LockedError as exc:
        log.warning("auto description of '%s' not cached (%s)", subject, exc)


class _AutoDescription(Method):
    """A description the base writes itself from the subject's training photos (cached with the concept)."""

    def check(self, inputs: MethodInputs, subject: str) -> None:
        inputs.train_images(subject)

    def _record(self, ctx: MethodContext, subject: str) -> tuple[dict[str, Any], str]:
        """The cached (or newly generated) captions and summary, and the plain name the prompt uses."""
        return auto_description_record(ctx, subject), plain_name(ctx.base, subject)


class AutoLong(_AutoDescription):
    """The base's captions of every training photo, concatenated, before the question."""

    name = "auto-long"

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        record, identifier = self._record(ctx, subject)
        captions = " ".join(c.strip() for c in record["captions"])
        prefix = evaluation_template()["auto_description"]["long_prefix"].replace("{name}", identifier).replace("{captions}", captions)
        yield Personalization(method=self.name, subject=subject, identifier=identifier, prefix=prefix,
                              info={"captions": record["captions"]})


class AutoShort(_AutoDescription):
    """The base's one-sentence summary of its captions, as a description before the question."""

    name = "auto-short"

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        record, identifier = self._record(ctx, subject)
        summary = record["summary"].strip() or "a subject"
        yield Personalization(method=self.name, subject=subject, identifier=identifier, prefix=description_prefix(summary, identifier),
                              info={"summary": record["summary"], "captions": record["captions"]})
