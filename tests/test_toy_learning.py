"""yollava learns: one toy-world concept trained on the pretrained toy LLaVA recognizes its subject in new scenes.

The only test in the default run where a soft prompt must carry information: the base is frozen and
knows nothing about the concept, so recognition above the vanilla base comes from the 16 latent
tokens, the identifier and its head row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from yollava.concept import detach, load_concept
from yollava.config import load_config
from yollava.data import NegativeSource
from yollava.evaluate import evaluate_concept, yollava_split
from yollava.forward import FeatureCache
from yollava.methods.personalization import Personalization, plain_name
from yollava.methods.soft_prompt import concept_personalization
from yollava.models import load_base
from yollava.toyworld import toy_llava
from yollava.toyworld.benchmark import generate_benchmark
from yollava.train import train_concept

pytestmark = pytest.mark.skipif(
    not toy_llava.toy_llava_available(), reason="toy LLaVA weights not built (scripts/pretrain_toy.py)"
)
CONCEPT = "ozzy"  # the first concept of every seed-0 benchmark
N_CONCEPTS = 6  # ozzy's negatives: five subjects, one of them (kiki) its one-fine-attribute lookalike
SEEDS = (0, 1)  # two trainings: see the test's docstring
EPOCHS = 4
POOL = 600


def _link(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def test_trained_concept_beats_the_vanilla_base(tmp_path):
    """The user's path (the quickstart's): 5 photos, negatives mined from the pool with the toy CLIP
    (hard + easy), recognition and conversation data, default settings but 4 epochs.

    One 4-epoch training is chaotic in its lookalike: the saved epoch is picked among near-ties on
    the training photos, and float rounding alone (1 or 2 threads, Intel or AMD kernels) moves the
    lookalike's test rejection anywhere from 0/10 to 10/10 (measured: weighted 0.75 to 1.0 in a
    3-subject world where half the negatives are the lookalike). So, as in the benchmark, the
    lookalike is one negative subject of five, and two training seeds are averaged (six measured
    runs, seeds 0-2 x 1-2 threads: 0.85 to 1.0 each, pairs' means >= 0.88).
    """
    world = tmp_path / "world"
    generate_benchmark(world, n_concepts=N_CONCEPTS, pool_size=POOL, progress=False)
    positives = _link(tmp_path / "positives", sorted((world / "train" / CONCEPT).glob("*.png"))[:5])
    negatives = NegativeSource(pool=str(world / "pool"), embedder="toy")
    test_positives, test_negatives = yollava_split(world, CONCEPT)
    base, features, results = None, None, []
    for seed in SEEDS:
        config = load_config(overrides=["model.name=toy", f"train.epochs={EPOCHS}", f"train.seed={seed}",
                                        f"train.runs_dir={tmp_path / 'runs'}"])
        base = base or load_base(config.model)
        features = features or FeatureCache(base)
        store = tmp_path / f"concepts-{seed}"
        result = train_concept(config, CONCEPT, positives, negatives, store=store, base=base, console=Console(quiet=True))
        # the saved epoch is the best one on the training photos, and they are recognised there
        assert result.best["weighted"] == max(h["weighted"] for h in result.history) >= 0.9, result.history
        concept = load_concept(base, store, CONCEPT)
        results.append(evaluate_concept(base, concept_personalization(concept.params.tokens), test_positives, test_negatives, features))
        detach(base, CONCEPT)

    unnamed = Personalization(method="vanilla", subject=CONCEPT, identifier=plain_name(base.plain(), CONCEPT))
    vanilla = evaluate_concept(base.plain(), unnamed, test_positives, test_negatives, features)
    summaries = [r.summary() for r in results], vanilla.summary()
    assert sum(r.weighted for r in results) / len(results) >= 0.85, summaries
    assert all(r.weighted >= vanilla.weighted + 0.3 for r in results), summaries
