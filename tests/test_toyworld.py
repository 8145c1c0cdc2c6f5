"""Toy world: determinism, scene graphs, lookalikes, pool exclusion, benchmark layout and QA balance."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yollava.errors import YollavaError
from yollava.toyworld import benchmark as bench
from yollava.toyworld.benchmark import generate_benchmark, plan_benchmark
from yollava.toyworld.render import render_scene
from yollava.toyworld.world import (
    ATTRIBUTES,
    FINE_ATTRIBUTES,
    Scene,
    Subject,
    caption,
    describe_subject,
    item_rng,
    sample_scene,
    sample_subject,
    split_words,
    variant,
    vocabulary,
)

TINY = {"n_concepts": 3, "seed": 7, "pool_size": 50, "progress": False}


def _tree_digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _subject(root: Path, name: str) -> dict:
    return json.loads((root / bench.SUBJECTS_DIR / name / bench.SUBJECT_FILE).read_text())


def _concept_subjects(root: Path, names: list[str]) -> dict[str, Subject]:
    return {n: Subject.from_dict(_subject(root, n)) for n in names}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_benchmark(tmp_path_factory.mktemp("toy") / "bench", **TINY)


@pytest.fixture(scope="module")
def summary(tiny) -> dict:
    return json.loads((tiny / bench.BENCHMARK_FILE).read_text())


def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    again = generate_benchmark(tmp_path / "again", **TINY)
    assert _tree_digest(again) == _tree_digest(tiny)
    other = generate_benchmark(tmp_path / "other", **{**TINY, "seed": 8})
    assert _tree_digest(other) != _tree_digest(tiny)


def test_layout_and_counts(tiny, summary):
    """The published layout, split first: train/<name>/, test/<name>/, QA files at the top."""
    assert summary["concepts"] and len(summary["concepts"]) == 3
    assert summary["counts"]["concept_images"] == 60 and summary["counts"]["pool_images"] == 50
    assert summary["counts"]["qa_text"] == 3 * 7 and summary["counts"]["qa_visual"] == 3 * 10
    assert sorted(p.name for p in (tiny / "test").iterdir()) == sorted(summary["concepts"])
    for name in summary["concepts"]:
        assert re.fullmatch(r"[a-z0-9_-]+", name)
        assert not (tiny / name).exists()
        for split in ("train", "test"):
            images = sorted((tiny / split / name).iterdir())
            assert len(images) == 10 and all(p.suffix == ".png" for p in images)
        for file_name in (bench.SUBJECT_FILE, bench.SCENES_FILE):
            assert (tiny / bench.SUBJECTS_DIR / name / file_name).is_file()
    for file_name in (bench.QA_TEXT_FILE, bench.QA_VISUAL_FILE, bench.DESCRIPTIONS):
        assert (tiny / file_name).is_file()
    descriptions = json.loads((tiny / bench.DESCRIPTIONS).read_text())
    assert descriptions == {n: describe_subject(Subject.from_dict(_subject(tiny, n))) for n in summary["concepts"]}
    pool = sorted((tiny / "pool").glob("*.png"))
    assert len(pool) == 50
    with Image.open(pool[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert len(_read_jsonl(tiny / "pool" / bench.POOL_INDEX_FILE)) == 50
    assert not list(tiny.parent.glob("*.tmp-*"))


def test_scene_graphs_match_attributes_and_pixels(tiny, summary):
    for name in summary["concepts"]:
        subject = _subject(tiny, name)
        records = _read_jsonl(tiny / bench.SUBJECTS_DIR / name / bench.SCENES_FILE)
        assert len(records) == 20
        for record in records:
            main = record["scene"]["subjects"][0]
            assert {k: main[k] for k in ATTRIBUTES} == {k: subject[k] for k in ATTRIBUTES}
        scene = Scene.from_dict(records[-1]["scene"])
        with Image.open(tiny / records[-1]["path"]) as image:
            assert np.array_equal(np.asarray(image), np.asarray(render_scene(scene)))
    for record in _read_jsonl(tiny / "pool" / bench.POOL_INDEX_FILE)[:10]:
        assert record["attributes"] == {k: v for k, v in record["scene"]["subjects"][0].items() if k != "box"}
        for placed in record["scene"]["subjects"]:
            x0, y0, x1, y1 = placed["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_any_image_regenerates_from_seed_and_index(tiny, summary):
    plan = plan_benchmark(3, 7, 50)
    with Image.open(tiny / "pool" / "00042.png") as image:
        assert np.array_equal(np.asarray(image), np.asarray(render_scene(plan.pool_item(42).scene)))
    name = summary["concepts"][1]
    with Image.open(tiny / "test" / name / "004.png") as image:
        assert np.array_equal(np.asarray(image), np.asarray(render_scene(plan.concept_scene(name, "test", 4))))


def test_lookalikes_differ_in_exactly_one_fine_attribute(tiny, summary):
    assert summary["lookalikes"], "the benchmark must contain concept lookalikes"
    for link in summary["lookalikes"]:
        a = Subject.from_dict(_subject(tiny, link["concept"]))
        b = Subject.from_dict(_subject(tiny, link["lookalike_of"]))
        assert a.differences(b) == [link["differs_in"]] and link["differs_in"] in FINE_ATTRIBUTES
    concepts = _concept_subjects(tiny, summary["concepts"])
    planted = [r for r in _read_jsonl(tiny / "pool" / bench.POOL_INDEX_FILE) if r["lookalike_of"]]
    assert planted
    for record in planted:
        planted_subject = Subject.from_dict(record["attributes"])
        assert concepts[record["lookalike_of"]].differences(planted_subject) == [record["differs_in"]]


def test_default_benchmark_has_lookalikes_across_fine_attributes():
    plan = plan_benchmark(20, 0, 200)
    kinds = Counter(c.differs_in for c in plan.concepts if c.lookalike_of)
    assert sum(kinds.values()) == 6 and set(kinds) == set(FINE_ATTRIBUTES)
    assert len({c.subject.family for c in plan.concepts}) == 6
    assert len(plan.identities) == 20


def test_pool_and_distractors_never_show_a_concept_identity(tiny, summary):
    identities = set(_concept_subjects(tiny, summary["concepts"]).values())
    for record in _read_jsonl(tiny / "pool" / bench.POOL_INDEX_FILE):
        assert not {Subject.from_dict(s) for s in record["scene"]["subjects"]} & identities
    for name in summary["concepts"]:
        for record in _read_jsonl(tiny / bench.SUBJECTS_DIR / name / bench.SCENES_FILE):
            assert not {Subject.from_dict(s) for s in record["scene"]["subjects"][1:]} & identities


def test_qa_files_in_the_published_schemas_balanced_and_in_vocabulary(tiny, summary):
    """Visual QA: subject -> image path -> {question, options, correct_answer} with <sks>; text QA:
    subject -> number -> {question, option, correct_answer} with a bare sks (the two published files);
    correct letters balanced per concept and both read back by yollava's reader."""
    from yollava.evaluate.layout import open_benchmark
    from yollava.evaluate.qa_files import QAKind, read_qa_file

    words = set(vocabulary())
    visual = json.loads((tiny / bench.QA_VISUAL_FILE).read_text())
    text = json.loads((tiny / bench.QA_TEXT_FILE).read_text())
    assert set(visual) == set(text) == set(summary["concepts"])
    for name in summary["concepts"]:
        assert list(visual[name]) == [f"test/{name}/{i:03d}.png" for i in range(10)]
        assert list(text[name]) == [str(i) for i in range(7)]
        for entries, key, placeholder in ((visual[name], "options", "<sks>"), (text[name], "option", "sks")):
            letters = Counter()
            for entry in entries.values():
                assert set(entry) == {"question", key, "correct_answer"}
                assert list(entry[key]) == ["A", "B"] and len(set(entry[key].values())) == 2
                assert placeholder in entry["question"] and (placeholder == "<sks>") == ("<sks>" in entry["question"])
                assert set(split_words(entry["question"].replace(placeholder, ""))) <= words
                assert set(entry[key].values()) <= words
                letters[entry["correct_answer"]] += 1
            assert abs(letters["A"] - letters["B"]) <= 1, (name, letters)
    subject = _subject(tiny, summary["concepts"][0])
    for entry, attribute in zip(text[summary["concepts"][0]].values(), bench.TEXT_QUESTIONS):
        assert entry["option"][entry["correct_answer"]] == subject[attribute]
    data = open_benchmark(tiny)
    assert read_qa_file(tiny / bench.QA_VISUAL_FILE, data).kind == QAKind.visual
    assert read_qa_file(tiny / bench.QA_TEXT_FILE, data).kind == QAKind.text


