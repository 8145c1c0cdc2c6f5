"""The Yo'LLaVA recipe: setup → epochs (train, score recognition on the training photos, checkpoint) → keep the best epoch → save."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console

import yollava
from yollava.base import Base
from yollava.batching import epoch_batches
from yollava.concept import ConceptParams, attached, concept_dir, concept_lock, init_concept, save_concept, validate_name
from yollava.config import Config, LrSchedule, TrainConfig, config_to_dict, config_to_yaml, load_config
from yollava.data import NegativeSource, Sample, summarize
from yollava.errors import YollavaError
from yollava.evaluate.recognition import RecognitionResult, evaluate_concept
from yollava.forward import FeatureCache, ImageRef, PrefixCache, collate, make_cache, prefix_items, split_lengths, supervised_loss
from yollava.images import file_sha256
from yollava.methods.soft_prompt import concept_personalization
from yollava.models import load_base
from yollava.plots import plot_training_history
from yollava.prepare import TrainingInputs, TrainingSet, build_samples, gather_inputs
from yollava.progress import TrainEvent, TrainObserver, TrainStage, progress_bar
from yollava.prompts import ChatFormat, Turn, encode, load_template, render
from yollava.storage import (
    CHECKPOINT_FILE,
    CONCEPT_JSON,
    DATA_DIR,
    RUN_CONFIG,
    RUN_DONE,
    RUN_METRICS,
    RUN_PLOT,
    RUN_SAMPLES,
    append_jsonl,
    load_tensors,
    read_tensor_metadata,
    save_tensors_atomic,
    settle,
    write_text_atomic,
    writing,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced."""

    concept_dir: Path
    run_dir: Path
    best_epoch: int
    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EncodedSample:
    """A training sample as token ids, labels (answer tokens only) and the images it shows."""

    input_ids: list[int]
    labels: list[int]
    images: list[ImageRef]


def encode_samples(base: Base, fmt: ChatFormat, prefix: str, samples: Sequence[Sample], max_length: int) -> list[EncodedSample]:
    """Tokenize every sample once (labels from message segments; answers end with EOS).

    Raises:
        YollavaError: a sample longer than ``train.max_length``.
    """
    out = []
    eos = base.tokenizer.eos_token
    for sample in samples:
        turn = Turn(sample.question, sample.answer, images=1 if sample.image else 0)
        encoded = encode(base.tokenizer, render(fmt, [turn], eos, prefix), base.image_token_id, base.num_image_tokens)
        if len(encoded.input_ids) > max_length:
            raise YollavaError(f"a training sample has {len(encoded.input_ids)} tokens > train.max_length={max_length}; shorten it or raise the limit")
        refs = [ImageRef(sample.image, sample.variant)] if sample.image else []
        out.append(EncodedSample(encoded.input_ids, encoded.labels, refs))
    return out


# ----------------------------------------------------------------------------- run state


