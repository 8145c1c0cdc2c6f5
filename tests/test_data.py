"""The concept training set: recipes, conversation data, HF dataset storage, reuse, nothing half-written."""

from __future__ import annotations

import pytest

from conftest import make_image
from yollava.config import Category, Recipe, load_config
from yollava.data import (
    DATA_FEATURES,
    ConversationBank,
    ImageSets,
    NegativeSource,
    build_training_set,
    gather_images,
    load_training_set,
    resolve_recipe,
    save_training_set,
)
from yollava.errors import YollavaError


def data_config(**values):
    return load_config(overrides=[f"data.{k}={v}" for k, v in values.items()]).data


class FakeAnswerer:
    """Stands in for the base model (the tiny model's answers are random text); counts the questions asked."""

    model_id = "fake"

    def __init__(self, text="This subject is a red ball. The subject has no accessory.", person_votes=(False,)):
        self.text = text
        self.person_votes = person_votes
        self.n = 0
        self.asked_yes: list[tuple[str, list[str]]] = []

    def answer(self, image, questions):
        self.n += len(questions)
        return [self.text] * len(questions)

    def yes(self, question, images):
        self.asked_yes.append((question, list(images)))
        return [self.person_votes[i % len(self.person_votes)] for i in range(len(images))]


def test_conversation_bank_has_ten_questions_per_category():
    bank = ConversationBank.load()
    assert len(bank.questions["person"]) == 10 and len(bank.questions["other"]) == 10
    assert all("{name}" in q for qs in bank.questions.values() for q in qs)
    assert bank.personalize("Riley has short hair.", "person", "<bo>") == "<bo> has short hair."
    assert bank.personalize("This subject is red; the subject is round.", "other", "<bo>") == "<bo> is red; <bo> is round."


def test_conversation_samples_are_text_only_and_name_the_identifier(tiny_base, image_dirs, tmp_path, monkeypatch):
    pos, neg = image_dirs
    calls = FakeAnswerer()
    images = gather_images("bo", pos, tmp_path, NegativeSource(folder=str(neg)), data_config())
    samples, info = build_training_set(calls, "bo", images, tmp_path, data_config(recipe="recognition+conversation", category="other"))
    conversation = [s for s in samples if s.kind == "conversation"]
    assert calls.n == len(conversation) == 4 * 10
    assert all(s.image is None and "<bo>" in s.question for s in conversation)
    assert conversation[0].answer == "<bo> is a red ball. <bo> has no accessory."
    assert all("this subject" not in s.question.lower() for s in conversation)
    assert info["recipe"] == "recognition+conversation" and info["category"] == "other"
    assert info["counts"] == {"conversation": 40, "recognition_negative_easy": 8, "recognition_positive": 8}


def test_stored_dataset_schema_and_reuse(tiny_base, image_dirs, tmp_path, monkeypatch):
    pos, neg = image_dirs
    calls = FakeAnswerer("Riley has brown hair.")
    config = data_config(category="person")
    images = gather_images("bo", pos, tmp_path, NegativeSource(folder=str(neg)), config)
    samples, _ = build_training_set(calls, "bo", images, tmp_path, config)
    from datasets import load_from_disk

    dataset = load_from_disk(str(tmp_path / "bo" / "data"))  # the path the docs give
    assert list(dataset.features) == list(DATA_FEATURES)
    assert set(dataset["kind"]) == {"recognition_positive", "recognition_negative_easy", "conversation"}
    assert all((row["image"] is None) == (row["kind"] == "conversation") for row in dataset)
    assert len(dataset) == len(samples)
    assert load_training_set(tmp_path / "bo" / "data")[0] == samples

    first = calls.n
    again, _ = build_training_set(calls, "bo", images, tmp_path, config)
    assert calls.n == first and again == samples  # reused: nothing regenerated
    make_image(pos / "p9.png", (255, 0, 0))
    changed = gather_images("bo", pos, tmp_path, NegativeSource(folder=str(neg)), config)
    rebuilt, _ = build_training_set(calls, "bo", changed, tmp_path, config)
    assert calls.n == first + 50 and len(rebuilt) > len(samples)
    other_base = FakeAnswerer("Riley has brown hair.")
    other_base.model_id = "another-base"
    build_training_set(other_base, "bo", changed, tmp_path, config)
    assert other_base.n == 50  # another base's answers are not reused