def test_text_qa_uses_lookalike_value_as_distractor(tiny, summary):
    link = summary["lookalikes"][0]
    partner = _subject(tiny, link["lookalike_of"])
    text = json.loads((tiny / bench.QA_TEXT_FILE).read_text())[link["concept"]]
    attribute = list(bench.TEXT_QUESTIONS).index(link["differs_in"])
    assert partner[link["differs_in"]] in text[str(attribute)]["option"].values()


def test_captions_and_descriptions_use_only_vocabulary_words():
    words = set(vocabulary())
    assert len(words) < 100
    for i in range(300):
        rng = item_rng(0, "vocab-test", i)
        scene = sample_scene(rng, sample_subject(rng), n_distractors=rng.randint(0, 3))
        assert set(split_words(caption(scene))) <= words
        assert caption(scene).startswith(describe_subject(scene.main.subject))


def test_variant_changes_exactly_one_attribute():
    rng = item_rng(0, "variant-test", 0)
    for _ in range(200):
        subject = sample_subject(rng, with_accessory=True)
        for attribute in ATTRIBUTES:
            assert subject.differences(variant(subject, attribute, rng)) == [attribute]
    with pytest.raises(YollavaError):
        variant(Subject("pet", "round", "red", "plain", "none", None, "small"), "accessory_color", rng)


