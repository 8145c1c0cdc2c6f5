"""Readers of the published benchmark files: the split-first layout, both QA schemas, descriptions, and every bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import make_image
from yollava.errors import YollavaError
from yollava.evaluate.answers import judge_choice, judge_yes_no, mentions, refusal
from yollava.evaluate.layout import open_benchmark
from yollava.evaluate.qa_files import QAKind, personalize, read_qa_file
from yollava.methods.description import read_descriptions
from yollava.methods.personalization import description_prefix
from yollava.prompts import RecognitionBank


def published_layout(root: Path, subjects=("bo", "mam", "shiba-gray"), n_train=3, n_test=2) -> Path:
    """A dataset like yollava-data: train/<subject>/<n>.png (+ a negative_example/ subfolder), test/<subject>/<n>.png."""
    for k, subject in enumerate(subjects):
        for i in range(n_train):
            make_image(root / "train" / subject / f"{i}.png", (40 + 60 * k, 30 + 10 * i, 90))
        for i in range(n_test):
            make_image(root / "test" / subject / f"{i}.png", (40 + 60 * k, 200, 30 + 10 * i), shape="square")
    make_image(root / "train" / subjects[0] / "negative_example" / "0a1b.png", (1, 2, 3))
    (root / "train" / subjects[0] / "negative_example" / "scores.json").write_text("[]")
    return root


# our own fixtures in the two published schemas (shapes read from the Yo'LLaVA repository's
# yollava-visual-qa.json and RAP's eval/yollava-text-only-qa.json)
VISUAL = {
    "bo": {
        "./yollava-data/test/bo/0.png": {"question": "What is the primary color of <sks>'s fur?", "options": {"A": "Brown", "B": "Grey"}, "correct_answer": "A"},
        "./yollava-data/test/bo/1.png": {"question": "Is <sks> lying down?", "options": {"A": "Yes", "B": "No"}, "correct_answer": "B"},
    },
    "mam": {"./yollava-data/test/mam/0.png": {"question": "What is <sks> sitting on?", "options": {"A": "A sofa", "B": "The floor"}, "correct_answer": "A"}},
}
TEXT = {
    "bo": {
        "0": {"question": "Is sks a dog or a cat?", "option": {"A": "Dog", "B": "Cat"}, "correct_answer": "A"},
        "1": {"question": "What is sks's breed?", "option": {"A": "Corgi", "B": "Shiba inu"}, "correct_answer": "B"},
        "2": {"question": "Does sks has whiskers?", "option": {"A": "No", "B": "Yes"}, "correct_answer": "B"},
    },
    "mam": {"0": {"question": "Is sks a dog or a cat?", "option": {"A": "Cat", "B": "Dog"}, "correct_answer": "A"}},
}


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_layout_reads_split_first_and_ignores_negative_example_folders(tmp_path):
    data = open_benchmark(published_layout(tmp_path / "yollava-data"))
    assert data.subjects == {"train": ["bo", "mam", "shiba-gray"], "test": ["bo", "mam", "shiba-gray"]}
    assert [Path(p).name for p in data.images("train", "bo")] == ["0.png", "1.png", "2.png"]
    positives, negatives = data.test_split("bo")
    assert len(positives) == 2 and len(negatives) == 4 and all("/test/bo/" not in n for n in negatives)


@pytest.mark.parametrize("build, fragment", [
    (lambda r: None, "no such directory"),
    (lambda r: make_image(r / "bo" / "test" / "0.png", (1, 2, 3)), "subject-first layout"),
    (lambda r: make_image(r / "test" / "0.png", (1, 2, 3)), "images directly in test/"),
    (lambda r: (r / "photos").mkdir(parents=True), "no train/ or test/ folder"),
])
def test_other_layouts_are_refused_with_one_line(tmp_path, build, fragment):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(YollavaError, match=fragment) as info:
        open_benchmark(root)
    assert "\n" not in str(info.value)


def test_a_dataset_left_mid_swap_is_recovered_before_it_is_read(tmp_path):
    """What a `yollava toy generate --overwrite` killed between its two renames leaves: only .<DIR>.old,
    and a staging folder. The reader restores the old version and removes the staging (storage.settle)."""
    root = tmp_path / "data"
    published_layout(tmp_path / ".data.old")
    published_layout(tmp_path / ".data.tmp-deadbeef", subjects=("half",))
    data = open_benchmark(root)
    assert data.root == root and data.subjects["test"] == ["bo", "mam", "shiba-gray"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unknown_subject_and_single_subject(tmp_path):
    data = open_benchmark(published_layout(tmp_path / "d"))
    with pytest.raises(YollavaError, match=r"no test/ghost/ folder \(subjects in test/: bo, mam, shiba-gray\)"):
        data.test_split("ghost")
    alone = open_benchmark(published_layout(tmp_path / "one", subjects=("bo",)))
    with pytest.raises(YollavaError, match="only one subject"):
        alone.test_split("bo")


def test_placeholder_replacement_is_word_exact():
    assert personalize("What is sks's breed?", "<bo>") == "What is <bo>'s breed?"
    assert personalize("What is the primary color of <sks>'s fur?", "<bo>") == "What is the primary color of <bo>'s fur?"
    # a plain str.replace("sks", ...) turns these into "whi<bo>ers" and "<<bo>>"
    assert personalize("Does sks has whiskers?", "<bo>") == "Does <bo> has whiskers?"
    assert personalize("Asks sks about tasks", "<bo>") == "Asks <bo> about tasks"


def test_both_published_schemas_read_into_questions(tmp_path):
    data = open_benchmark(published_layout(tmp_path / "somewhere" / "data"))
    visual = read_qa_file(write(tmp_path / "v.json", VISUAL), data)
    assert visual.kind == QAKind.visual
    first = visual.for_subject("bo")[0]
    # "./yollava-data/test/bo/0.png" resolves by its test/bo/0.png tail, wherever --data is
    assert first.image == str(data.root / "test" / "bo" / "0.png")
    assert first.options == (("A", "Brown"), ("B", "Grey")) and first.correct_text == "Brown"
    assert first.asked("<bo>") == ("What is the primary color of <bo>'s fur?", ["Brown", "Grey"], "Brown")
    text = read_qa_file(write(tmp_path / "t.json", TEXT), data)
    assert text.kind == QAKind.text and [q.key for q in text.for_subject("bo")] == ["0", "1", "2"]
    assert text.for_subject("bo")[1].asked("<bo>")[0] == "What is <bo>'s breed?"
    assert all(q.image is None for q in text.for_subject("bo"))


def test_qa_file_without_the_subject_and_subjects_not_asked(tmp_path):
    data = open_benchmark(published_layout(tmp_path / "d"))
    qa = read_qa_file(write(tmp_path / "v.json", VISUAL), data, subjects=["bo"])
    with pytest.raises(YollavaError, match="no questions about 'shiba-gray'"):
        qa.for_subject("shiba-gray")
    # a subject that is not asked is not resolved: its missing image is no error
    broken = {**VISUAL, "ghost": {"./yollava-data/test/ghost/0.png": VISUAL["mam"]["./yollava-data/test/mam/0.png"]}}
    assert read_qa_file(write(tmp_path / "b.json", broken), data, subjects=["bo"]).questions["ghost"][0].image is None
    with pytest.raises(YollavaError, match=r"entry 'ghost' -> './yollava-data/test/ghost/0.png': image .* does not exist"):
        read_qa_file(tmp_path / "b.json", data, subjects=["ghost"])


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: "{not json", "not valid JSON (line 1"),
    (lambda d: [], "expected an object of subject -> entries"),
    (lambda d: {"bo": []}, "entry 'bo': expected a non-empty object"),
    (lambda d: {"bo": {"0": "Dog"}}, r"entry 'bo' -> '0': expected an object"),
    (lambda d: {"bo": {"0": {"option": {"A": "x", "B": "y"}, "correct_answer": "A"}}}, "'question' must be a non-empty string"),
    (lambda d: {"bo": {"0": {"question": "q", "correct_answer": "A"}}}, "needs exactly one of 'options' / 'option'"),
    (lambda d: {"bo": {"0": {"question": "q", "option": {"A": "x"}, "correct_answer": "A"}}}, "at least two lettered answers"),
    (lambda d: {"bo": {"0": {"question": "q", "option": {"A": "x", "C": "y"}, "correct_answer": "A"}}}, "letters must be A, B in order"),
    (lambda d: {"bo": {"0": {"question": "q", "option": {"A": "x", "B": ""}, "correct_answer": "A"}}}, "non-empty string"),
    (lambda d: {"bo": {"0": {"question": "q", "option": {"A": "Dog", "B": "dog"}, "correct_answer": "A"}}}, "same text"),
    (lambda d: {"bo": {"0": {"question": "q", "option": {"A": "x", "B": "y"}, "correct_answer": "C"}}}, "'correct_answer' must be one of A, B, got 'C'"),
    (lambda d: {"bo": {**TEXT["bo"], **VISUAL["bo"]}}, "mixes image-path entries"),
    (lambda d: {"bo": {"./data/bo/0.png": VISUAL["bo"]["./yollava-data/test/bo/0.png"]}}, "does not end in <split>/<subject>/<file>"),
])
def test_malformed_qa_files_name_the_file_and_entry(tmp_path, mutate, fragment):
    data = open_benchmark(published_layout(tmp_path / "d"))
    path = write(tmp_path / "bad.json", mutate(None))
    with pytest.raises(YollavaError, match=re.escape(fragment)) as info:
        read_qa_file(path, data)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_qa_file_of_the_other_kind_is_refused_with_the_right_task(tmp_path):
    data = open_benchmark(published_layout(tmp_path / "d"))
    with pytest.raises(YollavaError, match="is a text-only QA file .* --task text-qa"):
        read_qa_file(write(tmp_path / "t.json", TEXT), data, expect=QAKind.visual)


def test_descriptions_file_and_prefixes(tmp_path):
    path = write(tmp_path / "d.json", {"bo": "<sks> is a charming Shiba Inu", "mam": "a small grey cat"})
    texts = read_descriptions(path)
    # a description naming the subject keeps its wording; another is put as "<name> is ..."
    assert description_prefix(texts["bo"], "<bo>") == "<bo> is a charming Shiba Inu."
    assert description_prefix(texts["mam"], "<mam>") == "<mam> is a small grey cat."
    assert description_prefix("A small grey cat.", "<x00>") == "<x00> is a small grey cat."
    for bad, fragment in (("[1]", "expected an object"), ('{"bo": ""}', "entry 'bo' must be a non-empty string"), ("{", "not valid JSON")):
        with pytest.raises(YollavaError, match=fragment):
            read_descriptions(write(tmp_path / "bad.json", bad))
    with pytest.raises(YollavaError, match="no such file"):
        read_descriptions(tmp_path / "missing.json")


@pytest.mark.parametrize("answer, verdict", [
    ("Yes", "yes"), ("Yes.", "yes"), ("yes, <bo> is in this photo.", "yes"), ("No", "no"), ("No.", "no"),
    ("No, <bo> is not in this photo.", "no"), ("No, there is none.", "no"), ("No, I don't see <bo>.", "no"),
    # what the shipped toy model said in `yollava demo`: neither yes nor no
    ("Yes, <ozzy> is not in this photo.", "other"), ("No, <bo> is in this photo.", "other"),
    ("There is a dog.", "other"), ("", "other"), ("Yes and no.", "other"), ("I think yes", "other"),
])
def test_yes_no_answers_are_judged_whole(answer, verdict):
    assert judge_yes_no(answer) == verdict


@pytest.mark.parametrize("answer, kind", [
    # PVIT's two refusals (issue 17), in our own wordings: the named subject is not in the scene ...
    ("Sorry, <bo> is not in the image.", "absent"), ("<bo> does not appear in this photo.", "absent"),
    ("I can't find <bo> anywhere in the picture.", "absent"), ("<bo> is missing from this scene.", "absent"),
    ("There's no <bo> in this photo.", "absent"), ("No sign of <bo> in this image.", "absent"),
    ("I cannot see <bo> here.", "absent"), ("The photo lacks <bo>.", "absent"),
    # ... and the name was never introduced
    ("I don't know who <bo> is.", "unknown"), ("Sorry, I do not know what <bo> looks like.", "unknown"),
    ("I'm not familiar with <bo>.", "unknown"), ("I can't recognize <bo> from a name alone.", "unknown"),
    ("Who <bo> is remains unknown to me.", "unknown"), ("I have no information about <bo>.", "unknown"),
    # not refusals
    ("Yes, <bo> is not in the image.", None), ("<bo> is in the image.", None), ("There is a dog.", None), ("Red.", None),
    ("<bo> is wearing a blue hat.", None), ("", None),
])
def test_refusals_are_recognised_and_judged_no(answer, kind):
    assert refusal(answer) == kind
    if kind is not None:
        assert judge_yes_no(answer) == "no"
    # an affirmative sentence that mentions the picture is no refusal, and "No, <bo> is in ..." stays incoherent
    assert judge_yes_no("No, <bo> is in this photo.") == "other"


def test_every_template_answer_is_judged_its_own_polarity():
    bank = RecognitionBank.load()
    assert all(judge_yes_no(a.replace("{name}", "<bo>")) == "yes" for a in bank.positive_answers)
    assert all(judge_yes_no(a.replace("{name}", "<bo>")) == "no" for a in bank.negative_answers)


@pytest.mark.parametrize("answer, picked", [
    ("A", "A"), ("B.", "B"), ("(B)", "B"), ("B)", "B"), ("B. Grey", "B"), ("grey", "B"), ("Brown.", "A"),
    ("B. Brown", None), ("C", None), ("The answer is A.", None), ("It is brown and grey", None), ("", None),
])
def test_multiple_choice_answers_are_judged_whole(answer, picked):
    assert judge_choice(answer, [("A", "Brown"), ("B", "Grey")]) == picked


def test_caption_mentions():
    assert mentions("A photo of <bo> on a sofa.", "<bo>") and mentions("<BO> sleeping", "<bo>")
    assert not mentions("A dog named bo.", "<bo>")
