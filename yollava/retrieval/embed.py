"""Image embeddings with open_clip: named embedders, content-hash dedup and an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from yollava.errors import YollavaError
from yollava.images import check_image, file_sha256

log = logging.getLogger(__name__)

CACHE_ENV = "YOLLAVA_CACHE_DIR"
EMBEDDINGS_DIR = "embeddings"
KEYS_SUFFIX = ".keys.npy"
VECTORS_SUFFIX = ".vectors.npy"
# A shard is flushed every this many new embeddings: a crash loses at most one shard of work.
SHARD_SIZE = 2048
# Below this many images a progress bar is more noise than help.
PROGRESS_MIN_IMAGES = 64


class EmbedderName(StrEnum):
    """Registered embedders (``--embedder``)."""

    LAION_VIT_L_14 = "laion-vit-l-14"
    LAION_VIT_H_14 = "laion-vit-h-14"
    LAION_VIT_B_32 = "laion-vit-b-32"
    TINY = "tiny"
    TOY = "toy"  # the toy world's retrieval embedder: the toy LLaVA's attribute read, category first (images only)
    TOY_CLIP = "toy-clip"  # the toy world's contrastively trained open_clip model (image and text towers)


DEFAULT_EMBEDDER = EmbedderName.LAION_VIT_L_14


@dataclass(frozen=True)
class OpenClipSpec:
    """An open_clip architecture and pretrained tag (weights come from the hub, then its cache)."""

    model: str
    pretrained: str


OPEN_CLIP_EMBEDDERS: dict[EmbedderName, OpenClipSpec] = {
    # 768-d; LAION-2B training like the pools Yo'LLaVA mined; ~0.3 s per image on one CPU core.
    EmbedderName.LAION_VIT_L_14: OpenClipSpec("ViT-L-14", "laion2b_s32b_b82k"),
    # 1024-d; the embedding space of LAION's own "laion5B-H-14" clip-retrieval index.
    EmbedderName.LAION_VIT_H_14: OpenClipSpec("ViT-H-14", "laion2b_s32b_b79k"),
    # 512-d; about 5x cheaper than ViT-L-14 on CPU, for large local pools.
    EmbedderName.LAION_VIT_B_32: OpenClipSpec("ViT-B-32", "laion2b_s34b_b79k"),
}

TINY_MODEL_NAME = "yollava-tiny-clip"
# A two-layer ViT at 64 px with seeded random weights: exercises every code path in milliseconds.
TINY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    # open_clip's SimpleTokenizer has 49408 ids; the text tower exists only because CLIP needs one.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_SEED = 0


def default_cache_dir() -> Path:
    """The cache root: ``$YOLLAVA_CACHE_DIR``, else ``$XDG_CACHE_HOME/yollava``, else ``~/.cache/yollava``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "yollava"


def register_tiny_config() -> str:
    """Add the tiny architecture to open_clip's model registry (idempotent).

    Returns:
        The open_clip model name of the tiny architecture.
    """
    import open_clip

    if TINY_MODEL_NAME not in open_clip.list_models():
        # open_clip registers configs from JSON files (file stem = model name); the registry keeps
        # the parsed dict, so the temporary file can go once it has been read.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{TINY_MODEL_NAME}.json"
            path.write_text(json.dumps(TINY_MODEL_CONFIG), encoding="utf-8")
            open_clip.add_model_config(path)
    return TINY_MODEL_NAME


