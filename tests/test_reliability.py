"""Issue 14, finding by finding: concepts and their data replaced as one unit, locks, validated records, one-line errors.

Each test names the finding it covers; the fault-injection sweep over every write is in test_faults.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import yollava.train as train_module
from conftest import make_image
from test_cli import assert_user_error, run_cli
from yollava.concept import attached, init_concept, list_concepts, load_concept, save_concept
from yollava.config import ConceptConfig, load_config
from yollava.data import NegativeSource, gather_images, load_training_set
from yollava.errors import YollavaError
from yollava.models import build_tiny_base
from yollava.storage import CONCEPT_JSON, CONCEPT_WEIGHTS

# Names that exist only since issue 14 are imported inside the tests that use them, so that this
# file also runs against the old code and each test fails there on its own finding.

REPO = Path(__file__).resolve().parent.parent


def train_cli(pos: Path, *extra: str, name: str = "bo") -> list[str]:
    return ["train", "--concept", name, "--images", str(pos), "--model", "tiny", "--epochs", "1", "--recipe", "recognition", *extra]


def saved_concept(store: Path, name: str = "bo", seed: int = 0, k: int = 2) -> Path:
    """A concept saved through the real save path on a fresh tiny base."""
    base = build_tiny_base()
    params = init_concept(base, name, ConceptConfig(k=k), seed=seed)
    with attached(base, params):
        return save_concept(params, base, store, {"training": {"best_epoch": 1, "metrics": {"weighted": 0.5}}})


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (PIL reads the size without decoding pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- 1 / 8: the store on a full disk


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 5 MB tmpfs (needs root and mount); skipped with the reason where the machine refuses."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the ENOSPC tests need one")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> None:
    """Fill the file system at ``mount`` until about ``leave`` bytes are free."""
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with open(mount / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    assert os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize <= leave + 8192


def test_enospc_on_the_store_keeps_the_old_concept_and_is_one_line(tiny_tmpfs, image_dirs, capsys, monkeypatch):
    """Finding 1 and 8: a full store during train's final save, 12 KiB free."""
    pos, neg = image_dirs
    store, runs = tiny_tmpfs / "concepts", tiny_tmpfs.parent / "runs"
    code, _, err = run_cli(train_cli(pos, "--negatives", str(neg), "--store", str(store), f"train.runs_dir={runs}"), capsys, monkeypatch, tiny_tmpfs.parent)
    assert code == 0, err
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    fill(tiny_tmpfs, 12 * 1024)
    code, _, err = run_cli(train_cli(pos, "--negatives", str(neg), "--store", str(store), "--overwrite", "data.seed=1",
                                     f"train.runs_dir={runs}"), capsys, monkeypatch, tiny_tmpfs.parent)
    assert_user_error(code, err, f"cannot write {store / 'bo'}", "no space left on the device (ENOSPC)", "nothing was changed")
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    load_concept(build_tiny_base(), store, "bo")
    code, out, err = run_cli(["concepts", "list", "--store", str(store)], capsys, monkeypatch, tiny_tmpfs.parent)
    assert code == 0 and "bo" in out and "ok" in out and "damaged" not in out + err


def test_enospc_in_the_runs_dir_and_for_a_dataset_is_one_line(tiny_tmpfs, image_dirs, capsys, monkeypatch):
    """Finding 8: every ENOSPC (runs dir, dataset) is a line naming the path, not a traceback."""
    pos, neg = image_dirs
    runs = tiny_tmpfs / "runs"
    fill(tiny_tmpfs, 4 * 1024)
    code, _, err = run_cli(train_cli(pos, "--negatives", str(neg), f"train.runs_dir={runs}"), capsys, monkeypatch, tiny_tmpfs.parent)
    assert_user_error(code, err, str(runs), "(ENOSPC)")
    assert not (tiny_tmpfs.parent / "concepts").exists()
    code, _, err = run_cli(["build-data", "--concept", "bo", "--images", str(pos), "--negatives", str(neg), "--model", "tiny",
                            "--recipe", "recognition", "--store", str(tiny_tmpfs / "concepts")], capsys, monkeypatch, tiny_tmpfs.parent)
    assert_user_error(code, err, str(tiny_tmpfs / "concepts" / "bo"), "(ENOSPC)", "nothing was changed")
    assert [p for p in tiny_tmpfs.rglob("*") if ".tmp-" in p.name or p.name.endswith(".lock")] == []


