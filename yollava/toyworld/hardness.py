"""How hard mined negatives are in a toy benchmark: how often they share the concept's family and colour."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from yollava.retrieval.embed import Embedder
from yollava.retrieval.index import FolderBackend
from yollava.retrieval.mine import retrieve_hard_negatives
from yollava.toyworld.benchmark import (
    POOL_DIR,
    POOL_INDEX_FILE,
    SUBJECT_FILE,
    SUBJECTS_DIR,
    TRAIN_DIR,
)
from yollava.toyworld.world import ATTRIBUTES

# What a mined negative's main subject shares with the concept.
SHARED = {
    "same_color": lambda a, s: a["color"] == s["color"],
    "same_family": lambda a, s: a["family"] == s["family"],
    "same_family_and_color": lambda a, s: a["family"] == s["family"] and a["color"] == s["color"],
}


def mined_negative_shares(
    bench: str | Path, embedder: Embedder, work_dir: str | Path, *, per_image: int | None = None
) -> dict:
    """Mine each concept's hard negatives from the benchmark's pool and measure what they share with it.

    Mining is :func:`~yollava.retrieval.mine.retrieve_hard_negatives` from the concept's training
    photos, as ``yollava negatives`` does it (no easy negatives).

    Args:
        bench: a folder written by ``yollava toy generate``.
        embedder: the embedding space to mine in.
        work_dir: scratch folder for the embedding cache and the mined sets.
        per_image: hard negatives per training photo (default: about 100 per concept).

    Returns:
        ``concepts``: per concept its family, colour, ``hard`` (how many were mined), ``itself``
        (how many show the concept's whole identity: should be 0) and, per entry of
        :data:`SHARED`, ``[share, pool base rate]``; ``all``: the same pooled over every mined
        negative (base rates weighted alike); ``pool_size``.
    """
    bench, work_dir = Path(bench), Path(work_dir)
    pool_dir = bench / POOL_DIR
    records = [json.loads(line) for line in (pool_dir / POOL_INDEX_FILE).read_text(encoding="utf-8").splitlines()]
    attributes = {str((pool_dir / r["path"]).resolve()): r["attributes"] for r in records}
    started = time.perf_counter()
    backend = FolderBackend(pool_dir, embedder, cache_dir=work_dir / "cache", progress=False)
    embed_seconds = time.perf_counter() - started
    concepts = {}
    sums = {name: [0.0, 0.0] for name in SHARED}
    n_total = 0
    for folder in sorted(d for d in (bench / SUBJECTS_DIR).iterdir() if (d / SUBJECT_FILE).is_file()):
        subject = json.loads((folder / SUBJECT_FILE).read_text(encoding="utf-8"))
        result = retrieve_hard_negatives(folder.name, bench / TRAIN_DIR / folder.name, backend, embedder,
                                         store=work_dir / "store", per_image=per_image, n_easy=0,
                                         cache_dir=work_dir / "cache", progress=False)
        hard = [attributes[r.source] for r in result.records]
        row = {"family": subject["family"], "color": subject["color"], "hard": len(hard),
               "itself": sum(all(a[k] == subject[k] for k in ATTRIBUTES) for a in hard)}
        for name, test in SHARED.items():
            share = float(np.mean([test(a, subject) for a in hard])) if hard else 0.0
            base = float(np.mean([test(a, subject) for a in attributes.values()]))
            row[name] = [share, base]
            sums[name][0] += share * len(hard)
            sums[name][1] += base * len(hard)
        n_total += len(hard)
        concepts[folder.name] = row
    total = {name: [share / max(1, n_total), base / max(1, n_total)] for name, (share, base) in sums.items()}
    return {"pool_size": len(records), "embed_seconds": round(embed_seconds, 1), "concepts": concepts,
            "all": {"hard": n_total, "itself": sum(r["itself"] for r in concepts.values()), **total}}