def create_tiny_clip(seed: int = TINY_SEED, *, checkpoint: str | Path | None = None) -> tuple[torch.nn.Module, Callable]:
    """Build the tiny open_clip model with seeded random weights (or weights from ``checkpoint``).

    The random model's class and position embeddings are zeroed so that different images get
    clearly different embeddings (tests of ranking and near-duplicates need that).

    Args:
        seed: torch seed for the initialisation; the global RNG state is left untouched.
        checkpoint: optional .safetensors file of the same architecture.

    Returns:
        ``(model, preprocess)`` with the model in eval mode.
    """
    import open_clip

    name = register_tiny_config()
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(checkpoint) if checkpoint else None
        )
    if checkpoint is None:
        # At random init the class and position embeddings dominate the output, so every image
        # lands near one point (pairwise cosine ~0.98); without them embeddings follow content.
        with torch.no_grad():
            model.visual.class_embedding.zero_()
            model.visual.positional_embedding.zero_()
    return model.eval(), preprocess


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's chatter while it builds a model.

    open_clip logs through the root logger, so its INFO lines (config parsing, preprocessing) and
    the warning that a model starts from random weights (intended for ``tiny``) cannot be silenced
    by logger name under the CLI's INFO logging; this filter drops exactly those.
    """

    def keep(record: logging.LogRecord) -> bool:
        from_open_clip = "open_clip" in record.pathname
        return not (from_open_clip and (record.levelno < logging.WARNING or "initialized randomly" in record.getMessage()))

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@dataclass
class EmbeddedImages:
    """Unique, valid images and their L2-normalised embeddings (row i belongs to ``paths[i]``).

    ``vectors`` is None when the caller asked not to keep them (they are in the cache).
    """

    paths: list[Path]
    sha256: list[str]
    vectors: np.ndarray | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    n_encoded: int = 0
    n_cached: int = 0

    def __len__(self) -> int:
        return len(self.paths)


class EmbeddingCache:
    """Embeddings of one embedder on disk, keyed by image sha256; shards of .npy files, never pickle.

    Layout: ``<directory>/<shard>.vectors.npy`` (float32 ``[n, dim]``) and ``<shard>.keys.npy``
    (``S64`` hex digests). The keys file is renamed into place last, so a shard without one is
    an interrupted write and is ignored. Shard names are unique per writer, so concurrent runs
    never overwrite each other.
    """

    def __init__(self, directory: str | Path, dim: int):
        self.directory = Path(directory)
        self.dim = dim
        self._where: dict[str, tuple[int, int]] | None = None
        self._shards: list[np.ndarray] = []

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._where is not None:
            return self._where
        self._where = {}
        if not self.directory.is_dir():
            return self._where
        for keys_file in sorted(self.directory.glob(f"*{KEYS_SUFFIX}")):
            vectors_file = keys_file.with_name(keys_file.name[: -len(KEYS_SUFFIX)] + VECTORS_SUFFIX)
            try:
                keys = np.load(keys_file, allow_pickle=False)
                vectors = np.load(vectors_file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable embedding cache shard %s (%s)", keys_file.name, exc)
                continue
            if vectors.ndim != 2 or vectors.shape != (len(keys), self.dim):
                log.warning("ignoring embedding cache shard %s: shape %s, expected (%d, %d)",
                            keys_file.name, vectors.shape, len(keys), self.dim)
                continue
            shard = len(self._shards)
            self._shards.append(vectors)
            for row, key in enumerate(keys):
                self._where[key.decode("ascii")] = (shard, row)
        return self._where

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._load()

    def __len__(self) -> int:
        return len(self._load())

    def get(self, hashes: Sequence[str]) -> np.ndarray:
        """Stacked vectors ``[len(hashes), dim]`` (float32) of hashes that are all in the cache."""
        where = self._load()
        out = np.empty((len(hashes), self.dim), dtype=np.float32)
        for i, key in enumerate(hashes):
            shard, row = where[key]
            out[i] = self._shards[shard][row]
        return out

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Write one new shard (vectors first, keys last, each by temp file + rename)."""
        if not hashes:
            return
        from yollava.storage import atomic_path, writing

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with writing(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        for suffix, array in ((VECTORS_SUFFIX, vectors), (KEYS_SUFFIX, np.array(list(hashes), dtype="S64"))):
            with atomic_path(self.directory / f"{stem}{suffix}") as tmp, open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        where = self._load()
        shard = len(self._shards)
        self._shards.append(vectors)
        for row, key in enumerate(hashes):
            where[key] = (shard, row)


def _fingerprint_module(module: torch.nn.Module, extra: str) -> str:
    """sha256 over ``extra`` and every tensor's name, dtype, shape and bytes (ViT-L-14: ~1 s)."""
    digest = hashlib.sha256(extra.encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class Embedder:
    """An image encoder with a name, a fingerprint of its weights, and a content-hash cache.

    ``model`` needs ``encode_image(batch)`` (open_clip models have it); ``preprocess`` maps a PIL
    RGB image to a ``[3, H, W]`` tensor. ``n_encoded`` counts images actually run through the
    model, so callers and tests can see that a cached re-run computes nothing.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        *,
        dim: int | None = None,
        fingerprint: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ):
        self.name = name
        self.model = model
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._dim = dim
        self._fingerprint = fingerprint
        self.n_encoded = 0

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        if self._dim is None:
            visual = getattr(self.model, "visual", None)
            output_dim = getattr(visual, "output_dim", None)
            if isinstance(output_dim, int):
                self._dim = output_dim
            else:
                self._dim = int(self._encode_tensors(self.preprocess(Image.new("RGB", (8, 8))).unsqueeze(0)).shape[1])
        return self._dim

    @property
    def fingerprint(self) -> str:
        """sha256 of the name, the preprocessing and the image tower's weights (computed once)."""
        if self._fingerprint is None:
            module = getattr(self.model, "visual", self.model)
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"embedder {self.name}: pass fingerprint= for a model that is not a torch Module")
            self._fingerprint = _fingerprint_module(module, f"{self.name}|{self.preprocess!r}")
        return self._fingerprint

    @property
    def key(self) -> str:
        """Cache key: name plus a short fingerprint, so new weights never reuse old vectors."""
        return f"{self.name}-{self.fingerprint[:16]}"

    def cache(self, cache_dir: str | Path | None = None) -> EmbeddingCache:
        """This embedder's cache under ``cache_dir`` (default :func:`default_cache_dir`)."""
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return EmbeddingCache(root / EMBEDDINGS_DIR / self.key, self.dim)

    def _encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised embeddings ``[len(images), dim]`` of PIL images (no cache, no dedup)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out.append(self._encode_tensors(torch.stack([self.preprocess(im.convert("RGB")) for im in chunk])))
            self.n_encoded += len(chunk)
        return np.concatenate(out)

    def embed(
        self,
        paths: Iterable[str | Path],
        *,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        keep_vectors: bool = True,
        progress: bool = True,
        what: str = "images",
    ) -> EmbeddedImages:
        """Embed image files: validate, dedup by content, reuse cached vectors, encode the rest.

        Args:
            paths: image files; unreadable or missing ones are skipped and reported.
            cache_dir: cache root (default :func:`default_cache_dir`).
            use_cache: read and write the on-disk cache.
            keep_vectors: return the vectors; False keeps memory flat for huge pools (they stay
                in the cache; requires ``use_cache``).
            progress: show a rich progress bar (counts, ETA) for large batches.
            what: noun for messages, e.g. "pool images".

        Returns:
            :class:`EmbeddedImages` over the unique valid images, in input order of first occurrence.
        """
        if not keep_vectors and not use_cache:
            raise ValueError("keep_vectors=False needs use_cache=True")
        paths = [Path(p) for p in paths]
        skipped: list[tuple[Path, str]] = []
        duplicates: list[tuple[Path, Path]] = []
        first: dict[str, Path] = {}
        with _progress(progress and len(paths) >= PROGRESS_MIN_IMAGES * 16) as bar:
            task = bar.add_task(f"hashing {what}", total=len(paths))
            for path in paths:
                bar.advance(task)
                if not path.is_file():
                    skipped.append((path, "missing"))
                    continue
                try:
                    sha = file_sha256(path)
                except OSError as exc:
                    skipped.append((path, f"unreadable ({exc.__class__.__name__})"))
                    continue
                if sha in first:
                    duplicates.append((path, first[sha]))
                else:
                    first[sha] = path
        cache = self.cache(cache_dir) if use_cache else None
        hashes = list(first)
        missing = [h for h in hashes if cache is None or h not in cache]
        computed: dict[str, np.ndarray] = {}
        if missing:
            encoded, bad = self._encode_files([(h, first[h]) for h in missing], cache, progress, what)
            computed.update(encoded)
            skipped += [(first[h], reason) for h, reason in bad]
        valid = [h for h in hashes if cache is not None and h in cache or h in computed]
        vectors = None
        if keep_vectors:
            vectors = np.zeros((len(valid), self.dim), dtype=np.float32)
            cached = [i for i, h in enumerate(valid) if h not in computed]
            if cached:
                vectors[cached] = cache.get([valid[i] for i in cached])
            for i, h in enumerate(valid):
                if h in computed:
                    vectors[i] = computed[h]
        if skipped:
            shown = ", ".join(f"{p.name} ({why})" for p, why in skipped[:5])
            log.warning("skipped %d of %d %s: %s%s", len(skipped), len(paths), what, shown, ", ..." if len(skipped) > 5 else "")
        if duplicates:
            log.info("%d of %d %s are byte-identical copies of others and were embedded once", len(duplicates), len(paths), what)
        n_encoded = sum(1 for h in valid if h in computed)
        return EmbeddedImages(
            paths=[first[h] for h in valid], sha256=valid, vectors=vectors, skipped=skipped,
            duplicates=duplicates, n_encoded=n_encoded, n_cached=len(valid) - n_encoded,
        )

    def _encode_files(
        self, items: list[tuple[str, Path]], cache: EmbeddingCache | None, progress: bool, what: str
    ) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """Decode, validate and encode ``(sha, path)`` items in batches; flush to the cache per shard."""
        computed: dict[str, np.ndarray] = {}
        bad: list[tuple[str, str]] = []
        pending_keys: list[str] = []
        pending_vectors: list[np.ndarray] = []

        def flush() -> None:
            if cache is not None and pending_keys:
                cache.put(pending_keys, np.stack(pending_vectors))
            pending_keys.clear()
            pending_vectors.clear()

        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        # Decoding the next batch in threads overlaps with the model on the current one (PIL and
        # torch both release the GIL); two workers match the machines we target.
        with ThreadPoolExecutor(max_workers=2) as pool, _progress(progress and len(items) >= PROGRESS_MIN_IMAGES) as bar:
            task = bar.add_task(f"embedding {what} ({self.name})", total=len(items))
            upcoming = [pool.submit(self._prepare, item) for item in batches[0]] if batches else []
            for index, batch in enumerate(batches):
                prepared = [future.result() for future in upcoming]
                if index + 1 < len(batches):
                    upcoming = [pool.submit(self._prepare, item) for item in batches[index + 1]]
                good = [(sha, tensor) for (sha, _), (tensor, _) in zip(batch, prepared) if tensor is not None]
                bad += [(sha, reason) for (sha, _), (tensor, reason) in zip(batch, prepared) if tensor is None]
                if good:
                    vectors = self._encode_tensors(torch.stack([t for _, t in good]))
                    self.n_encoded += len(good)
                    for (sha, _), vector in zip(good, vectors):
                        computed[sha] = vector
                        pending_keys.append(sha)
                        pending_vectors.append(vector)
                    if len(pending_keys) >= SHARD_SIZE:
                        flush()
                bar.advance(task, len(batch))
            flush()
        return computed, bad

    def _prepare(self, item: tuple[str, Path]) -> tuple[torch.Tensor | None, str]:
        _, path = item
        reason = check_image(path)
        if reason is not None:
            return None, reason
        try:
            with Image.open(path) as image:
                return self.preprocess(image.convert("RGB")), ""
        except (OSError, ValueError) as exc:
            return None, f"corrupt ({exc.__class__.__name__})"


class _NoProgress:
    """Stand-in for a rich Progress when no bar should be shown."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(enabled: bool):
    from rich.console import Console

    console = Console(stderr=True)
    # A bar redrawn into a log file or pipe is noise; the summary lines are logged anyway.
    if not enabled or not console.is_terminal:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
    )


def load_embedder(name: str = DEFAULT_EMBEDDER, *, device: str | torch.device | None = None, batch_size: int = 32) -> Embedder:
    """Build a registered embedder.

    Args:
        name: one of :class:`EmbedderName` (``laion-vit-l-14`` by default).
        device: torch device; default CUDA when available, else CPU.
        batch_size: images per forward pass.

    Returns:
        An :class:`Embedder`.

    Raises:
        YollavaError: unknown name, the toy world is missing, or pretrained weights cannot be loaded
            (not in the local hub cache and the hub is unreachable).
    """
    try:
        choice = EmbedderName(name)
    except ValueError:
        raise YollavaError(f"unknown embedder '{name}'; choose one of: {', '.join(e.value for e in EmbedderName)}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    builder = EMBEDDER_BUILDERS.get(choice) or (lambda: _build_open_clip(choice))
    model, preprocess = builder()
    model.to(device)
    return Embedder(choice.value, model, preprocess, device=device, batch_size=batch_size)


def _build_toy_clip() -> tuple[torch.nn.Module, Callable]:
    try:
        from yollava.toyworld.clip import create_toy_clip
    except ImportError as exc:
        raise YollavaError(f"embedder 'toy-clip' needs the toy world (yollava.toyworld.clip), which is not available: {exc}") from exc

    with _quiet_open_clip():
        model, preprocess, _ = create_toy_clip(pretrained=True)
    return model, preprocess


def _build_toy() -> tuple[torch.nn.Module, Callable]:
    try:
        from yollava.toyworld.attribute_clip import create_attribute_clip
    except ImportError as exc:
        raise YollavaError(f"embedder 'toy' needs the toy world (yollava.toyworld.attribute_clip), which is not available: {exc}") from exc

    return create_attribute_clip()


def _build_open_clip(choice: EmbedderName) -> tuple[torch.nn.Module, Callable]:
    """An open_clip hub model from its safetensors weights (downloaded once into the hub cache; never a pickle)."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    from yollava import hub

    spec = OPEN_CLIP_EMBEDDERS[choice]
    repo = open_clip.get_pretrained_cfg(spec.model, spec.pretrained).get("hf_hub", "").strip("/")
    what = f"embedder '{choice.value}' ({spec.model} {spec.pretrained}, hub repo {repo})"
    if hub.cached_file(repo, HF_SAFE_WEIGHTS_NAME) is None:
        why = hub.unavailable_reason()
        if why is not None:
            raise YollavaError(
                f"{what}: its weights are not in the local Hugging Face cache and {why}; connect once to download them "
                "(kept in the cache afterwards), or use --embedder toy offline (the toy world's embedder)"
            )
        from huggingface_hub import hf_hub_download

        log.info("downloading %s/%s (cached for later runs)", repo, HF_SAFE_WEIGHTS_NAME)
        try:
            hf_hub_download(repo, HF_SAFE_WEIGHTS_NAME)
        except Exception as exc:  # huggingface_hub raises many classes (HTTP, disk, repo errors)
            raise YollavaError(f"{what}: downloading its weights failed ({hub.short_reason(exc)}); try again, or use --embedder toy offline") from exc
    try:
        # the safetensors file is cached: open_clip finds it first and makes no request
        with hub.offline(), _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=spec.pretrained)
    except (RuntimeError, OSError) as exc:
        raise YollavaError(f"{what}: could not be loaded ({hub.short_reason(exc)}); delete it from the hub cache to download it again") from exc
    model.eval()
    return model, preprocess


# Embedders built locally, by name; the others are open_clip hub models (OPEN_CLIP_EMBEDDERS).
EMBEDDER_BUILDERS: dict[EmbedderName, Callable[[], tuple[torch.nn.Module, Callable]]] = {
    EmbedderName.TINY: create_tiny_clip,
    EmbedderName.TOY: _build_toy,
    EmbedderName.TOY_CLIP: _build_toy_clip,
}


def as_embedder(embedder: Embedder | str | None, default: str = DEFAULT_EMBEDDER) -> Embedder:
    """An :class:`Embedder` from an instance, a registered name, or None (``default``).

    Raises:
        YollavaError: see :func:`load_embedder`.
    """
    if isinstance(embedder, Embedder):
        return embedder
    return load_embedder(embedder or default)