@dataclass
class RunState:
    """Everything a run carries from epoch to epoch; its checkpoint is this plus the rows and the optimizer.

    A resumed run reloads it and continues at ``epoch`` as if it had never stopped.
    """

    run_dir: Path
    images_dir: str
    negatives: NegativeSource
    overwrite: bool
    epoch: int = 0  # epochs finished
    best: dict[str, Any] = field(default_factory=lambda: {"weighted": -1.0})
    history: list[dict[str, Any]] = field(default_factory=list)
    best_rows: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, record: dict[str, Any], result: RecognitionResult, params: ConceptParams) -> None:
        """Add an epoch's metrics; keep its rows if it beats the best so far (strictly: ties keep the earlier)."""
        self.epoch = record["epoch"]
        self.history.append(record)
        if result.weighted > self.best["weighted"]:
            self.best = {"epoch": record["epoch"], **result.summary(), "loss": record["loss"]}
            self.best_rows = params.rows()

    def save(self, params: ConceptParams, optimizer: torch.optim.Optimizer) -> None:
        """Write the checkpoint: one safetensors file, the run state as JSON in its metadata, replaced atomically."""
        tensors, groups = _optimizer_state(optimizer)
        tensors.update(params.rows())
        tensors.update({f"best_{key}": value for key, value in self.best_rows.items()})
        state = {
            "epoch": self.epoch, "best": self.best, "history": self.history, "param_groups": groups,
            "images_dir": self.images_dir, "negatives": self.negatives.to_dict(), "overwrite": self.overwrite,
        }
        save_tensors_atomic(self.run_dir / CHECKPOINT_FILE, tensors, metadata={"run_state": json.dumps(state, sort_keys=True)})

    @classmethod
    def load(cls, run_dir: Path) -> tuple["RunState", dict[str, torch.Tensor], list[dict[str, Any]]]:
        """A checkpointed run: its state, the checkpoint's tensors and the optimizer's param groups."""
        saved = json.loads(read_tensor_metadata(run_dir / CHECKPOINT_FILE)["run_state"])
        tensors = load_tensors(run_dir / CHECKPOINT_FILE)
        state = cls(
            run_dir=run_dir, images_dir=saved["images_dir"], negatives=NegativeSource(**saved["negatives"]),
            overwrite=saved["overwrite"], epoch=saved["epoch"], best=saved["best"], history=saved["history"],
            best_rows={key: tensors[f"best_{key}"] for key in ("embed_rows", "head_rows")},
        )
        return state, tensors, saved["param_groups"]

    def restore(self, params: ConceptParams, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
        """Put the checkpoint's rows and optimizer moments back."""
        params.load_rows(tensors)
        _load_optimizer_state(optimizer, tensors, groups)

    def stop_reason(self, patience: int, epochs: int) -> str | None:
        """Why training ends before ``epochs``, or None to go on."""
        if patience and self.epoch - self.best["epoch"] >= patience:
            return f"early stop: no improvement for {patience} epochs"
        if self.best["weighted"] >= 1.0 and self.epoch < epochs:
            # only a strictly better epoch replaces the best one: nothing later can be kept
            return f"stop after epoch {self.epoch}: every training image is recognised, no later epoch can do better"
        return None


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def find_resumable_run(runs_dir: Path, name: str) -> Path:
    """The newest unfinished run of ``name`` that has a checkpoint.

    Raises:
        YollavaError: nothing to resume.
    """
    root = runs_dir / name
    candidates = sorted(
        (p for p in root.glob("*") if (p / CHECKPOINT_FILE).is_file() and not (p / RUN_DONE).exists()),
        key=lambda p: p.name,
    ) if root.is_dir() else []
    if not candidates:
        raise YollavaError(f"no unfinished run of '{name}' with a checkpoint under {root}; start a new run without --resume")
    return candidates[-1]


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run = runs_dir / name / stamp
    suffix = 1
    while run.exists():
        run = runs_dir / name / f"{stamp}-{suffix}"
        suffix += 1
    with writing(runs_dir / name):
        run.mkdir(parents=True)
    return run


# ----------------------------------------------------------------------------- the recipe


NO_NEGATIVES = (
    "no negatives: a concept trained without them learns to answer Yes to everything; pass --negatives DIR, "
    "or mine them with --pool DIR, --index IDX or --service URL --index-name NAME (or run `yollava retrieve` first); "
    "--no-negatives trains without them anyway"
)


def epoch_lr(train: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under ``train.lr_schedule``."""
    if train.lr_schedule == LrSchedule.linear:
        return train.lr * (1 - epoch / train.epochs)
    return train.lr


def train_concept(
    config: Config,
    name: str,
    images_dir: str | Path | None,
    negatives: NegativeSource | str | Path | None = None,
    store: str | Path = "concepts",
    overwrite: bool = False,
    resume: bool = False,
    base: Base | None = None,
    console: Console | None = None,
    no_negatives: bool = False,
    observer: TrainObserver | None = None,
) -> TrainResult:
    """Learn a concept's soft prompt and save the best epoch to ``store/<name>/``.

    The concept's lock is held from the existence check to the final save, so a second run of the
    same concept fails at once naming this one's PID; the store changes only at that save, when the
    concept, its training set and its negatives are swapped in as one unit. A run that stops before
    its first checkpoint leaves no run folder behind (there is nothing to resume).

    Args:
        config: the resolved configuration (ignored on ``resume``: the run's own config.yaml wins).
        name: concept name (``[a-z0-9][a-z0-9_-]{0,31}``).
        images_dir: folder of positive photos (on ``resume`` it may be None: the run's is used).
        negatives: a folder of negatives (sampled down to ``data.max_negatives``) or a
            :class:`NegativeSource` that also names a retrieval pool, index or service.
        store: concept store; the concept there is replaced only when the run finishes.
        overwrite: allow replacing an existing concept.
        resume: continue the newest unfinished run of this concept from its last checkpoint.
        base: an already loaded base (tests, sweeps; it must have no concept of this name attached);
            loaded from ``config.model`` when None.
        console: where progress and messages go (stderr by default).
        no_negatives: train even when there are no negatives (the concept will say Yes to everything).
        observer: called with a :class:`~yollava.progress.TrainEvent` after every conversation answer,
            optimizer step, scored photo and epoch, and once before the save. An exception it raises
            stops the run there exactly as Ctrl-C does: the store is untouched, a run with a
            checkpoint can be resumed, and the exception reaches the caller (a web page cancels this way).

    Returns:
        A :class:`TrainResult`.

    Raises:
        YollavaError: bad name, existing concept without ``overwrite``, another run of it, bad images,
            no negatives (without ``no_negatives``), nothing to resume, a failed write.
    """
    console = console or Console(stderr=True)
    validate_name(name)
    runs = Path(config.train.runs_dir) / name
    before = set(runs.iterdir()) if runs.is_dir() else set()
    with concept_lock(store, name):
        try:
            return _run_recipe(config, name, images_dir, negatives, store, overwrite, resume, base, console, no_negatives, observer)
        except BaseException:
            _drop_unresumable_runs(runs, before)
            raise


def _drop_unresumable_runs(runs: Path, before: set[Path]) -> None:
    """Delete run folders this call created that hold no checkpoint: nothing in them can be resumed."""
    for run in (set(runs.iterdir()) if runs.is_dir() else set()) - before:
        if run.is_dir() and not (run / CHECKPOINT_FILE).exists():
            shutil.rmtree(run, ignore_errors=True)


def _run_recipe(
    config: Config, name: str, images_dir: str | Path | None, negatives: NegativeSource | str | Path | None,
    store: str | Path, overwrite: bool, resume: bool, base: Base | None, console: Console, no_negatives: bool,
    observer: TrainObserver | None = None,
) -> TrainResult:
    """:func:`train_concept` with the concept's lock held."""
    # setup: the run to continue (its own config and inputs) or a new one's inputs
    state: RunState | None = None
    if resume:
        run_dir = find_resumable_run(Path(config.train.runs_dir), name)
        state, checkpoint, groups = RunState.load(run_dir)
        config = load_config(base=run_dir / RUN_CONFIG)
        images_dir, negatives, overwrite = state.images_dir, state.negatives, overwrite or state.overwrite
        console.print(f"resuming {run_dir} after epoch {state.epoch}")
    if images_dir is None:
        raise YollavaError("--images is required; pass the folder of photos of the subject")
    existing = settle(concept_dir(store, name))  # the lock is held: an interrupted swap is finished first
    if existing is not None and (existing / CONCEPT_JSON).exists() and not overwrite:
        raise YollavaError(f"concept '{name}' already exists in {Path(store)}; pass --overwrite to replace it or pick another name")
    if not isinstance(negatives, NegativeSource):
        negatives = NegativeSource(folder=None if negatives is None else str(negatives))
    inputs = gather_inputs(name, images_dir, negatives, store, config)  # fails before the (slow) base load
    if not inputs.images.negatives:
        if not (no_negatives or state is not None):  # a resumed run passed this check when it started
            raise YollavaError(NO_NEGATIVES)
        log.warning("no negatives (--no-negatives): the concept will learn to answer Yes to everything")
    if base is None:
        console.print(f"loading base model {config.model.name} ...")
        base = load_base(config.model)
    # frozen image features and prefix keys/values (system text + image), computed once and reused by
    # the conversation answers, every training step and every score
    cache = make_cache(base, config.train)
    run_dir = state.run_dir if state is not None else _new_run_dir(Path(config.train.runs_dir), name)
    # a new training set goes into the run folder and reaches the store with the concept, not before
    training_set = build_samples(inputs, base, store, config, cache, console, save_to=run_dir / DATA_DIR, observer=observer)

    torch.manual_seed(config.train.seed)
    params = init_concept(base, name, config.concept, seed=config.train.seed)
    trainable = [params.embed_rows, params.head_rows]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    if state is None:
        state = _start_run(config, inputs, training_set, overwrite, run_dir)
    else:
        state.restore(params, optimizer, checkpoint, groups)
    if not state.best_rows:
        state.best_rows = params.rows()
    with attached(base, params):
        _train_epochs(config, base, params, optimizer, inputs, training_set, cache, state, console, observer)
        if observer is not None:
            observer(TrainEvent(TrainStage.save, epoch=state.epoch, epochs=config.train.epochs,
                                elapsed_s=state.history[-1]["elapsed_s"] if state.history else 0.0, eta_s=0.0))
        concept = ConceptParams(params.tokens, params.head_mode, state.best_rows["embed_rows"], state.best_rows["head_rows"])
        summary = _training_summary(config, inputs, training_set, state)
        plot_training_history(state.history, state.run_dir / RUN_PLOT, title=f"<{name}>")
        # the concept is written only now, so a crash or Ctrl-C above never touches the store; its
        # training set (built in the run folder, or the stored one it reused) is swapped in with it
        built = state.run_dir / DATA_DIR
        folder = save_concept(concept, base, store, summary, data=built if built.is_dir() else None)
    write_text_atomic(state.run_dir / RUN_DONE, str(folder) + "\n")
    console.print(f"saved concept '{name}' to {folder} (best epoch {state.best['epoch']}, weighted recognition {state.best['weighted']:.3f} on training images)")
    return TrainResult(concept_dir=folder, run_dir=state.run_dir, best_epoch=state.best["epoch"], best=state.best, history=state.history)


def _start_run(config: Config, inputs: TrainingInputs, training_set: TrainingSet, overwrite: bool, run_dir: Path) -> RunState:
    """The new run's folder gets the resolved config and the samples it trains on."""
    write_text_atomic(run_dir / RUN_CONFIG, config_to_yaml(config))
    write_text_atomic(run_dir / RUN_SAMPLES, "".join(json.dumps(s.to_dict(), sort_keys=True) + "\n" for s in training_set.samples))
    return RunState(run_dir=run_dir, images_dir=inputs.images_dir, negatives=inputs.negatives, overwrite=overwrite)


def _train_epochs(
    config: Config, base: Base, params: ConceptParams, optimizer: torch.optim.Optimizer, inputs: TrainingInputs,
    training_set: TrainingSet, cache: FeatureCache | PrefixCache, state: RunState, console: Console, observer: TrainObserver | None = None,
) -> None:
    """Epochs from ``state.epoch`` on: train one pass, score the training photos, checkpoint, maybe stop."""
    fmt = ChatFormat.load(config.prompt.template)
    encoded = encode_samples(base, fmt, params.tokens.soft_prompt, training_set.samples, config.train.max_length)
    images = inputs.images
    sequences = [(e.input_ids, e.labels, e.images) for e in encoded]
    if isinstance(cache, PrefixCache):
        cache.warm(prefix_items(base, sequences))  # most used first, so the budget keeps those close
    lengths = [split_lengths(base, ids, labels) for ids, labels, _ in sequences]
    batch_size = config.train.batch_size
    steps_per_epoch = (len(encoded) + batch_size - 1) // batch_size
    pad_id = base.tokenizer.pad_token_id or 0
    console.print(
        f"training <{inputs.name}>: {len(images.positives)} positive / {len(images.negatives)} negative images, "
        f"{len(encoded)} samples {summarize(training_set.samples)}, k={config.concept.k}, "
        f"{params.embed_rows.numel() + params.head_rows.numel()} trainable numbers, run dir {state.run_dir}"
    )
    started = time.perf_counter() - (state.history[-1]["elapsed_s"] if state.history else 0.0)
    eta = _Eta(state.epoch, config.train.epochs, steps_per_epoch)
    notify = observer or (lambda event: None)
    with progress_bar(console) as progress:
        epochs_task = progress.add_task("epochs", total=config.train.epochs, completed=state.epoch, info="", log_every=1)
        for epoch in range(state.epoch, config.train.epochs):
            lr = epoch_lr(config.train, epoch)
            for group in optimizer.param_groups:  # set each epoch, so a resumed run continues the schedule
                group["lr"] = lr
            steps_task = progress.add_task(f"epoch {epoch + 1}", total=steps_per_epoch, info="")
            eta.start_epoch(epoch)
            losses: list[float] = []
            for step, indices in enumerate(epoch_batches(lengths, batch_size, config.train.seed, epoch, config.train.bucket_window)):
                chunk = [encoded[i] for i in indices]
                batch = collate([(e.input_ids, e.labels, e.images) for e in chunk], pad_id, base.device)
                loss = supervised_loss(base, batch, cache, config.train.head_at_supervised_only)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                running = sum(losses[-20:]) / len(losses[-20:])
                progress.update(steps_task, advance=1, info=f"loss {running:.4f}")
                notify(TrainEvent(TrainStage.train, step + 1, steps_per_epoch, epoch + 1, config.train.epochs, running,
                                  elapsed_s=time.perf_counter() - started, eta_s=eta.remaining(step + 1)))
            progress.remove_task(steps_task)

            n_score = len(images.positives) + len(images.negatives)
            scoring = progress.add_task(f"score epoch {epoch + 1}", total=n_score, info="")
            scored = [0]

            def on_scored(n: int, epoch: int = epoch) -> None:
                progress.update(scoring, advance=n)
                scored[0] += n
                notify(TrainEvent(TrainStage.score, scored[0], n_score, epoch + 1, config.train.epochs,
                                  elapsed_s=time.perf_counter() - started, eta_s=eta.remaining(steps_per_epoch)))

            result = evaluate_concept(
                base, concept_personalization(params.tokens), images.positives, images.negatives, cache, fmt,
                generation=config.train.eval_generation, progress=on_scored, require_negatives=False,
            )
            progress.remove_task(scoring)

            record = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "lr": optimizer.param_groups[0]["lr"], **result.summary(), "elapsed_s": time.perf_counter() - started}
            state.record(record, result, params)
            append_jsonl(state.run_dir / RUN_METRICS, record)
            state.save(params, optimizer)
            eta.end_epoch()
            notify(TrainEvent(TrainStage.epoch, epoch + 1, config.train.epochs, epoch + 1, config.train.epochs, record["loss"],
                              record=record, elapsed_s=record["elapsed_s"], eta_s=eta.remaining(0, next_epoch=True)))
            best = state.best
            progress.update(epochs_task, advance=1, info=f"loss {record['loss']:.4f} weighted {result.weighted:.3f} (best {best['weighted']:.3f} @ {best['epoch']})")
            reason = state.stop_reason(config.train.early_stop_patience, config.train.epochs)
            if reason:
                console.print(reason)
                break


class _Eta:
    """Seconds left until the last configured epoch ends, from this process's own timing.

    Before the first epoch has ended, the steps' rate is extrapolated (scoring not yet timed); after
    it, whole epochs (steps + scoring) are.
    """

    def __init__(self, first_epoch: int, epochs: int, steps_per_epoch: int):
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.begun = time.perf_counter()
        self.first = first_epoch
        self.epoch = first_epoch  # 0-based epoch in progress
        self.epoch_begun = self.begun
        self.finished = 0  # epochs ended in this process

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_begun = time.perf_counter()

    def end_epoch(self) -> None:
        self.finished += 1

    def remaining(self, steps_done: int, next_epoch: bool = False) -> float | None:
        now = time.perf_counter()
        epochs_left = self.epochs - self.epoch - (1 if next_epoch else 0)  # counting the current one
        if self.finished:
            per_epoch = (now if next_epoch else self.epoch_begun) - self.begun
            per_epoch /= self.finished
            spent = 0.0 if next_epoch else now - self.epoch_begun
            return max(0.0, per_epoch * epochs_left - spent)
        if steps_done == 0:
            return None
        per_step = (now - self.epoch_begun) / steps_done
        return max(0.0, per_step * (epochs_left * self.steps - steps_done))


def _training_summary(config: Config, inputs: TrainingInputs, training_set: TrainingSet, state: RunState) -> dict[str, Any]:
    """What the concept record says about how it was trained."""
    fmt = ChatFormat.load(config.prompt.template)
    records = lambda paths: [{"path": str(p), "sha256": file_sha256(p)} for p in paths]  # noqa: E731
    return {
        "training": {
            "yollava_version": yollava.__version__,
            "positives": records(inputs.images.positives),
            "negatives": records(inputs.images.negatives),
            "samples": summarize(training_set.samples),
            "recipe": training_set.info["recipe"],
            "category": training_set.info["category"],
            "negatives_source": asdict(inputs.negatives),
            "epochs_run": len(state.history),
            "best_epoch": state.best["epoch"],
            "metrics": state.best,
            "history": state.history,
            "seed": config.train.seed,
            "config": config_to_dict(config),
            "run_dir": str(state.run_dir),
            "seconds": state.history[-1]["elapsed_s"] if state.history else 0.0,
        },
        "template_version": {"chat": f"{fmt.name}/v{fmt.version}", "recognition": f"recognition/v{load_template('recognition')['version']}"},
    }
