"""`yollava serve`: who may connect, uploads, the training queue, and the page driven through gradio's own client on the tiny model."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

# scripts/install.sh installs the web extra (and fails without it), so only a venv made without it
# (the laion one, whose transformers 4.57 refuses gradio 6's huggingface-hub) skips these
pytest.importorskip("gradio", reason="the web extra (gradio) is not installed: pip install -e '.[web]'")

from conftest import make_image  # noqa: E402
from yollava.config import load_config  # noqa: E402
from yollava.data import NegativeSource  # noqa: E402
from yollava.errors import YollavaError  # noqa: E402
from yollava.models import build_tiny_base  # noqa: E402
from yollava.progress import TrainEvent, TrainStage  # noqa: E402
from yollava.storage import CONCEPT_JSON, UPLOADS_DIR  # noqa: E402
from yollava.web import uploads as uploads_module  # noqa: E402
from yollava.web.jobs import JobSpec, JobState, TrainingQueue  # noqa: E402
from yollava.web.server import exposure, is_loopback, negative_choices, parse_auth  # noqa: E402
from yollava.web.uploads import UploadStore, check_upload, display_name  # noqa: E402

TIMEOUT_S = 240  # one tiny-model epoch is a few seconds on a quiet machine, far more on a loaded one


# ----------------------------------------------------------------------------- who may connect


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_login(host):
    assert is_loopback(host)
    assert exposure(host, None, False) == "only this machine can open it"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_a_network_host_needs_a_login_or_an_explicit_opt_out(host):
    assert not is_loopback(host)
    with pytest.raises(YollavaError, match=r"--auth USER:PASS.*--insecure-no-auth"):
        exposure(host, None, False)
    assert "login is required" in exposure(host, ("me", "pw"), False)
    assert "WITHOUT a login" in exposure(host, None, True)


def test_auth_is_user_colon_password():
    assert parse_auth("me:pa:ss") == ("me", "pa:ss")
    for bad in ("me", ":pw", "me:"):
        with pytest.raises(YollavaError, match="USER:PASS"):
            parse_auth(bad)


def test_serve_on_a_network_host_without_login_fails_in_one_line_before_loading(capsys, monkeypatch, tmp_path):
    from test_cli import assert_user_error, run_cli

    # a base that is not there would fail the load: the refusal must come first
    code, _, err = run_cli(["serve", "--host", "0.0.0.0", "--model", str(tmp_path / "no-such-model")], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "--host 0.0.0.0 opens the page to the network", "--auth USER:PASS", "--insecure-no-auth")
    code, _, err = run_cli(["serve", "--pool", str(tmp_path / "missing"), "--model", "tiny"], capsys, monkeypatch, tmp_path)
    assert_user_error(code, err, "--pool", "no such directory")


def test_serve_listens_on_127_0_0_1_by_default(capsys, monkeypatch, tmp_path):
    from test_cli import run_cli

    import yollava.web.app as app_module

    calls = []

    def fake_launch(app, host, port, auth, **kwargs):
        calls.append((host, port, auth))
        raise KeyboardInterrupt  # as Ctrl-C right after the page is up: serve stops cleanly

    monkeypatch.setattr(app_module, "launch", fake_launch)
    code, _, err = run_cli(["serve", "--model", "tiny", "--store", str(tmp_path / "store")], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    assert calls == [("127.0.0.1", 7860, None)]
    assert "stopping" in err and "Traceback" not in err


def test_the_page_never_opens_a_share_link(monkeypatch):
    import gradio as gr

    from yollava.web.app import launch

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    monkeypatch.setenv("GRADIO_SHARE", "True")  # an environment asking for one changes nothing
    with gr.Blocks() as app:
        gr.Markdown("x")
    launch(app, "0.0.0.0", 7860, ("me", "pw"), block=False)
    assert seen["share"] is False and seen["server_name"] == "0.0.0.0" and seen["auth"] == ("me", "pw")
    assert seen["mcp_server"] is False and seen["inbrowser"] is False


# ----------------------------------------------------------------------------- uploads


def test_uploads_are_checked_like_command_line_images(tmp_path, monkeypatch):
    good = make_image(tmp_path / "a.png", (200, 30, 30))
    assert check_upload(good) is None
    (tmp_path / "text.png").write_text("not an image")
    assert check_upload(tmp_path / "text.png") == "not an image"
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    assert check_upload(truncated).startswith("corrupt")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_upload(tmp_path / "empty.jpg") == "empty file"
    Image.new("RGB", (16, 16)).save(tmp_path / "icon.ico")
    assert "ICO image" in check_upload(tmp_path / "icon.ico")
    monkeypatch.setattr(uploads_module, "MAX_UPLOAD_BYTES", 100)
    assert check_upload(good).startswith("too large")
    monkeypatch.setattr("yollava.images.MAX_PIXELS", 48 * 48 - 1)
    monkeypatch.setattr(uploads_module, "MAX_UPLOAD_BYTES", 10**6)
    assert "megapixels" in check_upload(good)


def test_a_browser_file_name_is_shown_never_used(tmp_path):
    assert display_name("../../etc/passwd", 2) == "photo 2 (passwd)"
    assert display_name("C:\\Users\\me\\dog.jpg", 1) == "photo 1 (dog.jpg)"
    assert display_name("a\nb\x00c.png", 3) == "photo 3 (abc.png)"
    assert display_name("", 4) == "photo 4"
    store = UploadStore(tmp_path / "store")
    photo = store.add(make_image(tmp_path / "x" / "../../etc/evil name.png", (10, 200, 10)), "photo 1 (evil name.png)")
    assert photo.path.parent == tmp_path / "store" / UPLOADS_DIR / "photos"
    assert photo.path.name == f"{photo.sha256}.png"  # the content hash and PIL's format, nothing from the browser
    assert store.add(photo.path, "again").path == photo.path
    with pytest.raises(YollavaError, match=r"^photo 9 \(t.png\): not an image; send a JPEG"):
        (tmp_path / "t.png").write_text("x")
        store.add(tmp_path / "t.png", "photo 9 (t.png)")


def test_a_photo_set_is_named_by_its_members_and_pruned_when_unused(tmp_path):
    store = UploadStore(tmp_path / "store")
    photos = [store.add(make_image(tmp_path / f"p{i}.png", (30 * i, 40, 40)), f"photo {i}") for i in range(4)]
    first = store.make_set(photos[:3])
    assert sorted(p.name for p in first.iterdir()) == sorted(p.path.name for p in photos[:3])
    assert store.make_set(photos[2::-1]) == first  # order does not matter
    with pytest.raises(YollavaError, match=r"2 different photo\(s\) \(1 repeated\): teach a concept from 3 to 10"):
        store.make_set([photos[0], photos[0], photos[1]])
    second = store.make_set(photos[1:])
    assert store.prune(keep=[first / photos[0].path.name]) == 2  # the second set and the photo only it held
    assert first.is_dir() and not second.exists()
    assert sorted(p.name for p in (tmp_path / "store" / UPLOADS_DIR / "photos").iterdir()) == sorted(p.path.name for p in photos[:3])
    assert store.prune(keep=[]) == 4 and not any((tmp_path / "store" / UPLOADS_DIR / "photos").iterdir())


# ----------------------------------------------------------------------------- the queue


def _spec(name: str, epochs: int = 1) -> JobSpec:
    return JobSpec(name=name, images_dir=Path("/nowhere"), photos=3, negatives="none", epochs=epochs)


class ScriptedTrainer:
    """Stands in for the recipe: emits `steps` step events per job, waiting for a go signal at each."""

    def __init__(self, steps: int = 3, fail: dict[str, Exception] | None = None):
        self.steps = steps
        self.fail = fail or {}
        self.order: list[str] = []
        self.go = threading.Semaphore(0)
        self.started = threading.Event()

    def __call__(self, spec: JobSpec, observer):
        self.order.append(spec.name)
        self.started.set()
        if spec.name in self.fail:
            raise self.fail[spec.name]
        for step in range(1, self.steps + 1):
            self.go.acquire(timeout=10)
            observer(TrainEvent(TrainStage.train, step, self.steps, 1, spec.epochs, loss=1.0 / step, eta_s=self.steps - step))
        observer(TrainEvent(TrainStage.epoch, 1, 1, 1, 1, 0.5, record={"epoch": 1, "loss": 0.5, "weighted": 0.75}))
        return {"message": f"saved <{spec.name}>"}


def test_jobs_train_one_at_a_time_in_order_and_a_queued_one_can_be_cancelled():
    trainer = ScriptedTrainer()
    queue = TrainingQueue(trainer)
    first, second, third = (queue.submit(_spec(n)) for n in ("a", "b", "c"))
    assert trainer.started.wait(5)
    with pytest.raises(YollavaError, match="'a' is already training"):
        queue.submit(_spec("a"))
    with pytest.raises(YollavaError, match="'b' is already in the queue"):
        queue.submit(_spec("b"))
    assert queue.cancel(second.id) == "'b' taken out of the queue"
    states = {j.name: j.state for j in queue.snapshot()}
    assert states == {"a": JobState.running, "b": JobState.cancelled, "c": JobState.queued}
    for _ in range(2 * trainer.steps):
        trainer.go.release()
    done = queue.wait(third.id, 10)
    assert done.state == JobState.done and done.message == "saved <c>"
    assert trainer.order == ["a", "c"]
    jobs = {j.name: j for j in queue.snapshot()}
    assert jobs["a"].losses[-1] == (1.0, 1.0 / trainer.steps) and jobs["a"].epochs == [{"epoch": 1, "loss": 0.5, "weighted": 0.75}]
    with pytest.raises(YollavaError, match="has already done"):
        queue.cancel(first.id)
    queue.close()


def test_cancelling_the_running_job_stops_it_at_its_next_event():
    trainer = ScriptedTrainer(steps=5)
    queue = TrainingQueue(trainer)
    job = queue.submit(_spec("a"))
    trainer.go.release()
    while not (queue.snapshot()[0].last):
        time.sleep(0.01)
    assert "stops at its next step" in queue.cancel(job.id)
    trainer.go.release()
    finished = queue.wait(job.id, 10)
    assert finished.state == JobState.cancelled and finished.message.startswith("cancelled: the concept store is untouched")
    assert finished.last.done == 2  # the event after the cancel raised
    queue.close()


def test_a_failed_job_says_why_in_one_line_and_the_next_one_runs(caplog):
    trainer = ScriptedTrainer(steps=1, fail={"a": YollavaError("no valid positive image found"), "b": RuntimeError("boom\nsecond line")})
    queue = TrainingQueue(trainer)
    jobs = [queue.submit(_spec(n)) for n in ("a", "b", "c")]
    trainer.go.release()
    with caplog.at_level(logging.ERROR, logger="yollava.web.jobs"):
        results = [queue.wait(j.id, 10) for j in jobs]
    assert [r.state for r in results] == [JobState.failed, JobState.failed, JobState.done]
    assert results[0].message == "no valid positive image found"
    assert results[1].message == "training failed: RuntimeError: boom (details in the server log)"
    assert "Traceback" in caplog.text  # the operator gets the traceback, the page one line
    queue.close()


# ----------------------------------------------------------------------------- the page, through gradio's client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The page on 127.0.0.1 with the tiny model, a store holding one damaged concept, a folder of negatives."""
    from yollava.web.app import build_app, launch
    from yollava.web.server import WebServer

    root = tmp_path_factory.mktemp("serve")
    old_temp = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    store = root / "store"
    (store / "broken").mkdir(parents=True)
    (store / "broken" / CONCEPT_JSON).write_text("{not json")
    for i in range(4):
        make_image(root / "neg" / f"n{i}.png", (30, 30 + 40 * i, 200), shape="square")
    photos = [make_image(root / "photos" / f"bo{i}.png", (200 + 15 * i, 40, 30)) for i in range(4)]
    config = load_config(overrides=["model.name=tiny", "data.recipe=recognition", f"train.runs_dir={root / 'runs'}", "prompt.max_new_tokens=6"])
    server = WebServer(config, store, build_tiny_base(), negative_choices(NegativeSource(folder=str(root / "neg"))))
    app = build_app(server)
    port = _free_port()
    launch(app, "127.0.0.1", port, None, block=False, quiet=True)
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False, download_files=str(root / "downloads"))
    yield {"client": client, "server": server, "store": store, "photos": photos, "root": root}
    app.close()
    server.close()
    if old_temp is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old_temp


