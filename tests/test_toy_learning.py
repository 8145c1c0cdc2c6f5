"""yollava learns: one toy-world concept trained on the pretrained toy LLaVA recognizes its subject in new scenes.

The only test in the default run where a soft prompt must carry information: the base is frozen and
knows nothing about the concept, so recognition above the vanilla base comes from the 16 latent
tokens, the identifier and its head row.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from rich.console import Console

from yollava.concept import load_concept
from yollava.config import load_config
from yollava.data import NegativeSource
from yollava.evaluate import recognition_accuracy, yollava_split
from yollava.forward import FeatureCache
from yollava.models import load_base
from yollava.prompts import ChatFormat, RecognitionBank
from yollava.toyworld import llava as toy
from yollava.toyworld.benchmark import generate_benchmark
from yollava.train import train_concept

pytestmark = pytest.mark.skipif(
    not (toy.toy_llava_folder() / toy.WEIGHTS_FILE).is_file(), reason="toy LLaVA weights not built (scripts/pretrain_toy.py)"
)
CONCEPT = "ozzy"  # the first concept of every seed-0 benchmark
EPOCHS = 4
N_NEGATIVES = 60


def _link(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def test_trained_concept_beats_the_vanilla_base(tmp_path):
    world = tmp_path / "world"
    generate_benchmark(world, n_concepts=3, pool_size=300, progress=False)
    positives = _link(tmp_path / "positives", sorted((world / CONCEPT / "train").glob("*.png"))[:5])
    pool = sorted((world / "pool").glob("*.png"))
    negatives = _link(tmp_path / "negatives", random.Random(0).sample(pool, N_NEGATIVES))
    config = load_config(overrides=[
        "model.name=toy", f"train.epochs={EPOCHS}", "data.recipe=recognition", f"train.runs_dir={tmp_path / 'runs'}",
    ])
    store = tmp_path / "concepts"
    result = train_concept(config, CONCEPT, positives, NegativeSource(folder=str(negatives)), store=store, console=Console(quiet=True))
    assert result.best_epoch >= 1

    base = load_base(config.model)
    concept = load_concept(base, store, CONCEPT)
    fmt, bank = ChatFormat.load(config.prompt.template), RecognitionBank.load()
    test_positives, test_negatives = yollava_split(world, CONCEPT)
    cache = FeatureCache(base)
    tokens = concept.params.tokens
    trained = recognition_accuracy(base, fmt, tokens.soft_prompt, bank.eval_prompt(tokens.identifier), test_positives, test_negatives, cache)
    vanilla = recognition_accuracy(base, fmt, "", bank.eval_prompt(CONCEPT), test_positives, test_negatives, cache)
    assert trained.weighted >= 0.75, (trained.summary(), vanilla.summary())
    assert trained.weighted >= vanilla.weighted + 0.2, (trained.summary(), vanilla.summary())

