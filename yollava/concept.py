"""Concept tokens, the row-only trainable parameters, attaching concepts to a base, save/load/validate."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tokenizers import AddedToken

from yollava.config import ConceptConfig, HeadRows, InitMethod
from yollava.errors import YollavaError
from yollava.images import file_sha256
from yollava.base import Base
from yollava.records import FORMAT_VERSION, NAME_PATTERN, ConceptRecord, check_weights, parse_record
from yollava.storage import (
    CONCEPT_JSON,
    CONCEPT_WEIGHTS,
    DATA_DIR,
    NEGATIVES_DIR,
    OLD_SUFFIX,
    artifact_lock,
    describe_os_error,
    dump_json,
    link_or_copy_tree,
    remove_artifact,
    save_tensors,
    settle,
    staged_folder,
)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid concept name, else raise a one-line error.

    Names are ``[a-z0-9][a-z0-9_-]{0,31}``: they become token strings and folder names, so no
    path separators, spaces or capitals (``../x``, ``My Dog`` are refused).
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise YollavaError(
            f"invalid concept name '{name}': use 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter or digit (e.g. bo, my-mug)"
        )
    return name


@dataclass(frozen=True)
class ConceptTokens:
    """The token strings of one concept: ``<bo>`` and ``<bo_1>``…``<bo_k>``."""

    name: str
    k: int

    @property
    def identifier(self) -> str:
        return f"<{self.name}>"

    @property
    def latents(self) -> list[str]:
        return [f"<{self.name}_{i}>" for i in range(1, self.k + 1)]

    @property
    def all(self) -> list[str]:
        """Identifier first, then the latent tokens (the order of ``embed_rows``)."""
        return [self.identifier, *self.latents]

    @property
    def soft_prompt(self) -> str:
        """``<bo> is <bo_1>…<bo_16>.``; with k=0 just ``<bo>.``."""
        if self.k == 0:
            return f"{self.identifier}."
        return f"{self.identifier} is {''.join(self.latents)}."

    def head_tokens(self, head_mode: HeadRows) -> list[str]:
        """The tokens that get a trained output-head row under ``head_mode``."""
        return [self.identifier] if head_mode == HeadRows.identifier else self.all


class ConceptParams(nn.Module):
    """The only trainable numbers of a concept: (k+1) embedding rows and r output-head rows (fp32).

    Attributes:
        tokens: the concept's token strings.
        head_mode: which tokens have a head row (:class:`HeadRows`, config ``concept.head_rows``).
        embed_rows: ``[k+1, hidden]`` input-embedding rows, identifier first.
        head_rows: ``[r, hidden]`` output-head rows, r = 1 (identifier) or k+1 (all).
    """

    def __init__(self, tokens: ConceptTokens, head_mode: HeadRows, embed_rows: torch.Tensor, head_rows: torch.Tensor):
        super().__init__()
        expected_head = len(tokens.head_tokens(head_mode))
        if embed_rows.shape[0] != tokens.k + 1 or head_rows.shape[0] != expected_head:
            raise ValueError(
                f"row counts {tuple(embed_rows.shape)}, {tuple(head_rows.shape)} do not fit k={tokens.k}, head rows={head_mode.value}"
            )
        self.tokens = tokens
        self.head_mode = head_mode
        self.embed_rows = nn.Parameter(embed_rows.detach().float().clone())
        self.head_rows = nn.Parameter(head_rows.detach().float().clone())

    def rows(self) -> dict[str, torch.Tensor]:
        """Detached copies of both tables (what a checkpoint or the best epoch keeps)."""
        return {"embed_rows": self.embed_rows.detach().clone(), "head_rows": self.head_rows.detach().clone()}

    def load_rows(self, rows: dict[str, torch.Tensor]) -> None:
        """Overwrite both tables in place (the optimizer keeps pointing at the same parameters)."""
        with torch.no_grad():
            self.embed_rows.copy_(rows["embed_rows"])
            self.head_rows.copy_(rows["head_rows"])

    @property
    def head_tokens(self) -> list[str]:
        return self.tokens.head_tokens(self.head_mode)


def _vocab_rows(base: Base) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-embedding and head rows of real tokenizer entries (padding rows past the tokenizer excluded)."""
    embedding = base.model.get_input_embeddings()
    head = base.model.get_output_embeddings()
    n = min(base.base_tokenizer_size, base.base_rows)
    embed_weight = getattr(embedding, "base", embedding).weight[:n].detach().float()
    head_weight = getattr(head, "base", head).weight[:n].detach().float()
    return embed_weight, head_weight