def _files(paths):
    from gradio_client import handle_file

    return [handle_file(str(p)) for p in paths]


def _rows(client) -> dict[str, list]:
    table = client.predict(api_name="/concepts")[1]
    return {row[0]: row for row in table["data"]}


def _wait(client, name: str, states=("done", "failed", "cancelled"), timeout: float = TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in client.predict(api_name="/status")["jobs"] if j["name"] == name]
        if jobs and jobs[-1]["state"] in states:
            return jobs[-1]
        time.sleep(0.5)
    raise AssertionError(f"job {name} did not reach {states} in {timeout} s")


def _app_error(call) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert "Traceback" not in message and "\n" not in message.strip()
    return message


def test_a_damaged_concept_is_listed_as_damaged(page):
    rows = _rows(page["client"])
    assert rows["broken"][1].startswith("damaged: ") and "concept.json" in rows["broken"][1]
    details = page["client"].predict("broken", api_name="/details")
    assert "damaged" in details and "Remove it" in details


def test_bad_uploads_are_refused_with_a_message(page):
    client, photos, root = page["client"], page["photos"], page["root"]
    (root / "notes.png").write_text("these are not pixels")
    preview, note = client.predict(_files([photos[0], root / "notes.png"]), api_name="/check_photos")
    assert len(preview) == 1 and "1 refused: photo 2 (notes.png): not an image" in note
    message = _app_error(lambda: client.predict("bo", _files(photos[:3] + [root / "notes.png"]), "folder", 1, False, api_name="/teach"))
    assert "1 of 4 photo(s) refused: photo 4 (notes.png): not an image" in message
    assert "from 3 to 10 photos" in _app_error(lambda: client.predict("bo", _files(photos[:2]), "folder", 1, False, api_name="/teach"))
    assert "give the concept a name first" in _app_error(lambda: client.predict("", _files(photos[:3]), "folder", 1, False, api_name="/teach"))
    assert "invalid concept name '../bo'" in _app_error(lambda: client.predict("../bo", _files(photos[:3]), "folder", 1, False, api_name="/teach"))
    # a path instead of a negatives choice: gradio's dropdown refuses it, and so would the server behind it
    assert "not in the list of choices" in _app_error(lambda: client.predict("bo", _files(photos[:3]), "/etc", 1, False, api_name="/teach"))
    with pytest.raises(YollavaError, match="unknown negatives choice '/etc'"):
        page["server"].teach("bo", [(str(p), p.name) for p in photos[:3]], "/etc", 1)
    assert "less than minimum value 1" in _app_error(lambda: client.predict("bo", _files(photos[:3]), "folder", 0, False, api_name="/teach"))
    for epochs in (0, 2.5, 51, True):
        with pytest.raises(YollavaError, match="whole number from 1 to 50"):
            page["server"].teach("bo", [(str(p), p.name) for p in photos[:3]], "folder", epochs)
    assert not (page["store"] / "bo").exists() and not (page["store"] / ".." / "bo").exists()


