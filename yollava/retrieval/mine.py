"""Negatives for a concept: hard ones by CLIP kNN around each positive, easy ones at random, stored with a manifest."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yollava.errors import YollavaError
from yollava.images import IMAGE_SUFFIXES, check_image, file_sha256, scan_image_dir
from yollava.retrieval.embed import DEFAULT_EMBEDDER, Embedder, as_embedder, default_cache_dir
from yollava.retrieval.index import Backend, FolderBackend, Hit, check_embedder, load_index
from yollava.storage import NEGATIVES_DIR, artifact_lock, settle, staged_folder

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.jsonl"
RETRIEVAL_FILE = "retrieval.json"
DOWNLOADS_DIR = "downloads"
FORMAT_VERSION = 1
# Yo'LLaVA: ~100 hard negatives in total (m per positive so that n·m ≈ 100) and ~100 easy ones.
DEFAULT_HARD_TOTAL = 100
DEFAULT_EASY = 100
# Cosine at or above which a candidate counts as the same picture as a positive (or as another
# negative). Re-encodes, resizes and small crops of one photo score >= 0.95 under LAION ViTs;
# lower it to also drop other photos of the very same subject from a personal pool.
DEFAULT_NEAR_DUPLICATE = 0.95
# Neighbours asked per positive: 3m + 10 leaves room for exclusions; short lists are re-asked
# with 4x more, up to this many rounds.
MAX_ROUNDS = 3
MANIFEST_KEYS = ("kind", "source", "file", "sha256", "size", "score", "rank", "query", "embedder", "index")
# Manifests written before sizes were recorded lack only "size"; their files are checked by sha256 alone.
LEGACY_MANIFEST_KEYS = tuple(k for k in MANIFEST_KEYS if k != "size")
# How ``file`` entries look: ``<kind>/<16 hex of the sha256><image suffix>``, inside the negatives folder.
MANIFEST_FILE_PATTERN = re.compile(r"(hard|easy)/([0-9a-f]{16})(\.[a-z0-9]{1,5})")


class NegativeKind(StrEnum):
    """Kinds of negatives (sub-folder names and the manifest's ``kind``)."""

    HARD = "hard"
    EASY = "easy"


@dataclass(frozen=True)
class NegativeRecord:
    """One manifest line. ``file`` is relative to the negatives folder; ``rank``/``query`` are None for easy ones."""

    kind: str
    source: str
    file: str
    sha256: str
    score: float
    rank: int | None
    query: str | None
    embedder: str
    index: str
    size: int | None = None


@dataclass
class NegativeSet:
    """A concept's stored negatives (``directory`` is ``<store>/<name>/negatives``)."""

    directory: Path
    records: list[NegativeRecord]
    request: dict[str, Any]
    reused: bool = False
    warnings: list[str] = field(default_factory=list)

    def paths(self, kind: NegativeKind | str) -> list[Path]:
        """Absolute files of one kind, in manifest order."""
        return [self.directory / r.file for r in self.records if r.kind == NegativeKind(kind)]

    @property
    def hard(self) -> list[Path]:
        """Hard negative files."""
        return self.paths(NegativeKind.HARD)

    @property
    def easy(self) -> list[Path]:
        """Easy negative files."""
        return self.paths(NegativeKind.EASY)


@dataclass
class _Candidate:
    path: Path
    sha256: str
    vector: np.ndarray


@dataclass
class _Tally:
    """Which distinct candidates were passed over, and why (reported as counts)."""

    subject: set[str] = field(default_factory=set)
    duplicate: set[str] = field(default_factory=set)
    unusable: dict[str, str] = field(default_factory=dict)


def negatives_dir(store: str | Path, concept: str) -> Path:
    """``<store>/<concept>/negatives``.

    Raises:
        YollavaError: an invalid concept name.
    """
    from yollava.concept import validate_name

    return Path(store) / validate_name(concept) / NEGATIVES_DIR


def default_per_image(n_positives: int, total: int = DEFAULT_HARD_TOTAL) -> int:
    """Hard negatives per positive so that n·m ≈ ``total`` (rounded up)."""
    return max(1, math.ceil(total / max(1, n_positives)))


def _candidates(hits: Sequence[Hit], backend: Backend, embedder: Embedder, known: dict[str, _Candidate | str],
                cache_dir: str | Path | None, progress: bool) -> None:
    """Fetch and embed the hits' sources not seen yet; record a candidate or a failure reason per source."""
    new = [h for h in {h.source: h for h in hits}.values() if h.source not in known]
    if not new:
        return
    fetched = backend.fetch(new)
    files = {source: got for source, got in fetched.items() if isinstance(got, Path)}
    embedded = embedder.embed(list(files.values()), cache_dir=cache_dir, progress=progress, what="candidates")
    row = {path: i for i, path in enumerate(embedded.paths)}
    for duplicate, kept in embedded.duplicates:
        row.setdefault(duplicate, row.get(kept, -1))
    reasons = {path: reason for path, reason in embedded.skipped}
    for source in (h.source for h in new):
        got = fetched.get(source, "missing")
        if isinstance(got, Path):
            i = row.get(got, -1)
            got = _Candidate(got, embedded.sha256[i], embedded.vectors[i]) if i >= 0 else reasons.get(got, "unreadable")
        known[source] = got


class _Selector:
    """Accepts candidates in order, refusing the subject's near-duplicates and repeats."""

    def __init__(self, positives: np.ndarray, positive_sha: set[str], threshold: float):
        self.positives = positives
        self.positive_sha = positive_sha
        self.threshold = threshold
        self.taken_sha: set[str] = set()
        self.taken: list[np.ndarray] = []
        self.tally = _Tally()

    def offer(self, source: str, candidate: _Candidate | str) -> float | None:
        """Accept ``candidate`` and return its best cosine to a positive, or None when refused."""
        if isinstance(candidate, str):
            self.tally.unusable[source] = candidate.split(" (")[0]
            return None
        to_positives = float(np.max(self.positives @ candidate.vector))
        if candidate.sha256 in self.positive_sha or to_positives >= self.threshold:
            self.tally.subject.add(source)
            return None
        if candidate.sha256 in self.taken_sha or (self.taken and float(np.max(np.stack(self.taken) @ candidate.vector)) >= self.threshold):
            self.tally.duplicate.add(source)
            return None
        self.taken_sha.add(candidate.sha256)
        self.taken.append(candidate.vector)
        return to_positives


def _explain(found: int, wanted: int, what: str, tally: _Tally, pool_size: int | None) -> str:
    parts = [f"found {found} of {wanted} {what}"]
    if pool_size is not None:
        parts.append(f"pool has {pool_size} images")
    if tally.subject:
        parts.append(f"{len(tally.subject)} near-duplicates of the subject excluded")
    if tally.duplicate:
        parts.append(f"{len(tally.duplicate)} repeats excluded")
    if tally.unusable:
        reasons = Counter(tally.unusable.values())
        parts.append("unusable: " + ", ".join(f"{r} x{c}" for r, c in reasons.most_common()))
    return "; ".join(parts)


def retrieve_hard_negatives(
    concept: str,
    images: str | Path,
    backend: Backend,
    embedder: Embedder,
    *,
    store: str | Path = "concepts",
    per_image: int | None = None,
    n_easy: int = DEFAULT_EASY,
    near_duplicate: float = DEFAULT_NEAR_DUPLICATE,
    seed: int = 0,
    link: bool = True,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> NegativeSet:
    """Mine and store a concept's hard and easy negatives.

    For each positive, its top ``per_image`` neighbours in ``backend`` are kept, skipping the
    subject's near-duplicates (cosine >= ``near_duplicate`` to any positive, or the same bytes) and
    images already taken for another positive; then ``n_easy`` random pool images under the same
    rules. Files are hard-linked (or copied) into ``<store>/<concept>/negatives/{hard,easy}/`` with
    ``manifest.jsonl`` and ``retrieval.json``; the folder is replaced atomically. Re-running the
    same request reuses the stored set; embeddings and downloads are cached, so an interrupted run
    resumes cheaply.

    Args:
        concept: concept name.
        images: folder of the subject's photos.
        backend: a :class:`~yollava.retrieval.index.FolderBackend`, ``LocalIndex`` or
            :class:`~yollava.retrieval.client.ServiceBackend`.
        embedder: the embedder of the backend's space.
        store: concept store.
        per_image: neighbours per positive (default: ceil(100 / number of positives)).
        n_easy: easy negatives.
        near_duplicate: cosine threshold for "same picture" (0 < t <= 1).
        seed: seed of the easy sample.
        link: hard-link files when possible (copy otherwise).
        overwrite: replace stored negatives built by a different request.
        cache_dir: cache root for embeddings (and downloads of the service backend).
        progress: show progress bars.

    Returns:
        The stored :class:`NegativeSet` (``warnings`` lists shortfalls with counts).

    Raises:
        YollavaError: bad name or images, embedder/backend mismatch, bad numbers, existing
            negatives from another request without ``overwrite``, backend failures.
    """
    if per_image is not None and per_image < 0:
        raise YollavaError(f"--per-image {per_image}: must be >= 0")
    if n_easy < 0:
        raise YollavaError(f"--easy {n_easy}: must be >= 0")
    if not 0.0 < near_duplicate <= 1.0:
        raise YollavaError(f"near-duplicate threshold {near_duplicate}: must be in (0, 1]")
    out = negatives_dir(store, concept)
    check_embedder(backend, embedder)
    # the concept's lock is held from the look at what is stored to the swap of the new set
    with artifact_lock(out.parent, what=f"concept '{concept}' in {Path(store)}"):
        settle(out.parent)
        settle(out, lock_target=out.parent)
        return _retrieve(concept, images, backend, embedder, out, store, per_image, n_easy, near_duplicate, seed, link,
                         overwrite, cache_dir, progress)


def _retrieve(concept: str, images: str | Path, backend: Backend, embedder: Embedder, out: Path, store: str | Path,
              per_image: int | None, n_easy: int, near_duplicate: float, seed: int, link: bool, overwrite: bool,
              cache_dir: str | Path | None, progress: bool) -> NegativeSet:
    scan = scan_image_dir(images, what="positive image", option="--images")
    positives = embedder.embed(scan.valid, cache_dir=cache_dir, progress=progress, what="positive images")
    if not len(positives):
        raise YollavaError(f"--images {images}: no positive image could be embedded")
    m = default_per_image(len(positives)) if per_image is None else per_image
    request = {
        "format_version": FORMAT_VERSION,
        "concept": concept,
        "positives": sorted(positives.sha256),
        "embedder": embedder.name,
        "embedder_fingerprint": embedder.fingerprint,
        "index": backend.description,
        "per_image": m,
        "n_easy": n_easy,
        "near_duplicate": near_duplicate,
        "seed": seed,
    }
    previous = _read_retrieval(out)
    if previous is not None and not overwrite:
        if previous.get("request") == request:
            stored = read_negatives(concept, store)
            log.info("negatives of %s are up to date (%d hard, %d easy); nothing to do", concept, len(stored.hard), len(stored.easy))
            stored.reused = True
            return stored
        raise YollavaError(
            f"{out} already holds negatives from another request ({_difference(previous.get('request', {}), request)}); "
            "pass --overwrite to replace them"
        )

    selector = _Selector(positives.vectors, set(positives.sha256), near_duplicate)
    known: dict[str, _Candidate | str] = {}
    query_names = [str(p.resolve()) for p in positives.paths]
    hard: list[NegativeRecord] = []
    k = 3 * m + 10
    pool_size = len(backend) if hasattr(backend, "__len__") else None
    for _ in range(MAX_ROUNDS if m else 0):
        hits = backend.query(positives.vectors, k)
        _candidates([h for row in hits for h in row], backend, embedder, known, cache_dir, progress)
        selector = _Selector(positives.vectors, set(positives.sha256), near_duplicate)
        hard = []
        short = False
        for q, row in enumerate(hits):
            taken = 0
            for hit in row:
                if taken == m:
                    break
                score = selector.offer(hit.source, known[hit.source])
                if score is None:
                    continue
                hard.append(_record(NegativeKind.HARD, hit, known[hit.source], embedder, backend, hit.score, hit.rank, query_names[q]))
                taken += 1
            short |= taken < m and len(row) >= k
        if not short or (pool_size is not None and k >= pool_size):
            break
        k *= 4
    hard_tally = selector.tally

    easy: list[NegativeRecord] = []
    selector.tally = _Tally()
    offered: set[str] = set()
    # A seeded sample 1.5x the need absorbs the usual exclusions; a small or crowded pool gets one
    # larger draw (same seed: a local pool's larger sample extends the first one).
    for size in (int(1.5 * n_easy) + 10, 6 * n_easy + 40) if n_easy else ():
        sample = backend.sample(size, seed)
        _candidates(sample, backend, embedder, known, cache_dir, progress)
        for hit in sample:
            if len(easy) == n_easy:
                break
            if hit.source in offered:
                continue
            offered.add(hit.source)
            score = selector.offer(hit.source, known[hit.source])
            if score is not None:
                easy.append(_record(NegativeKind.EASY, hit, known[hit.source], embedder, backend, score, None, None))
        if len(easy) == n_easy or len(sample) < size:
            break

    warnings = []
    if len(hard) < m * len(positives):
        warnings.append(_explain(len(hard), m * len(positives), "hard negatives", hard_tally, pool_size))
    if len(easy) < n_easy:
        warnings.append(_explain(len(easy), n_easy, "easy negatives", selector.tally, pool_size))
    for warning in warnings:
        log.warning("%s: %s", concept, warning)
    records = _store(out, hard + easy, known, request, link, warnings)
    log.info("stored %d hard and %d easy negatives for %s in %s", len(hard), len(easy), concept, out)
    return NegativeSet(directory=out, records=records, request=request, warnings=warnings)


def _record(kind: NegativeKind, hit: Hit, candidate: _Candidate, embedder: Embedder, backend: Backend,
            score: float, rank: int | None, query: str | None) -> NegativeRecord:
    suffix = candidate.path.suffix.lower()
    suffix = suffix if suffix in IMAGE_SUFFIXES else ".img"
    return NegativeRecord(
        kind=kind.value, source=hit.source, file=f"{kind.value}/{candidate.sha256[:16]}{suffix}", sha256=candidate.sha256,
        score=round(float(score), 6), rank=rank, query=query, embedder=embedder.name, index=backend.description,
        size=candidate.path.stat().st_size,
    )


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "differs in " + ", ".join(keys) if keys else "unreadable request"


def _store(out: Path, records: list[NegativeRecord], known: dict[str, _Candidate | str], request: dict[str, Any],
           link: bool, warnings: list[str]) -> list[NegativeRecord]:
    with staged_folder(out, lock_target=out.parent) as tmp:
        for kind in NegativeKind:
            (tmp / kind.value).mkdir()
        for record in records:
            source = known[record.source].path
            target = tmp / record.file
            if link:
                try:
                    os.link(source, target)
                    continue
                except OSError:
                    pass  # another filesystem, or links unsupported: fall back to a copy
            shutil.copyfile(source, target)
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(asdict(record), sort_keys=True) + "\n")
        counts = Counter(r.kind for r in records)
        summary = {
            "request": request,
            "counts": {kind.value: counts.get(kind.value, 0) for kind in NegativeKind},
            "warnings": warnings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Written last: its presence marks a complete set.
        (tmp / RETRIEVAL_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return records


def _read_retrieval(out: Path) -> dict[str, Any] | None:
    path = out / RETRIEVAL_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def read_negatives(concept: str, store: str | Path = "concepts") -> NegativeSet:
    """Load a concept's stored negatives (for building the training set and for ablations).

    Every manifest entry is checked before anything is used: its ``file`` must be
    ``<kind>/<sha prefix><image suffix>`` inside the negatives folder (no absolute or ``../`` paths, no
    links out), and the file must have the recorded size and sha256 and decode as an image.

    Args:
        concept: concept name.
        store: concept store.

    Returns:
        The :class:`NegativeSet`, records in manifest order (hard first).

    Raises:
        YollavaError: no negatives stored, a damaged manifest, or a listed file that is missing, outside
            the folder, altered, or not an image.
    """
    target = negatives_dir(store, concept)
    concept_folder = settle(target.parent, lock_target=target.parent)
    out = settle(concept_folder / NEGATIVES_DIR, lock_target=target.parent) if concept_folder else None
    summary = _read_retrieval(out) if out is not None else None
    if out is None or summary is None:
        raise YollavaError(f"no negatives for '{concept}' in {Path(store)}; run `yollava retrieve --concept {concept} --images DIR --pool DIR`")
    fix = f"re-run `yollava retrieve --concept {concept} ... --overwrite`"
    records = []
    try:
        for number, line in enumerate((out / MANIFEST_FILE).read_text(encoding="utf-8").splitlines(), 1):
            data = json.loads(line)
            if not isinstance(data, dict) or set(data) not in (set(MANIFEST_KEYS), set(LEGACY_MANIFEST_KEYS)):
                raise ValueError(f"line {number} has keys {sorted(data) if isinstance(data, dict) else type(data).__name__}")
            problem = _manifest_problem(data)
            if problem:
                raise ValueError(f"line {number}: {problem}")
            records.append(NegativeRecord(**data))
    except (OSError, ValueError, TypeError) as exc:
        raise YollavaError(f"{out / MANIFEST_FILE}: damaged ({str(exc)[:160]}); {fix}") from exc
    root = out.resolve()
    for record in records:
        path = out / record.file
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise YollavaError(f"{out}: {record.file} points outside the negatives folder; {fix}")
        if not path.is_file():
            missing = sum(1 for r in records if not (out / r.file).is_file())
            raise YollavaError(f"{out}: {missing} negative file(s) listed in {MANIFEST_FILE} are missing (e.g. {record.file}); {fix}")
        if record.size is not None and path.stat().st_size != record.size:
            raise YollavaError(f"{out}: {record.file} has {path.stat().st_size} bytes, the manifest says {record.size}; {fix}")
        if file_sha256(path) != record.sha256:
            raise YollavaError(f"{out}: {record.file} does not match its sha256 in {MANIFEST_FILE} (altered?); {fix}")
        reason = check_image(path)
        if reason is not None:
            raise YollavaError(f"{out}: {record.file} is {reason}, not a usable negative image; {fix}")
    return NegativeSet(directory=out, records=records, request=summary.get("request", {}), warnings=summary.get("warnings", []))


def _manifest_problem(data: dict[str, Any]) -> str | None:
    """Why one manifest line is malformed, or None (types, and ``file`` naming its kind and sha256)."""
    texts = ("kind", "source", "file", "sha256", "embedder", "index")
    bad = [key for key in texts if not isinstance(data[key], str)]
    if bad:
        return f"'{bad[0]}' is not a string"
    if data["kind"] not in {k.value for k in NegativeKind}:
        return f"kind {data['kind'][:20]!r} is not hard or easy"
    if not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
        return "sha256 is not 64 hex digits"
    match = MANIFEST_FILE_PATTERN.fullmatch(data["file"])
    if match is None or match.group(1) != data["kind"] or not data["sha256"].startswith(match.group(2)):
        return f"file {data['file'][:40]!r} is not {data['kind']}/<sha256 prefix>.<image suffix>"
    if match.group(3) not in IMAGE_SUFFIXES | {".img"}:
        return f"file {data['file'][:40]!r} does not have an image suffix"
    if "size" in data and (type(data["size"]) is not int or data["size"] < 0):
        return "size is not a byte count"
    if isinstance(data["score"], bool) or not isinstance(data["score"], (int, float)):
        return "score is not a number"
    for key in ("rank", "query"):
        if data[key] is not None and not isinstance(data[key], int if key == "rank" else str):
            return f"'{key}' has the wrong type"
    return None


def retrieve_negatives(
    concept: str,
    images: str | Path,
    *,
    pool: str | Path | None = None,
    index: str | Path | None = None,
    service: str | None = None,
    index_name: str | None = None,
    per_image: int | None = None,
    n_easy: int = DEFAULT_EASY,
    embedder: str | None = None,
    store: str | Path = "concepts",
    near_duplicate: float = DEFAULT_NEAR_DUPLICATE,
    seed: int = 0,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> NegativeSet:
    """``yollava retrieve``: pick the backend from the options, then :func:`retrieve_hard_negatives`.

    Args:
        concept: concept name.
        images: folder of the subject's photos.
        pool: a plain folder of candidate images, or
        index: a folder made by ``yollava index build``, or
        service: a clip-retrieval back-end URL (with ``index_name``).
        index_name: index served by ``service``.
        per_image: neighbours per positive (default ceil(100 / number of positives)).
        n_easy: easy negatives.
        embedder: embedder name (default: the index's own, else ``laion-vit-l-14``).
        store: concept store.
        near_duplicate: cosine threshold for "same picture as a positive".
        seed: seed of the easy sample.
        overwrite: replace stored negatives from another request.
        cache_dir: cache root (embeddings, downloads).
        timeout: seconds per download connect/read (service backend).
        progress: show progress bars.

    Returns:
        The stored :class:`NegativeSet`.

    Raises:
        YollavaError: not exactly one backend, plus everything :func:`retrieve_hard_negatives` raises.
    """
    if sum(x is not None for x in (pool, index, service)) != 1:
        raise YollavaError("pass exactly one of --pool DIR, --index IDX or --service URL --index-name NAME")
    if index_name is not None and service is None:
        raise YollavaError("--index-name goes with --service URL")
    backend: Backend
    if index is not None:
        backend = load_index(index)
        model = as_embedder(embedder, default=backend.header.embedder)
    elif pool is not None:
        model = as_embedder(embedder, default=DEFAULT_EMBEDDER)
        backend = FolderBackend(pool, model, cache_dir=cache_dir, progress=progress)
    else:
        from yollava.retrieval.client import ServiceBackend

        model = as_embedder(embedder, default=DEFAULT_EMBEDDER)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        backend = ServiceBackend(service, index_name or "", embedder_name=model.name, dim=model.dim,
                                 download_dir=root / DOWNLOADS_DIR, timeout=timeout)
    return retrieve_hard_negatives(
        concept, images, backend, model, store=store, per_image=per_image, n_easy=n_easy,
        near_duplicate=near_duplicate, seed=seed, overwrite=overwrite, cache_dir=cache_dir, progress=progress,
    )