def init_concept(base: Base, name: str, config: ConceptConfig, seed: int = 0) -> ConceptParams:
    """Fresh rows for a new concept, initialised as ``config.init`` says (see :class:`InitMethod`).

    Raises:
        YollavaError: ``init=word`` with a word the tokenizer cannot encode.
    """
    tokens = ConceptTokens(validate_name(name), config.k)
    n_head = len(tokens.head_tokens(config.head_rows))
    embed_vocab, head_vocab = _vocab_rows(base)
    generator = torch.Generator().manual_seed(seed)
    embed_std = embed_vocab.std(dim=0)
    head_std = head_vocab.std(dim=0)
    if config.init == InitMethod.word:
        ids = base.tokenizer(config.init_word, add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if i < embed_vocab.shape[0]]
        if not ids:
            raise YollavaError(f"concept.init_word='{config.init_word}' encodes to no known token; pick a plain word")
        embed = embed_vocab[ids].mean(0).expand(tokens.k + 1, -1).clone()
        head = head_vocab[ids[0]].expand(n_head, -1).clone()
    elif config.init == InitMethod.random:
        embed = torch.randn(tokens.k + 1, embed_vocab.shape[1], generator=generator) * embed_std
        head = torch.randn(n_head, head_vocab.shape[1], generator=generator) * head_std
        return ConceptParams(tokens, config.head_rows, embed, head)
    else:
        embed = embed_vocab.mean(0).expand(tokens.k + 1, -1).clone()
        head = head_vocab.mean(0).expand(n_head, -1).clone()
    # small noise breaks the symmetry between otherwise identical latent rows
    embed = embed + config.init_noise * embed_std * torch.randn(embed.shape, generator=generator)
    head = head + config.init_noise * head_std * torch.randn(head.shape, generator=generator)
    return ConceptParams(tokens, config.head_rows, embed, head)


class ConceptEmbedding(nn.Module):
    """Input embedding = the frozen base matrix, with concept token ids answered by concept rows.

    The base matrix is never written to: concept ids are looked up in the small concept tables
    instead, so every original row stays bit-identical during training and chat alike.
    """

    def __init__(self, base: nn.Embedding, slots: "ConceptSlots"):
        super().__init__()
        self.base = base
        self.slots = slots

    @property
    def weight(self) -> torch.Tensor:  # transformers reads .weight for dtype/device/shape
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.slots.refuse_detached(input_ids)
        table, ids = self.slots.embed_table()
        if ids.numel() == 0:
            return self.base(input_ids)
        ids = ids.to(input_ids.device)
        is_new = torch.isin(input_ids, ids)
        safe = input_ids.masked_fill(is_new | (input_ids >= self.base.num_embeddings), 0)
        out = self.base(safe)
        if not bool(is_new.any()):
            return out
        slot = self.slots.slot_of(input_ids[is_new])
        return out.index_put((is_new,), table[slot].to(device=out.device, dtype=out.dtype))


class ConceptHead(nn.Module):
    """Output head = the frozen base head, plus one column per concept token.

    Columns of concept tokens with a trained head row use it; concept tokens without one (latent
    tokens when ``head_rows=identifier``) get the lowest logit, so they are never generated.
    """

    def __init__(self, base: nn.Linear, slots: "ConceptSlots"):
        super().__init__()
        self.base = base
        self.slots = slots

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)
        vocab = self.slots.vocab_size(self.base.out_features)
        if vocab > logits.shape[-1]:
            pad = logits.new_full((*logits.shape[:-1], vocab - logits.shape[-1]), torch.finfo(logits.dtype).min)
            logits = torch.cat([logits, pad], dim=-1)
        silent = self.slots.silent_ids()
        if silent.numel():
            logits = logits.index_fill(-1, silent.to(logits.device), torch.finfo(logits.dtype).min)
        table, ids = self.slots.head_table()
        if ids.numel():
            columns = hidden @ table.to(device=hidden.device, dtype=hidden.dtype).T
            logits = logits.index_copy(-1, ids.to(logits.device), columns.to(logits.dtype))
        return logits


