"""``yollava ablate`` on the tiny model: suite validation, cell keys, resume after kill -9, two ranks merging, the outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_image
from test_cli import assert_user_error, run_cli
from test_eval_files import TEXT, published_layout, write

# every cell: 1 epoch on the random tiny model, recognition samples only (no generated conversation)
TINY = ["model.name=tiny", "train.epochs=1", "data.recipe=recognition"]


@pytest.fixture
def world(tmp_path) -> Path:
    """The published layout with 3 subjects (3 train / 2 test photos), a text QA file and a pool of 8 images."""
    root = published_layout(tmp_path / "data")
    write(root / "yollava-text-only-qa.json", TEXT)
    write(root / "descriptions.json", {"bo": "a small orange dog", "mam": "a grey cat", "shiba-gray": "a grey plush toy"})
    for i in range(8):
        make_image(root / "pool" / f"{i}.png", (20 * i, 90, 160), shape="square" if i % 2 else "circle")
    return root


def suite_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + body)
    return path


K_SUITE = """
tasks: [recognition]
positives: 2
negatives: {source: mined, hard: 2, easy: 2}
grid:
  concept.k: [0, 1]
report: {kind: curve, x_label: k}
"""


def ablate_args(suite: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "--suite", str(suite), "--data", str(data), "--out", str(out), "--concepts", "bo,mam", "--embedder", "tiny", *TINY, *extra]


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def cell_files(out: Path) -> dict[str, int]:
    """Finished cells: key -> the file's mtime (ns)."""
    return {p.stem: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}


