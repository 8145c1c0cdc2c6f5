"""The training recipe: samples, balance, run outputs, best epoch, resume after a crash, nothing lost."""

from __future__ import annotations

import json

import pytest
import torch

import yollava.train as train_module
from yollava.config import LrSchedule, load_config
from yollava.data import ImageSets, load_text_samples, positive_repeats, recognition_samples
from yollava.errors import YollavaError
from yollava.models import build_tiny_base
from yollava.prompts import RecognitionBank
from yollava.storage import CONCEPT_JSON, CONCEPT_WEIGHTS, RUN_CONFIG, RUN_DONE, RUN_METRICS, load_tensors
from yollava.train import train_concept


def test_positives_are_repeated_to_balance_the_classes():
    cfg = load_config().data
    images = ImageSets([f"p{i}.png" for i in range(5)], [], [f"n{i}.png" for i in range(200)])
    samples = recognition_samples(images, "<bo>", RecognitionBank.load(), cfg)
    kinds = [s.kind for s in samples]
    assert kinds.count("recognition_positive") == 200 and kinds.count("recognition_negative_easy") == 200
    assert positive_repeats(5, 200, cfg) == 40
    positives = [s for s in samples if s.kind == "recognition_positive"]
    assert len({s.question for s in positives}) > 20  # many phrasings, not one repeated
    assert all(s.answer.startswith("Yes") and "<bo>" in s.question for s in positives)
    assert all(s.answer.startswith("No") for s in samples if s.kind != "recognition_positive")
    assert samples == recognition_samples(images, "<bo>", RecognitionBank.load(), cfg)  # seeded


def test_text_only_samples_are_loaded_without_images(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text('{"question": "What colour is {name}?", "answer": "{name} is red."}\n{"question": "Size?", "answer": "Small."}\n')
    samples = load_text_samples(path, "<bo>")
    assert [s.image for s in samples] == [None, None]
    assert samples[0].question == "What colour is <bo>?" and samples[0].answer == "<bo> is red."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(YollavaError, match="lacks 'question' or 'answer'"):
        load_text_samples(bad, "<bo>")


def test_run_writes_config_metrics_and_concept(tiny_base, tiny_config, image_dirs, tmp_path):
    pos, neg = image_dirs
    conv = tmp_path / "conv.jsonl"
    conv.write_text('{"question": "What colour is {name}?", "answer": "{name} is red."}\n')
    tiny_config.data.text_samples = str(conv)
    result = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "store", base=tiny_base)
    assert (result.run_dir / RUN_CONFIG).read_text().count("epochs: 2") == 1
    assert (result.run_dir / RUN_DONE).exists()
    assert (result.run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (result.run_dir / RUN_METRICS).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(0.0 <= line["weighted"] <= 1.0 and line["n_positive"] == 4 and line["n_negative"] == 8 for line in lines)
    best = max(lines, key=lambda line: line["weighted"])
    record = json.loads((tmp_path / "store" / "bo" / CONCEPT_JSON).read_text())
    training = record["training"]
    assert training["best_epoch"] == best["epoch"] == result.best_epoch
    assert training["samples"]["conversation"] == 1 and training["samples"]["recognition_positive"] == 8
    assert len(training["positives"]) == 4 and all(len(p["sha256"]) == 64 for p in training["positives"])
    assert training["config"]["train"]["epochs"] == 2 and training["seed"] == 0
    assert record["template_version"]["chat"] == "llava_v1/v1"


def script_scores(monkeypatch, weighted: list[float]) -> None:
    """Make the per-epoch recognition scores follow ``weighted`` (the tiny model's sit at chance)."""
    scores = iter(weighted)
    real = train_module.evaluate_concept

    def fake_scores(*args, **kwargs):
        result = real(*args, **kwargs)
        result.weighted = next(scores)
        return result

    monkeypatch.setattr(train_module, "evaluate_concept", fake_scores)


def test_best_epoch_rows_are_the_ones_saved(tiny_base, tiny_config, image_dirs, tmp_path, monkeypatch):
    """Epoch 1 scores best here, so the saved rows must be epoch 1's, not the last epoch's."""
    script_scores(monkeypatch, [0.9, 0.1, 0.2])
    tiny_config.train.epochs = 3
    pos, neg = image_dirs
    result = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "store", base=tiny_base)
    assert result.best_epoch == 1
    checkpoint = load_tensors(result.run_dir / "checkpoint.safetensors")
    saved = load_tensors(tmp_path / "store" / "bo" / CONCEPT_WEIGHTS)
    assert torch.equal(saved["embed_rows"], checkpoint["best_embed_rows"])
    assert not torch.equal(saved["embed_rows"], checkpoint["embed_rows"])