class ConceptSlots(nn.Module):
    """Token ids → rows of the attached concepts' tables (several concepts at once).

    A detached concept's tokens stay in the tokenizer (it cannot forget them) but are retired: they
    get the lowest logit, and a prompt that still holds one is refused instead of read as a padding row.
    """

    def __init__(self) -> None:
        super().__init__()
        self.concepts = nn.ModuleDict()
        self.token_ids: dict[str, list[int]] = {}
        self.retired: dict[int, str] = {}

    def add(self, params: ConceptParams, token_ids: list[int]) -> None:
        self.concepts[params.tokens.name] = params
        self.token_ids[params.tokens.name] = token_ids
        for token_id in token_ids:
            self.retired.pop(token_id, None)

    def remove(self, name: str) -> None:
        self.retired.update({token_id: name for token_id in self.token_ids[name]})
        del self.concepts[name]
        del self.token_ids[name]

    def refuse_detached(self, input_ids: torch.Tensor) -> None:
        """Raise if ``input_ids`` holds a token of a concept that was detached."""
        if not self.retired:
            return
        retired = torch.tensor(list(self.retired), device=input_ids.device)
        found = input_ids[torch.isin(input_ids, retired)]
        if found.numel():
            name = self.retired[int(found[0])]
            raise YollavaError(f"the prompt uses concept '{name}', which is not loaded; load it (--concept {name}) or remove its tokens")

    def _ids(self, with_head: bool) -> list[int]:
        out: list[int] = []
        for name, params in self.concepts.items():
            ids = self.token_ids[name]
            out.extend(ids[: params.head_rows.shape[0]] if with_head else ids)
        return out

    def embed_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.concepts:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        table = torch.cat([p.embed_rows for p in self.concepts.values()])
        return table, torch.tensor(self._ids(with_head=False), dtype=torch.long)

    def head_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.concepts:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        table = torch.cat([p.head_rows for p in self.concepts.values()])
        return table, torch.tensor(self._ids(with_head=True), dtype=torch.long)

    def silent_ids(self) -> torch.Tensor:
        """Ids that must never be generated: latent tokens without a head row, and retired tokens."""
        with_head = set(self._ids(with_head=True))
        silent = [i for i in self._ids(with_head=False) if i not in with_head] + list(self.retired)
        return torch.tensor(silent, dtype=torch.long)

    def slot_of(self, ids: torch.Tensor) -> torch.Tensor:
        all_ids = self._ids(with_head=False)
        lookup = torch.full((max(all_ids) + 1,), -1, dtype=torch.long, device=ids.device)
        lookup[torch.tensor(all_ids, device=ids.device)] = torch.arange(len(all_ids), device=ids.device)
        return lookup[ids]

    def vocab_size(self, base_rows: int) -> int:
        ids = self._ids(with_head=False) + list(self.retired)
        return max([base_rows, *(i + 1 for i in ids)])


def concept_slots(base: Base) -> ConceptSlots:
    """Install the concept-aware embedding and head on ``base`` once; return their shared slots."""
    embedding = base.model.get_input_embeddings()
    if isinstance(embedding, ConceptEmbedding):
        return embedding.slots
    slots = ConceptSlots()
    head = base.model.get_output_embeddings()
    base.model.set_input_embeddings(ConceptEmbedding(embedding, slots))
    base.model.set_output_embeddings(ConceptHead(head, slots))
    return slots


