"""Retrieval: CLIP image embeddings (embed), kNN backends (index, client) and negative mining (mine)."""

from __future__ import annotations

import importlib
from typing import Any

# Public names and their modules; imported on first use so `import yollava.retrieval` stays cheap
# (torch, open_clip and faiss load only when something is embedded or searched).
_EXPORTS = {
    "Embedder": "embed",
    "EmbedderName": "embed",
    "EmbeddedImages": "embed",
    "DEFAULT_EMBEDDER": "embed",
    "load_embedder": "embed",
    "Hit": "index",
    "IndexKind": "index",
    "LocalIndex": "index",
    "FolderBackend": "index",
    "build_index": "index",
    "add_to_index": "index",
    "load_index": "index",
    "ServiceBackend": "client",
    "download_images": "client",
    "NegativeKind": "mine",
    "NegativeSet": "mine",
    "retrieve_hard_negatives": "mine",
    "retrieve_negatives": "mine",
    "read_negatives": "mine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
