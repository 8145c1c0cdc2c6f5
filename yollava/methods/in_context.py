"""``in-context``: PVIT's released prompt, a ``<image>\\nThis is <name>.\\n`` block per reference photo, then the scene."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from yollava.methods.personalization import (
    Method, MethodContext, MethodInputs, Personalization, evaluation_template, first_n_references, plain_name, references_of,
)


class InContext(Method):
    """The first ``--refs N`` training photos introduce the subject by name; nothing is trained.

    PVIT's released format, as its demo (``personalize-llava/llava/serve/cli_personalize.py``) builds
    it: ``<image>\\nThis is {name}.\\n`` per reference photo, then ``<image>\\nAnswer the following
    question based on the image:\\n{question}`` in the llava_v1 chat template (its construction
    templates vary the intro: "Here is {name} in a photo.", ...). A question without a scene
    (text QA) follows the blocks directly. Any LLaVA-1.5 checkpoint runs it; LLaVA-1.5 was never
    trained on several images in one prompt, and PVIT's tuned weights were never released, so on a
    real model this runs on the vanilla base (or a tuned checkpoint the user brings).
    """

    name = "in-context"

    def check(self, inputs: MethodInputs, subject: str) -> None:
        first_n_references(inputs, subject, inputs.refs)

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        references = first_n_references(ctx.inputs, subject, ctx.inputs.refs)
        template = evaluation_template()["in_context"]
        yield Personalization(
            method=self.name, subject=subject, identifier=plain_name(ctx.base, subject), references=tuple(references),
            reference_text=template["reference"], scene_text=template["scene"], info={"references": references_of(references)},
        )
