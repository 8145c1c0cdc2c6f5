"""Everything before the recipe: a concept's images and negatives (stored, mined or a folder), then its training set answered by the base."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from yollava.base import Base
from yollava.chat import greedy_generate_batch
from yollava.config import Config, Recipe
from yollava.data import ImageSets, NegativeSource, Sample, build_training_set, gather_images, resolve_recipe
from yollava.evaluate.recognition import YesNoScorer
from yollava.forward import FeatureCache, ImageRef, PrefixCache
from yollava.progress import TrainEvent, TrainObserver, TrainStage, progress_bar
from yollava.prompts import ChatFormat, Turn, encode, render


@dataclass
class TrainingInputs:
    """What a concept is trained from, gathered before the base is loaded (so bad input fails fast).

    Attributes:
        name: the concept name.
        images_dir: the folder of positives, absolute (a resumed run may start elsewhere).
        negatives: where the negatives came from (recorded in the concept and the run).
        images: the positive and negative image paths.
        recipe: the resolved training-set recipe.
    """

    name: str
    images_dir: str
    negatives: NegativeSource
    images: ImageSets
    recipe: Recipe


@dataclass
class TrainingSet:
    """A concept's samples and the record of how they were built (``<store>/<name>/data``)."""

    samples: list[Sample]
    info: dict[str, Any]


def gather_inputs(name: str, images_dir: str | Path, negatives: NegativeSource, store: str | Path, config: Config) -> TrainingInputs:
    """Positives, and negatives mined now, stored by `yollava retrieve`, or from a folder; the recipe they allow.

    Raises:
        YollavaError: bad folders, retrieval failures, or a recipe the negatives do not allow.
    """
    # absolute, so a run resumed from another folder finds them (they are recorded in its checkpoint)
    negatives = replace(negatives, **{key: str(Path(value).resolve()) for key in ("folder", "pool", "index")
                                      if (value := getattr(negatives, key)) is not None})
    images_dir = Path(images_dir).resolve()  # the samples record these paths too
    images = gather_images(name, images_dir, store, negatives, config.data)
    recipe = resolve_recipe(config.data.recipe, images)
    return TrainingInputs(name, str(images_dir), negatives, images, recipe)


class BaseAnswerer:
    """The frozen base answering the training set's questions (:class:`yollava.data.Answerer`).

    Every answer reads image features (and, given a :class:`PrefixCache`, prefix keys/values) from
    ``features``, the cache training uses next, so each positive goes through the vision tower and the
    frozen prefix once for category detection, conversation data and training.
    """

    def __init__(self, base: Base, fmt: ChatFormat, features: FeatureCache | PrefixCache, max_new_tokens: int):
        self.base = base
        self.fmt = fmt
        self.features = features
        self.max_new_tokens = max_new_tokens
        self.model_id = base.model_id

    def answer(self, image: str, questions: Sequence[str]) -> list[str]:
        eos = self.base.tokenizer.eos_token
        prompts = [
            encode(self.base.tokenizer, render(self.fmt, [Turn(question, None, images=1)], eos), self.base.image_token_id, self.base.num_image_tokens).input_ids
            for question in questions
        ]
        # one batch per photo: its prefix (system text + image) is computed once for all its questions
        return greedy_generate_batch(self.base, prompts, [[ImageRef(image)]] * len(prompts), self.features, self.max_new_tokens)

    def yes(self, question: str, images: Sequence[str]) -> list[bool]:
        scorer = YesNoScorer(self.base, self.fmt, "", question, self.features)
        return [lp_yes > lp_no for lp_yes, lp_no in scorer.logprobs(list(images))]


def build_samples(
    inputs: TrainingInputs, base: Base, store: str | Path, config: Config, features: FeatureCache | PrefixCache,
    console: Console, rebuild: bool = False, save_to: str | Path | None = None, observer: TrainObserver | None = None,
) -> TrainingSet:
    """Build (or reuse) the concept's training set, with a progress bar over the conversation questions.

    ``save_to``: where a new set goes (default the store's ``data/``; a training run passes its own folder).
    ``observer``: told of every answered question as a :class:`~yollava.progress.TrainEvent` of stage ``data``.
    """
    answerer = BaseAnswerer(base, ChatFormat.load(config.prompt.template), features, config.data.conversation_max_new_tokens)
    with progress_bar(console) as progress:
        task = progress.add_task("conversation data", total=None, info="")
        counts = {"done": 0, "total": None}

        def advance(n: int) -> None:
            progress.update(task, advance=n)
            counts["done"] += n
            if observer is not None:
                observer(TrainEvent(TrainStage.data, counts["done"], counts["total"]))

        def set_total(n: int) -> None:
            progress.update(task, total=n)
            counts["total"] = n

        samples, info = build_training_set(
            answerer, inputs.name, inputs.images, store, config.data, rebuild=rebuild,
            progress=advance, on_total=set_total, save_to=save_to,
        )
    return TrainingSet(samples, info)
