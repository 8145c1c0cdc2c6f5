"""The toy LLaVA's pretraining pieces (no pretrained weights needed): data labels, feature banks, evaluation sets, the script."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

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
    clip, _, _ = create_toy_clip()
    tokenizer_json = toy.build_tokenizer(toy.required_words())
    tokenizer_json.save(str(tmp_path / toy.TOKENIZER_FILE))
    model = toy.new_model(toy.ToyLlavaArch(), toy.wrap_tokenizer(tmp_path / toy.TOKENIZER_FILE), clip, seed=0)
    scenes = mix.scenes[:6]
    with torch.no_grad():
        pixels = toy.PixelBank(model, scenes)[torch.tensor([4, 0, 2])]
    precomputed = toy.scene_features(model, scenes)[[4, 0, 2]].float()
    assert pixels.shape == precomputed.shape == (3, 64, model.config.vision_config.hidden_size)
    torch.testing.assert_close(pixels, precomputed, atol=2e-2, rtol=1e-2)  # the bank stores fp16


def test_pretraining_script_runs_every_stage(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_toy.py"), "--quick"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("language", "projector", "vision", "instruct"):
        assert f"stage {stage}:" in done.stdout
    assert "held-out quality" in done.stdout and "wrote" in done.stdout