def attach(base: Base, params: ConceptParams) -> list[int]:
    """Add a concept's tokens to the tokenizer and its rows to the model.

    The matrices are never resized or written: ids past the base rows are answered by the concept
    tables and the head's logits grow to cover them.

    Returns:
        The concept's token ids, identifier first.

    Raises:
        YollavaError: a token of this concept already exists (another attached concept with the same
            name, or a base vocabulary entry such as ``<s>`` for a concept named ``s``).
    """
    slots = concept_slots(base)
    name = params.tokens.name
    if name in slots.concepts:
        raise YollavaError(f"concept '{name}' is already loaded; load each concept once")
    vocab = base.tokenizer.get_vocab()
    base_clash = [t for t in params.tokens.all if vocab.get(t, base.base_tokenizer_size) < base.base_tokenizer_size]
    if base_clash:
        raise YollavaError(
            f"concept '{name}': token {base_clash[0]} is already in the base vocabulary; rename the concept (e.g. {name}2)"
        )
    attached = {t: other for other, p in slots.concepts.items() for t in p.tokens.all}
    clash = [t for t in params.tokens.all if t in attached]
    if clash:
        raise YollavaError(
            f"concept '{name}': token {clash[0]} clashes with loaded concept '{attached[clash[0]]}'; load them separately or rename one"
        )
    # normalized=False: the token string is matched literally; special=False: decoding keeps "<bo>"
    added = [AddedToken(t, normalized=False, special=False, single_word=False, lstrip=False, rstrip=False) for t in params.tokens.all]
    base.tokenizer.add_tokens(added)
    ids = base.tokenizer.convert_tokens_to_ids(params.tokens.all)
    params.to(base.device)
    slots.add(params, list(ids))
    return list(ids)


def detach(base: Base, name: str) -> ConceptParams:
    """Remove a concept's rows from ``base`` (peft's ``delete_adapter``); the base is as before for every other token.

    Returns:
        The detached rows (attach them again, or to another base of the same kind).

    Raises:
        YollavaError: no concept of that name is attached.
    """
    slots = concept_slots(base)
    if name not in slots.concepts:
        loaded = ", ".join(slots.concepts) or "none"
        raise YollavaError(f"concept '{name}' is not loaded (loaded: {loaded})")
    params = slots.concepts[name]
    slots.remove(name)
    return params  # type: ignore[return-value]


def attached_names(base: Base) -> list[str]:
    """Names of the concepts attached to ``base``, in attachment order."""
    return list(concept_slots(base).concepts)


@contextmanager
def attached(base: Base, params: ConceptParams) -> Iterator[list[int]]:
    """Attach ``params`` for the duration of a ``with`` block, then detach it (also on errors).

    One loaded base can then train or score many concepts in a row.
    """
    ids = attach(base, params)
    try:
        yield ids
    finally:
        detach(base, params.tokens.name)


# ----------------------------------------------------------------------------- artifact
#
# ``<store>/<name>/`` is one unit (storage.staged_folder): concept.json, concept.safetensors, the
# training set ``data/`` and the mined ``negatives/`` are replaced together, under the concept's lock.


@dataclass
class ConceptArtifact:
    """A concept loaded from disk: its rows and its validated record."""

    params: ConceptParams
    record: ConceptRecord


@dataclass(frozen=True)
class ConceptEntry:
    """One concept of a store as ``concepts list`` shows it: ``status`` is "ok" or "damaged: <why>"."""

    name: str
    status: str
    record: ConceptRecord | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def concept_dir(store: str | Path, name: str) -> Path:
    """``<store>/<name>`` (the name is validated first: no path tricks reach the file system)."""
    return Path(store) / validate_name(name)


def concept_lock(store: str | Path, name: str, wait: float = 0.0):
    """The concept's lock (held by train, retrieve, build-data and remove while they write it)."""
    return artifact_lock(concept_dir(store, name), wait=wait, what=f"concept '{name}' in {Path(store)}")