def test_image_size_is_a_parameter_and_subjects_are_validated(tmp_path):
    rng = item_rng(0, "size-test", 0)
    scene = sample_scene(rng, sample_subject(rng), image_size=96, n_distractors=3)
    assert render_scene(scene).size == (96, 96)
    with pytest.raises(YollavaError):
        sample_scene(rng, sample_subject(rng), image_size=16)
    with pytest.raises(YollavaError):
        Subject("dragon", "round", "red", "plain", "none", None, "small")
    with pytest.raises(YollavaError):
        Subject("pet", "round", "red", "plain", "hat", "red", "small")


def test_existing_output_is_refused_and_failures_leave_nothing(tiny, tmp_path, monkeypatch):
    with pytest.raises(YollavaError, match="already exists"):
        generate_benchmark(tiny, **TINY)
    calls = {"n": 0}
    real = bench._save_png

    def failing(scene, path):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        real(scene, path)

    monkeypatch.setattr(bench, "_save_png", failing)
    with pytest.raises(RuntimeError):
        generate_benchmark(tmp_path / "broken", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_benchmark_script_writes_every_report_applies_overrides_and_resumes(tiny, tmp_path):
    """Mechanics of scripts/bench_toyworld.py on the tiny random model (its numbers mean nothing here)."""
    out = tmp_path / "bench"
    command = [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "bench_toyworld.py"), "--data", str(tiny),
               "--model", "tiny", "--concepts", "1", "--epochs", "1", "--negatives", "8", "--set", "train.lr=3e-4", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    first = json.loads((tiny / bench.BENCHMARK_FILE).read_text())["concepts"][0]
    assert [r["concept"] for r in report["concepts"]] == [first]
    row = report["concepts"][0]
    for key in ("trained", "vanilla", "described"):
        assert 0.0 <= row[key]["weighted"] <= 1.0
    assert report["summary"]["concepts"] == 1 and row["train_cpu_s"] > 0
    assert "train.lr=3e-4" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0
    (config,) = (out / "work" / "runs" / first).glob("*/config.yaml")
    assert "lr: 0.0003" in config.read_text()
    # --resume keeps finished concepts (an interrupted benchmark goes on where it stopped)
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "kept from" in again.stderr, again.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["concepts"] == report["concepts"]
    assert len(list((out / "work" / "runs" / first).glob("*/config.yaml"))) == 1  # not trained again


def test_speed_bench_trains_both_recipes_end_to_end_on_a_toy_world_concept(tiny, tmp_path):
    """scripts/bench_train.py --concept: yollava and the reference loop train the same concept and are scored on its test split."""
    root = Path(__file__).resolve().parent.parent
    first = json.loads((tiny / bench.BENCHMARK_FILE).read_text())["concepts"][0]
    command = [sys.executable, str(root / "scripts" / "bench_train.py"), "--model", "tiny", "--steps", "1", "--batch-size", "2", "--images", "2",
               "--concept", first, "--data", str(tiny), "--set", "train.epochs=1", "--json", str(tmp_path / "bench.json")]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    row, = json.loads((tmp_path / "bench.json").read_text())["concepts"]["concepts"]
    assert row["concept"] == first and row["reference"]["epochs"] == 1 and row["yollava"]["epochs"] == 1
    assert row["ratio_cpu"] > 0 and all(0.0 <= row["test_weighted"][k] <= 1.0 for k in ("yollava", "reference"))


def test_pool_images_are_photos_of_their_main_subject_and_concept_photos_are_not():
    """Every pool distractor is of a smaller size class than the main subject (so mining by image finds
    what the main subject is); a concept's own photos keep distractors of any size."""
    from yollava.toyworld.world import SIZES

    plan = plan_benchmark(n_concepts=3, seed=7, pool_size=400)
    rank = SIZES.index
    pool_others = 0
    for index in range(plan.pool_size):
        main, *others = plan.pool_item(index).scene.subjects
        assert all(rank(o.subject.size) < rank(main.subject.size) for o in others), index
        pool_others += len(others)
        if main.subject.size == "small":
            assert not others
    assert pool_others > 200  # distractors are still drawn
    larger = sum(rank(o.subject.size) >= rank(main.subject.size)
                 for c in plan.concepts for i in range(plan.n_train)
                 for main, *rest in [plan.concept_scene(c.name, "train", i).subjects] for o in rest)
    assert larger > 0
