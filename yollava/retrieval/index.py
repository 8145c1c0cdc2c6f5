"""Nearest-neighbour backends over image embeddings: a faiss index on disk and a plain folder."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from yollava.errors import YollavaError
from yollava.images import IMAGE_SUFFIXES
from yollava.retrieval.embed import Embedder, as_embedder
from yollava.storage import artifact_lock, settle, staged_folder

log = logging.getLogger(__name__)
# faiss logs each CPU-feature probe at INFO on import; under the CLI's INFO logging that is noise.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

# The layout is clip-retrieval's (image.index + metadata/*.parquet with an image_path column), so
# `clip_back` can serve a yollava index as is; our header sits next to it.
INDEX_HEADER = "yollava_index.json"
FAISS_FILE = "image.index"
METADATA_DIR = "metadata"
FORMAT_VERSION = 1
# Vectors read back from the embedding cache per add() call while building (768-d: 150 MB).
ADD_CHUNK = 50_000
# faiss k-means wants >= 39 training points per centroid; fewer gives poor cells and a warning.
MIN_POINTS_PER_CENTROID = 39
# 8-bit PQ codebooks have 256 centroids per sub-quantizer, each needing its training points.
MIN_PQ_TRAIN = 256 * MIN_POINTS_PER_CENTROID
# Cap on vectors used to train IVF/PQ (faiss samples 256 per centroid anyway).
MAX_TRAIN = 200_000
# Metadata shards are named by their position; a header naming anything else is refused (no "../").
METADATA_NAME = re.compile(r"\d{5}\.parquet")
# A second `index add` waits this long for the first to finish before failing with its PID.
ADD_LOCK_WAIT_S = 60.0


class IndexKind(StrEnum):
    """faiss index types (``--kind``). Flat is exact; IVF and IVF-PQ trade recall for speed and memory."""

    FLAT = "flat"
    IVF = "ivf"
    IVF_PQ = "ivf-pq"


@dataclass(frozen=True)
class Hit:
    """One neighbour of one query row: ``source`` is a local path or a URL; ``rank`` starts at 1."""

    source: str
    score: float
    rank: int
    query: int
    sha256: str | None = None
    caption: str | None = None


class Backend(Protocol):
    """What mining needs from a source of candidate images."""

    description: str
    embedder_name: str | None
    embedder_fingerprint: str | None
    dim: int | None

    def query(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest images of each row of ``embeddings`` (L2-normalised, ``[q, dim]``)."""
        ...

    def sample(self, n: int, seed: int) -> list[Hit]:
        """About ``n`` images drawn at random (seeded) from the pool."""
        ...

    def fetch(self, hits: Sequence[Hit]) -> dict[str, Path | str]:
        """Local file of each hit's source, or a short reason why there is none."""
        ...


@dataclass
class IndexHeader:
    """The JSON header of an index folder (``yollava_index.json``)."""

    embedder: str
    embedder_fingerprint: str
    dim: int
    count: int
    kind: str
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int | None = None
    metric: str = "inner_product"
    metadata_files: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    created: str = ""
    updated: str = ""

    @classmethod
    def read(cls, path: Path) -> IndexHeader:
        try:
            data = json.loads((path / INDEX_HEADER).read_text(encoding="utf-8"))
            if data.get("format_version") != FORMAT_VERSION:
                raise YollavaError(f"index {path}: format version {data.get('format_version')} is not {FORMAT_VERSION}; rebuild it")
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise YollavaError(f"index {path}: {INDEX_HEADER} is damaged ({exc.__class__.__name__}); rebuild the index") from exc


@dataclass
class IndexReport:
    """What a build or add did."""

    header: IndexHeader
    path: Path
    added: int
    skipped: list[tuple[Path, str]]
    duplicates: int
    already_indexed: int


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def list_image_files(directory: str | Path, *, option: str = "--images", recursive: bool = True) -> list[Path]:
    """Image files under ``directory`` by suffix, sorted (decoding is checked later, while embedding).

    Args:
        directory: folder to list (hidden files and folders are ignored).
        option: the CLI option named in errors.
        recursive: include sub-folders.

    Returns:
        The image paths.

    Raises:
        YollavaError: the folder is missing or holds no image file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise YollavaError(f"{option} {directory}: no such directory; pass a folder of images")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in directory.glob(pattern)
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    if not files:
        raise YollavaError(f"{option} {directory}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_image_list(list_file: str | Path, *, option: str = "--list") -> list[Path]:
    """Paths from a text file, one per line (relative ones are relative to the file; ``#`` comments).

    Args:
        list_file: the text file.
        option: the CLI option named in errors.

    Returns:
        The listed paths (missing files are reported later, while embedding).

    Raises:
        YollavaError: the file is missing or lists nothing.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise YollavaError(f"{option} {list_file}: no such file; pass a text file with one image path per line")
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else list_file.parent / path)
    if not paths:
        raise YollavaError(f"{option} {list_file}: lists no image paths")
    return paths


