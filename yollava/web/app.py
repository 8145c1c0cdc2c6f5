"""The gradio page of ``yollava serve``: Concepts, Teach, Chat and Compare tabs over a :class:`~yollava.web.server.WebServer`."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from yollava.errors import YollavaError  # noqa: E402
from yollava.progress import TrainStage  # noqa: E402
from yollava.web.assistant import Conversation, chat_examples  # noqa: E402
from yollava.web.compare import MAX_REFERENCES, MethodAnswer, compare  # noqa: E402
from yollava.web.jobs import Job, JobState, job_progress  # noqa: E402
from yollava.web.server import MAX_EPOCHS, WebServer  # noqa: E402
from yollava.web.uploads import MAX_PHOTOS, MAX_UPLOAD_BYTES, MIN_PHOTOS, check_upload, display_name  # noqa: E402

log = logging.getLogger(__name__)

THUMB = 256
TICK_S = 1.0
CSS = """
.yl-note {opacity: 0.8; font-size: 0.9em}
.yl-progress progress {width: 100%; height: 14px}
/* gradio 6 lays a gallery out in min(columns, items) columns: one photo would fill the whole box */
#yl-gallery .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}
#yl-preview .grid-container, #yl-refs .grid-container {grid-template-columns: repeat(5, minmax(0, 1fr)) !important}
"""


# ----------------------------------------------------------------------------- errors: one line, never a traceback


def _message(exc: Exception) -> str:
    if isinstance(exc, YollavaError):
        return str(exc)
    log.error("unexpected error in the page", exc_info=exc)
    return f"something went wrong ({exc.__class__.__name__}); the details are in the server's log"


def guarded(fn: Callable) -> Callable:
    """Turn a handler's exceptions into gradio's one-line error message (user mistakes as they are, bugs as a short notice)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001
                raise gr.Error(_message(exc), print_exception=False) from None
        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(_message(exc), print_exception=False) from None
    return call


def received(path: Any) -> str:
    """A path the web framework stored an upload at, checked to lie in its upload folder (nothing else is opened).

    Raises:
        YollavaError: anything else.
    """
    folder = Path(gr.utils.get_upload_folder()).resolve()
    if not isinstance(path, str) or not path:
        raise YollavaError("the upload did not arrive; send the file again")
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(folder) or not resolved.is_file():
        raise YollavaError("the upload did not arrive; send the file again")
    return str(resolved)


def _files(value: Any) -> list[tuple[str, str]]:
    """(received path, display name) of each file of a multi-file upload."""
    items = value if isinstance(value, list) else ([value] if value else [])
    out = []
    for index, item in enumerate(items, start=1):
        path = item if isinstance(item, str) else getattr(item, "name", None) or (item.get("path") if isinstance(item, dict) else None)
        out.append((received(path), display_name(Path(str(path)).name, index)))
    return out


# ----------------------------------------------------------------------------- pictures


def thumbnail(path: str | None, note: str = "") -> Image.Image:
    """A square thumbnail of a photo, or a grey tile saying ``note`` (no photo, damaged)."""
    if path:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            tile = Image.new("RGB", (THUMB, THUMB), (240, 240, 240))
            tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
            return tile
        except OSError:
            note = note or "photo unreadable"
    tile = Image.new("RGB", (THUMB, THUMB), (225, 225, 225))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((8, 8, THUMB - 9, THUMB - 9), outline=(170, 170, 170), width=3)
    text = note or "no photo"
    box = draw.textbbox((0, 0), text)
    draw.text(((THUMB - box[2]) / 2, (THUMB - box[3]) / 2), text, fill=(90, 90, 90))
    return tile


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------- the page