def test_crash_while_saving_keeps_the_old_training_set(tiny_base, image_dirs, tmp_path, monkeypatch):
    pos, neg = image_dirs
    images = gather_images("bo", pos, tmp_path, NegativeSource(folder=str(neg)), data_config())
    samples, _ = build_training_set(None, "bo", images, tmp_path, data_config(recipe="recognition"))
    import datasets

    def broken(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", broken)
    with pytest.raises(KeyboardInterrupt):
        save_training_set(samples[:3], tmp_path / "bo" / "data", {"key": "new"})
    kept, info = load_training_set(tmp_path / "bo" / "data")
    assert kept == samples and info["key"] != "new"
    assert [p.name for p in (tmp_path / "bo").iterdir()] == ["data"]  # no temp folder left behind


def test_recipes_follow_the_available_negatives():
    with_hard = ImageSets(["p.png"], ["h.png"], ["e.png"])
    without = ImageSets(["p.png"], [], ["e.png"])
    assert resolve_recipe(Recipe.auto, with_hard) == Recipe.full
    assert resolve_recipe(Recipe.auto, without) == Recipe.recognition_conversation
    with pytest.raises(YollavaError, match="needs retrieved hard negatives"):
        resolve_recipe(Recipe.full, without)


def test_full_recipe_with_mined_hard_negatives(tiny_base, image_dirs, tmp_path, monkeypatch):
    """Mining from a pool (tiny embedder) feeds hard negatives, with their original source, into the set."""
    pos, _ = image_dirs
    import numpy as np
    from PIL import Image

    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # noise pictures: distinct even under the random tiny embedder
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(pool / f"c{i}.png")
    source = NegativeSource(pool=str(pool), per_image=3, easy=5, embedder="tiny")
    config = data_config(category="other")
    images = gather_images("bo", pos, tmp_path / "store", source, config)
    assert len(images.negatives_hard) == 12 and len(images.negatives_easy) == 5
    samples, info = build_training_set(FakeAnswerer(), "bo", images, tmp_path / "store", config)
    assert info["recipe"] == "full"
    hard = [s for s in samples if s.kind == "recognition_negative_hard"]
    assert len(hard) == 12 and all(s.source.startswith(str(pool)) and s.image.startswith(str(tmp_path / "store")) for s in hard)
    # a later build without retrieval options reuses the stored negatives
    again = gather_images("bo", pos, tmp_path / "store", NegativeSource(), config)
    assert again.negatives_hard == images.negatives_hard


@pytest.mark.parametrize("votes, expected", [((True,), "person"), ((False,), "other"), ((True, False), "other"), ((True, True, False), "person")])
def test_category_auto_is_the_majority_of_the_base_models_verdicts(image_dirs, tmp_path, votes, expected):
    pos, neg = image_dirs
    answerer = FakeAnswerer(person_votes=votes)
    images = gather_images("bo", pos, tmp_path, NegativeSource(folder=str(neg)), data_config())
    samples, info = build_training_set(answerer, "bo", images, tmp_path, data_config(category=Category.auto.value))
    assert info["category"] == expected
    assert answerer.asked_yes == [(ConversationBank.load().category_question, images.positives)]
    questions = {s.question for s in samples if s.kind == "conversation"}
    assert questions == {q.replace("{name}", "<bo>") for q in ConversationBank.load().questions[expected]}


def test_the_base_answers_with_the_training_feature_cache(tiny_base, image_dirs):
    """The base's answers and verdicts go through the one feature cache training reads next."""
    from yollava.evaluate import YesNoScorer
    from yollava.forward import FeatureCache
    from yollava.prepare import BaseAnswerer
    from yollava.prompts import ChatFormat

    pos, _ = image_dirs
    features = FeatureCache(tiny_base)
    fmt = ChatFormat.load("llava_v1")
    answerer = BaseAnswerer(tiny_base, fmt, features, max_new_tokens=4)
    question = ConversationBank.load().category_question
    images = sorted(str(p) for p in pos.iterdir())
    verdicts = answerer.yes(question, images)
    expected = [y > n for y, n in YesNoScorer(tiny_base, fmt, "", question, FeatureCache(tiny_base)).logprobs(images)]
    assert verdicts == expected
    answers = answerer.answer(images[0], ["What colour is this subject?", "What shape is this subject?"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert features.computed == len(images)  # each photo through the tower once
