"""Hard-negative mining in the toy world: retrieved negatives resemble the concept, and are never it."""

from __future__ import annotations

import json

from yollava.retrieval.mine import retrieve_negatives
from yollava.toyworld.benchmark import generate_benchmark


import pytest


@pytest.mark.parametrize("embedder", ["toy", "toy-clip"])
def test_hard_negatives_share_family_and_colour_far_above_the_base_rate(tmp_path, embedder):
    data = generate_benchmark(tmp_path / "toy", n_concepts=3, seed=1, pool_size=600, n_train=5, n_test=1, progress=False)
    pool = {json.loads(line)["path"]: json.loads(line) for line in (data / "pool" / "pool.jsonl").read_text().splitlines()}
    names = json.loads((data / "benchmark.json").read_text())["concepts"]
    hits = total = family = 0
    base_rate = []
    for name in names:
        subject = json.loads((data / "subjects" / name / "subject.json").read_text())
        same = lambda attrs: attrs["family"] == subject["family"] and attrs["color"] == subject["color"]  # noqa: E731
        base_rate.append(sum(same(item["attributes"]) for item in pool.values()) / len(pool))
        negatives = retrieve_negatives(name, data / "train" / name, pool=data / "pool", per_image=4, n_easy=10,
                                       embedder=embedder, store=tmp_path / "store", progress=False)
        hard = [r for r in negatives.records if r.kind == "hard"]
        assert len(hard) == 20
        for record in hard:
            attrs = pool[record.source.split("/pool/")[-1]]["attributes"]
            identity = {k: subject[k] for k in attrs}
            assert attrs != identity, f"{name}: the concept itself was retrieved as a negative"
            hits += same(attrs)
            family += attrs["family"] == subject["family"]
            total += 1
    rate = hits / total
    base = sum(base_rate) / len(base_rate)
    print(f"{embedder}: hard negatives sharing family {family / total:.3f}, family+colour {rate:.3f}, pool base rate {base:.3f}")
    if embedder == "toy":
        # the default: like a LAION CLIP, family first (20-concept benchmark: family 0.85, family+colour 0.63;
        # measured here: family 0.85, family+colour 0.53); the acceptance target is family >= 0.8, both >= 0.4
        assert family / total >= 0.8 and rate >= 0.4, (family / total, rate)
    else:
        # the trained toy CLIP hardly sees family (benchmark: 0.35 / 0.20); several times the base rate still
        assert rate > 3 * base and rate > 0.1, (rate, base)



def test_the_toy_embedder_has_a_stable_key_and_reads_a_lone_subjects_family():
    """Its key (the embedding cache's and stored negatives' fingerprint) is the same on every load, and a
    photo of one subject embeds closest to that subject's family."""
    from yollava.retrieval.embed import load_embedder
    from yollava.toyworld.render import render_scene
    from yollava.toyworld.world import FAMILIES, item_rng, sample_scene, sample_subject

    first, second = load_embedder("toy", device="cpu"), load_embedder("toy", device="cpu")
    assert first.key == second.key
    rng = item_rng(3, "lone", 0)
    subjects = [sample_subject(rng) for _ in range(24)]
    vectors = first.encode([render_scene(sample_scene(rng, s)) for s in subjects])
    read = [FAMILIES[int(v[: len(FAMILIES)].argmax())] for v in vectors]
    assert sum(r == s.family for r, s in zip(read, subjects)) >= 22, list(zip(read, [s.family for s in subjects]))
