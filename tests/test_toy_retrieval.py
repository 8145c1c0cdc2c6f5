"""Hard-negative mining in the toy world: retrieved negatives resemble the concept, and are never it."""

from __future__ import annotations

import json

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