# ----------------------------------------------------------------------------- 2: negatives are recovered by readers


def test_a_crash_between_retrieves_renames_is_recovered_by_the_next_train(tmp_path, image_dirs):
    """Finding 2: negatives left in .negatives.old are moved back by the reader, not silently dropped."""
    from fault_scenarios import _retrieve, _subject_world

    _subject_world(tmp_path)
    _retrieve(tmp_path, per_image=1, n_easy=2, overwrite=False)
    negatives = tmp_path / "store" / "bo" / "negatives"
    backup = negatives.parent / ".negatives.old"
    os.rename(negatives, backup)  # the first rename done, the second never happened
    images = gather_images("bo", tmp_path / "pos", tmp_path / "store", NegativeSource(), load_config().data)
    assert len(images.negatives_hard) == 4 and len(images.negatives_easy) == 2
    assert negatives.is_dir() and not backup.exists()


# ----------------------------------------------------------------------------- 3: locks


def test_two_concurrent_trains_of_one_concept(tmp_path, image_dirs, capsys, monkeypatch):
    """Finding 3: the second run fails at once naming the first one's PID; only the first is saved."""
    pos, neg = image_dirs
    # as a user runs it: no test switches for the libraries' tqdm bars, which the CLI turns off itself
    env = {k: v for k, v in os.environ.items() if "PROGRESS_BARS" not in k} | {"COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout's code
    first = subprocess.Popen(
        [sys.executable, "-m", "yollava.cli", *train_cli(pos, "--negatives", str(neg), "--epochs", "3", "train.seed=1")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lock = tmp_path / "concepts" / ".bo.lock"
    deadline = time.monotonic() + 240
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None and time.monotonic() < deadline, "the first train never took the lock"
        time.sleep(0.05)
    code, _, err = run_cli(train_cli(pos, "--negatives", str(neg)), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "concept 'bo'", f"PID {first.pid}")
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert "Saving the dataset" not in first_err and "%|" not in first_err and "━" not in first_err  # log-friendly output
    assert [line.split(" | ")[0] for line in first_err.splitlines() if line.startswith("epochs ")] == ["epochs 1/3", "epochs 2/3", "epochs 3/3"]
    record = json.loads((tmp_path / "concepts" / "bo" / CONCEPT_JSON).read_text())
    assert record["training"]["seed"] == 1  # the first run's concept, not replaced
    assert not lock.exists()
    code, _, err = run_cli(train_cli(pos, "--negatives", str(neg)), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "already exists", "--overwrite")


def test_a_lock_names_its_holder_and_a_killed_holder_leaves_none(tmp_path):
    from yollava.storage import artifact_lock, lock_path
    target = tmp_path / "idx"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from yollava.storage import artifact_lock\n"
        "with artifact_lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(60)"), str(REPO), str(target)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(YollavaError, match=f"PID {holder.pid}"):
        with artifact_lock(target, wait=0.3):
            pass
    holder.kill()
    holder.wait()
    with artifact_lock(target):  # the kernel dropped the dead holder's lock
        assert lock_path(target).read_text().strip() == str(os.getpid())
    assert not lock_path(target).exists()


# ----------------------------------------------------------------------------- 4: --overwrite touches nothing until the end


def test_overwrite_that_fails_leaves_the_old_concept_with_its_own_training_set(tiny_config, image_dirs, tmp_path, monkeypatch):
    """Finding 4: the new training set waits in the run folder; the old concept keeps its data/."""
    pos, neg = image_dirs
    store = tmp_path / "store"
    tiny_config.train.epochs = 1
    train_module.train_concept(tiny_config, "bo", pos, neg, store=store, base=build_tiny_base())
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    old_samples, old_info = load_training_set(store / "bo" / "data")

    tiny_config.data.positive_ratio = 3.0  # another training set
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real = train_module.supervised_loss
    monkeypatch.setattr(train_module, "supervised_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_concept(tiny_config, "bo", pos, neg, store=store, overwrite=True, base=build_tiny_base())
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    assert load_training_set(store / "bo" / "data") == (old_samples, old_info)
    monkeypatch.setattr(train_module, "supervised_loss", real)
    result = train_module.train_concept(tiny_config, "bo", pos, neg, store=store, overwrite=True, base=build_tiny_base())
    samples, info = load_training_set(store / "bo" / "data")
    assert len(samples) > len(old_samples) and info["key"]["positive_ratio"] == 3.0
    assert (result.run_dir / "data").is_dir()  # the run keeps its copy (for --resume); the store got the same set


# ----------------------------------------------------------------------------- 5 / 6: records and weights validated


def _mutations():
    """(label, how to break a saved concept folder, text the one-line refusal must contain)."""
    def record(change):
        def apply(folder: Path) -> None:
            data = json.loads((folder / CONCEPT_JSON).read_text())
            change(data)
            (folder / CONCEPT_JSON).write_text(json.dumps(data))
        return apply

    def raw_record(text):
        return lambda folder: (folder / CONCEPT_JSON).write_text(text)

    def weights(make, update_sha=True):
        def apply(folder: Path) -> None:
            make(folder / CONCEPT_WEIGHTS)
            if update_sha:
                import hashlib

                data = json.loads((folder / CONCEPT_JSON).read_text())
                data["weights_sha256"] = hashlib.sha256((folder / CONCEPT_WEIGHTS).read_bytes()).hexdigest()
                (folder / CONCEPT_JSON).write_text(json.dumps(data))
        return apply

    def tensors(**arrays):
        return lambda path: save_file(arrays, str(path))

    good = {"embed_rows": torch.randn(3, 64), "head_rows": torch.randn(1, 64)}
    nan = good["embed_rows"].clone()
    nan[1, 3] = float("nan")
    inf = good["head_rows"].clone()
    inf[0, 0] = float("inf")
    return [
        ("a JSON list", raw_record("[1, 2, 3]"), "one JSON object"),
        ("not JSON", raw_record("{oops"), "Invalid JSON"),
        ("empty record", raw_record(""), "Invalid JSON"),
        ("missing k", record(lambda d: d.pop("k")), "field 'k'"),
        ("missing base_model", record(lambda d: d.pop("base_model")), "field 'base_model'"),
        ("k as text", record(lambda d: d.update(k="sixteen")), "field 'k'"),
        ("negative k", record(lambda d: d.update(k=-1)), "field 'k'"),
        ("huge k", record(lambda d: d.update(k=100000)), "field 'k'"),
        ("bool k", record(lambda d: d.update(k=True)), "field 'k'"),
        ("bogus head_rows", record(lambda d: d.update(head_rows="bogus")), "field 'head_rows'"),
        ("path in name", record(lambda d: d.update(name="../../evil")), "not a concept name"),
        ("another concept's name", record(lambda d: d.update(name="mam", identifier="<mam>", tokens=["<mam>", "<mam_1>", "<mam_2>"],
                                                                soft_prompt="<mam> is <mam_1><mam_2>.", head_tokens=["<mam>"])), "lives in folder"),
        ("edited tokens", record(lambda d: d.update(tokens=["<bo>", "<x_1>", "<bo_2>"])), "tokens do not match"),
        ("edited identifier", record(lambda d: d.update(identifier="<s>")), "identifier"),
        ("edited soft prompt", record(lambda d: d.update(soft_prompt="<bo> is.")), "soft_prompt"),
        ("edited head tokens", record(lambda d: d.update(head_tokens=["<bo>", "<bo_1>"])), "head_tokens"),
        ("duplicate token ids", record(lambda d: d.update(token_ids=[5, 5, 6])), "token_ids"),
        ("hidden size disagrees", record(lambda d: d.update(hidden_size=32)), "hidden_size"),
        ("base model id a number", record(lambda d: d["base_model"].update(id=5)), "field 'base_model.id'"),
        ("unknown field", record(lambda d: d.update(surprise=1)), "field 'surprise'"),
        ("format version 2", record(lambda d: d.update(format_version=2)), "format version 2"),
        ("sha removed", record(lambda d: d.pop("weights_sha256")), "field 'weights_sha256'"),
        ("sha not hex", record(lambda d: d.update(weights_sha256="zz")), "field 'weights_sha256'"),
        ("score out of range", record(lambda d: d.update(training={"metrics": {"weighted": 7.0}})), "field 'training.metrics.weighted'"),
        ("weights edited, sha kept", weights(lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\1"), update_sha=False), "--resume"),
        ("weights missing", lambda folder: (folder / CONCEPT_WEIGHTS).unlink(), "missing"),
        ("random bytes", weights(lambda p: p.write_bytes(os.urandom(2000))), "not a readable safetensors file"),
        ("a pickle", weights(lambda p: p.write_bytes(pickle.dumps({"embed_rows": [1.0]}))), "not a readable safetensors file"),
        ("empty weights", weights(lambda p: p.write_bytes(b"")), "not a readable safetensors file"),
        ("huge header length", weights(lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")), "not a readable safetensors file"),
        ("NaN weights", weights(tensors(embed_rows=nan, head_rows=good["head_rows"])), "NaN or infinite"),
        ("inf weights", weights(tensors(embed_rows=good["embed_rows"], head_rows=inf)), "NaN or infinite"),
        ("integer weights", weights(tensors(embed_rows=good["embed_rows"].to(torch.int32), head_rows=good["head_rows"])), "not floating point"),
        ("wrong shape", weights(tensors(embed_rows=torch.randn(4, 64), head_rows=good["head_rows"])), "shape (4, 64)"),
        ("missing tensor", weights(tensors(embed_rows=good["embed_rows"])), "expected ['embed_rows', 'head_rows']"),
        ("extra tensor", weights(tensors(extra=torch.zeros(1), **good)), "expected ['embed_rows', 'head_rows']"),
        ("huge file", weights(lambda p: p.write_bytes(b"\0" * (3 << 20))), "far more than"),
    ]


MUTATIONS = _mutations()


@pytest.mark.parametrize("label,mutate,fragment", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_every_damaged_concept_is_a_one_line_refusal(label, mutate, fragment, tmp_path):
    """Finding 6: edited records and weight files never load, never trace back, never unpickle."""
    folder = saved_concept(tmp_path, "bo")
    mutate(folder)
    base = build_tiny_base()
    before = len(base.tokenizer)
    with pytest.raises(YollavaError) as refused:
        load_concept(base, tmp_path, "bo")
    assert fragment in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    assert len(base.tokenizer) == before  # refused before anything was attached


def test_concepts_list_survives_every_damaged_concept(tmp_path, capsys, monkeypatch):
    """Finding 5: one status per concept (ok / damaged: why); healthy ones stay visible."""
    store = tmp_path / "concepts"
    saved_concept(store, "good")
    names = []
    for i, (label, mutate, fragment) in enumerate(MUTATIONS):
        name = f"m{i:02d}"
        mutate(saved_concept(store, name))
        names.append((name, fragment))
    entries = {e.name: e for e in list_concepts(store)}
    assert entries["good"].status == "ok"
    for name, fragment in names:
        assert entries[name].status.startswith("damaged: ") and fragment in entries[name].status, (name, entries[name].status)
    code, out, err = run_cli(["concepts", "list", "--store", str(store)], capsys, monkeypatch, tmp_path)
    assert code == 0 and "Traceback" not in err
    assert f"{len(names)} of {len(names) + 1} concept(s) damaged" in err
    assert all(name in out for name, _ in names) and "good" in out and " ok " in out and "damaged" in out


# ----------------------------------------------------------------------------- 7: negative manifests


@pytest.fixture
def stored_negatives(tmp_path):
    from fault_scenarios import _retrieve, _subject_world

    _subject_world(tmp_path)
    _retrieve(tmp_path, per_image=1, n_easy=2, overwrite=False)
    return tmp_path / "store" / "bo" / "negatives"


def _edit_manifest(folder: Path, change) -> None:
    lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    change(lines)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.mark.parametrize("case", ["absolute", "parent", "link out", "size", "sha", "not an image", "suffix"])
def test_manifest_entries_are_confined_and_checked_before_use(case, stored_negatives, tmp_path, capsys, monkeypatch):
    """Finding 7: entries outside the folder, altered files and non-images are refused up front."""
    import hashlib

    from yollava.retrieval.mine import read_negatives

    secret = tmp_path / "secret.png"
    make_image(secret, (1, 2, 3))
    first = json.loads((stored_negatives / "manifest.jsonl").read_text().splitlines()[0])
    target = stored_negatives / first["file"]
    if case == "absolute":
        _edit_manifest(stored_negatives, lambda lines: lines[0].update(file=str(secret)))
        fragment = "is not hard/<sha256 prefix>"
    elif case == "parent":
        _edit_manifest(stored_negatives, lambda lines: lines[0].update(file="hard/../../../../secret.png"))
        fragment = "is not hard/<sha256 prefix>"
    elif case == "link out":
        target.unlink()
        target.symlink_to(secret)
        fragment = "points outside the negatives folder"
    elif case == "size":
        target.write_bytes(target.read_bytes() + b"x")
        fragment = "bytes, the manifest says"
    elif case == "sha":
        data = bytearray(target.read_bytes())
        data[-20] ^= 1
        target.write_bytes(bytes(data))
        fragment = "does not match its sha256"
    elif case == "not an image":
        target.write_text("not an image at all")
        sha = hashlib.sha256(target.read_bytes()).hexdigest()
        new_file = f"{first['kind']}/{sha[:16]}.png"
        target.rename(stored_negatives / new_file)
        _edit_manifest(stored_negatives, lambda lines: lines[0].update(file=new_file, sha256=sha, size=(stored_negatives / new_file).stat().st_size))
        fragment = "not an image, not a usable negative"
    else:
        _edit_manifest(stored_negatives, lambda lines: lines[0].update(file=first["file"].rsplit(".", 1)[0] + ".txt"))
        fragment = "does not have an image suffix"
    with pytest.raises(YollavaError, match=fragment.replace("(", r"\(").replace("<", "<")) as refused:
        read_negatives("bo", tmp_path / "store")
    assert "\n" not in str(refused.value)
    # train refuses them before the base is loaded, not after an epoch with a message about --image
    monkeypatch.setattr(train_module, "load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    code, _, err = run_cli(train_cli(tmp_path / "pos", "--store", str(tmp_path / "store")), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "re-run `yollava retrieve")
    assert "--image " not in err


# ----------------------------------------------------------------------------- 8: tracebacks where a line belongs


def test_config_yaml_that_is_a_list_is_one_line(tmp_path, image_dirs, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text("- train\n- epochs\n")
    code, _, err = run_cli(train_cli(image_dirs[0], "--config", str(tmp_path / "c.yaml")), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "c.yaml", "holds a list, not a mapping")


def test_remove_refuses_a_symlinked_concept_folder_and_keeps_its_target(tmp_path, capsys, monkeypatch):
    elsewhere = saved_concept(tmp_path / "elsewhere", "bo")
    store = tmp_path / "concepts"
    store.mkdir()
    (store / "bo").symlink_to(elsewhere)
    code, _, err = run_cli(["concepts", "remove", "bo", "--store", str(store)], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "symbolic link")
    assert (elsewhere / CONCEPT_WEIGHTS).is_file()
    saved_concept(store.parent / "plain", "mam")
    code, _, err = run_cli(["concepts", "remove", "mam", "--store", str(store.parent / "plain")], capsys, monkeypatch, tmp_path)
    assert code == 0 and not (store.parent / "plain" / "mam").exists() and list((store.parent / "plain").iterdir()) == []


# ----------------------------------------------------------------------------- 9: messages


def test_a_huge_image_is_too_large_not_not_an_image(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "huge.png").write_bytes(png_header(20_000, 20_000))  # 400 megapixels
    code, _, err = run_cli(train_cli(folder, "--no-negatives"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "huge.png: too large (over 40 megapixels")
    assert "not an image" not in err


def test_broken_links_are_named_not_an_empty_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    code, _, err = run_cli(train_cli(folder, "--no-negatives"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "gone.png: broken link to")
    assert "folder is empty" not in err


def test_a_huge_k_names_concept_k_before_the_model_loads(tmp_path, image_dirs, capsys, monkeypatch):
    code, _, err = run_cli(train_cli(image_dirs[0], "concept.k=100000"), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "concept.k=100000 is too large", "at most 1024")
    assert "shorten it" not in err


def test_a_mismatched_weights_file_points_at_resume(tmp_path):
    folder = saved_concept(tmp_path)
    weights = folder / CONCEPT_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(YollavaError, match="yollava train --concept bo --resume"):
        load_concept(build_tiny_base(), tmp_path, "bo")


def test_hub_models_fail_fast_with_whole_messages_and_the_toy_hint(tmp_path, monkeypatch, capsys):
    """The default embedder and base offline: no minute of retries, no cut words, toy (not tiny) suggested."""
    import huggingface_hub.constants as hub_constants

    from yollava import hub
    from yollava.config import ModelConfig
    from yollava.models import load_base
    from yollava.retrieval.embed import load_embedder

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=hub.PROBE_TIMEOUT_S: False)
    started = time.monotonic()
    with pytest.raises(YollavaError) as embedder:
        load_embedder()
    with pytest.raises(YollavaError) as model:
        load_base(ModelConfig())
    assert time.monotonic() - started < 30
    for message in (str(embedder.value), str(model.value)):
        assert "huggingface.co cannot be reached" in message and "toy" in message and "tiny" not in message
        assert "\n" not in message and "Last er" not in message
    assert "Retrying" not in capsys.readouterr().err
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(YollavaError, match="HF_HUB_OFFLINE is set"):
        load_embedder()


def test_hub_reasons_are_cut_at_a_word():
    from yollava import hub

    reason = hub.short_reason(RuntimeError("Failed to download file. Last error: An error happened " * 10), limit=60)
    assert reason.endswith(" ...") and reason[:-4].split()[-1] in "Failed to download file. Last error: An error happened".split()


def _interrupt_at(monkeypatch, step: int):
    """Ctrl-C at the ``step``-th training step; returns the real step function."""
    real = train_module.supervised_loss
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "supervised_loss", interrupt)
    return real


def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(tmp_path, image_dirs, capsys, monkeypatch):
    """Finding 9 and 10: nothing to resume, so no --resume hint and no empty run folder left behind."""
    _interrupt_at(monkeypatch, 1)
    code, _, err = run_cli(train_cli(image_dirs[0], "--negatives", str(image_dirs[1])), capsys, monkeypatch, tmp_path)
    assert code == 130 and "nothing to resume" in err and "--resume" not in err
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs" / "bo").iterdir()) == []


def test_resume_from_another_folder_with_relative_inputs(tmp_path, image_dirs, capsys, monkeypatch):
    """Finding 9: --images and --negatives given relative, the run resumed from elsewhere."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(image_dirs[0], work / "pos")
    shutil.copytree(image_dirs[1], work / "neg")
    elsewhere.mkdir()
    common = ["--store", str(tmp_path / "concepts"), f"train.runs_dir={tmp_path / 'runs'}"]
    steps_per_epoch = 16  # 8 positive repeats + 8 negatives, batch 1
    real = _interrupt_at(monkeypatch, steps_per_epoch + 1)  # in epoch 2, after epoch 1's checkpoint
    code, _, err = run_cli(["train", "--concept", "bo", "--images", "pos", "--negatives", "neg", "--model", "tiny", "--epochs", "2",
                            "--recipe", "recognition", *common], capsys, monkeypatch, work)
    assert code == 130 and "--resume" in err, err
    monkeypatch.setattr(train_module, "supervised_loss", real)
    code, _, err = run_cli(["train", "--concept", "bo", "--resume", "--model", "tiny", *common], capsys, monkeypatch, elsewhere)
    assert code == 0, err
    record = json.loads((tmp_path / "concepts" / "bo" / CONCEPT_JSON).read_text())
    assert record["training"]["epochs_run"] == 2 and len(record["training"]["negatives"]) == 8


def test_train_help_shows_the_name_rule(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run_cli(["train", "--help"], capsys, monkeypatch, tmp_path)
    assert code == 0 and "1-32 of a-z, 0-9, '_' and '-'" in out and "({0,31})" not in out


# ----------------------------------------------------------------------------- 10: leftovers and modes


def test_artifacts_get_the_umask_modes_not_0600(tmp_path):
    old_umask = os.umask(0o022)
    try:
        folder = saved_concept(tmp_path)
        for path in (folder / CONCEPT_JSON, folder / CONCEPT_WEIGHTS):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        from yollava.storage import staged_folder

        with staged_folder(tmp_path / "other") as staged:
            (staged / "x.txt").write_text("x")
        assert stat.S_IMODE((tmp_path / "other" / "x.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o755
    finally:
        os.umask(old_umask)


def test_a_killed_writers_staging_is_removed_by_the_next_reader(tmp_path):
    from yollava.storage import settle
    folder = saved_concept(tmp_path)
    stale = tmp_path / ".bo.tmp-deadbeef"
    shutil.copytree(folder, stale)  # what a kill -9 during a save leaves
    (tmp_path / "bo" / ".data.tmp-cafe0000").mkdir()
    assert settle(tmp_path / "bo") == tmp_path / "bo" and not stale.exists()
    assert settle(tmp_path / "bo" / "data", lock_target=tmp_path / "bo") is None
    assert sorted(p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name) == []


@pytest.mark.parametrize("name", ["toy-generate", "build-data"])
def test_a_killed_write_leaves_no_staging_after_the_next_run(name, tmp_path):
    """Finding 10: the half-written folder of a killed toy generate / build-data is gone after the next run."""
    import fault_scenarios
    from faults import EXIT_CODE, count_points, leftovers, run_killed

    scenario = fault_scenarios.SCENARIOS[name]
    scenario.prepare(tmp_path / "template")
    probe = shutil.copytree(tmp_path / "template", tmp_path / "probe")
    middle = len(count_points(lambda: scenario.command(probe), [probe])) // 2
    ws = shutil.copytree(tmp_path / "template", tmp_path / "ws")
    assert run_killed(name, ws, middle, [ws]) == EXIT_CODE
    scenario.command(ws)
    assert leftovers(ws, scenario.skip) == []


# ----------------------------------------------------------------------------- 11: no negatives


def test_training_without_negatives_is_refused_unless_asked(tmp_path, image_dirs, capsys, monkeypatch):
    code, _, err = run_cli(train_cli(image_dirs[0]), capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "no negatives", "--pool", "--index", "--service", "--no-negatives")
    assert not (tmp_path / "concepts").exists()
    code, _, err = run_cli(train_cli(image_dirs[0], "--no-negatives"), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    assert "answer Yes to everything" in err


# ----------------------------------------------------------------------------- progress and packaging


def test_progress_off_a_terminal_is_whole_lines(tmp_path, image_dirs, capsys, monkeypatch):
    code, _, err = run_cli(train_cli(image_dirs[0], "--negatives", str(image_dirs[1]), "--epochs", "2"), capsys, monkeypatch, tmp_path)
    assert code == 0, err
    epoch_lines = [line for line in err.splitlines() if line.startswith("epochs ")]
    assert [line.split(" | ")[0] for line in epoch_lines] == ["epochs 1/2", "epochs 2/2"]
    assert "weighted" in epoch_lines[0] and "best" in epoch_lines[0] and "eta" in epoch_lines[0] and "elapsed" in epoch_lines[1]
    assert "━" not in err and "%|" not in err and "Saving the dataset" not in err


def test_log_progress_writes_every_n_steps():
    from rich.console import Console

    from yollava.progress import LogProgress

    console = Console(file=__import__("io").StringIO(), width=40)
    progress = LogProgress(console, every=10)
    task = progress.add_task("epoch 1", total=25, info="")
    for step in range(25):
        progress.update(task, advance=1, info=f"loss {step}")
    lines = console.file.getvalue().splitlines()
    assert [line.split(" | ")[:2] for line in lines] == [["epoch 1 10/25", "loss 9"], ["epoch 1 20/25", "loss 19"]]
    assert all(len(line) > 40 for line in lines)  # never wrapped at the console width


def test_every_python_package_is_listed_for_setuptools():
    """Install output free of "package would be ignored": each folder under yollava/ is a listed package."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.relative_to(REPO).parts) for p in (REPO / "yollava").rglob("*")
             if p.is_dir() and p.name != "__pycache__" and any(f.is_file() for f in p.iterdir())}
    assert found <= listed, sorted(found - listed)
