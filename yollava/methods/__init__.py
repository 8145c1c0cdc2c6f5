"""How a subject is given to the model for a question: one module per method, a small registry (``--method``).

Every method turns a subject into a :class:`Personalization` (how questions name it, the text and
reference photos before the question); the tasks in :mod:`yollava.evaluate` build every prompt from it.
"""

from __future__ import annotations

from yollava.errors import YollavaError
from yollava.methods.auto_description import AutoLong, AutoShort, auto_description_record
from yollava.methods.description import Description, read_descriptions
from yollava.methods.in_context import InContext
from yollava.methods.personalization import (
    Method, MethodContext, MethodInputs, Personalization, Query, build_answered, build_query, plain_name, tokens_per_query,
)
from yollava.methods.soft_prompt import SoftPrompt
from yollava.methods.vanilla import Vanilla

# registry order = the report's column order (the paper's Table 5)
METHODS: dict[str, type[Method]] = {m.name: m for m in (SoftPrompt, Vanilla, Description, AutoLong, AutoShort, InContext)}
ALL = "all"


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        YollavaError: unknown name.
    """
    if name not in METHODS:
        raise YollavaError(f"--method {name}: unknown method; choose from {', '.join(METHODS)} or {ALL}")
    return METHODS[name]()


def method_names(names: list[str] | None) -> list[str]:
    """``--method`` values expanded (``all`` = every method; default ``soft-prompt``), in registry order, each once."""
    names = names or [SoftPrompt.name]
    if ALL in names:
        return list(METHODS)
    for name in names:
        get_method(name)
    return [n for n in METHODS if n in names]


__all__ = [
    "ALL", "METHODS", "AutoLong", "AutoShort", "Description", "InContext", "Method", "MethodContext", "MethodInputs",
    "Personalization", "Query", "SoftPrompt", "Vanilla", "auto_description_record", "build_answered", "build_query", "get_method",
    "method_names", "plain_name", "read_descriptions", "tokens_per_query",
]
