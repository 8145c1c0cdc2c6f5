"""``description``: a text description of the subject in front of the question (``--descriptions FILE``)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from yollava.errors import YollavaError
from yollava.methods.personalization import Method, MethodContext, MethodInputs, Personalization, description_prefix, plain_name


def read_descriptions(path: str | Path) -> dict[str, str]:
    """A ``--descriptions`` file: a JSON object of subject -> description text.

    The text may name the subject by the benchmark placeholder (``<sks> is a charming Shiba Inu``, as
    Yo'Chameleon's subject-detailed-captions.json does) or not at all (``a small red striped round pet``,
    as the toy world's descriptions.json).

    Raises:
        YollavaError: missing file, invalid JSON, or an entry that is not a non-empty string.
    """
    path = Path(path)
    if not path.is_file():
        raise YollavaError(f"--descriptions {path}: no such file; pass a JSON object of subject -> description")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise YollavaError(f"--descriptions {path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise YollavaError(f"--descriptions {path}: expected an object of subject -> description, got {type(data).__name__}")
    for subject, text in data.items():
        if not isinstance(text, str) or not text.strip():
            raise YollavaError(f"--descriptions {path}: entry {subject!r} must be a non-empty string")
    return data


class Description(Method):
    """The user's (or a human-written) description: the paper's "LLaVA + human description"."""

    name = "description"

    def check(self, inputs: MethodInputs, subject: str) -> None:
        if inputs.descriptions is None:
            raise YollavaError("--method description needs --descriptions FILE (a JSON object of subject -> description)")
        if subject not in inputs.descriptions:
            raise YollavaError(f"--descriptions {inputs.descriptions_file}: no description for '{subject}'; add one or drop the method")

    @contextmanager
    def personalize(self, ctx: MethodContext, subject: str) -> Iterator[Personalization]:
        self.check(ctx.inputs, subject)
        identifier = plain_name(ctx.base, subject)
        text = ctx.inputs.descriptions[subject]  # type: ignore[index]
        yield Personalization(method=self.name, subject=subject, identifier=identifier, prefix=description_prefix(text, identifier),
                              info={"description": text, "file": ctx.inputs.descriptions_file})