def concept_record(params: ConceptParams, base: Base, weights_sha256: str, extra: dict[str, Any] | None = None) -> ConceptRecord:
    """The validated record of ``params`` trained on ``base`` (what ``concept.json`` holds).

    Raises:
        YollavaError: the record would not validate (e.g. a summary with a non-finite score).
    """
    ids = concept_slots(base).token_ids.get(params.tokens.name)
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": params.tokens.name,
        "identifier": params.tokens.identifier,
        "tokens": params.tokens.all,
        "token_ids": ids,
        "soft_prompt": params.tokens.soft_prompt,
        "k": params.tokens.k,
        "head_rows": params.head_mode.value,
        "head_tokens": params.head_tokens,
        "hidden_size": base.hidden_size,
        "base_model": base.describe(),
        "weights_sha256": weights_sha256,
    }
    record.update(extra or {})
    # the same parser the readers use: what is written is readable
    return parse_record(dump_json(record), f"concept '{params.tokens.name}'")


def save_concept(
    params: ConceptParams, base: Base, store: str | Path, extra: dict[str, Any] | None = None, *,
    data: str | Path | None = None, negatives: str | Path | None = None,
) -> Path:
    """Write ``store/<name>/`` as one unit: weights, record, training set and negatives swapped in together.

    Everything is staged in ``store/.<name>.tmp-*`` and swapped in by :func:`yollava.storage.staged_folder`
    under the concept's lock, so at every instant a reader sees the whole old concept or the whole new
    one; a failed write changes nothing and says so in one line.

    Args:
        params: the rows to save (their token ids come from ``base``'s attached concept of that name).
        base: the base they were trained on (recorded, with its shape).
        store: concept store.
        extra: more record fields (``training``, ``template_version``).
        data: a training-set folder to store as ``data/`` (e.g. the run's); None keeps the stored one.
        negatives: a negatives folder to store as ``negatives/``; None keeps the stored one.

    Returns:
        The concept folder.

    Raises:
        YollavaError: another process writes the concept (its PID named), or a write failed.
    """
    folder = concept_dir(store, params.tokens.name)
    with staged_folder(folder, lock_target=folder) as staged:
        weights = staged / CONCEPT_WEIGHTS
        # one metadata key: safetensors writes them in hash-map order, so two keys would give the same
        # rows different bytes (and sha256) from one save to the next
        save_tensors(weights, {"embed_rows": params.embed_rows, "head_rows": params.head_rows},
                     metadata={"format": f"yollava-concept/{FORMAT_VERSION}"})
        record = concept_record(params, base, file_sha256(weights), extra)
        (staged / CONCEPT_JSON).write_text(dump_json(record.to_json_dict()), encoding="utf-8")
        for sub, given in ((DATA_DIR, data), (NEGATIVES_DIR, negatives)):
            source = Path(given) if given is not None else folder / sub
            if source.is_dir():
                link_or_copy_tree(source, staged / sub)
    return folder


def _not_found(store: str | Path, name: str) -> YollavaError:
    return YollavaError(f"concept '{name}' not found in {Path(store)}; train it with `yollava train --concept {name} --images DIR` or pass --store")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise YollavaError(f"{path} is not UTF-8 text; retrain the concept with --overwrite") from None
    except OSError as exc:
        raise YollavaError(f"{path} cannot be read ({describe_os_error(exc)})") from None


def read_record(store: str | Path, name: str) -> ConceptRecord:
    """Read and validate ``concept.json`` (no model needed; the storage protocol's recovery runs first).

    Raises:
        YollavaError: the concept is missing, or its record is unreadable or invalid (one line).
    """
    folder = settle(concept_dir(store, name))
    if folder is None or not (folder / CONCEPT_JSON).is_file():
        raise _not_found(store, name)
    return parse_record(_read_text(folder / CONCEPT_JSON), folder / CONCEPT_JSON, folder_name=name)


