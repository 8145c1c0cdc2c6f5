"""toy-pvit (issue 17): PVIT's in-context data in miniature from the toy world's scene graphs."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict

import pytest

from yollava.evaluate.answers import ABSENT, UNKNOWN, judge_yes_no, refusal
from yollava.toyworld.pretrain.pvit import SCENE_TEXT, PvitMix, PvitPool, PvitWeights
from yollava.toyworld.pretrain.scenes import excluded_identities
from yollava.toyworld.world import ATTRIBUTES, FINE_ATTRIBUTES

SAMPLES = 3000


@pytest.fixture(scope="module")
def pool():
    return PvitPool(0, "pvit-test", 120, excluded_identities())


@pytest.fixture(scope="module")
def samples(pool):
    mix = PvitMix(pool)
    rng = random.Random(0)
    return [mix.sample(rng, PvitWeights()) for _ in range(SAMPLES)]


def test_no_benchmark_identity_is_in_any_scene_of_the_data(pool):
    excluded = excluded_identities()
    assert len(excluded) == 31
    seen = {p.subject for scene in pool.scenes for p in scene.subjects}
    assert not seen & excluded
    assert {i.subject for i in pool.identities}.isdisjoint(excluded)


def test_the_mix_has_each_task_and_both_refusals_in_their_stated_shares(samples):
    weights = asdict(PvitWeights())
    total = sum(weights.values())
    kinds = Counter(s.kind for s in samples)
    merged = {"attribute": kinds["attribute"] + kinds["absent"], "text": kinds["text"] + kinds["text_conversation"]}
    for kind, weight in weights.items():
        share = merged.get(kind, kinds[kind]) / SAMPLES
        assert abs(share - weight / total) < 0.03, (kind, share, weight / total)
    # the named subject is not in the scene: PVIT's refusal for half the absent attribute questions' share
    absent = [s for s in samples if s.kind == "absent"]
    assert abs(len(absent) / SAMPLES - 0.5 * weights["attribute"] / total) < 0.02
    assert all(refusal(s.answer) == ABSENT and judge_yes_no(s.answer) == "no" for s in absent)
    # the name was never introduced
    unknown = [s for s in samples if s.kind == "unknown"]
    assert all(refusal(s.answer) == UNKNOWN for s in unknown)
    assert any(not s.references for s in unknown) and any(s.references for s in unknown)
    for s in unknown:
        asked = s.answer.split(" who ")[-1].split(" is")[0] if " who " in s.answer else None
        assert all(not text.endswith(f"{asked}.") for _, text in s.references)
    # presence negatives: a bare "No." (half of them: the evaluation question), recognition.yaml's
    # negative answers, or PVIT's refusal; every one judged "no"
    negatives = [s for s in samples if s.kind == "presence" and s.label is False]
    assert 0.1 < sum(refusal(s.answer) == ABSENT for s in negatives) / len(negatives) < 0.6
    assert sum(s.answer == "No." for s in negatives) / len(negatives) > 0.4
    assert all(judge_yes_no(s.answer) == "no" for s in negatives)


def test_presence_negatives_include_one_fine_attribute_lookalikes(pool, samples):
    fine = [s for s in samples if s.kind == "presence" and s.label is False and s.tag.startswith("fine")]
    assert len(fine) > 0.1 * sum(s.kind == "presence" for s in samples)
    for s in fine[:50]:
        reference = pool.scenes[s.references[0][0]].main.subject
        shown = pool.scenes[s.scene].main.subject
        assert not pool.holds(s.scene, reference)
        differ = [a for a in ATTRIBUTES if getattr(reference, a) != getattr(shown, a)]
        assert differ and set(differ) <= {*FINE_ATTRIBUTES}, differ


def test_samples_are_in_pvit_format_and_several_subjects_are_named(pool, samples):
    s = next(x for x in samples if x.kind == "presence" and len(x.references) == 1)
    name = s.references[0][1].split()[-1].rstrip(".")
    assert s.user_text().startswith("<image>\n") and s.user_text().count("<image>\n") == 2
    assert f"\n<image>\n{SCENE_TEXT}{s.question}" in s.user_text() and name in s.question
    assert s.images == [s.references[0][0], s.scene]
    intros = {re.sub(r"<x\d\d>", "{name}", text) for x in samples for _, text in x.references}
    assert {"This is {name}.", "Here is {name} in a photo."} <= intros
    multi = [x for x in samples if x.kind in ("multi", "who") and len(x.references) >= 2]
    assert multi and {len(x.references) for x in multi} >= {2, 3}
    # a reference photo shows its subject alone, as PVIT's crops do
    assert all(len(pool.scenes[i].subjects) == 1 for x in samples[:200] for i, _ in x.references)


def test_the_data_is_seeded(pool):
    a = [PvitMix(pool).sample(random.Random(7), PvitWeights()) for _ in range(3)]
    b = [PvitMix(pool).sample(random.Random(7), PvitWeights()) for _ in range(3)]
    assert a == b
    again = PvitPool(0, "pvit-test", 120, excluded_identities())
    assert again.scenes == pool.scenes