@pytest.mark.parametrize("body, fragment", [
    ("tasks: [recognition]\nvariants: [{name: a}]\nepochs: 3\n", "unknown key 'epochs'"),
    ("tasks: [recognition]\nvariants: [{name: a, method: soft-promt}]\n", "unknown method 'soft-promt'"),
    ("tasks: [recognition]\ngrid: {concept.k: []}\n", "grid.concept.k is empty"),
    ("tasks: [recognition]\n", "has no variants"),
    ("tasks: [recognition]\nvariants: [{name: a, overrides: [concept.kk=2]}]\n", "unknown config key 'concept.kk'"),
])
def test_bad_suites_fail_with_one_line(tmp_path, world, capsys, monkeypatch, body, fragment):
    suite = suite_file(tmp_path, "bad", body)
    code, _, err = run_cli(ablate_args(suite, world, tmp_path / "out"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "out" / "cells").exists()


def test_bad_command_lines_fail_with_one_line(tmp_path, world, capsys, monkeypatch):
    suite = suite_file(tmp_path, "k", K_SUITE)
    code, _, err = run_cli(["ablate", "--suite", "no-such-suite", "--data", str(world), "--out", str(tmp_path / "o")], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "no such suite", "tokens-k")
    code, _, err = run_cli(ablate_args(suite, world, tmp_path / "o", "train.seed=3"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "seeds are set per cell")
    args = ["ablate", "--suite", str(suite), "--data", str(world), "--out", str(tmp_path / "o"), "--concepts", "bo,rex", *TINY]
    code, _, err = run_cli(args, capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "'rex' is not a subject")


def test_shipped_suites_are_valid(world):
    from yollava.ablate import load_suite, suite_names

    assert suite_names() == ["compose", "dataset-recipe", "images-n", "method-choices", "paper-table5", "tokens-k"]
    for name in suite_names():
        suite = load_suite(name)
        assert suite.variants and suite.tasks
    table5 = load_suite("paper-table5")
    assert {v.method for v in table5.variants} == {"soft-prompt", "vanilla", "description", "auto-long", "auto-short", "in-context"}
    assert [v.x for v in load_suite("tokens-k").variants] == [0, 1, 2, 4, 8, 16, 32]


def test_run_outputs_rerun_and_a_changed_override(tmp_path, world, capsys, monkeypatch):
    suite = suite_file(tmp_path, "k", K_SUITE)
    out = tmp_path / "out"
    code, _, err = run_cli(ablate_args(suite, world, out), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    lines = read_results(out)
    assert len(lines) == 4 and len({line["cell"] for line in lines}) == 4
    assert {(line["variant"], line["concept"]) for line in lines} == {(f"k={k}", c) for k in (0, 1) for c in ("bo", "mam")}
    for line in lines:
        assert line["task"] == "recognition" and 0 <= line["accuracy"] <= 1
        assert line["config"]["concept"]["k"] == line["x"] and line["config"]["model"]["name"] == "tiny"
        assert {"positive", "negative", "weighted"} <= set(line["metrics"])
    # the same negatives for every k: one mining per concept
    assert len({line["inputs"][0]["negatives_key"] for line in lines}) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert [row["variant"] for row in summary["rows"]] == ["k=0", "k=1"]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG" and "| k=0 |" in (out / "results.md").read_text()
    assert len(list((out / "logs").rglob("*.log"))) == 4
    before = cell_files(out)

    # a re-run runs nothing
    code, _, err = run_cli(ablate_args(suite, world, out), capsys, monkeypatch, tmp_path)
    assert code == 0 and "4 finished" in err, err
    assert cell_files(out) == before

    # one variant's override changed: only its two cells run again, the others are kept as they were
    suite.write_text(suite.read_text().replace("concept.k: [0, 1]", "concept.k: [0, 2]"))
    code, _, err = run_cli(ablate_args(suite, world, out), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    after = cell_files(out)
    kept = {key for key in before if after.get(key) == before[key]}
    assert len(after) == 6 and len(kept) == 4 and len(set(after) - set(before)) == 2
    lines = read_results(out)
    assert sorted({line["variant"] for line in lines}) == ["k=0", "k=2"] and len(lines) == 4
    assert {line["cell"] for line in lines if line["variant"] == "k=0"} <= set(before)


def _spawn(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "yollava", *args], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_kill_9(tmp_path, world):
    suite = suite_file(tmp_path, "k", K_SUITE.replace("[0, 1]", "[0, 1, 2]"))
    out = tmp_path / "out"
    args = ablate_args(suite, world, out)
    process = _spawn(args, tmp_path)
    deadline = time.monotonic() + 240
    while not (out / "cells").is_dir() or not list((out / "cells").glob("*.json")):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = cell_files(out)
    assert 1 <= len(finished) < 6, "the run ended before it could be killed"
    for path in (out / "cells").glob("*.json"):
        assert json.loads(path.read_text())["format"] == "yollava-ablate-cell"  # whole files only, never a torn one
    assert not (out / "results.jsonl").exists()

    done = subprocess.run([sys.executable, "-m", "yollava", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = cell_files(out)
    assert len(after) == 6 and all(after[key] == mtime for key, mtime in finished.items())
    lines = read_results(out)
    assert len(lines) == 6 and len({line["cell"] for line in lines}) == 6


def test_two_ranks_share_the_cells_and_merge_once(tmp_path, world):
    suite = suite_file(tmp_path, "k", K_SUITE)
    out = tmp_path / "out"
    args = ablate_args(suite, world, out)
    ranks = [_spawn(args, tmp_path, RANK=str(rank), WORLD_SIZE="2") for rank in (0, 1)]
    for process in ranks:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    lines = read_results(out)
    keys = [line["cell"] for line in lines]
    assert len(keys) == 4 and len(set(keys)) == 4
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(cells) == 4 and {c["world"] for c in cells} == {2}
    assert {c["rank"] for c in cells} == {0, 1}  # each rank took its share
    assert json.loads((out / "summary.json").read_text())["cost"]["cells"] == 4


def test_compose_loads_the_concepts_together_and_reuses_their_trainings(tmp_path, world, capsys, monkeypatch):
    suite = suite_file(tmp_path, "c", K_SUITE.replace("concept.k: [0, 1]", "compose: [1, 2]").replace("[recognition]", "[recognition, text-qa]"))
    out = tmp_path / "out"
    code, _, err = run_cli(ablate_args(suite, world, out), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    lines = read_results(out)
    assert len(lines) == 8 and {line["task"] for line in lines} == {"recognition", "text-qa"}
    # two trainings (one per concept), trained once and reused by K = 2
    assert len({t["key"] for line in lines for t in line["trainings"]}) == 2
    assert sum(not t["reused"] for line in lines if line["task"] == "recognition" for t in line["trainings"]) == 2
    both = next(line for line in lines if line["variant"] == "compose=2" and line["concept"] == "bo")
    assert both["compose"] == ["bo", "mam"]
    assert both["prefix"].startswith("<bo> is <bo_1>") and "<mam> is <mam_1>" in both["prefix"]


def test_every_method_gives_the_table5_report(tmp_path, world, capsys, monkeypatch):
    body = (Path(__file__).parents[1] / "templates" / "suites" / "paper-table5.yaml").read_text()
    body = body.replace("name: paper-table5\n", "").replace("[recognition, visual-qa, text-qa, caption]", "[recognition, text-qa]")
    body = body.replace("refs: 4", "refs: 2").replace("in-context-4", "in-context-2")
    suite = suite_file(tmp_path, "t5", body.replace("hard: 100, easy: 100", "hard: 2, easy: 2") + "positives: 2\nmax_new_tokens: 4\n")
    out = tmp_path / "out"
    args = ablate_args(suite, world, out)
    args[args.index("--concepts") + 1] = "bo"
    code, _, err = run_cli(args, capsys, monkeypatch, tmp_path)
    assert code == 0, err
    lines = read_results(out)
    assert len(lines) == 7 * 2
    assert {line["method"] for line in lines} == {"soft-prompt", "vanilla", "description", "auto-long", "auto-short", "in-context"}
    assert sorted(line["refs"] for line in lines if line["method"] == "in-context") == [1, 1, 2, 2]
    table = json.loads((out / "table5" / "table.json").read_text())
    assert table["columns"] == ["soft-prompt", "vanilla", "description", "auto-long", "auto-short", "in-context (1 ref)", "in-context (2 refs)"]
    for name in ("accuracy_vs_tokens.png", "methods.png", "table5/recognition_vs_tokens.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    # an earlier run's results.jsonl gives the same Table 5 without running a cell
    again = tmp_path / "again"
    code, _, err = run_cli([*args[:args.index("--out") + 1], str(again), *args[args.index("--out") + 2:], "--reuse", str(out / "results.jsonl")],
                           capsys, monkeypatch, tmp_path)
    assert code == 0 and "reused 7 finished cell(s)" in err and "7 finished" in err, err
    assert not (again / "logs").exists() or not list((again / "logs").rglob("*-seed0.log"))
    assert read_results(again) == lines
    assert json.loads((again / "table5" / "table.json").read_text()) == table
    # lines from a yollava that kept no harness records cannot rebuild Table 5's costs: refused, not guessed
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "harness"}) + "\n" for line in lines))
    code, _, err = run_cli([*args[:args.index("--out") + 1], str(tmp_path / "third"), *args[args.index("--out") + 2:], "--reuse", str(old)],
                           capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "old.jsonl", "run those cells again")


def test_reuse_takes_only_the_cells_whose_keys_match(tmp_path, world, capsys, monkeypatch):
    suite = suite_file(tmp_path, "k", K_SUITE)
    first = tmp_path / "first"
    code, _, err = run_cli(ablate_args(suite, world, first), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    earlier = read_results(first)
    # results.jsonl as an older yollava wrote it (no harness fields): enough for a curve suite
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "harness"}) + "\n" for line in earlier))

    suite.write_text(suite.read_text().replace("concept.k: [0, 1]", "concept.k: [0, 1, 2]"))
    second = tmp_path / "second"
    code, _, err = run_cli(ablate_args(suite, world, second, "--reuse", str(old)), capsys, monkeypatch, tmp_path)
    assert code == 0 and "reused 4 finished cell(s)" in err, err
    lines = read_results(second)
    assert len(lines) == 6
    assert len(list((second / "logs").rglob("*-seed0.log"))) == 2  # only k=2 ran
    kept = {line["cell"]: line for line in lines if line["x"] in (0, 1)}
    for line in earlier:
        assert {k: v for k, v in kept[line["cell"]].items() if k != "harness"} == {k: v for k, v in line.items() if k != "harness"}
    summary = json.loads((second / "summary.json").read_text())
    assert [row["variant"] for row in summary["rows"]] == ["k=0", "k=1", "k=2"]

    # a damaged or foreign file: one line naming it, nothing taken
    bad = tmp_path / "bad.jsonl"
    bad.write_text(old.read_text() + '{"not": "a results line"}\n')
    code, _, err = run_cli(ablate_args(suite, world, tmp_path / "third", "--reuse", str(bad)), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "bad.jsonl", "line 5")
    assert not list((tmp_path / "third" / "cells").glob("*.json"))


def test_a_new_config_key_at_its_old_behaviour_keeps_the_cell_keys(tmp_path, world):
    """train.lr_schedule came after the first cells were keyed: at constant (what yollava did before) it is not hashed."""
    from yollava.ablate.cells import keyed_config
    from yollava.ablate.runner import make_plan
    from yollava.config import load_config

    assert "lr_schedule" not in keyed_config(load_config(overrides=["train.lr_schedule=constant"]))["train"]
    assert keyed_config(load_config(overrides=["train.lr_schedule=linear"]))["train"]["lr_schedule"] == "linear"
    suite = suite_file(tmp_path, "k", K_SUITE)

    def keys(*extra: str) -> list[str]:
        plan = make_plan(suite, world, tmp_path / "out", concepts=["bo"], overrides=[*TINY, *extra], embedder="tiny")
        return [c.key for c in plan.cells]

    assert set(keys("train.lr_schedule=linear")).isdisjoint(keys())