def read_concept(store: str | Path, name: str) -> tuple[ConceptRecord, dict[str, torch.Tensor]]:
    """The validated record and weights of a stored concept, read from one version of its folder.

    A writer swapping the folder in between the two reads is detected (the folder changed) and the
    read is repeated, so the record and the weights always belong together.

    Raises:
        YollavaError: missing concept, invalid record, or weights that fail :func:`yollava.records.check_weights`.
    """
    for attempt in range(3):
        folder = settle(concept_dir(store, name))
        if folder is None or not (folder / CONCEPT_JSON).is_file():
            raise _not_found(store, name)
        before = folder.stat().st_ino
        try:
            record = parse_record(_read_text(folder / CONCEPT_JSON), folder / CONCEPT_JSON, folder_name=name)
            weights = folder / CONCEPT_WEIGHTS
            if weights.is_symlink() or not weights.is_file():
                raise YollavaError(f"{weights} is missing or a link; retrain the concept with --overwrite")
            data = weights.read_bytes()
            return record, check_weights(weights, data, record, hashlib.sha256(data).hexdigest())
        except (YollavaError, OSError) as exc:
            try:
                changed = folder.stat().st_ino != before
            except OSError:
                changed = True
            if not changed or attempt == 2:
                if isinstance(exc, YollavaError):
                    raise
                raise YollavaError(f"{folder} cannot be read ({describe_os_error(exc)})") from exc
    raise AssertionError("unreachable")


def check_base(record: ConceptRecord, base: Base) -> None:
    """Refuse a concept trained on another base model, with a one-line message naming the fix."""
    trained = record.base_model
    if trained.id == base.model_id and (trained.hidden_size != base.hidden_size or trained.vocab_rows != base.base_rows):
        raise YollavaError(
            f"concept '{record.name}' records base {trained.id} with hidden size {trained.hidden_size} and {trained.vocab_rows} rows, "
            f"but the loaded {base.model_id} has {base.hidden_size} and {base.base_rows}: the base changed since training "
            "(or the record was edited); retrain the concept on this base with --overwrite"
        )
    if trained.id != base.model_id:
        detail = f" (hidden size {trained.hidden_size}, the loaded one has {base.hidden_size})" if trained.hidden_size != base.hidden_size else ""
        raise YollavaError(
            f"concept '{record.name}' was trained on base model {trained.id}{detail} but {base.model_id} is loaded; pass --model {trained.id}"
        )


def load_concept(base: Base, store: str | Path, name: str) -> ConceptArtifact:
    """Load ``store/<name>/`` onto ``base`` (validated, then attached).

    Raises:
        YollavaError: missing concept, other base model, invalid record or weights, token clash.
    """
    record, tensors = read_concept(store, name)
    check_base(record, base)
    params = ConceptParams(ConceptTokens(record.name, record.k), record.head_rows, tensors["embed_rows"], tensors["head_rows"])
    params.requires_grad_(False)
    attach(base, params)
    return ConceptArtifact(params=params, record=record)


def concept_status(store: str | Path, name: str) -> ConceptEntry:
    """Whether a stored concept would load (record and weights; no model needed); never raises for bad files."""
    try:
        record, _ = read_concept(store, name)
    except YollavaError as exc:
        return ConceptEntry(name, f"damaged: {exc}")
    return ConceptEntry(name, "ok", record)


def list_concepts(store: str | Path) -> list[ConceptEntry]:
    """Every concept folder in ``store`` (those holding a ``concept.json``) with its status; one bad one never hides the rest."""
    store = Path(store)
    if not store.is_dir():
        return []
    names = sorted(p.name for p in store.iterdir() if NAME_PATTERN.fullmatch(p.name))
    names += sorted(p.name[1 : -len(OLD_SUFFIX)] for p in store.glob(f".*{OLD_SUFFIX}")
                    if NAME_PATTERN.fullmatch(p.name[1 : -len(OLD_SUFFIX)]) and p.name[1 : -len(OLD_SUFFIX)] not in names)
    out = []
    for name in sorted(names):
        folder = settle(store / name)
        if folder is None or not folder.is_dir() or not (folder / CONCEPT_JSON).exists() and not (folder / CONCEPT_JSON).is_symlink():
            continue  # negatives or a training set without a trained concept yet
        out.append(concept_status(store, name))
    return out


def remove_concept(store: str | Path, name: str) -> Path:
    """Delete ``store/<name>/`` (the concept and its training set and negatives) as one unit.

    Raises:
        YollavaError: no such concept, a symbolic link (never followed), another process writing it.
    """
    folder = concept_dir(store, name)
    if not folder.is_symlink() and settle(folder) is None:
        raise YollavaError(f"concept '{name}' not found in {Path(store)}; see `yollava concepts list`")
    remove_artifact(folder)
    return folder