def test_early_stop(tiny_base, tiny_config, image_dirs, tmp_path, monkeypatch):
    script_scores(monkeypatch, [0.9, 0.1, 0.2, 0.3])
    tiny_config.train.epochs = 4
    tiny_config.train.early_stop_patience = 2
    pos, neg = image_dirs
    result = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "store", base=tiny_base)
    assert len(result.history) == 3


def test_a_perfect_epoch_ends_training_with_the_same_concept(tiny_base, tiny_config, image_dirs, tmp_path, monkeypatch):
    """Only a strictly better epoch replaces the best, so after a perfect one the rest is wasted time."""
    script_scores(monkeypatch, [0.6, 1.0, 1.0, 1.0])
    tiny_config.train.epochs = 4
    pos, neg = image_dirs
    result = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "store", base=tiny_base)
    assert len(result.history) == 2 and result.best_epoch == 2


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_crash_mid_training_keeps_existing_concept_and_resume_matches_uninterrupted(schedule, tiny_config, image_dirs, tmp_path, monkeypatch):
    """A resumed run continues the learning-rate schedule where the crashed one stopped."""
    pos, neg = image_dirs
    tiny_config.train.epochs = 3
    tiny_config.train.lr_schedule = LrSchedule(schedule)
    # uninterrupted reference run
    reference = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "ref", base=build_tiny_base())
    ref_rows = load_tensors(reference.run_dir / "checkpoint.safetensors")

    # an existing concept that a crashed --overwrite run must not touch
    store = tmp_path / "store"
    tiny_config.train.epochs = 1
    train_concept(tiny_config, "bo", pos, neg, store=store, base=build_tiny_base())
    before = {name: (store / "bo" / name).read_bytes() for name in (CONCEPT_JSON, CONCEPT_WEIGHTS)}

    tiny_config.train.epochs = 3
    calls = {"n": 0}
    real = train_module.evaluate_concept

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_concept", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_concept(tiny_config, "bo", pos, neg, store=store, overwrite=True, base=build_tiny_base())
    assert {name: (store / "bo" / name).read_bytes() for name in before} == before
    monkeypatch.setattr(train_module, "evaluate_concept", real)

    resumed = train_concept(tiny_config, "bo", None, None, store=store, resume=True, base=build_tiny_base())
    assert len(resumed.history) == 3
    lr = tiny_config.train.lr
    expected = [lr] * 3 if schedule == "constant" else [lr, lr * 2 / 3, lr / 3]
    assert [h["lr"] for h in resumed.history] == pytest.approx(expected)
    assert [h["lr"] for h in reference.history] == pytest.approx(expected)
    rows = load_tensors(resumed.run_dir / "checkpoint.safetensors")
    for key in ("embed_rows", "head_rows", "best_embed_rows"):
        torch.testing.assert_close(rows[key], ref_rows[key], rtol=0, atol=1e-6)
    record = json.loads((store / "bo" / CONCEPT_JSON).read_text())
    assert record["training"]["epochs_run"] == 3 and record["training"]["run_dir"] == str(resumed.run_dir)
    with pytest.raises(YollavaError, match="no unfinished run"):
        train_concept(tiny_config, "bo", None, None, store=store, resume=True, base=build_tiny_base())


def test_existing_concept_needs_overwrite(tiny_config, image_dirs, tmp_path):
    pos, neg = image_dirs
    tiny_config.train.epochs = 1
    train_concept(tiny_config, "bo", pos, neg, store=tmp_path, base=build_tiny_base())
    with pytest.raises(YollavaError, match="already exists.*--overwrite"):
        train_concept(tiny_config, "bo", pos, neg, store=tmp_path, base=build_tiny_base())


def test_large_negative_folder_is_sampled_with_a_seed(tmp_path, image_dirs):
    from yollava.data import collect_images

    pos, neg = image_dirs
    config = load_config(overrides=["data.max_negatives=5"]).data
    first = collect_images(pos, neg, config)
    assert len(first.negatives) == 5 and first.negatives == collect_images(pos, neg, config).negatives
    config.seed = 1
    assert collect_images(pos, neg, config).negatives != first.negatives


