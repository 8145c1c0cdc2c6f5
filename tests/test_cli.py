"""The command line end to end on the tiny model, and every bad input the user can give it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image
from yollava import cli
from yollava.storage import CONCEPT_JSON, CONCEPT_WEIGHTS


def run_cli(args: list[str], capsys, monkeypatch, cwd: Path) -> tuple[int, str, str]:
    """Run the real entry point in-process; return (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["yollava", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def trained(tmp_path, image_dirs, capsys, monkeypatch):
    """A workspace with concept 'bo' trained for 1 epoch on the tiny model."""
    pos, neg = image_dirs
    code, _, err = run_cli(["train", "--concept", "bo", "--images", str(pos), "--negatives", str(neg), "--model", "tiny", "--epochs", "1", "data.recipe=recognition"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    return tmp_path


def test_end_to_end_subprocess(tmp_path, image_dirs):
    """train 2 epochs → chat one-shot → eval → concepts list, as a user runs them."""
    pos, neg = image_dirs
    data = tmp_path / "data"
    for i in range(2):
        make_image(data / "test" / "bo" / f"t{i}.png", (220, 40, 40))
        make_image(data / "test" / "other" / f"o{i}.png", (40, 220, 40), shape="square")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    exe = [sys.executable, "-m", "yollava.cli"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*exe, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    trained = run("train", "--concept", "bo", "--images", str(pos), "--negatives", str(neg), "--model", "tiny", "--epochs", "2", "train.batch_size=2", "data.conversation_max_new_tokens=8")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "concepts" / "bo" / CONCEPT_WEIGHTS).is_file()
    record = json.loads((tmp_path / "concepts" / "bo" / CONCEPT_JSON).read_text())
    # the default recipe without retrieval: recognition + conversation data, stored as an HF dataset
    assert record["training"]["recipe"] == "recognition+conversation"
    assert 0 < record["training"]["samples"]["conversation"] <= 4 * 10  # 10 questions per positive; empty answers dropped
    assert (tmp_path / "concepts" / "bo" / "data" / "training_set.json").is_file()
    runs = list((tmp_path / "runs" / "bo").iterdir())
    assert len(runs) == 1 and (runs[0] / "config.yaml").is_file() and (runs[0] / "metrics.jsonl").is_file()

    chat = run("chat", "--concept", "bo", "--image", str(pos / "p0.png"), "--prompt", "Is <bo> in this photo?", "--max-new-tokens", "4")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()  # the random tiny model says something; its content is meaningless

    result = run("eval", "--concept", "bo", "--data", str(data), "--json", str(tmp_path / "eval.json"), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads((tmp_path / "eval.json").read_text())
    assert (record["task"], record["method"], record["concept"], record["n_questions"]) == ("recognition", "soft-prompt", "bo", 4)
    metrics = record["metrics"]
    assert metrics["n_positive"] == 2 and metrics["n_negative"] == 2
    assert record["accuracy"] == metrics["weighted"] == pytest.approx(0.5 * metrics["positive"] + 0.5 * metrics["negative"])
    assert "recognition" in result.stdout and "generated" in result.stdout
    generation = metrics["generation"]
    # the random tiny model rarely says Yes/No: such answers must count as wrong, never be dropped
    correct = generation["positive"] * 2 + generation["negative"] * 2
    assert correct + generation["other"] <= 4
    assert len(record["items"]) == 4 and all("generated" in r for r in record["items"])
    report = run("report", str(tmp_path / "eval.json"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "recognition: **weighted**" in (tmp_path / "report" / "table.md").read_text()

    listing = run("concepts", "list")
    assert listing.returncode == 0 and "bo" in listing.stdout and "tiny" in listing.stdout


def test_interactive_chat_repl(trained, image_dirs, capsys, monkeypatch):
    pos, _ = image_dirs
    lines = iter(["Hello <bo>", f"/image {pos / 'p1.png'}", "/image /nope.png", "/reset", "Is <bo> here?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = run_cli(["chat", "--concept", "bo", "--max-new-tokens", "3"], capsys, monkeypatch, trained)
    assert code == 0, err
    assert out.count("assistant> ") == 2
    assert "image set to" in err and "error: image /nope.png: no such file" in err and "conversation cleared" in err


def test_chat_without_concept_and_with_two_concepts(trained, image_dirs, capsys, monkeypatch):
    pos, neg = image_dirs
    code, _, err = run_cli(["train", "--concept", "mam", "--images", str(pos), "--negatives", str(neg), "--model", "tiny", "--epochs", "1", "--recipe", "recognition"], capsys, monkeypatch, trained)
    assert code == 0, err
    code, out, err = run_cli(["chat", "--concept", "bo", "--concept", "mam", "--prompt", "Are <bo> and <mam> friends?", "--max-new-tokens", "3"], capsys, monkeypatch, trained)
    assert code == 0, err
    code, out, err = run_cli(["chat", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "2"], capsys, monkeypatch, trained)
    assert code == 0, err


def test_concepts_show_and_remove(trained, capsys, monkeypatch):
    code, out, _ = run_cli(["concepts", "show", "bo"], capsys, monkeypatch, trained)
    assert code == 0 and '"identifier": "<bo>"' in out
    code, _, err = run_cli(["concepts", "remove", "bo"], capsys, monkeypatch, trained)
    assert code == 0 and not (trained / "concepts" / "bo").exists()
    code, _, err = run_cli(["concepts", "remove", "bo"], capsys, monkeypatch, trained)
    assert_user_error(code, err, "not found")


def test_config_command_prints_resolved_keys(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["config", "train.lr=0.005"], capsys, monkeypatch, tmp_path)
    assert code == 0 and "lr: 0.005" in out and "head_rows: identifier" in out


# ----------------------------------------------------------------------------- bad input


def train_args(pos: Path, *extra: str, name: str = "bo") -> list[str]:
    return ["train", "--concept", name, "--images", str(pos), "--model", "tiny", "--epochs", "1", "--recipe", "recognition", *extra]


def test_missing_image_dir(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(train_args(tmp_path / "nope"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "--images", "no such directory")


def test_empty_image_dir(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(train_args(tmp_path / "empty"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "no valid positive image", "folder is empty")


def test_only_broken_files(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    make_image(folder / "cut.png", (200, 0, 0))
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:60])  # truncated
    code, _, err = run_cli(train_args(folder), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "no valid positive image", "2 file(s) skipped")


def test_broken_files_are_skipped_with_a_warning(tmp_path, image_dirs, capsys, monkeypatch):
    pos, neg = image_dirs
    (pos / "notes.txt").write_text("hello")
    (pos / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    code, _, err = run_cli(train_args(pos, "--negatives", str(neg)), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    assert "skipped 2 file(s)" in err and "notes.txt" in err and "bad.jpg" in err
    record = json.loads((tmp_path / "concepts" / "bo" / CONCEPT_JSON).read_text())
    assert len(record["training"]["positives"]) == 4


@pytest.mark.parametrize("name", ["../x", "my dog", "Bo"])
def test_bad_concept_name(tmp_path, image_dirs, capsys, monkeypatch, name):
    code, _, err = run_cli(train_args(image_dirs[0], name=name), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "invalid concept name")
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_existing_concept_without_overwrite(trained, image_dirs, capsys, monkeypatch):
    before = (trained / "concepts" / "bo" / CONCEPT_WEIGHTS).read_bytes()
    code, _, err = run_cli(train_args(image_dirs[0]), capsys, monkeypatch, trained)
    assert_user_error(code, err, "already exists", "--overwrite")
    assert (trained / "concepts" / "bo" / CONCEPT_WEIGHTS).read_bytes() == before
    code, _, err = run_cli(train_args(image_dirs[0], "--overwrite", "--negatives", str(image_dirs[1])), capsys, monkeypatch, trained)
    assert code == 0, err


@pytest.mark.parametrize("override,fragment", [("train.nope=1", "unknown config key 'train.nope'"), ("train.lr=fast", "bad value for config key 'train.lr'"), ("concept.head_rows=some", "concept.head_rows")])
def test_bad_config_override(tmp_path, image_dirs, capsys, monkeypatch, override, fragment):
    code, _, err = run_cli(train_args(image_dirs[0], override), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, fragment)


def test_bad_config_yaml(tmp_path, image_dirs, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text("train:\n  epochz: 3\n")
    code, _, err = run_cli(train_args(image_dirs[0], "--config", str(tmp_path / "c.yaml")), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "unknown config key 'train.epochz'")


def test_concept_from_another_base(trained, capsys, monkeypatch):
    path = trained / "concepts" / "bo" / CONCEPT_JSON
    record = json.loads(path.read_text())
    record["base_model"]["id"] = "llava-hf/llava-1.5-13b-hf"
    path.write_text(json.dumps(record))
    code, _, err = run_cli(["chat", "--concept", "bo", "--model", "tiny", "--prompt", "hi"], capsys, monkeypatch, trained)
    assert_user_error(code, err, "trained on base model llava-hf/llava-1.5-13b-hf", "--model llava-hf/llava-1.5-13b-hf")


def test_missing_concept_in_chat_and_eval(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["chat", "--concept", "ghost", "--prompt", "hi", "--model", "tiny"], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "concept 'ghost' not found")
    data = tmp_path / "data"
    make_image(data / "test" / "ghost" / "a.png", (1, 2, 3))
    make_image(data / "test" / "other" / "b.png", (3, 2, 1))
    code, _, err = run_cli(["eval", "--concept", "ghost", "--data", str(data)], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "concept 'ghost' not found")


def test_eval_data_problems(trained, capsys, monkeypatch):
    code, _, err = run_cli(["eval", "--concept", "bo", "--data", str(trained / "nodata")], capsys, monkeypatch, trained)
    assert_user_error(code, err, "--data", "no such directory")
    make_image(trained / "data" / "test" / "someone" / "a.png", (1, 2, 3))
    code, _, err = run_cli(["eval", "--concept", "bo", "--data", str(trained / "data")], capsys, monkeypatch, trained)
    assert_user_error(code, err, "no test/bo/ folder", "subjects in test/: someone")
    make_image(trained / "old" / "bo" / "test" / "a.png", (1, 2, 3))
    code, _, err = run_cli(["eval", "--concept", "bo", "--data", str(trained / "old")], capsys, monkeypatch, trained)
    assert_user_error(code, err, "subject-first layout", "test/bo/")


def test_chat_image_that_is_not_an_image(trained, capsys, monkeypatch):
    (trained / "fake.png").write_text("plain text")
    code, _, err = run_cli(["chat", "--concept", "bo", "--image", str(trained / "fake.png"), "--prompt", "hi"], capsys, monkeypatch, trained)
    assert_user_error(code, err, "--image", "not an image")
    code, _, err = run_cli(["chat", "--concept", "bo", "--image", str(trained / "missing.png"), "--prompt", "hi"], capsys, monkeypatch, trained)
    assert_user_error(code, err, "--image", "no such file")


def test_resume_without_a_run(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["train", "--concept", "bo", "--resume", "--model", "tiny"], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "no unfinished run")


def test_full_recipe_without_hard_negatives_fails_before_loading_the_model(tmp_path, image_dirs, capsys, monkeypatch):
    import yollava.models

    def no_load(*args, **kwargs):
        raise AssertionError("the base model must not be loaded for a request that cannot work")

    monkeypatch.setattr(yollava.models, "load_base", no_load)
    monkeypatch.setattr("yollava.train.load_base", no_load)
    code, _, err = run_cli(["build-data", "--concept", "bo", "--images", str(image_dirs[0]), "--recipe", "full", "--model", "tiny"], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "recipe 'full' needs retrieved hard negatives")
    code, _, err = run_cli(["train", "--concept", "bo", "--images", str(image_dirs[0]), "--recipe", "full", "--model", "tiny"], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "recipe 'full' needs retrieved hard negatives")


def test_retrieval_options_are_checked(tmp_path, image_dirs, capsys, monkeypatch):
    code, _, err = run_cli(train_args(image_dirs[0], "--pool", str(tmp_path), "--index", str(tmp_path)), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "at most one of --pool")
    code, _, err = run_cli(train_args(image_dirs[0], "--service", "http://127.0.0.1:9"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "--service needs --index-name")
    code, _, err = run_cli(["retrieve", "--concept", "bo", "--images", str(image_dirs[0]), "--pool", str(tmp_path / "nope"), "--embedder", "tiny"], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "nope")


@pytest.fixture
def eval_workspace(tmp_path, tiny_base):
    """A tiny concept 'bo' in ./concepts (saved untrained: the eval mechanics, fast) and a dataset in the
    published layout with both QA files."""
    from test_eval_files import TEXT, VISUAL, published_layout, write
    from test_eval_harness import train_tiny_concept

    train_tiny_concept(tiny_base, tmp_path / "concepts", "bo")
    data = published_layout(tmp_path / "yollava-data")
    write(tmp_path / "visual.json", VISUAL)
    write(tmp_path / "text.json", TEXT)
    return tmp_path, data


def _no_model(monkeypatch):
    """Bad input must fail before the (slow) model load."""
    import yollava.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(yollava.models, "load_base", refuse)


@pytest.mark.parametrize("extra, build, fragments", [
    (["--task", "visual-qa", "--qa", "bad.json"], lambda w: (w / "bad.json").write_text('{"bo": {"x.png": {"question": 1}}}'),
     ("bad.json: entry 'bo' -> 'x.png'", "'question' must be a non-empty string")),
    (["--task", "text-qa", "--qa", "nojson.json"], lambda w: (w / "nojson.json").write_text("{oops"), ("nojson.json", "not valid JSON")),
    (["--task", "visual-qa", "--qa", "nobo.json"], lambda w: (w / "nobo.json").write_text(json.dumps({"mam": {"./d/test/mam/0.png": {"question": "q", "options": {"A": "a", "B": "b"}, "correct_answer": "A"}}})),
     ("no questions about 'bo'",)),
    (["--task", "visual-qa", "--qa", "lost.json"], lambda w: (w / "lost.json").write_text(json.dumps({"bo": {"./d/test/bo/9.png": {"question": "q", "options": {"A": "a", "B": "b"}, "correct_answer": "A"}}})),
     ("entry 'bo' -> './d/test/bo/9.png'", "does not exist")),
    (["--task", "visual-qa"], lambda w: None, ("--task visual-qa needs a QA file",)),
    (["--task", "visual-qa", "--qa", "text.json"], lambda w: None, ()),
    (["--method", "description"], lambda w: None, ("--method description needs --descriptions FILE",)),
    (["--method", "description", "--descriptions", "d.json"], lambda w: (w / "d.json").write_text('{"mam": "a cat"}'), ("no description for 'bo'",)),
    (["--method", "in-context", "--refs", "4"], lambda w: None, ("--refs 4", "train/bo/ has only 3 photo(s)")),
    (["--method", "nope"], lambda w: None, ("--method nope: unknown method",)),
    (["--task", "nope"], lambda w: None, ("--task nope: unknown task",)),
    (["--concept", "bo"], lambda w: None, ("given twice",)),
    (["train.nope=1"], lambda w: None, ("train.nope",)),
])
def test_eval_bad_input_is_one_line_and_writes_nothing(eval_workspace, capsys, monkeypatch, extra, build, fragments):
    workspace, data = eval_workspace
    build(workspace)
    _no_model(monkeypatch)
    args = ["eval", "--concept", "bo", "--data", str(data), "--json", "out.json", *extra]
    code, _, err = run_cli(args, capsys, monkeypatch, workspace)
    if extra[-1] == "text.json":
        # a text-only file given to the visual task runs as text QA's file: the visual task then has none
        fragments = ("--task visual-qa needs a QA file",)
    assert_user_error(code, err, *fragments)
    assert code == 2 and not (workspace / "out.json").exists()


def test_eval_every_task_and_several_methods_on_the_published_layout(eval_workspace, capsys, monkeypatch):
    workspace, data = eval_workspace
    (workspace / "d.json").write_text('{"bo": "<sks> is a small orange dog"}')
    args = ["eval", "--concept", "bo", "--data", str(data), "--task", "all", "--qa", "visual.json", "--qa", "text.json",
            "--method", "soft-prompt", "--method", "description", "--method", "in-context", "--refs", "2",
            "--descriptions", "d.json", "--max-new-tokens", "3", "--json", "out.json"]
    code, out, err = run_cli(args, capsys, monkeypatch, workspace)
    assert code == 0, err
    records = json.loads((workspace / "out.json").read_text())
    assert [(r["method"], r["task"]) for r in records] == [(m, t) for m in ("soft-prompt", "description", "in-context")
                                                            for t in ("recognition", "visual-qa", "text-qa", "caption")]
    assert {r["concept"] for r in records} == {"bo"} and "eval" in err
    code, out, err = run_cli(["report", "out.json", "--out", "table"], capsys, monkeypatch, workspace)
    assert code == 0, err
    assert "in-context (2 refs)" in out and (workspace / "table" / "recognition_vs_tokens.png").is_file()


def test_eval_passes_config_overrides_to_its_cache(eval_workspace, capsys, monkeypatch):
    """KEY=VALUE arguments reach the run's cache settings (at 13B the prefix budget decides what is recomputed)."""
    import yollava.forward

    workspace, data = eval_workspace
    seen = {}
    real = yollava.forward.make_cache

    def spy(base, train, *args, **kwargs):
        seen["gb"] = train.prefix_cache_gb
        return real(base, train, *args, **kwargs)

    monkeypatch.setattr(yollava.forward, "make_cache", spy)
    code, _, err = run_cli(["eval", "--concept", "bo", "--data", str(data), "train.prefix_cache_gb=0.5"], capsys, monkeypatch, workspace)
    assert code == 0, err
    assert seen == {"gb": 0.5}
