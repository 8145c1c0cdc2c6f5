"""Embedders and the embedding cache: dedup, validation, normalisation, cache reuse, registry errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yollava.errors import YollavaError
from yollava.retrieval.embed import (
    EMBEDDINGS_DIR,
    KEYS_SUFFIX,
    VECTORS_SUFFIX,
    EmbedderName,
    EmbeddingCache,
    create_tiny_clip,
    load_embedder,
)


@pytest.fixture(scope="module")
def tiny():
    return load_embedder(EmbedderName.TINY, device="cpu")


def noise_images(folder: Path, n: int, seed: int = 0, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_tiny_embedder_is_seeded_normalised_and_fingerprinted(tiny, tmp_path):
    paths = noise_images(tmp_path / "a", 3)
    result = tiny.embed(paths, use_cache=False, progress=False)
    assert result.vectors.shape == (3, tiny.dim) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    again = load_embedder("tiny", device="cpu")
    assert again.fingerprint == tiny.fingerprint and again.key.startswith("tiny-")
    np.testing.assert_allclose(again.embed(paths, use_cache=False, progress=False).vectors, result.vectors, atol=1e-6)
    other, _ = create_tiny_clip(seed=1)
    assert not torch.equal(other.visual.conv1.weight, tiny.model.visual.conv1.weight)


def test_dedup_by_content_and_skips_unreadable_files(tiny, tmp_path):
    paths = noise_images(tmp_path / "a", 3)
    copy = tmp_path / "a" / "copy_of_0.png"
    shutil.copy(paths[0], copy)
    broken = tmp_path / "a" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    truncated = tmp_path / "a" / "truncated.png"
    truncated.write_bytes(paths[1].read_bytes()[:200])
    result = tiny.embed([*paths, copy, broken, truncated, tmp_path / "gone.png"], use_cache=False, progress=False)
    assert result.paths == paths
    assert result.duplicates == [(copy, paths[0])]
    reasons = {p.name: why for p, why in result.skipped}
    assert set(reasons) == {"broken.jpg", "truncated.png", "gone.png"}
    assert reasons["gone.png"] == "missing" and reasons["broken.jpg"] == "not an image"


def test_cache_reuse_embeds_nothing_on_a_second_run(tiny, tmp_path):
    paths = noise_images(tmp_path / "a", 5)
    cache = tmp_path / "cache"
    before = tiny.n_encoded
    first = tiny.embed(paths, cache_dir=cache, progress=False)
    assert (first.n_encoded, first.n_cached) == (5, 0) and tiny.n_encoded == before + 5
    fresh = load_embedder("tiny", device="cpu")  # a new process would start from a fresh embedder
    second = fresh.embed(list(reversed(paths)), cache_dir=cache, progress=False)
    assert fresh.n_encoded == 0 and (second.n_encoded, second.n_cached) == (0, 5)
    np.testing.assert_array_equal(second.vectors, first.vectors[::-1])
    more = noise_images(tmp_path / "b", 2, seed=1)
    third = fresh.embed(paths + more, cache_dir=cache, progress=False)
    assert fresh.n_encoded == 2 and third.n_cached == 5
    shards = list((cache / EMBEDDINGS_DIR / tiny.key).glob(f"*{KEYS_SUFFIX}"))
    assert len(shards) == 2 and not list(cache.rglob("*.pkl"))


def test_cache_ignores_an_interrupted_shard_and_other_weights(tmp_path):
    cache = EmbeddingCache(tmp_path, dim=4)
    cache.put(["a" * 64], np.ones((1, 4), dtype=np.float32))
    # A crash after the vectors file but before the keys file leaves an orphan: not a shard.
    np.save(tmp_path / f"orphan{VECTORS_SUFFIX}", np.zeros((1, 4), dtype=np.float32))
    np.save(tmp_path / f"wrongdim{KEYS_SUFFIX}", np.array(["b" * 64], dtype="S64"))
    np.save(tmp_path / f"wrongdim{VECTORS_SUFFIX}", np.zeros((1, 3), dtype=np.float32))
    reread = EmbeddingCache(tmp_path, dim=4)
    assert len(reread) == 1 and "a" * 64 in reread and "b" * 64 not in reread
    np.testing.assert_array_equal(reread.get(["a" * 64]), np.ones((1, 4)))


def test_keep_vectors_false_leaves_them_in_the_cache(tiny, tmp_path):
    paths = noise_images(tmp_path / "a", 3)
    result = tiny.embed(paths, cache_dir=tmp_path / "c", keep_vectors=False, progress=False)
    assert result.vectors is None
    stored = tiny.cache(tmp_path / "c").get(result.sha256)
    np.testing.assert_allclose(stored, tiny.embed(paths, use_cache=False, progress=False).vectors, atol=1e-6)


def test_registry_errors_are_one_line(monkeypatch):
    with pytest.raises(YollavaError, match="unknown embedder 'clip-xl'.*laion-vit-l-14"):
        load_embedder("clip-xl")
    for module, name in (("yollava.toyworld.clip", "toy-clip"), ("yollava.toyworld.attribute_clip", "toy")):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(YollavaError, match="toy world") as info:
            load_embedder(name)
        assert "\n" not in str(info.value)


@pytest.mark.network
def test_default_laion_embedder_loads_from_the_hub(tmp_path):
    embedder = load_embedder()
    assert embedder.name == "laion-vit-l-14" and embedder.dim == 768
    result = embedder.embed(noise_images(tmp_path / "a", 2), use_cache=False, progress=False)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
