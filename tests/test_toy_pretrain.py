"""The toy LLaVA's pretraining pieces (no pretrained weights needed): data labels, feature banks, evaluation sets, the script."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from yollava.toyworld import llava as toy
from yollava.toyworld.clip import create_toy_clip
from yollava.toyworld.world import ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exclude():
    return toy.excluded_identities()


@pytest.fixture(scope="module")
def world(exclude):
    """40 plain scenes plus scenes of the known identities (2 with each, 1 with a lookalike of each)."""
    scenes = [toy.draw_scene(0, "test-pretrain", i, 64, exclude) for i in range(40)]
    known = toy.known_identities(0, exclude)
    extra, owners = toy.known_scenes(0, "test-pretrain/known", known, 64, exclude, 2, 1)
    owner_of = {len(scenes) + i: o for i, o in enumerate(owners)}
    return toy.DataMix(scenes + extra, exclude, known=known, owners=owner_of), known, owner_of


def fresh_model(folder: Path):
    """A toy LLaVA with the shipped toy CLIP's tower and a random language model (tokenizer saved in ``folder``)."""
    clip, _, _ = create_toy_clip()
    toy.build_tokenizer(toy.required_words()).save(str(folder / toy.TOKENIZER_FILE))
    return toy.new_model(toy.ToyLlavaArch(), toy.wrap_tokenizer(folder / toy.TOKENIZER_FILE), clip, seed=0)


def test_known_identities_are_fixed_distinct_and_never_benchmark_subjects(exclude):
    known = toy.known_identities(0, exclude)
    assert known == toy.known_identities(0, exclude)
    assert len(set(known)) == len(toy.KNOWN_TOKENS) and not set(known) & exclude


def test_known_scenes_show_the_identity_or_only_a_lookalike(world):
    mix, known, owner_of = world
    for index, (k, present) in owner_of.items():
        subjects = [p.subject for p in mix.scenes[index].subjects]
        assert (known[k] in subjects) == present
        if not present:  # the main subject differs from the identity in exactly one attribute (accessory colour may follow)
            differing = [a for a in ATTRIBUTES if getattr(mix.scenes[index].main.subject, a) != getattr(known[k], a)]
            assert 1 <= len(differing) <= 2, differing


def test_named_questions_are_labelled_by_the_scene(world):
    mix, known, _ = world
    rng = random.Random(0)
    tags = set()
    for i in range(200):
        sample = mix.named(rng, i % 2 == 0, eval_question=True)
        token = next(t for t in toy.KNOWN_TOKENS if t in sample.user)
        subject = known[toy.KNOWN_TOKENS.index(token)]
        assert sample.label == any(p.subject == subject for p in mix.scenes[sample.scene].subjects)
        assert sample.answer == ("Yes." if sample.label else "No.")
        tags.add(sample.tag)
    assert tags == {"main", "lookalike", "random"}


def test_yes_no_comparisons_match_the_subject(world):
    mix, _, _ = world
    rng = random.Random(1)
    for i in range(100):
        subject = mix.scenes[i % 40].main.subject
        sample = mix.text_verify(subject, rng, i % 2 == 0)
        assert sample.label == (i % 2 == 0) and sample.answer == ("Yes." if sample.label else "No.")
        asked = sample.user.split(". ", 1)[1]
        value = getattr(subject, sample.tag)
        assert (f" {value}?" in asked or f" {value} " in asked) == sample.label, (asked, value)


def test_eval_set_fields_hold_their_own_task(world):
    mix, _, _ = world
    eval_set = toy.build_eval_set(mix, 0, n=8)
    assert {s.kind for s in eval_set.named} == {"named"}
    assert {s.kind for s in eval_set.category} == {"category"}
    assert {s.kind for s in eval_set.text_verify} == {"text_verify"}