class Page:
    """The handlers of the page (each one a thin call into :class:`WebServer`)."""

    def __init__(self, server: WebServer):
        self.server = server

    # ---------------------------------------------------------------- concepts

    def concepts(self) -> tuple[list, pd.DataFrame, Any, list[str]]:
        cards = self.server.cards()
        gallery = []
        rows = []
        for card in cards:
            if card.status.startswith("damaged"):
                gallery.append((thumbnail(None, "damaged"), f"{card.name} (damaged)"))
            else:
                score = f" · {card.weighted:.2f}" if card.weighted is not None else ""
                gallery.append((thumbnail(card.photo, "" if card.photo else "photo not on this machine"),
                                f"{card.name}{score}" + ("" if card.usable else " (other base)")))
            rows.append([card.name, card.status, card.trained, card.base,
                         "-" if card.weighted is None else f"{card.weighted:.3f}", "-" if card.k is None else card.k,
                         card.photos, card.best_epoch or "-", _clock(card.seconds) if card.seconds else "-"])
        table = pd.DataFrame(rows, columns=["concept", "status", "trained", "base", "training recognition", "k", "photos", "best epoch", "training time"])
        names = [c.name for c in cards]
        return gallery, table, gr.update(choices=names, value=names[0] if names else None), names

    def details(self, name: str | None) -> str:
        if not name:
            return "No concept chosen. Teach one in the **Teach** tab."
        for card in self.server.cards():
            if card.name == name:
                break
        else:
            return f"'{name}' is no longer in the store."
        if card.status.startswith("damaged"):
            return _escape(f"### {name} — damaged\n\n{card.status.removeprefix('damaged: ')}\n\nRemove it, or teach it again with *replace* ticked.")
        lines = [f"### <{name}>", f"- trained {card.trained} on base **{card.base}**, k = {card.k}, from {card.photos} photo(s)"]
        if card.weighted is not None:
            lines.append(f"- training recognition (weighted) **{card.weighted:.3f}**, best epoch {card.best_epoch} of {card.epochs_run or '?'}"
                         + (f", {_clock(card.seconds)} of training" if card.seconds else ""))
        if not card.usable:
            lines.append(f"- cannot be used on this server: {card.status.removeprefix('other base: ')}")
        else:
            lines.append(f"- ask about it in **Chat** as <{name}>, e.g. *Is <{name}> in this photo?*")
        return _escape("\n".join(lines))

    def pick(self, names: list[str], event: gr.SelectData) -> Any:
        index = event.index if isinstance(event.index, int) else (event.index[0] if event.index else 0)
        return gr.update(value=names[index]) if 0 <= index < len(names) else gr.skip()

    def ask_remove(self, name: str | None) -> tuple[Any, str]:
        if not name:
            raise YollavaError("choose a concept to remove first")
        return gr.update(visible=True), _escape(f"Remove **<{name}>**? Its rows, training set and uploaded photos are deleted; this cannot be undone.")

    def remove(self, name: str | None) -> str:
        if not name:
            raise YollavaError("choose a concept to remove first")
        return _escape(self.server.remove(name))

    # ---------------------------------------------------------------- teach

    def check_photos(self, files: Any) -> tuple[list, str]:
        items = _files(files)
        preview, refused = [], []
        for path, label in items:
            reason = check_upload(path)
            if reason is None:
                preview.append((thumbnail(path), label))
            else:
                refused.append(f"{label}: {reason}")
        if not items:
            return [], f"Drop {MIN_PHOTOS}–{MAX_PHOTOS} photos of your subject (JPEG, PNG or WebP, at most {MAX_UPLOAD_BYTES // 2**20} MB each)."
        count = len(preview)
        note = f"{count} photo(s) ready" + ("" if MIN_PHOTOS <= count <= MAX_PHOTOS else f" — teach from {MIN_PHOTOS} to {MAX_PHOTOS}")
        if refused:
            note += f"; {len(refused)} refused: " + "; ".join(refused)
        return preview, _escape(note)

    def teach(self, name: str, files: Any, negatives: str, epochs: float, replace: bool) -> str:
        job = self.server.teach((name or "").strip(), _files(files), negatives, int(epochs) if epochs is not None else 0, bool(replace))
        ahead = sum(1 for j in self.server.queue.snapshot() if not j.state.finished and j.id < job.id)
        where = "training starts now" if ahead == 0 else f"{ahead} job(s) ahead of it"
        return _escape(f"queued <{job.name}> as job {job.id} ({job.spec.photos} photos, {job.spec.epochs} epochs): {where}. Chat stays available meanwhile.")

    def cancel(self, job_id: Any) -> str:
        if job_id in (None, ""):
            raise YollavaError("no training job to cancel")
        return _escape(self.server.queue.cancel(int(job_id)))

    def status(self) -> dict[str, Any]:
        """The training queue as plain data (what the page draws each second; also the API's view)."""
        jobs = self.server.queue.snapshot()
        return {"jobs": [job_progress(j) for j in jobs]}

    def tick(self, seen: dict[str, Any], chat_names: list[str] | None, compare_name: str | None, concept_name: str | None):
        jobs = self.server.queue.snapshot()
        current = _current(jobs)
        queue_rows = [[j.id, j.name, j.state.value, j.stage, _fraction_text(j)] for j in jobs[::-1]]
        table = pd.DataFrame(queue_rows, columns=["job", "concept", "state", "stage", "progress"])
        active = [(f"job {j.id}: {j.name} ({j.state.value})", str(j.id)) for j in jobs if not j.state.finished]
        version = (current.id, current.state.value, len(current.losses), len(current.epochs)) if current else None
        finished = sum(1 for j in jobs if j.state == JobState.done)
        plots = (gr.skip(), gr.skip())
        if version != seen.get("plots"):
            plots = (_loss_frame(current), _recognition_frame(current))
        refresh = finished != seen.get("finished")
        seen = {"plots": version, "finished": finished}
        cancel = gr.update(choices=active, value=active[0][1] if active else None)
        outputs = [table, _progress_html(current), *plots, cancel, seen]
        if refresh:
            gallery, details, concept_choice, names = self.concepts()
            usable = self.server.assistant.chat_names()
            trained = [j.name for j in jobs if j.state == JobState.done and j.name in usable]
            latest = trained[-1] if trained else (usable[0] if usable else None)
            keep = [n for n in (chat_names or []) if n in usable] or ([latest] if latest else [])
            outputs += [gallery, details, gr.update(choices=names, value=concept_name if concept_name in names else (latest or (names[0] if names else None))),
                        names, gr.update(choices=usable, value=keep),
                        gr.update(choices=usable, value=compare_name if compare_name in usable else latest)]
        else:
            outputs += [gr.skip()] * 6
        return tuple(outputs)

    # ---------------------------------------------------------------- chat

    def photo(self, path: Any) -> str | None:
        """A chat or compare photo: checked, then stored by content hash (None: no photo)."""
        if not path:
            return None
        return str(self.server.uploads.add(received(path), "the photo").path)

    def chat(self, names: list[str] | None, photo: Any, question: str, history: list | None, conversation: Conversation):
        names = list(names or [])
        image = self.photo(photo)
        history = list(history or [])
        if conversation.restart(names, image):
            history = []
        question = (question or "").strip()
        history.append({"role": "user", "content": question})
        history.append({"role": "assistant", "content": ""})
        answers = self.server.assistant.ask(conversation, question)
        yield history, "", conversation
        for text in answers:
            history[-1] = {"role": "assistant", "content": text}
            yield history, "", conversation
        if not history[-1]["content"]:
            history[-1] = {"role": "assistant", "content": "(no answer: the model ended at once)"}
            yield history, "", conversation

    def reset(self, conversation: Conversation) -> tuple[list, Conversation]:
        conversation.turns = []
        return [], conversation

    def compare(self, name: str | None, photo: Any, question: str, refs: float) -> tuple[str, list, str, dict[str, Any]]:
        if not name:
            raise YollavaError("choose a concept to compare (teach one first)")
        scene = self.photo(photo)
        if scene is None:
            raise YollavaError("add a photo: Compare asks both methods about one photo")
        references = self.server.training_photos(name, limit=int(refs or 1))
        soft, context = compare(self.server.assistant, name, scene, question, references, max_new_tokens=self.server.config.prompt.max_new_tokens)
        gallery = [(thumbnail(p), f"reference {i}") for i, p in enumerate(context.references, start=1)]
        numbers = {a.method: {"answer": a.answer, "p_yes": a.p_yes, "logp_yes": a.logp_yes, "logp_no": a.logp_no, "tokens": a.tokens,
                              "question": a.question, "references": len(a.references)} for a in (soft, context)}
        return _method_markdown(soft), gallery, _method_markdown(context), numbers

    def examples(self, names: list[str] | None) -> Any:
        return gr.Dataset(samples=[[e] for e in chat_examples(list(names or []))])


