"""The pretrained toy LLaVA: loads as transformers' LLaVA, its tokenizer covers every template and world word, and it answers held-out scenes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from yollava.chat import greedy_generate
from yollava.concept import attach, init_concept
from yollava.config import ConceptConfig, ModelConfig
from yollava.evaluate import YesNoScorer
from yollava.forward import FeatureCache, ImageRef
from yollava.models import load_base
from yollava.prompts import ChatFormat, Turn, encode, render
from yollava.toyworld import toy_llava
from yollava.toyworld.pretrain.answers import attribute_answer, attribute_question
from yollava.toyworld.pretrain.mix import DataMix
from yollava.toyworld.pretrain.scenes import draw_scene, excluded_identities
from yollava.toyworld.pretrain.vocabulary import template_words
from yollava.toyworld.render import render_scene
from yollava.toyworld.world import describe_subject, vocabulary

pytestmark = pytest.mark.skipif(
    not toy_llava.toy_llava_available(), reason="toy LLaVA weights not built (scripts/pretrain_toy.py)"
)
# Held-out scenes of the smoke test: a stream neither pretraining nor the shipped quality report used.
SMOKE_STREAM = "llava-test-smoke"
N_SCENES = 16


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return load_base(ModelConfig(name="toy"))


@pytest.fixture(scope="module")
def fmt():
    return ChatFormat.load("llava_v1")


def _draw(folder: Path, stream: str, n_distractors: int | None) -> list[tuple[str, object]]:
    """(png path, scene graph) of held-out scenes; every concept identity of benchmark seed 0 excluded."""
    exclude = excluded_identities()
    out = []
    for i in range(N_SCENES):
        scene = draw_scene(0, stream, i, 64, exclude, n_distractors)
        path = folder / f"{i:02d}.png"
        render_scene(scene).save(path)
        out.append((str(path), scene))
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[tuple[str, object]]:
    """Scenes with 0-3 distractors."""
    return _draw(tmp_path_factory.mktemp("toy_scenes"), SMOKE_STREAM, None)


@pytest.fixture(scope="module")
def single_scenes(tmp_path_factory) -> list[tuple[str, object]]:
    """Scenes of one subject, where "this subject" is unambiguous."""
    return _draw(tmp_path_factory.mktemp("toy_single"), f"{SMOKE_STREAM}/single", 0)


def test_loads_as_transformers_llava(base):
    assert isinstance(base.model, LlavaForConditionalGeneration)
    assert base.model_id == "toy"
    assert not any(p.requires_grad for p in base.model.parameters())
    assert base.num_image_tokens == (64 // 8) ** 2
    assert base.base_rows >= base.base_tokenizer_size  # padded rows, never resized


# What loading the shipped model must not pull in: the renderer, the benchmark planner, the scene
# generator, anything of pretraining (data mix, stages, circuit) and the modules they replaced.
BUILD_ONLY_MODULES = ("yollava.toyworld.render", "yollava.toyworld.benchmark", "yollava.toyworld.world", "yollava.toyworld.pretrain",
                      "yollava.toyworld.llava", "yollava.toyworld.compiled")


def test_loading_the_toy_model_imports_nothing_of_its_building():
    code = (
        "import json, sys\n"
        "from yollava.config import ModelConfig\n"
        "from yollava.models import load_base\n"
        "base = load_base(ModelConfig(name='toy'))\n"
        "print(json.dumps({'model_id': base.model_id, 'modules': sorted(m for m in sys.modules if m.startswith('yollava'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["model_id"] == "toy" and "yollava.toyworld.toy_llava" in loaded["modules"]
    pulled = [m for m in loaded["modules"] if m.startswith(BUILD_ONLY_MODULES)]
    assert not pulled, pulled


def test_tokenizer_covers_templates_and_world(base):
    unk = base.tokenizer.unk_token_id
    words = sorted(template_words() | set(vocabulary()))
    ids = base.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    missing = [w for w, i in zip(words, ids) if i == unk]
    assert len(ids) == len(words) and not missing, missing


def test_special_tokens_and_offsets(base):
    tok = base.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert tok.convert_tokens_to_ids("<image>") == base.image_token_id
    encoded = tok("Yes, Riley's hat.", return_offsets_mapping=True)
    assert encoded["input_ids"][0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(encoded["input_ids"]) == ["<s>", "Yes", ",", "Riley", "'s", "hat", "."]
    assert tok.decode(encoded["input_ids"], skip_special_tokens=True) == "Yes, Riley's hat."
    assert "token_type_ids" not in encoded


def test_concept_tokens_and_yes_no_scoring(fmt, base):
    params = init_concept(base, "bo", ConceptConfig())
    ids = attach(base, params)
    assert len(ids) == 17 and min(ids) >= base.base_tokenizer_size
    soft = base.tokenizer(params.tokens.soft_prompt, add_special_tokens=False)["input_ids"]
    assert soft == [ids[0], base.tokenizer.convert_tokens_to_ids("is"), *ids[1:], base.tokenizer.convert_tokens_to_ids(".")]
    scorer = YesNoScorer(base, fmt, params.tokens.soft_prompt, "Is <bo> in this photo?", FeatureCache(base))
    assert base.tokenizer.convert_ids_to_tokens([scorer.yes_id, scorer.no_id]) == ["Yes", "No"]


def _presence(base, fmt, scenes, introduce: bool) -> tuple[float, float]:
    """Accuracy and yes-rate of yes/no questions about the main subject (even) or a one-fine-attribute lookalike (odd)."""
    rng = random.Random(0)
    cache = FeatureCache(base)
    mix = DataMix([s for _, s in scenes], excluded_identities())
    predictions, truth = [], []
    for i, (path, scene) in enumerate(scenes):
        positive = i % 2 == 0
        subject = scene.main.subject if positive else mix.negative(scene, rng, "fine")[0]
        if introduce:
            prefix, question = f"<x05> is {describe_subject(subject)}.", "Can you see if <x05> is in this photo? Answer with a single word or phrase."
        else:
            prefix, question = "", f"Is there {describe_subject(subject)} in this photo?"
        (lp_yes, lp_no), = YesNoScorer(base, fmt, prefix, question, cache).logprobs([path])
        predictions.append(lp_yes > lp_no)
        truth.append(positive)
    accuracy = sum(p == t for p, t in zip(predictions, truth)) / len(truth)
    return accuracy, sum(predictions) / len(predictions)


def test_presence_of_described_subject(base, fmt, scenes):
    accuracy, yes_rate = _presence(base, fmt, scenes, introduce=False)
    assert accuracy >= 0.75 and 0.25 <= yes_rate <= 0.75, (accuracy, yes_rate)


def test_subject_introduced_by_description(base, fmt, scenes):
    accuracy, yes_rate = _presence(base, fmt, scenes, introduce=True)
    assert accuracy >= 0.75 and 0.25 <= yes_rate <= 0.75, (accuracy, yes_rate)


def test_attribute_answers_by_generation(base, fmt, single_scenes):
    cache = FeatureCache(base)
    correct = 0
    for i, (path, scene) in enumerate(single_scenes):
        attribute = ("color", "family", "pattern", "shape")[i % 4]
        question = attribute_question(attribute, "this subject", scene.main.subject)
        ids = encode(base.tokenizer, render(fmt, [Turn(question, None, images=1)], base.tokenizer.eos_token), base.image_token_id, base.num_image_tokens).input_ids
        answer = greedy_generate(base, ids, [ImageRef(path)], cache, max_new_tokens=4)
        correct += answer == attribute_answer(scene.main.subject, attribute)
    assert correct / len(single_scenes) >= 0.8, correct
