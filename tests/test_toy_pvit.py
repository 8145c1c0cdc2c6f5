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


# -- the compiled in-context extension (pretrain/pvit_circuit.py) on the shipped toy LLaVA

toy_llava = pytest.importorskip("yollava.toyworld.toy_llava")
needs_toy = pytest.mark.skipif(not toy_llava.toy_llava_available(), reason="the toy LLaVA's weights are not installed")


@pytest.fixture(scope="module")
def extended():
    import json

    import torch

    from yollava.toyworld.pretrain import pvit_circuit as P
    from yollava.toyworld.pretrain.batches import SampleEncoder

    torch.manual_seed(0)
    base = toy_llava.load_toy_base()
    arch = toy_llava.ToyLlavaArch(**json.loads((toy_llava.toy_llava_folder() / toy_llava.CONFIG_FILE).read_text())["arch"])
    model, new_arch = P.insert_layers(base.model, base.tokenizer, arch)
    P.compile_pvit(model, base.tokenizer, P.PvitCircuitConfig())
    return base, model, SampleEncoder(base.tokenizer, model.config.image_token_id, base.num_image_tokens)


@needs_toy
def test_the_extension_keeps_the_answers_of_prompts_without_reference_photos(extended):
    import torch

    from yollava.toyworld.pretrain.batches import collate_pretrain, embed_batch
    from yollava.toyworld.pretrain.mix import ToySample
    from yollava.toyworld.pretrain.scenes import scene_features
    from yollava.toyworld.world import item_rng, sample_scene, sample_subject

    base, model, encoder = extended
    rng = item_rng(0, "pvit-test/plain", 0)
    scenes = [sample_scene(rng, sample_subject(rng), image_size=64, n_distractors=2) for _ in range(2)]
    bank = scene_features(base.model, scenes)
    samples = [ToySample("attribute", "What color is the subject?", "Red.", scene=0),
               ToySample("presence", "<x03> is a small red striped round pet. Is <x03> in this photo?", "No.", scene=1)]
    batch = collate_pretrain([encoder(s, with_answer=False) for s in samples], base.tokenizer.pad_token_id)
    with torch.no_grad():
        before = base.model(inputs_embeds=embed_batch(base.model, batch, bank), attention_mask=batch.mask).logits
        after = model(inputs_embeds=embed_batch(model, batch, bank), attention_mask=batch.mask).logits
    # text positions only: at image positions the count head reads projector noise in the free
    # dimensions of other patches (a known flaw, their logits move by up to ~4; nothing reads them)
    real = batch.mask.bool() & (batch.ids != model.config.image_token_id)
    # not silent yet: through those patches text logits move by up to 0.19 (measured); the same answers
    assert float((before - after)[real].abs().max()) < 0.3
    assert torch.equal(before.argmax(-1)[real], after.argmax(-1)[real])


@needs_toy
def test_the_reference_photo_becomes_the_question_s_code_and_the_scene_is_matched(extended):
    import torch

    from yollava.toyworld.pretrain import circuit as C
    from yollava.toyworld.pretrain import pvit_circuit as P
    from yollava.toyworld.pretrain.pvit import collate, encode_sample
    from yollava.toyworld.pretrain.scenes import scene_features

    base, model, encoder = extended
    pool = PvitPool(1, "pvit-test/heldout", 40, excluded_identities())
    bank = scene_features(base.model, pool.scenes)
    mix = PvitMix(pool)
    rng = random.Random(0)
    items = [mix.presence(rng, i % 2 == 0, refs=1, eval_question=True) for i in range(80)]
    encoded = [encode_sample(encoder, s, with_answer=False) for s in items]
    batch = collate(encoded, base.tokenizer.pad_token_id)
    last = torch.tensor([len(e.ids) - 1 for e in encoded])
    seen = {}
    hook = model.model.language_model.layers[P.COLLECT].register_forward_hook(
        lambda module, args, output: seen.__setitem__("h", output[0] if isinstance(output, tuple) else output))
    from yollava.toyworld.pretrain.batches import embed_batch

    with torch.no_grad():
        match = P.match_values(model, lambda: model.model.language_model(inputs_embeds=embed_batch(model, batch, bank),
                                                                         attention_mask=batch.mask).last_hidden_state, last)
    hook.remove()
    # collect: the question holds the reference subject's code (its family and colour slots lead)
    h = seen["h"][torch.arange(len(items)), last]
    code = h[:, C.IMAGE_CODE:C.IMAGE_CODE + len(C.SLOTS)] / h.pow(2).mean(-1, keepdim=True).sqrt()
    hits = 0
    for row, sample in enumerate(items):
        subject = pool.scenes[sample.references[0][0]].main.subject
        family = C.SLOTS.index(("family", subject.family))
        hits += int(code[row, family] > 0.3 and code[row, family] > code[row, [C.SLOTS.index(("family", f)) for f in
                    ("person", "pet", "object", "landmark", "vehicle", "plant") if f != subject.family]].max())
    assert hits / len(items) > 0.9
    # match: the measured accuracy of MATCH > 0.5 on presence with one reference photo (0.71 on 200 held-out
    # items when this was written; the gate is 0.90) stays above chance
    labels = torch.tensor([s.label for s in items])
    assert float(((match > 0.5) == labels).float().mean()) > 0.6


def test_the_vocabulary_grows_by_the_mix_s_missing_words_and_keeps_every_old_id_and_row():
    import torch

    from yollava.toyworld.pretrain.pvit import UNKNOWN_REPLIES, WHO_QUESTIONS, pvit_words
    from yollava.toyworld.pretrain.vocabulary import build_tokenizer, extend_tokenizer, grow_rows, required_words
    from yollava.toyworld.toy_llava import UNK, load_toy_base

    old = build_tokenizer(required_words())
    new, added = extend_tokenizer(old, pvit_words())
    assert sorted(added) == ["Sorry", "Who", "anyone", "based", "following", "know", "question", "who"]
    assert new.get_vocab_size() == old.get_vocab_size() + len(added)
    assert all(new.token_to_id(t) == i for t, i in old.get_vocab().items())
    unk = new.token_to_id(UNK)
    assert unk not in new.encode(" ".join(pvit_words())).ids
    for text in [t.format(name="<x03>") for t in (*UNKNOWN_REPLIES, *WHO_QUESTIONS)]:
        ids = new.encode(text).ids
        assert unk not in ids, text
        assert new.decode(ids, skip_special_tokens=True) == text
    assert extend_tokenizer(new, pvit_words())[1] == []  # idempotent

    base = load_toy_base()
    head = base.model.get_output_embeddings().weight.detach().clone()
    emb = base.model.get_input_embeddings().weight.detach().clone()
    grow_rows(base.model, emb.shape[0] + len(added))
    assert base.model.get_input_embeddings().weight.shape[0] == emb.shape[0] + len(added)
    assert base.model.get_output_embeddings().weight.shape[0] == head.shape[0] + len(added)
    assert torch.equal(base.model.get_input_embeddings().weight[: emb.shape[0]], emb)
    assert torch.equal(base.model.get_output_embeddings().weight[: head.shape[0]], head)
    with pytest.raises(ValueError, match="fewer"):
        grow_rows(base.model, 3)