def test_teach_train_chat_compare_cancel_remove(page):
    client, server, store, photos = page["client"], page["server"], page["store"], page["photos"]
    message = client.predict("bo", _files(photos[:3]), "folder", 1, False, api_name="/teach")
    assert message.startswith("queued &lt;bo&gt; as job")  # markdown: the identifier is escaped, not an HTML tag
    job = _wait(client, "bo")
    assert job["state"] == "done", job["message"]
    assert job["epoch"] == 1 and job["weighted"] is not None and job["message"].startswith("saved <bo>")
    row = _rows(client)["bo"]
    assert row[1] == "ok" and row[3] == "tiny" and row[6] == 3
    stored = sorted(p.name for p in (store / UPLOADS_DIR / "photos").iterdir())
    assert len(stored) == 3 and all(len(name.split(".")[0]) == 64 for name in stored)

    # chat streams (a random tiny model: any text will do) and remembers the conversation
    job_ = client.submit(["bo"], _files(photos[3:])[0], "Is <bo> in this photo?", [], api_name="/chat")
    outputs = list(job_)
    history = outputs[-1][0]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["content"]
    assert len(outputs) >= 2  # the empty answer first, then text as it grows
    second = client.predict(["bo"], _files(photos[3:])[0], "What colour is <bo>?", history, api_name="/chat")[0]
    assert [m["role"] for m in second] == ["user", "assistant"] * 2
    assert "not loaded" in _app_error(lambda: client.predict([], None, "Is <bo> here?", [], api_name="/chat"))
    assert "concept 'ghost' not found" in _app_error(lambda: client.predict(["ghost"], None, "hi", [], api_name="/chat"))

    # compare: the evaluation suite's soft prompt and in-context methods, side by side
    soft, references, context, numbers = client.predict("bo", _files(photos[3:])[0], "Is <bo> in this photo?", 2, api_name="/compare")
    assert len(references) == 2 and "P(Yes)" in soft and "P(Yes)" in context
    assert 0.0 <= numbers["soft-prompt"]["p_yes"] <= 1.0
    # "<bo> is <bo_1>...<bo_16>." is 19 tokens at least; the tiny BPE may split "is"/"." and the separating space
    assert 19 <= numbers["soft-prompt"]["tokens"] <= 21
    assert numbers["in-context"]["references"] == 2 and numbers["in-context"]["tokens"] > 2 * server.base.num_image_tokens

    # a cancelled training leaves the store untouched; chat answered meanwhile
    # 50 epochs (the most the page takes; early stop is off): the job cannot end on its own before the
    # cancel below reaches it, however slowly a busy machine answers the calls in between
    client.predict("mam", _files(photos[1:]), "folder", 50, False, api_name="/teach")
    _wait(client, "mam", states=("running",))
    answered = client.predict(["bo"], None, "What is <bo>?", [], api_name="/chat")[0]  # never blocked by training
    assert answered[-1]["content"]
    jobs = [j for j in client.predict(api_name="/status")["jobs"] if j["name"] == "mam"]
    assert "cancel" in client.predict(str(jobs[-1]["id"]), api_name="/cancel")
    cancelled = _wait(client, "mam")
    assert cancelled["state"] == "cancelled" and "store is untouched" in cancelled["message"]
    assert not (store / "mam" / CONCEPT_JSON).exists() and "mam" not in _rows(client)

    # remove: the concept and the photos only it used go; the damaged one can be removed too
    assert client.predict("bo", api_name="/remove") == "removed 'bo' and everything stored with it"
    assert client.predict("broken", api_name="/remove").startswith("removed 'broken'")
    assert _rows(client) == {}
    assert not any((store / UPLOADS_DIR / "photos").iterdir())
    assert "not found" in _app_error(lambda: client.predict("bo", api_name="/remove"))
    assert "invalid concept name" in _app_error(lambda: client.predict("../../x", api_name="/remove"))


