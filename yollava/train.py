"""The Yo'LLaVA recipe: setup → epochs (train, score recognition, checkpoint) → keep the best epoch → save."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console

import yollava
from yollava.concept import (
    ConceptParams,
    attach,
    concept_dir,
    init_concept,
    save_concept,
    validate_name,
)
from yollava.config import Config, config_to_dict, config_to_yaml, load_config
from yollava.data import NegativeSource, Sample, gather_images, prepare_training_set, resolve_recipe, summarize
from yollava.errors import YollavaError
from yollava.evaluate import RecognitionResult, recognition_accuracy
from yollava.batching import epoch_batches
from yollava.forward import ImageRef, collate, make_cache, split_lengths, supervised_loss
from yollava.images import file_sha256
from yollava.base import Base
from yollava.models import load_base
from yollava.plots import plot_training_history
from yollava.progress import progress_bar
from yollava.prompts import ChatFormat, RecognitionBank, Turn, encode, load_template, render
from yollava.storage import (
    CHECKPOINT_JSON,
    CHECKPOINT_WEIGHTS,
    CONCEPT_JSON,
    RUN_CONFIG,
    RUN_DONE,
    RUN_METRICS,
    RUN_PLOT,
    RUN_SAMPLES,
    append_jsonl,
    load_tensors,
    save_tensors_atomic,
    write_json_atomic,
    write_text_atomic,
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
        (p for p in root.glob("*") if (p / CHECKPOINT_JSON).is_file() and not (p / RUN_DONE).exists()),
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
    run.mkdir(parents=True)
    return run


def _image_records(paths: Sequence[str]) -> list[dict[str, str]]:
    return [{"path": str(p), "sha256": file_sha256(p)} for p in paths]


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
) -> TrainResult:
    """Learn a concept's soft prompt and save the best epoch to ``store/<name>/``.

    Args:
        config: the resolved configuration (ignored on ``resume``: the run's own config.yaml wins).
        name: concept name (``[a-z0-9][a-z0-9_-]{0,31}``).
        images_dir: folder of positive photos (on ``resume`` it may be None: the run's is used).
        negatives: a folder of negatives (sampled down to ``data.max_negatives``) or a
            :class:`NegativeSource` that also names a retrieval pool, index or service.
        store: concept store; the concept there is replaced only when the run finishes.
        overwrite: allow replacing an existing concept.
        resume: continue the newest unfinished run of this concept from its last checkpoint.
        base: an already loaded base (tests, sweeps); loaded from ``config.model`` when None.
        console: where progress and messages go (stderr by default).

    Returns:
        A :class:`TrainResult`.

    Raises:
        YollavaError: bad name, existing concept without ``overwrite``, bad images, nothing to resume.
    """
    console = console or Console(stderr=True)
    validate_name(name)
    runs_dir = Path(config.train.runs_dir)
    state: dict[str, Any] = {}
    if resume:
        run_dir = find_resumable_run(runs_dir, name)
        state = json.loads((run_dir / CHECKPOINT_JSON).read_text())
        config = load_config(base=run_dir / RUN_CONFIG)
        images_dir, negatives = state["images_dir"], NegativeSource(**state["negatives"])
        overwrite = overwrite or state["overwrite"]
        console.print(f"resuming {run_dir} after epoch {state['epoch']}")
    if images_dir is None:
        raise YollavaError("--images is required; pass the folder of photos of the subject")
    target = concept_dir(store, name)
    if (target / CONCEPT_JSON).exists() and not overwrite:
        raise YollavaError(f"concept '{name}' already exists in {Path(store)}; pass --overwrite to replace it or pick another name")
    if not isinstance(negatives, NegativeSource):
        negatives = NegativeSource(folder=None if negatives is None else str(negatives))
    image_sets = gather_images(name, images_dir, store, negatives, config.data)
    resolve_recipe(config.data.recipe, image_sets)  # fail before the (slow) base load
    if not image_sets.negatives:
        log.warning("no negatives: the concept will learn to answer Yes to everything; pass --negatives DIR or --pool DIR")

    if base is None:
        console.print(f"loading base model {config.model.name} ...")
        base = load_base(config.model)
    torch.manual_seed(config.train.seed)
    params = init_concept(base, name, config.concept, seed=config.train.seed)
    attach(base, params)
    identifier = params.tokens.identifier
    fmt = ChatFormat.load(config.prompt.template)
    bank = RecognitionBank.load()
    samples, data_info = prepare_training_set(base, name, image_sets, store, config.data, config.prompt.template, console)
    encoded = encode_samples(base, fmt, params.tokens.soft_prompt, samples, config.train.max_length)

    if not resume:
        run_dir = _new_run_dir(runs_dir, name)
        write_text_atomic(run_dir / RUN_CONFIG, config_to_yaml(config))
        with open(run_dir / RUN_SAMPLES, "w", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps(sample.to_dict(), sort_keys=True) + "\n")

    trainable = [params.embed_rows, params.head_rows]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    start_epoch = 0
    best: dict[str, Any] = {"weighted": -1.0}
    best_rows = {"embed_rows": params.embed_rows.detach().clone(), "head_rows": params.head_rows.detach().clone()}
    history: list[dict[str, Any]] = []
    if resume:
        tensors = load_tensors(run_dir / CHECKPOINT_WEIGHTS)
        with torch.no_grad():
            params.embed_rows.copy_(tensors["embed_rows"])
            params.head_rows.copy_(tensors["head_rows"])
        best_rows = {"embed_rows": tensors["best_embed_rows"], "head_rows": tensors["best_head_rows"]}
        _load_optimizer_state(optimizer, tensors, state["param_groups"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]

    # frozen image features and prefix keys/values, computed once here and reused by every step and score
    cache = make_cache(base, config.train, warm=[(e.input_ids, e.labels, e.images) for e in encoded])
    lengths = [split_lengths(base, e.input_ids, e.labels) for e in encoded]
    eval_question = bank.eval_prompt(identifier)
    patience = config.train.early_stop_patience
    console.print(
        f"training <{name}>: {len(image_sets.positives)} positive / {len(image_sets.negatives)} negative images, "
        f"{len(samples)} samples {summarize(samples)}, k={config.concept.k}, "
        f"{sum(p.numel() for p in trainable)} trainable numbers, run dir {run_dir}"
    )
    started = time.perf_counter()
    batch_size = config.train.batch_size
    steps_per_epoch = (len(encoded) + batch_size - 1) // batch_size
    with progress_bar(console) as progress:
        epochs_task = progress.add_task("epochs", total=config.train.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, config.train.epochs):
            steps_task = progress.add_task(f"epoch {epoch + 1}", total=steps_per_epoch, info="")
            losses: list[float] = []
            for indices in epoch_batches(lengths, batch_size, config.train.seed, epoch, config.train.bucket_window):
                chunk = [encoded[i] for i in indices]
                batch = collate([(e.input_ids, e.labels, e.images) for e in chunk], base.tokenizer.pad_token_id or 0, base.device)
                loss = supervised_loss(base, batch, cache, config.train.head_at_supervised_only)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                progress.update(steps_task, advance=1, info=f"loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
            progress.remove_task(steps_task)
            eval_task = progress.add_task(f"score epoch {epoch + 1}", total=len(image_sets.positives) + len(image_sets.negatives), info="")
            result = _score_training_images(base, fmt, params, eval_question, image_sets, cache, config, lambda n: progress.update(eval_task, advance=n))
            progress.remove_task(eval_task)
            record = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), **result.summary(), "elapsed_s": time.perf_counter() - started}
            history.append(record)
            append_jsonl(run_dir / RUN_METRICS, record)
            if result.weighted > best["weighted"]:
                best = {"epoch": epoch + 1, **result.summary(), "loss": record["loss"]}
                best_rows = {"embed_rows": params.embed_rows.detach().clone(), "head_rows": params.head_rows.detach().clone()}
            _checkpoint(run_dir, params, best_rows, optimizer, epoch + 1, best, history, images_dir, negatives, overwrite)
            progress.update(epochs_task, advance=1, info=f"loss {record['loss']:.4f} weighted {result.weighted:.3f} (best {best['weighted']:.3f} @ {best['epoch']})")
            if patience and epoch + 1 - best["epoch"] >= patience:
                console.print(f"early stop: no improvement for {patience} epochs")
                break
            if best["weighted"] >= 1.0 and epoch + 1 < config.train.epochs:
                # only a strictly better epoch replaces the best one: nothing later can be kept
                console.print(f"stop after epoch {epoch + 1}: every training image is recognised, no later epoch can do better")
                break

    final = ConceptParams(params.tokens, params.head_mode, best_rows["embed_rows"], best_rows["head_rows"])
    summary = {
        "training": {
            "yollava_version": yollava.__version__,
            "positives": _image_records(image_sets.positives),
            "negatives": _image_records(image_sets.negatives),
            "samples": summarize(samples),
            "recipe": data_info["recipe"],
            "category": data_info["category"],
            "negatives_source": negatives.to_dict(),
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "metrics": best,
            "history": history,
            "seed": config.train.seed,
            "config": config_to_dict(config),
            "run_dir": str(run_dir),
            "seconds": time.perf_counter() - started,
        },
        "template_version": {"chat": f"{fmt.name}/v{fmt.version}", "recognition": f"recognition/v{load_template('recognition')['version']}"},
    }
    plot_training_history(history, run_dir / RUN_PLOT, title=f"<{name}>")
    # the final concept is written only now, so a crash or Ctrl-C above never touches it
    folder = _save_final(final, base, store, summary)
    write_text_atomic(run_dir / RUN_DONE, str(folder) + "\n")
    console.print(f"saved concept '{name}' to {folder} (best epoch {best['epoch']}, weighted recognition {best['weighted']:.3f} on training images)")
    return TrainResult(concept_dir=folder, run_dir=run_dir, best_epoch=best["epoch"], best=best, history=history)


def _save_final(final: ConceptParams, base: Base, store: str | Path, summary: dict[str, Any]) -> Path:
    # the live concept's slot holds the token ids; the best rows are saved under the same tokens
    return save_concept(final, base, store, summary)


def _score_training_images(base, fmt, params, question, image_sets, cache, config, progress) -> RecognitionResult:
    generate = None
    if config.train.eval_generation:
        from yollava.chat import greedy_generate

        def generate(ids, refs):
            return greedy_generate(base, ids, refs, cache, max_new_tokens=8)

    negatives = image_sets.negatives
    if not negatives:
        return _positives_only(base, fmt, params, question, image_sets.positives, cache, progress)
    return recognition_accuracy(base, fmt, params.tokens.soft_prompt, question, image_sets.positives, negatives, cache, generate, progress)


def _positives_only(base, fmt, params, question, positives, cache, progress) -> RecognitionResult:
    from yollava.evaluate import RecognitionScorer

    scorer = RecognitionScorer(base, fmt, params.tokens.soft_prompt, question, cache)
    hits = 0
    for path in positives:
        (lp_yes, lp_no), = scorer.p_yes([path])
        hits += lp_yes > lp_no
        progress(1)
    pos = hits / len(positives)
    # no negatives: only the positive accuracy is defined, and it is what selects the best epoch
    return RecognitionResult(positive=pos, negative=0.0, weighted=pos, n_positive=len(positives), n_negative=0, yes_rate=pos)


def _checkpoint(run_dir, params, best_rows, optimizer, epoch, best, history, images_dir, negatives, overwrite) -> None:
    tensors, groups = _optimizer_state(optimizer)
    tensors.update(
        embed_rows=params.embed_rows, head_rows=params.head_rows,
        best_embed_rows=best_rows["embed_rows"], best_head_rows=best_rows["head_rows"],
    )
    save_tensors_atomic(run_dir / CHECKPOINT_WEIGHTS, tensors)
    write_json_atomic(run_dir / CHECKPOINT_JSON, {
        "epoch": epoch, "best": best, "history": history, "param_groups": groups,
        "images_dir": str(images_dir), "negatives": negatives.to_dict(),
        "overwrite": overwrite,
    })
