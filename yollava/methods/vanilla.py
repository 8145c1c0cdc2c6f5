"""``vanilla``: the base asked about the subject's name, told nothing about it (the paper's "Vanilla LLaVA")."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from yollava.methods.personalization import Method, MethodContext, Personalization, plain_name


class Vanilla(Method):
    """The identifier with no information: what the base does with a name it has never seen."""

    name = "vanilla"

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        yield Personalization(method=self.name, subject=subject, identifier=plain_name(ctx.base, subject))