def _compare_question(name: str | None) -> str:
    return f"Is <{name}> in this photo?" if name else "Is <name> in this photo?"


def _method_markdown(answer: MethodAnswer) -> str:
    lines = [f"**answer:** {_escape(answer.answer) or '(empty)'}",
             f"**P(Yes)** {answer.p_yes:.3f} (first answer token: log p(Yes) {answer.logp_yes:.2f}, log p(No) {answer.logp_no:.2f})",
             f"**personalization tokens:** {answer.tokens:,} per question",
             f"<span class='yl-note'>asked as: {_escape(answer.question)}</span>"]
    return "\n\n".join(lines)


def _current(jobs: Sequence[Job]) -> Job | None:
    """The job the progress panel shows: the one training, else the newest."""
    running = [j for j in jobs if j.state == JobState.running]
    return running[0] if running else (jobs[-1] if jobs else None)


def _fraction(job: Job) -> float:
    """How far a job has come, 0 to 1 (scoring counted as the last tenth of each epoch)."""
    if job.state == JobState.done:
        return 1.0
    event = job.last
    if event is None or not event.epochs:
        return 0.0
    if event.stage == TrainStage.save:
        return 1.0
    if event.stage == TrainStage.epoch:
        return min(1.0, event.epoch / event.epochs)
    within = 0.0
    if event.stage == TrainStage.train and event.total:
        within = 0.9 * event.done / event.total
    elif event.stage == TrainStage.score and event.total:
        within = 0.9 + 0.1 * event.done / event.total
    return min(1.0, (event.epoch - 1 + within) / event.epochs)


