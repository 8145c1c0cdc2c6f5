"""The scenes pretraining sees: its seeded streams, the identities it never draws, pixel and feature banks, per-patch labels."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

from yollava.errors import YollavaError
from yollava.toyworld.benchmark import plan_concepts
from yollava.toyworld.clip import images_to_tensor
from yollava.toyworld.render import render_scene
from yollava.toyworld.world import (
    ACCESSORIES,
    ACCESSORY_COLORS,
    ATTRIBUTES,
    FINE_ATTRIBUTES,
    Scene,
    Subject,
    item_rng,
    sample_scene,
    sample_subject,
    variant,
)

TRAIN_STREAM = "llava-train"
HELDOUT_STREAM = "llava-heldout"
IMAGE_SIZE = 64
KNOWN_IDENTITIES = 64  # one per vocabulary.KNOWN_TOKENS entry
# roles of a patch in patch_labels' last column
PATCH_ROLES = ("background", "distractor", "main")


def excluded_identities(seeds: Sequence[int] = (0,), max_concepts: int = 20) -> frozenset[Subject]:
    """Identities of every benchmark planned from ``seeds`` with 1..``max_concepts`` concepts.

    A benchmark with fewer concepts draws another lookalike than the 20-concept one, so all sizes
    are excluded, not only the default (a superset of the toy CLIP's exclusion).
    """
    return frozenset(spec.subject for seed in seeds for n in range(1, max_concepts + 1) for spec in plan_concepts(n, seed))


def draw_scene(seed: int, stream: str, index: int, image_size: int, exclude: frozenset, n_distractors: int | None = None) -> Scene:
    """One world scene (0-3 distractors unless given) from its own seeded random source."""
    rng = item_rng(seed, stream, index)
    main = sample_subject(rng, exclude=exclude)
    count = rng.randint(0, 3) if n_distractors is None else n_distractors
    return sample_scene(rng, main, image_size=image_size, n_distractors=count, exclude=exclude)


def lookalike(subject: Subject, attribute: str, rng: random.Random) -> Subject | None:
    """``subject`` changed in one attribute (accessory may also be added or removed), or None."""
    if attribute == "accessory" and subject.accessory == "none":
        color = rng.choice([c for c in ACCESSORY_COLORS if c != subject.color])
        return Subject(**{**subject.to_dict(), "accessory": rng.choice(ACCESSORIES[1:]), "accessory_color": color})
    if attribute == "accessory" and rng.random() < 0.2:
        return Subject(**{**subject.to_dict(), "accessory": "none", "accessory_color": None})
    try:
        return variant(subject, attribute, rng)
    except YollavaError:
        return None


def known_identities(seed: int, exclude: frozenset) -> list[Subject]:
    """:data:`KNOWN_IDENTITIES` fixed subjects (distinct, never a benchmark identity) whose scenes join the streams."""
    rng = random.Random(f"{seed}:known-identities")
    out: list[Subject] = []
    while len(out) < KNOWN_IDENTITIES:
        subject = sample_subject(rng, exclude=exclude)
        if subject not in out:
            out.append(subject)
    return out


def known_scenes(seed: int, stream: str, identities: Sequence[Subject], image_size: int, exclude: frozenset,
                 positives: int, lookalikes: int) -> list[Scene]:
    """Per identity, ``positives`` scenes with it as main subject, then ``lookalikes`` with a one-attribute lookalike instead."""
    banned = exclude | frozenset(identities)
    scenes: list[Scene] = []
    for i, subject in enumerate(identities):
        for j in range(positives + lookalikes):
            rng = item_rng(seed, f"{stream}/{i}", j)
            main = subject
            if j >= positives:
                main = None
                while main is None or main in banned:
                    main = lookalike(subject, rng.choice([*FINE_ATTRIBUTES, "color", "family", "shape", "size"]), rng)
            scenes.append(sample_scene(rng, main, image_size=image_size, n_distractors=rng.randint(0, 3), exclude=banned))
    return scenes


def stream_scenes(seed: int, stream: str, count: int, known: tuple[int, int], exclude: frozenset) -> list[Scene]:
    """``count`` scenes of ``stream``, then those of the known identities (``known``: positives, lookalikes each).

    The known identities' scenes are ordinary scenes to the compiled recipe (about a quarter of
    the training stream); they stay because the shipped weights were trained on them.
    """
    scenes = [draw_scene(seed, stream, i, IMAGE_SIZE, exclude) for i in range(count)]
    return scenes + known_scenes(seed, f"{stream}/known", known_identities(seed, exclude), IMAGE_SIZE, exclude, *known)


@torch.no_grad()
def scene_features(model: LlavaForConditionalGeneration, scenes: Sequence[Scene], batch_size: int = 256) -> torch.Tensor:
    """The frozen vision tower's selected features (before the projector), ``[N, patches, width]`` fp16.

    Computed once per scene: the tower is frozen after the dense stage, and it costs as much as
    the whole language model step. fp16 halves the bank (30k scenes x 64 x 96 = 370 MB).
    """
    config = model.config
    out = []
    for start in range(0, len(scenes), batch_size):
        pixels = images_to_tensor([np.asarray(render_scene(s)) for s in scenes[start : start + batch_size]])
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[config.vision_feature_layer]
        out.append(hidden[:, 1:].to(torch.float16))
    return torch.cat(out)


class PixelBank:
    """Scenes kept as uint8 pixels; indexing runs the (trainable) vision tower, like a feature bank.

    The dense stage fine-tunes the vision tower, so it cannot use precomputed features.
    ``bank[indices]`` returns the selected layer's patch features ``[B, patches, width]`` with
    gradients when the tower trains (30k scenes x 64 x 64 x 3 = 370 MB).
    """

    def __init__(self, model: LlavaForConditionalGeneration, scenes: Sequence[Scene], batch_size: int = 512,
                 prefix: PixelBank | None = None):
        """``prefix``: a bank of the first scenes of ``scenes``, whose pixels are reused, not rendered again."""
        self.model = model
        chunks = [prefix.pixels] if prefix is not None else []
        for start in range(len(prefix) if prefix is not None else 0, len(scenes), batch_size):
            chunks.append(torch.from_numpy(np.stack([np.asarray(render_scene(s)) for s in scenes[start : start + batch_size]])))
        self.pixels = torch.cat(chunks)
        patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
        self.shape = (len(scenes), patches, model.config.vision_config.hidden_size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        pixels = images_to_tensor(self.pixels[index].numpy())
        hidden = self.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[self.model.config.vision_feature_layer]
        return hidden[:, 1:]


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """Per patch of a ``grid`` x ``grid`` image: each attribute's value index of the subject drawn
    over the patch centre (-100: none) and its role (:data:`PATCH_ROLES` index).

    The main subject is drawn last, so it owns the patches it covers; among distractors the later
    one wins, like in :func:`~yollava.toyworld.render.render_scene`.
    """
    cell = scene.image_size / grid
    labels = np.full((grid * grid, len(ATTRIBUTES) + 1), -100, dtype=np.int64)
    order = [*scene.distractors, scene.main]
    for row in range(grid):
        for col in range(grid):
            x, y = (col + 0.5) * cell, (row + 0.5) * cell
            owner, role = None, 0
            for k, placed in enumerate(order):
                x0, y0, x1, y1 = placed.box
                if x0 <= x < x1 and y0 <= y < y1:
                    owner, role = placed.subject, 2 if k == len(order) - 1 else 1
            labels[row * grid + col, -1] = role
            if owner is not None:
                for j, (attribute, values) in enumerate(ATTRIBUTES.items()):
                    value = getattr(owner, attribute)
                    if value is not None:
                        labels[row * grid + col, j] = values.index(value)
    return labels
