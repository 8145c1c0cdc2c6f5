"""``soft-prompt``: the trained Yo'LLaVA concept (identifier, 16 latent tokens, one head row) in front of the question."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Iterator

from yollava.concept import ConceptTokens, detach, load_concept, read_record
from yollava.methods.personalization import Method, MethodContext, MethodInputs, Personalization
from yollava.prompts import soft_prompt_text


def concept_personalization(tokens: ConceptTokens) -> Personalization:
    """A concept's soft prompt as a :class:`Personalization` (the concept must be attached): what training scores each epoch."""
    return Personalization(method=SoftPrompt.name, subject=tokens.name, identifier=tokens.identifier, prefix=tokens.soft_prompt)


class SoftPrompt(Method):
    """The concept ``<store>/<subject>/`` (trained by ``yollava train --concept <subject>``), attached while it is scored."""

    name = "soft-prompt"
    trains = True

    def check(self, inputs: MethodInputs, subject: str) -> None:
        for name in (subject, *inputs.companions.get(subject, ())):
            read_record(inputs.store, name)

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        companions = ctx.inputs.companions.get(subject, ())
        with ExitStack() as loaded:
            artifact = load_concept(ctx.base, ctx.inputs.store, subject)
            loaded.callback(detach, ctx.base, subject)
            others = []
            for name in companions:  # loaded together: every concept's rows attached, soft prompts in order
                others.append(load_concept(ctx.base, ctx.inputs.store, name).params.tokens)
                loaded.callback(detach, ctx.base, name)
            tokens = artifact.params.tokens
            # the record's typed fields, and the free-form provenance train writes beside them (seconds, positives)
            training = artifact.record.training
            extra = (training.model_extra or {}) if training is not None else {}
            person = replace(
                concept_personalization(tokens), train_seconds=extra.get("seconds"),
                info={"concept": subject, "store": str(ctx.inputs.store), "k": tokens.k,
                      "weights_sha256": artifact.record.weights_sha256, "best_epoch": training.best_epoch if training else None,
                      "trained_on": [p["path"] for p in extra.get("positives", [])],
                      # the recipe's size, for the cost account (yollava.evaluate.cost)
                      "samples_per_epoch": sum((extra.get("samples") or {}).values()) or None, "epochs_run": extra.get("epochs_run"),
                      "train_images": len(extra.get("positives", [])) + len(extra.get("negatives", [])) or None},
            )
            if others:
                person = replace(person, prefix=soft_prompt_text([tokens.soft_prompt, *(t.soft_prompt for t in others)]),
                                 info={**person.info, "loaded_with": list(companions)})
            yield person