def test_the_page_refuses_a_path_that_is_not_an_upload(page, tmp_path):
    from yollava.web.app import received

    outside = make_image(tmp_path / "secret.png", (1, 2, 3))
    with pytest.raises(YollavaError, match="did not arrive"):
        received(str(outside))
    with pytest.raises(YollavaError, match="did not arrive"):
        received(os.path.join(os.environ["GRADIO_TEMP_DIR"], "..", "secret.png"))


def test_the_charts_start_with_numeric_axes():
    # the browser keeps a chart's axis types and series from its first value: an untyped empty frame made accuracy a category axis
    import gradio as gr

    from yollava.web.app import _loss_frame, _recognition_frame

    assert gr.LinePlot(x="epoch", y="loss").postprocess(_loss_frame(None)).datatypes == {"epoch": "quantitative", "loss": "quantitative"}
    empty = _recognition_frame(None)
    types = gr.LinePlot(x="epoch", y="accuracy", color="series").postprocess(empty).datatypes
    assert types == {"epoch": "quantitative", "accuracy": "quantitative", "series": "nominal"}
    # and a coloured chart fixes its series at first render: every series is there, as undrawn points
    assert sorted(empty["series"]) == ["negative photos", "positive photos", "weighted"] and empty["accuracy"].isna().all()