def _collect(images: str | Path | None, list_file: str | Path | None, paths: Sequence[str | Path] | None) -> list[Path]:
    given = [x is not None for x in (images, list_file, paths)]
    if sum(given) != 1:
        raise YollavaError("pass exactly one of --images DIR or --list FILE")
    if images is not None:
        return list_image_files(images)
    if list_file is not None:
        return read_image_list(list_file)
    return [Path(p) for p in paths]


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: about 4·sqrt(n), with >= 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: 8 dimensions each when possible (768-d -> 96 bytes per vector)."""
    for m in (dim // 8, dim // 4, dim // 2, dim):
        if m >= 1 and dim % m == 0:
            return m
    return dim


def make_faiss_index(dim: int, kind: IndexKind, *, nlist: int | None = None, pq_m: int | None = None):
    """An empty inner-product faiss index of ``kind`` (IVF kinds still need training).

    Args:
        dim: vector dimension.
        kind: :class:`IndexKind`.
        nlist: IVF cells (IVF kinds only).
        pq_m: PQ sub-quantizers, a divisor of ``dim`` (IVF-PQ only).

    Returns:
        A ``faiss.Index``.
    """
    import faiss

    if kind is IndexKind.FLAT:
        return faiss.IndexFlatIP(dim)
    quantizer = faiss.IndexFlatIP(dim)
    if kind is IndexKind.IVF:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if dim % pq_m:
            raise YollavaError(f"--pq-m {pq_m} must divide the embedding dimension {dim}")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    return index


def train_faiss_index(index, vectors: np.ndarray, seed: int = 0) -> None:
    """Train an IVF/IVF-PQ index on (a seeded sample of) ``vectors``; a no-op for flat indices.

    Args:
        index: from :func:`make_faiss_index`.
        vectors: float32 ``[n, dim]``; at most :data:`MAX_TRAIN` rows are used.
        seed: sampling seed.
    """
    if index.is_trained:
        return
    if len(vectors) > MAX_TRAIN:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), MAX_TRAIN, replace=False))]
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))


def _enable_reconstruct(index) -> None:
    """IVF indices need a direct map for reconstruct(); clip_back's search_and_reconstruct uses it."""
    import faiss

    if not isinstance(index, faiss.IndexFlat):
        faiss.extract_index_ivf(index).make_direct_map()


