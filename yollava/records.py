"""The validated schema of ``concept.json`` and the checks on ``concept.safetensors`` (nothing on disk is trusted)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from yollava.config import MAX_K, HeadRows
from yollava.errors import YollavaError

FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SHA256_PATTERN = r"^[0-9a-f]{64}$"
WEIGHT_KEYS = ("embed_rows", "head_rows")
# A concept file is (k+1+r)·d fp32 numbers plus a small header; anything far larger is not ours.
MAX_WEIGHTS_HEADER = 1 << 20


class BaseModelRecord(BaseModel):
    """The base a concept was trained on (``Base.describe()``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    id: str = Field(min_length=1)
    revision: Optional[str] = None
    hidden_size: int = Field(gt=0)
    vocab_rows: int = Field(gt=0)
    tokenizer_size: int = Field(gt=0)


class TrainingMetrics(BaseModel):
    """Best-epoch scores on the training images (shown by ``concepts list``); other keys are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")

    weighted: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    epoch: Optional[int] = Field(default=None, ge=1)


class TrainingSummary(BaseModel):
    """How the concept was trained (free-form provenance around a few typed keys)."""

    model_config = ConfigDict(strict=True, extra="allow")

    best_epoch: Optional[int] = Field(default=None, ge=1)
    metrics: TrainingMetrics = Field(default_factory=TrainingMetrics)


def latent_tokens(name: str, k: int) -> list[str]:
    """``<bo>``, ``<bo_1>``…``<bo_k>``: the token strings a record must list."""
    return [f"<{name}>", *(f"<{name}_{i}>" for i in range(1, k + 1))]


class ConceptRecord(BaseModel):
    """``concept.json``: every field typed and cross-checked (tokens follow from name and k)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    format_version: int
    name: str
    identifier: str
    tokens: list[str]
    token_ids: Optional[list[int]] = None
    soft_prompt: str
    k: int = Field(ge=0, le=MAX_K)
    head_rows: HeadRows
    head_tokens: list[str]
    hidden_size: int = Field(gt=0)
    base_model: BaseModelRecord
    weights_sha256: str = Field(pattern=SHA256_PATTERN)
    training: Optional[TrainingSummary] = None
    template_version: Optional[dict[str, str]] = None

    @model_validator(mode="after")
    def _consistent(self) -> "ConceptRecord":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format version {self.format_version} is not supported (expected {FORMAT_VERSION})")
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"name '{self.name[:40]}' is not a concept name ([a-z0-9][a-z0-9_-]{{0,31}})")
        expected = latent_tokens(self.name, self.k)
        if self.identifier != expected[0]:
            raise ValueError(f"identifier '{self.identifier[:40]}' is not <{self.name}>")
        if self.tokens != expected:
            raise ValueError(f"tokens do not match name '{self.name}' and k={self.k}")
        prompt = f"{expected[0]}." if self.k == 0 else f"{expected[0]} is {''.join(expected[1:])}."
        if self.soft_prompt != prompt:
            raise ValueError("soft_prompt does not match the tokens")
        if self.head_tokens != (expected[:1] if self.head_rows == HeadRows.identifier else expected):
            raise ValueError(f"head_tokens do not match head_rows={self.head_rows.value}")
        if self.token_ids is not None and (len(self.token_ids) != self.k + 1 or len(set(self.token_ids)) != self.k + 1
                                           or min(self.token_ids, default=0) < 0):
            raise ValueError(f"token_ids must be {self.k + 1} distinct ids >= 0")
        if self.hidden_size != self.base_model.hidden_size:
            raise ValueError(f"hidden_size {self.hidden_size} differs from base_model.hidden_size {self.base_model.hidden_size}")
        return self

    @property
    def n_head_rows(self) -> int:
        return len(self.head_tokens)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form (enums as strings; None-valued optional sections left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "model_type" and not where:
        return f"{message} (the file must hold one JSON object)"
    if not where:
        return message
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"field '{where}' ({shown}): {message}"


def parse_record(text: str, path: str | Path, folder_name: str | None = None) -> ConceptRecord:
    """Validate the text of ``concept.json``.

    Args:
        text: the file's content.
        path: where it was read (named in messages).
        folder_name: the concept folder's name, which must equal the record's ``name``.

    Returns:
        The :class:`ConceptRecord`.

    Raises:
        YollavaError: one line naming the file and the first problem.
    """
    try:
        record = ConceptRecord.model_validate_json(text)
    except ValidationError as exc:
        raise YollavaError(f"{path}: {_first_problem(exc)}; retrain the concept with --overwrite") from None
    if folder_name is not None and record.name != folder_name:
        raise YollavaError(
            f"{path}: names concept '{record.name}' but lives in folder '{folder_name}'; rename the folder back or retrain it"
        )
    return record


def check_weights(path: str | Path, data: bytes, record: ConceptRecord, sha256: str) -> dict[str, torch.Tensor]:
    """Parse and check the bytes of ``concept.safetensors`` against the record (never unpickles).

    Args:
        path: the file (named in messages).
        data: its bytes.
        record: the validated record.
        sha256: hex digest of ``data``.

    Returns:
        ``{"embed_rows": [k+1, d], "head_rows": [r, d]}`` as finite float32 CPU tensors.

    Raises:
        YollavaError: one line: hash mismatch, not a safetensors file, wrong tensors, dtype, shapes or values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    name = record.name
    if sha256 != record.weights_sha256:
        raise YollavaError(
            f"{path} does not match concept.json (sha256 {sha256[:12]} vs recorded {record.weights_sha256[:12]}); "
            f"if a training run was interrupted, `yollava train --concept {name} --resume` finishes it, "
            "otherwise retrain with --overwrite"
        )
    d = record.hidden_size
    expected_size = (record.k + 1 + record.n_head_rows) * d * 4
    if len(data) > expected_size + MAX_WEIGHTS_HEADER:
        raise YollavaError(f"{path}: {len(data)} bytes, far more than a k={record.k} concept of width {d}; retrain the concept with --overwrite")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        reason = str(exc).splitlines()[0][:80] if str(exc) else exc.__class__.__name__
        raise YollavaError(f"{path}: not a readable safetensors file ({reason}); retrain the concept with --overwrite") from None
    if sorted(tensors) != sorted(WEIGHT_KEYS):
        raise YollavaError(f"{path}: holds tensors {sorted(tensors)[:4]}, expected {list(WEIGHT_KEYS)}; retrain the concept with --overwrite")
    shapes = {"embed_rows": (record.k + 1, d), "head_rows": (record.n_head_rows, d)}
    out = {}
    for key in WEIGHT_KEYS:
        tensor = tensors[key]
        if not tensor.dtype.is_floating_point:
            raise YollavaError(f"{path}: '{key}' is {str(tensor.dtype).removeprefix('torch.')}, not floating point; retrain the concept with --overwrite")
        if tuple(tensor.shape) != shapes[key]:
            raise YollavaError(
                f"{path}: '{key}' has shape {tuple(tensor.shape)}, expected {shapes[key]} for k={record.k}, hidden size {d}; "
                "retrain the concept with --overwrite"
            )
        tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise YollavaError(f"{path}: '{key}' holds {bad} NaN or infinite value(s); retrain the concept with --overwrite")
        out[key] = tensor
    return out