def test_serve_demo_opens_the_toy_world_in_one_command(capsys, monkeypatch, tmp_path):
    """``serve --demo DIR``: the toy world is generated once, its pool is the page's negatives, 4 epochs, concepts in DIR/concepts."""
    from test_cli import run_cli

    import yollava.web.app as app_module
    import yollava.web.server as server_module

    seen = []
    real = server_module.WebServer

    def spy(config, store, base, choices, **kwargs):
        seen.append((config.model.name, config.train.epochs, Path(store), [c.source.pool for c in choices if c.source is not None]))
        return real(config, store, base, choices, **kwargs)

    def fake_launch(app, host, port, auth, **kwargs):
        raise KeyboardInterrupt  # the page is up: stop as Ctrl-C does

    monkeypatch.setattr(server_module, "WebServer", spy)
    monkeypatch.setattr(app_module, "launch", fake_launch)
    folder = tmp_path / "d"
    for _ in range(2):
        code, _, err = run_cli(["serve", "--demo", str(folder), "--model", "tiny"], capsys, monkeypatch, tmp_path)
        assert code == 0, err
    world = folder / "toyworld"
    assert (world / "train" / "ozzy").is_dir() and err.count("generating the demo's toy world") == 0  # the second run reused it
    assert seen == [("tiny", 4, folder / "concepts", [str(world / "pool")])] * 2