def _fraction_text(job: Job) -> str:
    if job.state in (JobState.queued, JobState.cancelled, JobState.failed):
        return "-" if job.state == JobState.queued else job.state.value
    return f"{100 * _fraction(job):.0f}%"


def _progress_html(job: Job | None) -> str:
    if job is None:
        return "<div class='yl-progress'><p>No training yet. Teach a concept above: it trains here in the background.</p></div>"
    p = job_progress(job)
    parts = [f"<b>&lt;{job.name}&gt;</b> — {job.stage}"]
    if p["step"] is not None:
        parts.append(f"step {p['step']}/{p['steps']}")
    if p["loss"] is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p["weighted"] is not None:
        parts.append(f"training recognition {p['weighted']:.3f} (best {p['best_weighted']:.3f} @ epoch {p['best_epoch']})")
    parts.append(f"{_clock(p['elapsed_s'])} elapsed")
    if p["eta_s"] is not None:
        parts.append(f"about {_clock(p['eta_s'])} left")
    fraction = _fraction(job)
    message = f"<p class='yl-note'>{_escape(job.message)}</p>" if job.message else ""
    return (f"<div class='yl-progress' data-state='{job.state.value}'><p>{' · '.join(_escape_keep_tags(x) for x in parts)}</p>"
            f"<progress value='{fraction:.3f}' max='1'></progress> {100 * fraction:.0f}%{message}</div>")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_keep_tags(text: str) -> str:
    return text if text.startswith("<b>") else _escape(text)


def _loss_frame(job: Job | None) -> pd.DataFrame:
    rows = job.losses if job else []
    # typed even when empty: the chart keeps the axis types of its first value (object columns plot as categories)
    return pd.DataFrame({"epoch": [r[0] for r in rows], "loss": [r[1] for r in rows]}).astype({"epoch": float, "loss": float})


RECOGNITION_SERIES = {"weighted": "weighted", "positive": "positive photos", "negative": "negative photos"}
RECOGNITION_COLORS = {"weighted": "#4f46e5", "positive photos": "#16a34a", "negative photos": "#dc2626"}


def _recognition_frame(job: Job | None) -> pd.DataFrame:
    rows = []
    for record in job.epochs if job else []:
        for key, series in RECOGNITION_SERIES.items():
            if record.get(key) is not None:
                rows.append({"epoch": record["epoch"], "accuracy": record[key], "series": series})
    if not rows:
        # one undrawn (NaN) point per series: gradio 6 fixes a coloured chart's series when it first renders,
        # so a chart that starts empty would never draw the lines that arrive later
        rows = [{"epoch": 1.0, "accuracy": float("nan"), "series": series} for series in RECOGNITION_SERIES.values()]
    return pd.DataFrame(rows, columns=["epoch", "accuracy", "series"]).astype({"epoch": float, "accuracy": float, "series": str})


