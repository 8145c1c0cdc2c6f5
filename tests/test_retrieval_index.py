"""faiss index on disk and the plain-folder backend: ranking, round trips, refusals, crash safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import QuadrantColours, preprocess
from yollava.errors import YollavaError
from yollava.retrieval.embed import Embedder, load_embedder
from yollava.retrieval.index import (
    FAISS_FILE,
    INDEX_HEADER,
    FaissBackend,
    FolderBackend,
    IndexKind,
    add_to_index,
    build_index,
    load_index,
    make_faiss_index,
    train_faiss_index,
)
from yollava.storage import staged_folder


def colour_embedder(name: str = "colour") -> Embedder:
    return Embedder(name, QuadrantColours(), preprocess, dim=12, fingerprint=f"{name}-v1")


def picture(vector: np.ndarray, path: Path) -> Path:
    """An image whose colour embedding points along ``vector`` (entries in [-1, 1])."""
    quadrants = ((np.clip(vector.reshape(2, 2, 3), -1, 1) + 1) * 127.5).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.kron(quadrants, np.ones((8, 8, 1), dtype=np.uint8))).save(path)
    return path


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def test_ranking_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=8))
    # Pool vectors at known angles from the query: cosines 0.9, 0.5, 0.1, -0.7 (noise orthogonal).
    orthogonal = rng.normal(size=8)
    orthogonal = unit(orthogonal - orthogonal @ query * query)
    cosines = [0.1, 0.9, -0.7, 0.5]
    pool = np.stack([unit(c * query + np.sqrt(1 - c * c) * orthogonal) for c in cosines])
    index = make_faiss_index(8, IndexKind.FLAT)
    index.add(pool)
    backend = FaissBackend(index, [f"p{i}" for i in range(4)], [f"{i:064d}" for i in range(4)],
                           description="test", embedder_name="x", embedder_fingerprint=None)
    hits = backend.query(np.stack([query, -query]), k=10)
    assert [h.source for h in hits[0]] == ["p1", "p3", "p0", "p2"]
    assert [h.rank for h in hits[0]] == [1, 2, 3, 4] and {h.query for h in hits[0]} == {0}
    np.testing.assert_allclose([h.score for h in hits[0]], [0.9, 0.5, 0.1, -0.7], atol=1e-5)
    assert [h.source for h in hits[1]][0] == "p2"
    with pytest.raises(YollavaError, match="8-d.*query is 3-d"):
        backend.query(np.ones((1, 3), dtype=np.float32), 2)
    assert len(backend.sample(3, seed=1)) == 3 and backend.sample(3, seed=1) == backend.sample(3, seed=1)


def pool_of(folder: Path, n: int, seed: int) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.uniform(-1, 1, size=(n, 12))
    return [picture(v, folder / f"img{i:03d}.png") for i, v in enumerate(vectors)], vectors


def test_build_add_query_round_trip(tmp_path):
    embedder = colour_embedder()
    paths, vectors = pool_of(tmp_path / "pool", 20, seed=0)
    report = build_index(tmp_path / "idx", embedder, images=tmp_path / "pool", cache_dir=tmp_path / "c", progress=False)
    assert report.added == 20 and report.header.count == 20 and report.header.dim == 12
    header = json.loads((tmp_path / "idx" / INDEX_HEADER).read_text())
    assert header["embedder"] == "colour" and header["kind"] == "flat" and header["count"] == 20
    index = load_index(tmp_path / "idx")
    hits = index.query(np.stack([unit(vectors[7]), unit(vectors[3])]), k=3)
    assert Path(hits[0][0].source) == paths[7].resolve() and hits[0][0].score > 0.99
    assert Path(hits[1][0].source) == paths[3].resolve()

    new_paths, new_vectors = pool_of(tmp_path / "more", 5, seed=1)
    listing = tmp_path / "list.txt"
    listing.write_text("# new images\n" + "\n".join(f"more/{p.name}" for p in new_paths) + f"\n{paths[0]}\n")
    added = add_to_index(tmp_path / "idx", images=None, list_file=listing, cache_dir=tmp_path / "c", progress=False,
                         embedder=embedder)
    assert added.added == 5 and added.already_indexed == 1 and added.header.count == 25
    grown = load_index(tmp_path / "idx")
    assert len(grown) == 25 and len(grown.header.metadata_files) == 2
    assert Path(grown.query(unit(new_vectors[2])[None], 1)[0][0].source) == new_paths[2].resolve()
    assert not list(tmp_path.glob(".idx.tmp-*")) and not (tmp_path / ".idx.old").exists()


def test_add_refuses_another_embedder(tmp_path):
    pool_of(tmp_path / "pool", 6, seed=0)
    build_index(tmp_path / "idx", colour_embedder(), images=tmp_path / "pool", cache_dir=tmp_path / "c", progress=False)
    before = (tmp_path / "idx" / FAISS_FILE).read_bytes()
    with pytest.raises(YollavaError, match="holds 12-d embeddings from 'colour'.*'tiny' makes 64-d") as info:
        add_to_index(tmp_path / "idx", load_embedder("tiny", device="cpu"), images=tmp_path / "pool", cache_dir=tmp_path / "c")
    assert "\n" not in str(info.value)
    with pytest.raises(YollavaError, match="built with embedder 'colour', not 'hue'"):
        add_to_index(tmp_path / "idx", colour_embedder("hue"), images=tmp_path / "pool", cache_dir=tmp_path / "c")
    retrained = Embedder("colour", QuadrantColours(), preprocess, dim=12, fingerprint="colour-v2")
    with pytest.raises(YollavaError, match="other 'colour' weights"):
        add_to_index(tmp_path / "idx", retrained, images=tmp_path / "pool", cache_dir=tmp_path / "c")
    assert (tmp_path / "idx" / FAISS_FILE).read_bytes() == before


def test_build_refusals_and_bad_inputs(tmp_path):
    embedder = colour_embedder()
    with pytest.raises(YollavaError, match="--images .*missing: no such directory"):
        build_index(tmp_path / "idx", embedder, images=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(YollavaError, match="no image files found"):
        build_index(tmp_path / "idx", embedder, images=tmp_path / "empty")
    with pytest.raises(YollavaError, match="--list .*: no such file"):
        build_index(tmp_path / "idx", embedder, list_file=tmp_path / "nope.txt")
    with pytest.raises(YollavaError, match="exactly one of --images DIR or --list FILE"):
        build_index(tmp_path / "idx", embedder)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"junk")
    with pytest.raises(YollavaError, match="no readable image among the 1"):
        build_index(tmp_path / "idx", embedder, images=tmp_path / "junk", cache_dir=tmp_path / "c", progress=False)
    pool_of(tmp_path / "pool", 4, seed=0)
    with pytest.raises(YollavaError, match="--kind ivf-pq needs at least"):
        build_index(tmp_path / "idx", embedder, images=tmp_path / "pool", kind="ivf-pq", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(YollavaError, match="unknown index kind 'hnsw'"):
        build_index(tmp_path / "idx", embedder, images=tmp_path / "pool", kind="hnsw")
    assert not (tmp_path / "idx").exists()
    build_index(tmp_path / "idx", embedder, images=tmp_path / "pool", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(YollavaError, match="an index already exists; extend it with `yollava index add`"):
        build_index(tmp_path / "idx", embedder, images=tmp_path / "pool")
    with pytest.raises(YollavaError, match="exists and is not a yollava index"):
        build_index(tmp_path / "pool", embedder, images=tmp_path / "pool")
    with pytest.raises(YollavaError, match="not a yollava index"):
        load_index(tmp_path / "pool")


def test_ivf_index_builds_and_finds_exact_matches(tmp_path):
    embedder = colour_embedder()
    paths, vectors = pool_of(tmp_path / "pool", 120, seed=2)
    report = build_index(tmp_path / "idx", embedder, images=tmp_path / "pool", kind=IndexKind.IVF, nlist=3, nprobe=3,
                         cache_dir=tmp_path / "c", progress=False)
    assert report.header.kind == "ivf" and report.header.nlist == 3
    index = load_index(tmp_path / "idx")
    found = [Path(row[0].source) for row in index.query(np.stack([unit(v) for v in vectors[:10]]), 1)]
    assert found == [p.resolve() for p in paths[:10]]
    # clip_back serves indices with search_and_reconstruct, which IVF supports only with a direct map.
    np.testing.assert_allclose(index.index.reconstruct(4), embedder.embed([paths[4]], use_cache=False).vectors[0], atol=1e-6)


@pytest.fixture
def one_faiss_thread():
    """faiss's OpenMP threads spin against each other on two busy cores: one is faster here."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_ivf_pq_trains_on_random_vectors(one_faiss_thread):
    rng = np.random.default_rng(0)
    # 2000 points is below faiss's 39 per PQ centroid (it warns) but trains in about a second.
    vectors = rng.normal(size=(2_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = make_faiss_index(32, IndexKind.IVF_PQ, nlist=16, pq_m=8)
    train_faiss_index(index, vectors)
    index.add(vectors)
    index.nprobe = 16
    _, ids = index.search(vectors[:50], 10)
    recall = np.mean([i in row for i, row in enumerate(ids)])
    assert recall > 0.5
    with pytest.raises(YollavaError, match="must divide the embedding dimension 32"):
        make_faiss_index(32, IndexKind.IVF_PQ, nlist=4, pq_m=5)


def test_a_crash_never_leaves_a_half_written_index(tmp_path):
    pool_of(tmp_path / "pool", 5, seed=0)
    build_index(tmp_path / "idx", colour_embedder(), images=tmp_path / "pool", cache_dir=tmp_path / "c", progress=False)
    snapshot = {p.name: p.read_bytes() for p in (tmp_path / "idx").rglob("*") if p.is_file()}
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "idx") as tmp:
            (tmp / FAISS_FILE).write_bytes(b"half")
            raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").rglob("*") if p.is_file()} == snapshot
    assert not list(tmp_path.glob(".idx.tmp-*"))
    # A crash between the two renames leaves only the backup: the next load puts it back.
    os.rename(tmp_path / "idx", tmp_path / ".idx.old")
    assert len(load_index(tmp_path / "idx")) == 5 and not (tmp_path / ".idx.old").exists()


def test_folder_backend_queries_a_plain_folder(tmp_path):
    embedder = colour_embedder()
    paths, vectors = pool_of(tmp_path / "pool", 8, seed=3)
    (tmp_path / "pool" / "notes.txt").write_text("not an image")
    (tmp_path / "pool" / "bad.png").write_bytes(b"nope")
    backend = FolderBackend(tmp_path / "pool", embedder, cache_dir=tmp_path / "c", progress=False)
    assert len(backend) == 8 and backend.description.startswith("folder:")
    hits = backend.query(unit(vectors[5])[None], 2)[0]
    assert Path(hits[0].source) == paths[5].resolve() and hits[0].rank == 1
    fetched = backend.fetch(hits)
    assert all(isinstance(v, Path) for v in fetched.values())
    paths[5].unlink()
    assert backend.fetch(hits[:1]) == {hits[0].source: "missing"}
    with pytest.raises(YollavaError, match="--pool .*: no such directory"):
        FolderBackend(tmp_path / "nowhere", embedder)
