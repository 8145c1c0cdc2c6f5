"""Benchmark retrieval on CPU: images embedded per second, index build time and queries per second."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table


def make_images(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """Random scenes of coloured shapes saved as JPEG (what photo pools look like to a decoder)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.integers(0, size * 3 // 4, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            draw.ellipse((int(x), int(y), int(x + w), int(y + h)), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = folder / f"img{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def synthetic_embeddings(n: int, dim: int, *, clustered: bool, seed: int = 0) -> np.ndarray:
    """Unit vectors; clustered ones sit around n/100 random centres at cosine ~0.8, like CLIP
    embeddings of a photo pool (uniform ones have no structure for IVF to exploit)."""
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((n, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))
        vectors = centres[rng.integers(0, len(centres), n)] + noise
    else:
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def time_embedding(embedder, paths: list[Path], cache_dir: Path) -> tuple[float, float]:
    """(images/s computing everything, images/s on a re-run served from the cache)."""
    start = time.perf_counter()
    first = embedder.embed(paths, cache_dir=cache_dir, progress=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = embedder.embed(paths, cache_dir=cache_dir, progress=False)
    warm = time.perf_counter() - start
    assert first.n_encoded == len(paths) and again.n_encoded == 0
    return len(paths) / cold, len(paths) / warm


def toy_acceptance(bench: Path, weights: Path | None, console: Console, json_out: Path | None = None, name: str = "toy") -> dict:
    """Hard negatives mined from a toy benchmark's pool: how often they share the concept's family
    and main colour, against the pool's base rate; and whether any is the concept itself.

    ``name``: the embedder (``toy``, the default retrieval embedder of the toy world, or ``toy-clip``);
    ``weights``: other toy CLIP weights (then ``toy-clip`` with them).
    """
    from yollava.retrieval.embed import Embedder, load_embedder
    from yollava.toyworld.clip import create_toy_clip
    from yollava.toyworld.hardness import mined_negative_shares

    if weights is not None:
        model, preprocess, _ = create_toy_clip(pretrained=True, weights=weights)
        embedder = Embedder("toy-clip", model, preprocess)
    else:
        embedder = load_embedder(name, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shares = mined_negative_shares(bench, embedder, tmp)
        seconds = time.perf_counter() - start
    console.print(f"embedded the pool in {shares['embed_seconds']:.1f} s ({shares['pool_size']} images); "
                  f"mined {len(shares['concepts'])} concepts in {seconds - shares['embed_seconds']:.1f} s")
    table = Table(title=f"toy world: hard negatives mined from {shares['pool_size']} pool images (embedder {embedder.name}); "
                        "fraction sharing the concept's attribute (main subject) / pool base rate")
    for column in ("concept", "family, colour", "hard", "same colour", "same family", "same family+colour", "ratio", "is the concept"):
        table.add_column(column, justify="right")
    names = ("same_color", "same_family", "same_family_and_color")
    for name, row in [*shares["concepts"].items(), ("all", shares["all"])]:
        both = row["same_family_and_color"]
        digits = ".1f" if name == "all" else ".0f"
        table.add_row(name, f"{row['family']}, {row['color']}" if "family" in row else "", str(row["hard"]),
                      *(f"{row[n][0]:.2f} / {row[n][1]:.3f}" for n in names),
                      f"{both[0] / both[1]:{digits}}x" if both[1] else "-", str(row["itself"]))
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps({"seconds": round(seconds, 1), **shares}, indent=1) + "\n", encoding="utf-8")
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300, help="images for the ViT-B-32 embedding run")
    parser.add_argument("--tiny-images", type=int, default=2000, help="images for the tiny embedding run")
    parser.add_argument("--vectors", type=int, default=100_000, help="random embeddings for index builds")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (768 = ViT-L-14)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per search measurement")
    parser.add_argument("--k", type=int, default=30, help="neighbours per query (3m+10 with m=20 per positive)")
    parser.add_argument("--uniform", action="store_true",
                        help="uniform random vectors (no cluster structure: the worst case for IVF recall)")
    parser.add_argument("--toy", type=Path, help="a toy benchmark folder: also measure hard-negative quality there")
    parser.add_argument("--toy-embedder", default="toy", help="embedder of the --toy measurement: toy (default) or toy-clip")
    parser.add_argument("--toy-weights", type=Path, help="other toy CLIP safetensors (then embedder toy-clip with them)")
    parser.add_argument("--toy-json", type=Path, help="also write the --toy measurement to this JSON file")
    parser.add_argument("--skip-speed", action="store_true", help="only the --toy measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads (others share the cores)")
    args = parser.parse_args()

    import faiss
    import open_clip
    import torch

    from yollava.retrieval.embed import Embedder, load_embedder
    from yollava.retrieval.index import (
        IndexKind,
        default_nlist,
        default_pq_m,
        make_faiss_index,
        train_faiss_index,
    )

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    console = Console(width=130)
    console.print(f"CPU: {platform.processor() or platform.machine()}, threads {args.threads}, torch {torch.__version__}, "
                  f"faiss {faiss.__version__}, open_clip {open_clip.__version__}")

    if args.toy:
        toy_acceptance(args.toy, args.toy_weights, console, args.toy_json, args.toy_embedder)
    if args.skip_speed:
        return
    embed_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "images", max(args.images, args.tiny_images))
        tiny = load_embedder("tiny", device="cpu")
        tiny_cold, tiny_warm = time_embedding(tiny, paths[: args.tiny_images], tmp / "cache")
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        vit = Embedder("random-vit-b-32", model.eval(), preprocess, fingerprint="random-vit-b-32-bench")
        vit_cold, vit_warm = time_embedding(vit, paths[: args.images], tmp / "cache")
    embed_rows.append(("tiny (64 px, 2 layers)", args.tiny_images, tiny_cold, tiny_warm))
    embed_rows.append(("ViT-B-32 (random weights, 224 px)", args.images, vit_cold, vit_warm))

    vectors = synthetic_embeddings(args.vectors, args.dim, clustered=not args.uniform)
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(args.vectors, args.queries, replace=False)] + 0.05 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    nlist = default_nlist(args.vectors)
    pq_m = default_pq_m(args.dim)

    index_rows = []
    truth = None
    for kind in IndexKind:
        start = time.perf_counter()
        index = make_faiss_index(args.dim, kind, nlist=nlist, pq_m=pq_m)
        train_faiss_index(index, vectors)
        index.add(vectors)
        build = time.perf_counter() - start
        if kind is not IndexKind.FLAT:
            faiss.extract_index_ivf(index).nprobe = 16
        start = time.perf_counter()
        _, ids = index.search(queries, args.k)
        search = time.perf_counter() - start
        if truth is None:
            truth = ids
        recall = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, truth)]))
        size = faiss.serialize_index(index).nbytes
        index_rows.append((kind.value, build, args.queries / search, recall, size / args.vectors))

    table = Table(title=f"embedding (images/s, {args.threads} thread)")
    for column in ("embedder", "images", "img/s computed", "img/s cached re-run", "vs tiny"):
        table.add_column(column, justify="right")
    for name, n, cold, warm in embed_rows:
        table.add_row(name, str(n), f"{cold:.1f}", f"{warm:.0f}", f"{cold / embed_rows[0][2]:.3f}x")
    console.print(table)

    table = Table(title=f"faiss over {args.vectors:,} {'uniform' if args.uniform else 'clustered'} random {args.dim}-d embeddings "
                        f"(nlist {nlist}, PQ {pq_m} bytes, nprobe 16, k={args.k}, {args.queries} queries)")
    for column in ("index", "build s", "queries/s", "recall@10 vs flat", "bytes/vector", "build vs flat", "qps vs flat"):
        table.add_column(column, justify="right")
    flat = index_rows[0]
    for name, build, qps, recall, per_vector in index_rows:
        table.add_row(name, f"{build:.2f}", f"{qps:.0f}", f"{recall:.3f}", f"{per_vector:.0f}",
                      f"{build / flat[1]:.1f}x", f"{qps / flat[2]:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
