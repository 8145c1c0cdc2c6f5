"""Negative mining: hard/easy selection, the subject's near-duplicates excluded, manifest, reuse, bad inputs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import QuadrantColours, preprocess
from yollava.errors import YollavaError
from yollava.retrieval.embed import Embedder
from yollava.retrieval.index import FolderBackend, build_index, load_index
from yollava.retrieval.mine import (
    MANIFEST_FILE,
    MANIFEST_KEYS,
    RETRIEVAL_FILE,
    default_per_image,
    read_negatives,
    retrieve_hard_negatives,
    retrieve_negatives,
)


def colour_embedder() -> Embedder:
    return Embedder("colour", QuadrantColours(), preprocess, dim=12, fingerprint="colour-v1")


def picture(vector: np.ndarray, path: Path) -> Path:
    quadrants = ((np.clip(vector.reshape(2, 2, 3), -1, 1) + 1) * 127.5).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.kron(quadrants, np.ones((8, 8, 1), dtype=np.uint8))).save(path)
    return path


@pytest.fixture
def world(tmp_path):
    """4 positives around one colour layout; a pool with a copy and a near-copy of positives,
    30 lookalikes (cosine ~0.85) and 100 random images."""
    rng = np.random.default_rng(0)
    subject = rng.uniform(-0.6, 0.6, 12)
    positives = [picture(subject + rng.normal(0, 0.03, 12), tmp_path / "pos" / f"p{i}.png") for i in range(4)]
    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copy(positives[0], pool / "copy_of_p0.png")
    near = np.asarray(Image.open(positives[1])).astype(int)
    near[0, 0] += 3  # one pixel changed: other bytes, same picture
    Image.fromarray(np.clip(near, 0, 255).astype(np.uint8)).save(pool / "near_copy_of_p1.png")
    for i in range(30):
        # Noise of 0.6x the subject's norm: cosine ~0.85, clear of the 0.95 near-duplicate threshold.
        noise = rng.normal(size=12)
        noise -= noise @ subject / (subject @ subject) * subject
        picture(subject + noise * 0.6 * np.linalg.norm(subject) / np.linalg.norm(noise), pool / f"look{i:02d}.png")
    for i in range(100):
        picture(rng.uniform(-1, 1, 12), pool / f"rand{i:03d}.png")
    return tmp_path


def test_hard_and_easy_negatives_are_mined_and_stored(world):
    embedder = colour_embedder()
    backend = FolderBackend(world / "pool", embedder, cache_dir=world / "c", progress=False)
    result = retrieve_hard_negatives("bo", world / "pos", backend, embedder, store=world / "store", per_image=5,
                                     n_easy=20, cache_dir=world / "c", progress=False)
    hard, easy = [r for r in result.records if r.kind == "hard"], [r for r in result.records if r.kind == "easy"]
    assert len(hard) == 20 and len(easy) == 20 and result.warnings == []
    # The nearest images are the lookalikes; the copy and the near-copy of positives never appear.
    assert all(Path(r.source).name.startswith("look") for r in hard)
    names = [Path(r.source).name for r in result.records]
    assert "copy_of_p0.png" not in names and "near_copy_of_p1.png" not in names
    assert len(set(names)) == len(names) and len({r.sha256 for r in result.records}) == len(names)
    for query in {r.query for r in hard}:
        ranks = [r.rank for r in hard if r.query == query]
        assert ranks == sorted(ranks) and len(ranks) == 5
    assert all(r.rank is None and r.query is None for r in easy)
    folder = world / "store" / "bo" / "negatives"
    lines = [json.loads(line) for line in (folder / MANIFEST_FILE).read_text().splitlines()]
    assert len(lines) == 40 and all(tuple(sorted(line)) == tuple(sorted(MANIFEST_KEYS)) for line in lines)
    assert {line["kind"] for line in lines} == {"hard", "easy"}
    assert all(line["embedder"] == "colour" and line["index"] == backend.description for line in lines)
    assert all((folder / line["file"]).is_file() and line["file"].split("/")[0] == line["kind"] for line in lines)
    summary = json.loads((folder / RETRIEVAL_FILE).read_text())
    assert summary["counts"] == {"hard": 20, "easy": 20} and summary["request"]["per_image"] == 5
    stored = read_negatives("bo", world / "store")
    assert stored.hard == [folder / r.file for r in hard] and len(stored.easy) == 20


def test_rerun_reuses_the_stored_set_and_embeds_nothing(world):
    embedder = colour_embedder()
    kwargs = dict(store=world / "store", per_image=3, n_easy=5, cache_dir=world / "c", progress=False)
    backend = FolderBackend(world / "pool", embedder, cache_dir=world / "c", progress=False)
    first = retrieve_hard_negatives("bo", world / "pos", backend, embedder, **kwargs)
    encoded = embedder.n_encoded
    again = retrieve_hard_negatives("bo", world / "pos", FolderBackend(world / "pool", embedder, cache_dir=world / "c", progress=False),
                                    embedder, **kwargs)
    assert again.reused and embedder.n_encoded == encoded
    assert [r.sha256 for r in again.records] == [r.sha256 for r in first.records]
    with pytest.raises(YollavaError, match="another request \\(differs in per_image\\).*--overwrite"):
        retrieve_hard_negatives("bo", world / "pos", backend, embedder, **{**kwargs, "per_image": 4})
    replaced = retrieve_hard_negatives("bo", world / "pos", backend, embedder, **{**kwargs, "per_image": 4}, overwrite=True)
    assert len(replaced.hard) == 16 and not replaced.reused
    assert not list((world / "store" / "bo").glob(".negatives.tmp-*"))


def test_same_seed_same_easy_negatives_and_default_per_image(world):
    assert default_per_image(5) == 20 and default_per_image(3) == 34 and default_per_image(0) == 100
    embedder = colour_embedder()
    backend = FolderBackend(world / "pool", embedder, cache_dir=world / "c", progress=False)
    runs = [
        retrieve_hard_negatives("bo", world / "pos", backend, embedder, store=world / f"s{i}", per_image=0, n_easy=10,
                                seed=seed, cache_dir=world / "c", progress=False)
        for i, seed in enumerate((7, 7, 8))
    ]
    assert [r.source for r in runs[0].records] == [r.source for r in runs[1].records]
    assert [r.source for r in runs[0].records] != [r.source for r in runs[2].records]


def test_a_small_pool_gives_a_warning_with_counts(world, caplog):
    embedder = colour_embedder()
    backend = FolderBackend(world / "pool", embedder, cache_dir=world / "c", progress=False)
    result = retrieve_hard_negatives("bo", world / "pos", backend, embedder, store=world / "store", per_image=50,
                                     n_easy=500, cache_dir=world / "c", progress=False)
    assert len(result.hard) == 130 and len(result.easy) == 0
    assert result.warnings[0].startswith("found 130 of 200 hard negatives; pool has 132 images; 2 near-duplicates of the subject excluded")
    assert result.warnings[1].startswith("found 0 of 500 easy negatives")
    assert "found 130 of 200 hard negatives" in caplog.text


def test_local_index_backend_and_embedder_default(world, monkeypatch):
    embedder = colour_embedder()
    build_index(world / "idx", embedder, images=world / "pool", cache_dir=world / "c", progress=False)
    index = load_index(world / "idx")
    result = retrieve_hard_negatives("bo", world / "pos", index, embedder, store=world / "store", per_image=2, n_easy=3,
                                     cache_dir=world / "c", progress=False)
    hard = [r for r in result.records if r.kind == "hard"]
    assert len(hard) == 8 and all(Path(r.source).name.startswith("look") for r in hard)
    assert all(r.index == f"index:{world / 'idx'}" for r in result.records)
    # retrieve_negatives picks the index's own embedder when none is named.
    import yollava.retrieval.mine as mine

    seen = {}

    def fake_as_embedder(name, default):
        seen["args"] = (name, default)
        return embedder

    monkeypatch.setattr(mine, "as_embedder", fake_as_embedder)
    again = retrieve_negatives("bo", world / "pos", index=world / "idx", per_image=2, n_easy=3, store=world / "store",
                               cache_dir=world / "c", progress=False)
    assert seen["args"] == (None, "colour") and again.reused


def test_bad_inputs_give_one_line_errors(world):
    embedder = colour_embedder()
    backend = FolderBackend(world / "pool", embedder, cache_dir=world / "c", progress=False)
    cases = [
        (dict(images=world / "nope"), "--images .*nope: no such directory"),
        (dict(concept="My Dog"), "invalid concept name 'My Dog'"),
        (dict(per_image=-1), "--per-image -1: must be >= 0"),
        (dict(n_easy=-5), "--easy -5: must be >= 0"),
        (dict(near_duplicate=1.5), "must be in \\(0, 1\\]"),
    ]
    for override, message in cases:
        kwargs = dict(concept="bo", images=world / "pos", store=world / "store", cache_dir=world / "c", progress=False)
        kwargs.update(override)
        with pytest.raises(YollavaError, match=message) as info:
            retrieve_hard_negatives(kwargs.pop("concept"), kwargs.pop("images"), backend, embedder, **kwargs)
        assert "\n" not in str(info.value)
    (world / "empty").mkdir()
    with pytest.raises(YollavaError, match="--pool .*empty: no image files found"):
        FolderBackend(world / "empty", embedder)
    with pytest.raises(YollavaError, match="exactly one of --pool DIR, --index IDX or --service URL"):
        retrieve_negatives("bo", world / "pos", pool=world / "pool", index=world / "idx")
    with pytest.raises(YollavaError, match="exactly one of"):
        retrieve_negatives("bo", world / "pos")
    with pytest.raises(YollavaError, match="--index-name goes with --service"):
        retrieve_negatives("bo", world / "pos", pool=world / "pool", index_name="x")
    with pytest.raises(YollavaError, match="no negatives for 'bo'.*yollava retrieve"):
        read_negatives("bo", world / "store")


def test_service_backend_without_the_laion_extra(monkeypatch, tmp_path):
    from yollava.retrieval.client import ServiceBackend

    monkeypatch.setitem(sys.modules, "clip_retrieval", None)
    monkeypatch.setitem(sys.modules, "clip_retrieval.clip_client", None)
    with pytest.raises(YollavaError, match="pip install 'yollava\\[laion\\]'"):
        ServiceBackend("http://127.0.0.1:9/knn-service", "laion5B", embedder_name="tiny", dim=64, download_dir=tmp_path)
    with pytest.raises(YollavaError, match="not an http\\(s\\) URL"):
        ServiceBackend("ftp://example.org", "x", embedder_name="tiny", dim=64, download_dir=tmp_path)
    with pytest.raises(YollavaError, match="needs --index-name"):
        ServiceBackend("http://127.0.0.1:9", "", embedder_name="tiny", dim=64, download_dir=tmp_path)