def build_app(server: WebServer) -> gr.Blocks:
    """The page; launch it with :func:`launch`."""
    page = Page(server)
    choices = [(c.label, c.key) for c in server.choices.values()]
    gallery0, table0, _, names0 = page.concepts()
    usable0 = server.assistant.chat_names()
    with gr.Blocks(title="yollava", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"# yollava\nTeach the assistant your subject from a few photos, then talk about it. "
                    f"Base model **{server.base.model_id}** · training runs in the background, one concept at a time; chat stays available.",
                    elem_id="yl-header")
        names_state = gr.State(names0)
        with gr.Tabs():
            with gr.Tab("Concepts", id="concepts"):
                with gr.Row():
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(gallery0, label="your concepts", columns=4, height=360, allow_preview=False, elem_id="yl-gallery")
                    with gr.Column(scale=2):
                        concept = gr.Dropdown(names0, value=names0[0] if names0 else None, label="concept", allow_custom_value=True)
                        details = gr.Markdown(page.details(names0[0] if names0 else None), elem_id="yl-details")
                        with gr.Row():
                            refresh = gr.Button("Refresh", size="sm")
                            remove_ask = gr.Button("Remove…", variant="stop", size="sm")
                        with gr.Group(visible=False) as confirm:
                            confirm_text = gr.Markdown()
                            with gr.Row():
                                remove_yes = gr.Button("Yes, remove it", variant="stop", size="sm", elem_id="yl-remove-yes")
                                remove_no = gr.Button("Keep it", size="sm")
                        removed = gr.Markdown(elem_id="yl-removed")
                table = gr.Dataframe(table0, label="details", interactive=False, elem_id="yl-table")

            with gr.Tab("Teach", id="teach"):
                with gr.Row():
                    with gr.Column():
                        name = gr.Textbox(label="name", placeholder="e.g. bo (a-z, 0-9, '_' or '-')", max_length=32, elem_id="yl-name")
                        photos = gr.File(file_count="multiple", file_types=["image"], label=f"{MIN_PHOTOS}–{MAX_PHOTOS} photos of it", elem_id="yl-photos")
                        negatives = gr.Dropdown(choices, value=choices[0][1], label="negatives (what it is not)", elem_id="yl-negatives")
                        with gr.Row():
                            epochs = gr.Slider(1, MAX_EPOCHS, value=min(server.config.train.epochs, MAX_EPOCHS), step=1, label="epochs")
                            replace = gr.Checkbox(label="replace an existing concept of this name")
                        train = gr.Button("Train", variant="primary", elem_id="yl-train")
                        teach_msg = gr.Markdown(elem_id="yl-teach-msg")
                    with gr.Column():
                        preview = gr.Gallery(label="photos", columns=5, height=220, allow_preview=False, elem_id="yl-preview")
                        photos_msg = gr.Markdown(elem_id="yl-photos-msg")
                progress = gr.HTML(_progress_html(None), elem_id="yl-progress")
                with gr.Row():
                    loss_plot = gr.LinePlot(_loss_frame(None), x="epoch", y="loss", title="training loss (mean of the last 20 steps)", height=240)
                    recognition_plot = gr.LinePlot(_recognition_frame(None), x="epoch", y="accuracy", color="series",
                                                   title="recognition on the training photos, per epoch", y_lim=[0, 1], height=240,
                                                   color_map=RECOGNITION_COLORS)
                with gr.Row():
                    queue_table = gr.Dataframe(pd.DataFrame(columns=["job", "concept", "state", "stage", "progress"]), label="queue",
                                               interactive=False, elem_id="yl-queue")
                    with gr.Column(scale=0, min_width=220):
                        cancel_job = gr.Dropdown([], label="job", allow_custom_value=True)
                        cancel = gr.Button("Cancel job", variant="stop", size="sm", elem_id="yl-cancel")
                        cancel_msg = gr.Markdown()
                status = gr.JSON(visible=False)

            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    with gr.Column(scale=1):
                        chat_concepts = gr.Dropdown(usable0, value=usable0[:1], multiselect=True, label="talk about", allow_custom_value=True, elem_id="yl-chat-concepts")
                        chat_photo = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="photo (optional)", height=240, elem_id="yl-chat-photo")
                        reset = gr.Button("New conversation", size="sm")
                    with gr.Column(scale=2):
                        chatbot = gr.Chatbot(label="yollava", height=380, elem_id="yl-chatbot", feedback_options=None)
                        with gr.Row():
                            question = gr.Textbox(show_label=False, placeholder="Ask about your concept…", scale=5, elem_id="yl-question")
                            send = gr.Button("Send", variant="primary", scale=1, elem_id="yl-send")
                        examples = gr.Dataset(components=[question], samples=[[e] for e in chat_examples(usable0[:1])], label="examples")
                conversation = gr.State(Conversation())

            with gr.Tab("Compare", id="compare"):
                gr.Markdown("One photo, one question, asked two ways: with the learned **soft prompt** (Yo'LLaVA: "
                            "k+2 tokens, trained) and **in-context** (PVIT's format: the concept's own training photos "
                            "shown as *This is &lt;name&gt;.* before the scene, nothing trained).", elem_id="yl-compare-intro")
                with gr.Row():
                    with gr.Column(scale=1):
                        compare_concept = gr.Dropdown(usable0, value=usable0[0] if usable0 else None, label="concept", allow_custom_value=True)
                        compare_photo = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="photo", height=240, elem_id="yl-compare-photo")
                        compare_question = gr.Textbox(value=_compare_question(usable0[0] if usable0 else None), label="question", elem_id="yl-compare-question")
                        refs = gr.Slider(1, MAX_REFERENCES, value=1, step=1, label="reference photos for in-context")
                        compare_go = gr.Button("Compare", variant="primary", elem_id="yl-compare")
                    with gr.Column(scale=1):
                        gr.Markdown("#### Soft prompt")
                        soft_out = gr.Markdown(elem_id="yl-soft")
                    with gr.Column(scale=1):
                        gr.Markdown("#### In-context")
                        ref_gallery = gr.Gallery(label="its reference photos", columns=5, height=140, allow_preview=False, elem_id="yl-refs")
                        context_out = gr.Markdown(elem_id="yl-context")
                compare_json = gr.JSON(visible=False)

        seen = gr.State({})
        timer = gr.Timer(TICK_S)

        # concepts
        concepts_out = [gallery, table, concept, names_state]
        refresh.click(guarded(page.concepts), None, concepts_out, api_name="concepts")
        concept.change(guarded(page.details), concept, details, api_name="details", show_progress="hidden")
        gallery.select(page.pick, names_state, concept, api_visibility="private")
        remove_ask.click(guarded(page.ask_remove), concept, [confirm, confirm_text], api_visibility="private")
        remove_no.click(lambda: gr.update(visible=False), None, confirm, api_visibility="private")
        remove_yes.click(guarded(page.remove), concept, removed, api_name="remove").then(
            lambda: gr.update(visible=False), None, confirm, api_visibility="private").then(
            guarded(page.concepts), None, concepts_out, api_visibility="private").then(
            lambda names: (gr.update(choices=server.assistant.chat_names(), value=[n for n in names if n in server.assistant.chat_names()][:1]),),
            names_state, [chat_concepts], api_visibility="private")

        # teach
        photos.change(guarded(page.check_photos), photos, [preview, photos_msg], api_name="check_photos")
        train.click(guarded(page.teach), [name, photos, negatives, epochs, replace], teach_msg, api_name="teach")
        cancel.click(guarded(page.cancel), cancel_job, cancel_msg, api_name="cancel")
        timer.tick(guarded(page.tick), [seen, chat_concepts, compare_concept, concept],
                   [queue_table, progress, loss_plot, recognition_plot, cancel_job, seen,
                    gallery, table, concept, names_state, chat_concepts, compare_concept],
                   show_progress="hidden", api_visibility="private", concurrency_limit=None)
        gr.Button(visible=False).click(guarded(page.status), None, status, api_name="status", concurrency_limit=None)

        # chat
        chat_inputs = [chat_concepts, chat_photo, question, chatbot, conversation]
        send.click(guarded(page.chat), chat_inputs, [chatbot, question, conversation], api_name="chat", concurrency_id="model")
        question.submit(guarded(page.chat), chat_inputs, [chatbot, question, conversation], api_visibility="private", concurrency_id="model")
        reset.click(page.reset, conversation, [chatbot, conversation], api_name="reset")
        chat_concepts.change(page.examples, chat_concepts, examples, api_visibility="private", show_progress="hidden")
        examples.click(lambda sample: sample[0], examples, question, api_visibility="private")
        chat_photo.change(page.reset, conversation, [chatbot, conversation], api_visibility="private")

        # compare
        compare_concept.change(lambda n: _compare_question(n), compare_concept, compare_question, api_visibility="private")
        compare_go.click(guarded(page.compare), [compare_concept, compare_photo, compare_question, refs],
                         [soft_out, ref_gallery, context_out, compare_json], api_name="compare", concurrency_id="model")
        app.load(guarded(page.concepts), None, concepts_out, api_visibility="private")
    return app


def launch(app: gr.Blocks, host: str, port: int, auth: tuple[str, str] | None, *, block: bool = True, quiet: bool = False) -> Any:
    """Serve the page on ``host:port`` (never a public share link), with a login when ``auth`` is given."""
    theme = gr.themes.Default(primary_hue="indigo")
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, auth=auth, auth_message="yollava: log in" if auth else None,
        max_file_size=MAX_UPLOAD_BYTES, show_error=False, prevent_thread_lock=not block, quiet=quiet, inbrowser=False,
        footer_links=[], theme=theme, css=CSS, ssr_mode=False, mcp_server=False, enable_monitoring=False,
    )