def test_pixel_bank_gives_the_towers_features(world, tmp_path):
    mix, _, _ = world
    model = fresh_model(tmp_path)
    scenes = mix.scenes[:6]
    with torch.no_grad():
        pixels = toy.PixelBank(model, scenes)[torch.tensor([4, 0, 2])]
    precomputed = toy.scene_features(model, scenes)[[4, 0, 2]].float()
    assert pixels.shape == precomputed.shape == (3, 64, model.config.vision_config.hidden_size)
    torch.testing.assert_close(pixels, precomputed, atol=2e-2, rtol=1e-2)  # the bank stores fp16


def test_pixel_bank_extends_a_prefix_bank_without_changing_its_images(world, tmp_path):
    mix, _, _ = world
    model = fresh_model(tmp_path)
    scenes = mix.scenes[:9]
    extended = toy.PixelBank(model, scenes, batch_size=4, prefix=toy.PixelBank(model, scenes[:5]))
    assert torch.equal(extended.pixels, toy.PixelBank(model, scenes).pixels)
    assert len(extended) == 9


def test_pretraining_script_runs_every_stage(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_toy.py"), "--quick", "--stage-set", "instruct.mix=presence:0.5/verify:0.5"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("vision", "code", "compile", "instruct"):
        assert f"stage {stage}:" in done.stdout
    assert "circuit threshold=0.9,size_weight=0.5,shape_weight=1.0: MATCH accuracy" in done.stdout
    assert "held-out quality" in done.stdout and "wrote" in done.stdout


def test_patch_labels_name_the_subject_drawn_on_each_patch(world):
    mix, _, _ = world
    scene = next(s for s in mix.scenes if len(s.subjects) >= 2)
    labels = toy.patch_labels(scene, 8)
    assert labels.shape == (64, len(ATTRIBUTES) + 1)
    x0, y0, x1, y1 = scene.main.box
    for row in range(8):
        for col in range(8):
            x, y = col * 8 + 4, row * 8 + 4
            patch = labels[row * 8 + col]
            if x0 <= x < x1 and y0 <= y < y1:  # the main subject is drawn last: it owns its box
                assert patch[-1] == 2
                assert patch[list(ATTRIBUTES).index("color")] == ATTRIBUTES["color"].index(scene.main.subject.color)
            elif not any(p.box[0] <= x < p.box[2] and p.box[1] <= y < p.box[3] for p in scene.distractors):
                assert patch[-1] == 0 and (patch[:-1] == -100).all()
            else:
                assert patch[-1] == 1


def test_dense_vision_stage_teaches_the_tower_colours(tmp_path):
    """A few dozen steps on single-subject scenes already read the main colour above chance (0.1)."""
    model = fresh_model(tmp_path)
    exclude = toy.excluded_identities()
    scenes = [toy.draw_scene(0, "test-dense", i, 64, exclude, 0) for i in range(300)]
    config = toy.PretrainConfig(batch_size=16, log_every=60, eval_every=60)
    stage = toy.StageConfig("vision", steps=60, lr=3e-3, trains="vision", task="dense", warmup=5, vision_lr_scale=1.0)
    before = [p.detach().clone() for p in model.model.language_model.parameters()]
    history, accuracy = toy.supervise_tower(model, stage, config, toy.PixelBank(model, scenes[:240]), scenes[:240], lambda line: None,
                                            heldout=(toy.PixelBank(model, scenes[240:]), scenes[240:]))
    assert len(history) == 1 and "eval" in history[0]
    assert accuracy["color"] >= 0.3, accuracy
    assert all(torch.equal(a, b) for a, b in zip(before, model.model.language_model.parameters()))  # only the tower trains
    assert not any(p.requires_grad for p in model.parameters())


def test_loss_weighs_every_sample_equally():
    """A one-token answer counts as much as a long one: the loss is a mean of per-sample means."""
    vocab, hidden = 11, 8
    head = torch.nn.Linear(hidden, vocab, bias=False)
    # a stand-in LLaVA whose language model is the identity: hidden states are the input embeddings
    identity = lambda inputs_embeds, attention_mask, use_cache: SimpleNamespace(last_hidden_state=inputs_embeds)
    model = SimpleNamespace(model=SimpleNamespace(language_model=identity), lm_head=head)
    embeds = torch.randn(2, 6, hidden)
    labels = torch.full((2, 6), -100)
    labels[0, 1:6] = torch.tensor([1, 2, 3, 4, 5])  # five answer tokens
    labels[1, 5] = 7  # one
    batch = toy.Batch(ids=torch.zeros(2, 6, dtype=torch.long), labels=labels, mask=torch.ones(2, 6, dtype=torch.long), scenes=[None, None])
    per_token = torch.nn.functional.cross_entropy(head(embeds[:, :-1]).transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
    expected = (per_token[0, :5].mean() + per_token[1, 4]) / 2
    torch.testing.assert_close(toy.batch_loss(model, batch, embeds), expected)


def test_grounding_targets_are_the_words_of_what_each_patch_shows(world, tmp_path):
    mix, _, _ = world
    scene = next(s for s in mix.scenes if s.distractors)
    tokenizer = toy.wrap_tokenizer(_saved_tokenizer(tmp_path))
    embed = torch.randn(len(tokenizer) + 8, 16)
    targets = toy.grounding_targets([scene], 8, embed, tokenizer)[0]
    labels = toy.patch_labels(scene, 8)
    main = int((labels[:, -1] == 2).nonzero()[0][0])
    subject = scene.main.subject
    words = [str(getattr(subject, a)) for a in ATTRIBUTES if getattr(subject, a) is not None]
    torch.testing.assert_close(targets[main], embed[tokenizer.convert_tokens_to_ids(words)].sum(0))
    background = int((labels[:, -1] == 0).nonzero()[0][0])
    torch.testing.assert_close(targets[background], embed[tokenizer.convert_tokens_to_ids(scene.background)])


def test_projector_grounding_moves_patches_onto_their_words(world, tmp_path):
    """Only the projector trains, and its error falls well below predicting zeros (relative MSE 1)."""
    mix, _, _ = world
    model = fresh_model(tmp_path)
    bank = toy.scene_features(model, mix.scenes)
    config = toy.PretrainConfig(batch_size=16, log_every=20)
    before = [p.detach().clone() for p in model.model.language_model.parameters()]
    history = toy.ground_projector(model, toy.StageConfig("ground", 200, 3e-3, "projector", "ground", warmup=10), config, mix, bank,
                                   toy.wrap_tokenizer(tmp_path / toy.TOKENIZER_FILE), lambda line: None)
    assert history[-1]["relative_mse"] < 0.75 and history[0]["relative_mse"] > history[-1]["relative_mse"] + 0.2, history
    assert all(torch.equal(a, b) for a, b in zip(before, model.model.language_model.parameters()))
    assert not any(p.requires_grad for p in model.parameters())


def test_short_format_drops_only_the_system_text(tmp_path):
    tokenizer = toy.wrap_tokenizer(_saved_tokenizer(tmp_path))
    sample = toy.ToySample("text_verify", "<x01> is red. Is <x01> red?", "Yes.", None, True, "color")
    full = toy.Encoder(tokenizer, 4, 64)(sample)
    short = toy.Encoder(tokenizer, 4, 64, system=False)(sample)
    words = tokenizer.convert_ids_to_tokens(short.ids)
    assert words[:4] == ["<s>", "USER", ":", "<x01>"]
    assert full.ids[-len(short.ids) + 1 :] == short.ids[1:] and len(full.ids) > len(short.ids) + 20
    assert full.labels[-len(short.labels) + 1 :] == short.labels[1:]


def _saved_tokenizer(folder: Path) -> Path:
    path = folder / toy.TOKENIZER_FILE
    if not path.is_file():
        toy.build_tokenizer(toy.required_words()).save(str(path))
    return path


def test_recipes_name_their_stages():
    assert [s.name for s in toy.recipe_stages("compiled")] == ["vision", "code", "compile", "instruct"]
    assert toy.recipe_stages("compiled")[-1].mix == toy.COMPILED_MIX and toy.recipe_arch("compiled").head_dim == 64
    curriculum = [s.name for s in toy.recipe_stages("curriculum")]
    assert curriculum[:4] == ["vision", "compare_color", "ground", "see_color"] and curriculum[-2:] == ["language", "instruct"]
    assert [s for s in toy.recipe_stages("curriculum") if s.name.startswith(("compare_", "see_"))] and all(
        not s.system and s.attributes for s in toy.recipe_stages("curriculum") if s.name.startswith(("compare_", "see_")))
    assert [s.name for s in toy.recipe_stages("classic")] == ["vision", "language", "projector", "instruct"]
    with pytest.raises(ValueError, match="unknown recipe"):
        toy.recipe_stages("fast")


def test_bound_questions_are_labelled_by_the_scene_and_carry_their_subject(world):
    mix, _, _ = world
    rng = random.Random(2)
    prefixed = 0
    for i in range(100):
        sample = mix.bound(i % 40, rng, i % 2 == 0, eval_question=True)
        name, subject = sample.binding
        assert sample.label == (i % 2 == 0) == any(p.subject == subject for p in mix.scenes[sample.scene].subjects)
        assert name in toy.NAME_TOKENS and sample.answer == ("Yes." if sample.label else "No.")
        if sample.tag.endswith("+prefix"):  # "<x03> is <x11> … <x27>. Can you see if <x03> …": a soft prompt's shape
            prefixed += 1
            head, question = sample.user.split(". ", 1)
            words = head.split()
            assert words[:2] == [name, "is"] and len(set(words[2:]) - {name}) == toy.BOUND_LATENTS and name in question
    assert 20 < prefixed < 80


def test_bound_names_get_their_subjects_attribute_vector(world, tmp_path):
    mix, _, _ = world
    tokenizer = toy.wrap_tokenizer(_saved_tokenizer(tmp_path))
    embedding = torch.randn(len(tokenizer) + 8, 16)
    encoder = toy.Encoder(tokenizer, tokenizer.convert_tokens_to_ids("<image>"), 64)
    rng = random.Random(3)
    samples = [mix.bound(0, rng, True, prefix=True), mix.named(rng, True)]
    items = [encoder(s) for s in samples]
    batch = toy.collate(items, tokenizer.pad_token_id)
    embeds = embedding[batch.ids]
    out = toy.bind_names(embeds, batch, items, embedding, tokenizer)
    name, subject = samples[0].binding
    where = batch.ids[0] == tokenizer.convert_tokens_to_ids(name)
    words = [getattr(subject, a) or "none" for a in ATTRIBUTES]
    expected = embedding[tokenizer.convert_tokens_to_ids(words)].sum(0) / len(words) ** 0.5
    assert int(where.sum()) >= 2  # the prefix, the question (and a sentence answer)
    torch.testing.assert_close(out[0, where], expected.expand(int(where.sum()), -1))
    torch.testing.assert_close(out[0, ~where], embeds[0, ~where])  # the latents' names and every other token keep their rows
    torch.testing.assert_close(out[1], embeds[1])  # unbound samples are untouched
    assert (batch.labels[0, where] == -100).all()


def test_probe_script_trains_scores_and_saves_a_loadable_model(tmp_path):
    """scripts/probe_toy_llava.py end to end on a few scenes: named + bound training, bound scoring, --save."""
    saved = tmp_path / "probed"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "probe_toy_llava.py"), "--task", "named+bound", "--eval-task", "bound", "--known", "4",
         "--known-init", "attributes", "--scenes", "40", "--eval-items", "16", "--steps", "2", "--save", str(saved)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert records[0]["step"] == 0 and records[-1]["step"] == 2 and "eval" in records[-1]
    assert {"accuracy", "yes_rate"} <= set(records[-1]["eval"]) and any(tag.endswith("+prefix") for tag in records[-1]["eval"])
    assert toy.load_toy_base(saved).model.config.text_config.hidden_size == toy.ToyLlavaArch().hidden_size
