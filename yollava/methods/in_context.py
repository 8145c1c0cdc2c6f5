"""``in-context``: PVIT-style reference photos, each as ``<image>\\nThis is <name>.\\n``, before the scene."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from yollava.methods.personalization import (
    Method, MethodContext, MethodInputs, Personalization, evaluation_template, first_n_references, plain_name, references_of,
)


class InContext(Method):
    """The first ``--refs N`` training photos introduce the subject by name; nothing is trained.

    PVIT's released format (one block per person, then ``<image>\\n{question}``). LLaVA-1.5 was never
    trained on several images in one prompt, and PVIT's tuned weights were never released, so on a
    real model this runs on the vanilla base: that is the comparison.
    """

    name = "in-context"

    def check(self, inputs: MethodInputs, subject: str) -> None:
        first_n_references(inputs, subject, inputs.refs)

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        references = first_n_references(ctx.inputs, subject, ctx.inputs.refs)
        yield Personalization(
            method=self.name, subject=subject, identifier=plain_name(ctx.base, subject), references=tuple(references),
            reference_text=evaluation_template()["in_context"]["reference"], info={"references": references_of(references)},
        )
