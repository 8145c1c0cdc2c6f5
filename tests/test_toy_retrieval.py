"""Hard-negative mining in the toy world: retrieved negatives resemble the concept, and are never it."""

from __future__ import annotations

import json

import pytest

from yollava.retrieval.mine import retrieve_negatives
from yollava.toyworld.benchmark import generate_benchmark


def test_hard_negatives_share_family_and_colour_far_above_the_base_rate(tmp_path):
    data = generate_benchmark(tmp_path / "toy", n_concepts=3, seed=1, pool_size=600, n_train=5, n_test=1, progress=False)
    pool = {json.loads(line)["path"]: json.loads(line) for line in (data / "pool" / "pool.jsonl").read_text().splitlines()}
    names = json.loads((data / "benchmark.json").read_text())["concepts"]
    hits = total = 0
    base_rate = []
    for name in names:
        subject = json.loads((data / "subjects" / name / "subject.json").read_text())
        same = lambda attrs: attrs["family"] == subject["family"] and attrs["color"] == subject["color"]  # noqa: E731
        base_rate.append(sum(same(item["attributes"]) for item in pool.values()) / len(pool))
        negatives = retrieve_negatives(name, data / "train" / name, pool=data / "pool", per_image=4, n_easy=10,
                                       embedder="toy", store=tmp_path / "store", progress=False)
        hard = [r for r in negatives.records if r.kind == "hard"]
        assert len(hard) == 20
        for record in hard:
            attrs = pool[record.source.split("/pool/")[-1]]["attributes"]
            identity = {k: subject[k] for k in attrs}
            assert attrs != identity, f"{name}: the concept itself was retrieved as a negative"
            hits += same(attrs)
            total += 1
    rate = hits / total
    base = sum(base_rate) / len(base_rate)
    # measured at 20k pool images: 0.18 vs 0.017 (10x); on this small pool it must still be several times the base rate
    print(f"hard negatives sharing family+colour: {rate:.3f}, pool base rate {base:.3f}")
    assert rate > 3 * base and rate > 0.1, (rate, base)


@pytest.mark.xfail(strict=True, reason="issue 18: the shipped toy CLIP's mined negatives share family 0.52 here (0.33 on the "
                                        "20-concept bench); remove this marker with weights that pass")
def test_mined_negatives_are_mostly_the_concepts_kind_and_often_its_colour(tmp_path):
    """The toy CLIP should rank by family first, then colour, as a LAION CLIP retrieves dogs for a dog.

    The shipped weights (full captions only) give family 0.52 / family+colour 0.32 on this world (0.33 /
    0.18 on the 20-concept bench) and fail; the recipe ablation's hard negatives are only hard above that.
    Strict xfail: weights that pass make this test fail until the marker goes.
    """
    from yollava.retrieval.embed import load_embedder
    from yollava.toyworld.hardness import mined_negative_shares

    data = generate_benchmark(tmp_path / "toy", n_concepts=6, seed=2, pool_size=1200, n_train=5, n_test=1, progress=False)
    shares = mined_negative_shares(data, load_embedder("toy", device="cpu"), tmp_path / "work", per_image=4)
    total = shares["all"]
    assert total["hard"] == 6 * 20 and total["itself"] == 0
    family, base = total["same_family"]
    assert family > 0.7 and family > 3 * base, total
    both, base = total["same_family_and_color"]
    assert both > 0.4 and both > 10 * base, total
