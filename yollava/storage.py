"""File names of every artifact in one place, and atomic writes (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

CONCEPT_JSON = "concept.json"
CONCEPT_WEIGHTS = "concept.safetensors"
RUN_CONFIG = "config.yaml"
RUN_METRICS = "metrics.jsonl"
RUN_PLOT = "metrics.png"
RUN_SAMPLES = "train_samples.jsonl"
RUN_DONE = "DONE"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
# a concept's training set: <store>/<name>/data/ is an HF dataset (datasets.load_from_disk reads it) plus our record
DATA_DIR = "data"
DATA_INFO = "training_set.json"
# base captions and summary of a subject's training photos (auto-long / auto-short), next to its concept
AUTO_DESCRIPTION = "auto_description.json"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    A crash or Ctrl-C inside the block leaves ``path`` exactly as it was (the temp file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as sorted, indented JSON atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (contiguous CPU copies; nothing is pickled)."""
    prepared = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(prepared, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU (the only weight format yollava reads)."""
    return load_file(str(path), device="cpu")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (metrics survive a crash up to the last line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