class FaissBackend:
    """Exact or approximate inner-product search over embedded images with a table of paths."""

    def __init__(self, index, paths: list[str], sha256: list[str], *, description: str, embedder_name: str | None,
                 embedder_fingerprint: str | None, nprobe: int | None = None):
        self.index = index
        self.paths = paths
        self.sha256 = sha256
        self.description = description
        self.embedder_name = embedder_name
        self.embedder_fingerprint = embedder_fingerprint
        self.dim = index.d
        if nprobe is not None:
            import faiss

            faiss.extract_index_ivf(index).nprobe = nprobe

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def query(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest images of each row (scores are inner products = cosines).

        Raises:
            YollavaError: the embeddings' dimension differs from the index's.
        """
        embeddings = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if embeddings.shape[1] != self.dim:
            raise YollavaError(
                f"{self.description}: holds {self.dim}-d embeddings ({self.embedder_name}) but the query is "
                f"{embeddings.shape[1]}-d; use the embedder the index was built with"
            )
        k = min(k, len(self))
        if k <= 0 or len(embeddings) == 0:
            return [[] for _ in range(len(embeddings))]
        scores, ids = self.index.search(embeddings, k)
        return [
            [
                Hit(source=self.paths[i], score=float(s), rank=rank + 1, query=q, sha256=self.sha256[i])
                for rank, (s, i) in enumerate((s, i) for s, i in zip(scores[q], ids[q]) if i >= 0)
            ]
            for q in range(len(embeddings))
        ]

    def sample(self, n: int, seed: int) -> list[Hit]:
        """``min(n, size)`` images drawn uniformly without replacement (seeded); score 0, rank 0."""
        ids = np.random.default_rng(seed).permutation(len(self))[:n]
        return [Hit(source=self.paths[i], score=0.0, rank=0, query=-1, sha256=self.sha256[i]) for i in ids]

    def fetch(self, hits: Sequence[Hit]) -> dict[str, Path | str]:
        """Local files need no download: each source's path, or "missing" when it is gone."""
        return {h.source: Path(h.source) if Path(h.source).is_file() else "missing" for h in hits}


class LocalIndex(FaissBackend):
    """A faiss index folder on disk (see :func:`build_index`)."""

    def __init__(self, path: Path, header: IndexHeader, index, paths: list[str], sha256: list[str]):
        super().__init__(index, paths, sha256, description=f"index:{path}", embedder_name=header.embedder,
                         embedder_fingerprint=header.embedder_fingerprint,
                         nprobe=header.nprobe if header.kind != IndexKind.FLAT else None)
        self.path = path
        self.header = header


class FolderBackend(FaissBackend):
    """A plain folder of candidate images, embedded on the fly (cached) and searched exactly."""

    def __init__(self, directory: str | Path, embedder: Embedder, *, cache_dir: str | Path | None = None,
                 progress: bool = True, option: str = "--pool"):
        import faiss

        directory = Path(directory)
        embedded = embedder.embed(list_image_files(directory, option=option), cache_dir=cache_dir,
                                  progress=progress, what="pool images")
        if not len(embedded):
            raise YollavaError(f"{option} {directory}: none of its images could be read")
        index = faiss.IndexFlatIP(embedder.dim)
        index.add(embedded.vectors)
        super().__init__(index, [str(p.resolve()) for p in embedded.paths], embedded.sha256,
                         description=f"folder:{directory.resolve()}", embedder_name=embedder.name,
                         embedder_fingerprint=embedder.fingerprint)


def _write_metadata(path: Path, paths: Sequence[str], sha256: Sequence[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_path": pa.array(list(paths), pa.string()), "sha256": pa.array(list(sha256), pa.string())}), path)


def _read_metadata(path: Path, files: Sequence[str]) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    paths: list[str] = []
    hashes: list[str] = []
    for name in files:
        table = pq.read_table(path / METADATA_DIR / name, columns=["image_path", "sha256"])
        paths += table.column("image_path").to_pylist()
        hashes += table.column("sha256").to_pylist()
    return paths, hashes


def load_index(path: str | Path) -> LocalIndex:
    """Open an index folder written by :func:`build_index`.

    Raises:
        YollavaError: missing or damaged index (header, faiss file and metadata disagree).
    """
    import faiss

    path = Path(path)
    folder = settle(path) or path
    if not (folder / INDEX_HEADER).is_file():
        raise YollavaError(f"--index {path}: not a yollava index (no {INDEX_HEADER}); build one with `yollava index build`")
    header = IndexHeader.read(folder)
    odd = [name for name in header.metadata_files if not METADATA_NAME.fullmatch(str(name))]
    if odd:
        raise YollavaError(f"--index {path}: {INDEX_HEADER} lists metadata file {str(odd[0])[:60]!r}, not NNNNN.parquet; rebuild the index")
    try:
        index = faiss.read_index(str(folder / FAISS_FILE))
        paths, hashes = _read_metadata(folder, header.metadata_files)
    except (RuntimeError, OSError, ValueError) as exc:
        raise YollavaError(f"--index {path}: cannot read it ({exc.__class__.__name__}: {' '.join(str(exc).split())[:120]}); rebuild the index") from exc
    if not (index.ntotal == header.count == len(paths) and index.d == header.dim):
        raise YollavaError(
            f"--index {path}: damaged ({index.ntotal} vectors of dim {index.d}, {len(paths)} metadata rows, "
            f"header says {header.count} of dim {header.dim}); rebuild the index"
        )
    return LocalIndex(path, header, index, paths, hashes)


def _write_index(out: Path, index, header: IndexHeader, new_paths: Sequence[str], new_sha: Sequence[str],
                 previous: Path | None) -> None:
    import faiss

    with staged_folder(out) as tmp:
        (tmp / METADATA_DIR).mkdir()
        for name in header.metadata_files:
            # Earlier metadata shards are immutable: hard links make an add cost O(new rows).
            source = previous / METADATA_DIR / name
            try:
                os.link(source, tmp / METADATA_DIR / name)
            except OSError:
                shutil.copy2(source, tmp / METADATA_DIR / name)
        name = f"{len(header.metadata_files):05d}.parquet"
        _write_metadata(tmp / METADATA_DIR / name, new_paths, new_sha)
        header.metadata_files = [*header.metadata_files, name]
        header.count = int(index.ntotal)
        header.updated = _now()
        faiss.write_index(index, str(tmp / FAISS_FILE))
        (tmp / INDEX_HEADER).write_text(json.dumps(asdict(header), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _add_vectors(index, embedder: Embedder, hashes: list[str], cache_dir: str | Path | None) -> None:
    cache = embedder.cache(cache_dir)
    for start in range(0, len(hashes), ADD_CHUNK):
        index.add(cache.get(hashes[start : start + ADD_CHUNK]))


def build_index(
    out: str | Path,
    embedder: Embedder | str | None = None,
    *,
    images: str | Path | None = None,
    list_file: str | Path | None = None,
    paths: Sequence[str | Path] | None = None,
    kind: IndexKind | str = IndexKind.FLAT,
    nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int = 16,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> IndexReport:
    """Embed images (cached) and write a faiss index folder at ``out``, atomically.

    Args:
        out: index folder to create.
        embedder: an :class:`Embedder` or registered name (default ``laion-vit-l-14``).
        images: folder of images (searched recursively), or
        list_file: text file of image paths, or
        paths: image paths (library callers).
        kind: ``flat`` (exact; fine up to ~1M images), ``ivf`` or ``ivf-pq`` (millions).
        nlist: IVF cells (default ~4·sqrt(n)).
        pq_m: PQ bytes per vector, a divisor of the dimension (default dim/8).
        nprobe: IVF cells visited per query (recall vs speed).
        overwrite: replace an existing index at ``out``.
        cache_dir: embedding cache root.
        progress: show progress bars.
        seed: sampling seed for IVF training.

    Returns:
        An :class:`IndexReport`.

    Raises:
        YollavaError: bad inputs, ``out`` exists (without ``overwrite``), no readable image, or too
            few images for the requested kind.
    """
    out = Path(out)
    kind = _kind(kind)
    # held from the existence check to the swap: a second build of the same folder fails naming this PID
    with artifact_lock(out, what=f"index {out}"):
        settle(out)
        if out.exists() and not (out / INDEX_HEADER).is_file() and any(out.iterdir()):
            raise YollavaError(f"--out {out}: exists and is not a yollava index; choose a new folder")
        if (out / INDEX_HEADER).is_file() and not overwrite:
            raise YollavaError(f"--out {out}: an index already exists; extend it with `yollava index add` or pass --overwrite")
        return _build_index(out, embedder, kind, images, list_file, paths, nlist, pq_m, nprobe, cache_dir, progress, seed)


def _build_index(out: Path, embedder, kind: IndexKind, images, list_file, paths, nlist, pq_m, nprobe, cache_dir, progress, seed) -> IndexReport:
    files = _collect(images, list_file, paths)
    embedder = as_embedder(embedder)
    embedded = embedder.embed(files, cache_dir=cache_dir, keep_vectors=False, progress=progress, what="images")
    n = len(embedded)
    if n == 0:
        raise YollavaError(f"no readable image among the {len(files)} given; nothing to index")
    index = _new_trained_index(embedder, embedded.sha256, kind, nlist, pq_m, cache_dir, seed)
    _add_vectors(index, embedder, embedded.sha256, cache_dir)
    _enable_reconstruct(index)
    header = IndexHeader(
        embedder=embedder.name, embedder_fingerprint=embedder.fingerprint, dim=embedder.dim, count=0, kind=kind.value,
        nlist=getattr(index, "nlist", None), pq_m=int(index.pq.M) if kind is IndexKind.IVF_PQ else None,
        nprobe=nprobe if kind is not IndexKind.FLAT else None, created=_now(),
    )
    _write_index(out, index, header, [str(p.resolve()) for p in embedded.paths], embedded.sha256, None)
    log.info("indexed %d images into %s (%s, %s, dim %d)", n, out, kind.value, embedder.name, embedder.dim)
    return IndexReport(header=header, path=out, added=n, skipped=embedded.skipped,
                       duplicates=len(embedded.duplicates), already_indexed=0)


def _kind(kind: IndexKind | str) -> IndexKind:
    try:
        return IndexKind(kind)
    except ValueError:
        raise YollavaError(f"unknown index kind '{kind}'; choose one of: {', '.join(k.value for k in IndexKind)}") from None


def _new_trained_index(embedder: Embedder, hashes: list[str], kind: IndexKind, nlist: int | None, pq_m: int | None,
                       cache_dir: str | Path | None, seed: int):
    n, dim = len(hashes), embedder.dim
    if kind is IndexKind.FLAT:
        return make_faiss_index(dim, kind)
    nlist = nlist or default_nlist(n)
    need = MIN_PQ_TRAIN if kind is IndexKind.IVF_PQ else nlist * MIN_POINTS_PER_CENTROID
    if n < need:
        raise YollavaError(f"--kind {kind.value} needs at least {need} images to train (got {n}); use --kind flat, which is exact and fast at this size")
    pq_m = pq_m or default_pq_m(dim)
    index = make_faiss_index(dim, kind, nlist=nlist, pq_m=pq_m)
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(n, min(n, MAX_TRAIN), replace=False).tolist())
    train_faiss_index(index, embedder.cache(cache_dir).get([hashes[i] for i in sample]), seed)
    return index


def add_to_index(
    path: str | Path,
    embedder: Embedder | str | None = None,
    *,
    images: str | Path | None = None,
    list_file: str | Path | None = None,
    paths: Sequence[str | Path] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> IndexReport:
    """Add images to an existing index (images already in it, by content hash, are skipped).

    Args:
        path: index folder.
        embedder: must be the index's embedder (default: the one named in its header).
        images, list_file, paths: the images to add (exactly one).
        cache_dir: embedding cache root.
        progress: show progress bars.

    Returns:
        An :class:`IndexReport` (``added`` may be 0).

    Raises:
        YollavaError: no index at ``path``, a different embedder (name, weights or dimension), bad inputs.
    """
    path = Path(path)
    files = _collect(images, list_file, paths)
    if not path.parent.is_dir():
        raise YollavaError(f"--index {path}: no such index; build one with `yollava index build`")
    # The whole read-modify-write holds the lock: two concurrent adds must not drop each other's images.
    with artifact_lock(path, wait=ADD_LOCK_WAIT_S, what=f"index {path}"):
        current = load_index(path)
        header = current.header
        embedder = as_embedder(embedder, default=header.embedder)
        check_embedder(current, embedder)
        embedded = embedder.embed(files, cache_dir=cache_dir, keep_vectors=False, progress=progress, what="images")
        known = set(current.sha256)
        new = [(p, h) for p, h in zip(embedded.paths, embedded.sha256) if h not in known]
        if new:
            _add_vectors(current.index, embedder, [h for _, h in new], cache_dir)
            _write_index(current.path, current.index, header, [str(p.resolve()) for p, _ in new],
                         [h for _, h in new], current.path)
    log.info("added %d images to %s (%d already indexed; %d in total)", len(new), current.path,
             len(embedded) - len(new), header.count)
    return IndexReport(header=header, path=current.path, added=len(new), skipped=embedded.skipped,
                       duplicates=len(embedded.duplicates), already_indexed=len(embedded) - len(new))


def check_embedder(backend: Backend, embedder: Embedder) -> None:
    """Refuse an embedder whose space differs from the backend's (name, weights or dimension).

    Args:
        backend: an index, folder or service backend (unknown fields are not checked).
        embedder: the embedder about to query it.

    Raises:
        YollavaError: one line naming both embedders and the fix.
    """
    if backend.dim is not None and backend.dim != embedder.dim:
        raise YollavaError(
            f"{backend.description} holds {backend.dim}-d embeddings from '{backend.embedder_name}' but embedder "
            f"'{embedder.name}' makes {embedder.dim}-d ones; pass --embedder {backend.embedder_name}"
        )
    if backend.embedder_name is not None and backend.embedder_name != embedder.name:
        raise YollavaError(
            f"{backend.description} was built with embedder '{backend.embedder_name}', not '{embedder.name}'; "
            f"pass --embedder {backend.embedder_name} or build a new index"
        )
    if backend.embedder_fingerprint is not None and backend.embedder_fingerprint != embedder.fingerprint:
        raise YollavaError(
            f"{backend.description} was built with other '{embedder.name}' weights "
            f"({backend.embedder_fingerprint[:12]} vs {embedder.fingerprint[:12]}); rebuild the index"
        )