def test_a_crash_while_checkpointing_resumes_from_the_previous_checkpoint(tiny_config, image_dirs, tmp_path, monkeypatch):
    """The checkpoint is one file (the state rides in its metadata), so no crash can pair two epochs' halves."""
    pos, neg = image_dirs
    tiny_config.train.epochs = 3
    reference = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "ref", base=build_tiny_base())
    ref_rows = load_tensors(reference.run_dir / "checkpoint.safetensors")

    real = train_module.save_tensors_atomic
    calls = {"n": 0}

    def crash_on_second_checkpoint(path, *args, **kwargs):
        if path.name == "checkpoint.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_tensors_atomic", crash_on_second_checkpoint)
    store = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        train_concept(tiny_config, "bo", pos, neg, store=store, base=build_tiny_base())
    monkeypatch.setattr(train_module, "save_tensors_atomic", real)
    run = next((tmp_path / "runs" / "bo").iterdir())
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint.safetensors"]
    resumed = train_concept(tiny_config, "bo", None, None, store=store, resume=True, base=build_tiny_base())
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    rows = load_tensors(resumed.run_dir / "checkpoint.safetensors")
    for key in ("embed_rows", "head_rows", "best_embed_rows"):
        torch.testing.assert_close(rows[key], ref_rows[key], rtol=0, atol=1e-6)


def test_an_observer_sees_every_step_photo_and_epoch_in_order(tiny_config, image_dirs, tmp_path):
    from yollava.progress import TrainStage

    pos, neg = image_dirs
    events = []
    result = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "store", base=build_tiny_base(), observer=events.append)
    samples = sum(json.loads((tmp_path / "store" / "bo" / CONCEPT_JSON).read_text())["training"]["samples"].values())
    # scoring reports once per scoring batch (main's batched scorer), so runs of score events are collapsed
    stages = [e.stage for i, e in enumerate(events) if not (e.stage == TrainStage.score and events[i - 1].stage == TrainStage.score)]
    per_epoch = [TrainStage.train] * samples + [TrainStage.score, TrainStage.epoch]
    assert stages == per_epoch * 2 + [TrainStage.save]
    for epoch in (1, 2):
        scored = [e.done for e in events if e.stage == TrainStage.score and e.epoch == epoch]
        assert scored == sorted(set(scored)) and scored[-1] == 12  # counts rise to every training photo
        assert all(e.total == 12 for e in events if e.stage == TrainStage.score)
    steps = [e for e in events if e.stage == TrainStage.train]
    assert [(e.epoch, e.done) for e in steps] == [(epoch, step) for epoch in (1, 2) for step in range(1, samples + 1)]
    assert all(e.total == samples and e.epochs == 2 and e.loss > 0 for e in steps)
    assert [e.record for e in events if e.stage == TrainStage.epoch] == result.history
    etas = [e.eta_s for e in events if e.stage != TrainStage.save]
    assert all(eta is not None and eta >= 0 for eta in etas)
    assert etas[-1] == 0.0 and events[-1].eta_s == 0.0  # after the last epoch nothing is left
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed)


def test_an_observer_that_raises_stops_the_run_and_leaves_the_store_untouched(tiny_config, image_dirs, tmp_path):
    from yollava.progress import TrainStage

    class Stop(Exception):
        pass

    pos, neg = image_dirs
    store = tmp_path / "store"
    tiny_config.train.epochs = 1
    train_concept(tiny_config, "bo", pos, neg, store=store, base=build_tiny_base())
    before = {name: (store / "bo" / name).read_bytes() for name in (CONCEPT_JSON, CONCEPT_WEIGHTS)}
    tiny_config.train.epochs = 3

    def stop_at(stage, epoch):
        def observer(event):
            if event.stage == stage and event.epoch == epoch:
                raise Stop
        return observer

    # in the first epoch: no checkpoint yet, so nothing is left to resume
    runs = tmp_path / "runs" / "bo"
    existing = set(runs.iterdir())
    with pytest.raises(Stop):
        train_concept(tiny_config, "bo", pos, neg, store=store, overwrite=True, base=build_tiny_base(), observer=stop_at(TrainStage.train, 1))
    assert set(runs.iterdir()) == existing
    # in the second: the first epoch's checkpoint is kept and the run resumes
    with pytest.raises(Stop):
        train_concept(tiny_config, "bo", pos, neg, store=store, overwrite=True, base=build_tiny_base(), observer=stop_at(TrainStage.score, 2))
    # just before the save: every epoch done, still nothing stored
    with pytest.raises(Stop):
        train_concept(tiny_config, "bo", None, None, store=store, resume=True, base=build_tiny_base(), observer=stop_at(TrainStage.save, 3))
    assert {name: (store / "bo" / name).read_bytes() for name in before} == before
    resumed = train_concept(tiny_config, "bo", None, None, store=store, resume=True, base=build_tiny_base())
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert {name: (store / "bo" / name).read_bytes() for name in before} != before
