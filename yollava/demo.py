"""The offline quickstart: generate a small toy world, train its first concept on the toy LLaVA, chat with it, score it.

Everything `yollava demo` does is also a plain command (see README "Two commands"):

    yollava toy generate --out demo/toyworld --concepts 3 --pool 1000   # (the demo keeps 5 train photos)
    yollava train --concept ozzy --images demo/toyworld/train/ozzy --pool demo/toyworld/pool --embedder toy --model toy --store demo/concepts   # (or --model tiny)
    yollava chat --concept ozzy --store demo/concepts --image demo/toyworld/test/ozzy/000.png --prompt "Is <ozzy> in this photo?"
    yollava eval --concept ozzy --store demo/concepts --data demo/toyworld --method soft-prompt --method vanilla
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from yollava.chat import ChatSession
from yollava.concept import load_concept
from yollava.config import load_config
from yollava.data import NegativeSource
from yollava.evaluate.layout import TRAIN, open_benchmark
from yollava.evaluate.recognition import evaluate_concept
from yollava.forward import PrefixCache
from yollava.methods.personalization import Personalization, plain_name
from yollava.methods.soft_prompt import concept_personalization
from yollava.models import load_base
from yollava.prompts import ChatFormat
from yollava.toyworld.benchmark import generate_benchmark
from yollava.train import train_concept

CONCEPT = "ozzy"  # the first concept of every seed-0 toy benchmark
# the toy LLaVA separates ozzy's training photos within a few epochs; 15 (the paper's, `yollava
# train`'s default) would make the quickstart take ~8 minutes on two cores instead of ~3
DEMO_EPOCHS = 4


def default_model() -> str:
    """``toy`` when the pretrained toy LLaVA is installed, else the random ``tiny`` model."""
    from yollava.toyworld.toy_llava import toy_llava_available

    return "toy" if toy_llava_available() else "tiny"


def run_demo(out: str | Path, model: str | None = None, epochs: int | None = None, console: Console | None = None) -> dict[str, float]:
    """Train ``ozzy`` of a 3-concept toy world (5 photos; hard negatives mined from a 1,000-image pool), chat, score.

    Args:
        out: folder for the world, runs and concept store (reused: the world is regenerated).
        model: base model (``toy``, the pretrained toy LLaVA; ``tiny`` is random and stays at chance);
            None: :func:`default_model`.
        epochs: training epochs (None: :data:`DEMO_EPOCHS` on ``toy``, 3 on ``tiny``, else the configured default).
        console: where progress goes.

    Returns:
        The test-split recognition metrics of the trained concept.
    """
    console = console or Console(stderr=True)
    if model is None:
        model = default_model()
        if model == "tiny":
            console.print("[yellow]the pretrained toy LLaVA is not built yet (scripts/pretrain_toy.py); "
                          "running the pipeline on the random tiny model, whose scores sit at chance[/yellow]")
    if model == "tiny" and epochs is None:
        epochs = 3  # a random model learns nothing: three epochs show the pipeline
    if model == "toy" and epochs is None:
        epochs = DEMO_EPOCHS
    out = Path(out)
    world = generate_benchmark(out / "toyworld", n_concepts=3, pool_size=1000, n_train=5, overwrite=True, progress=console.is_terminal)
    overrides = [f"model.name={model}", f"train.runs_dir={out / 'runs'}"] + ([f"train.epochs={epochs}"] if epochs else [])
    config = load_config(overrides=overrides)
    store = out / "concepts"
    base = load_base(config.model)
    negatives = NegativeSource(pool=str(world / "pool"), embedder="toy")
    train_concept(config, CONCEPT, world / TRAIN / CONCEPT, negatives, store=store, overwrite=True, base=base, console=console)

    concept = load_concept(base, store, CONCEPT)  # training detached its rows; these are the saved best epoch's
    fmt = ChatFormat.load(config.prompt.template)
    session = ChatSession(base, [concept], fmt, max_new_tokens=24)
    identifier = concept.params.tokens.identifier
    positives, negatives_test = open_benchmark(world).test_split(CONCEPT)
    for image in (positives[0], negatives_test[0]):
        session.set_image(image)
        question = f"Is {identifier} in this photo?"
        console.print(f"[bold]image[/bold] {image}\n[bold]you>[/bold] {question}\n[bold]yollava>[/bold] {session.ask(question)}")
    session.set_image(None)
    question = f"What colour is {identifier}?"
    console.print(f"[bold]you>[/bold] {question}  (no image)\n[bold]yollava>[/bold] {session.ask(question)}")

    features = PrefixCache(base)  # each test photo's prefix computed once for both scores
    result = evaluate_concept(base, concept_personalization(concept.params.tokens), positives, negatives_test, features, fmt)
    unnamed = Personalization(method="vanilla", subject=CONCEPT, identifier=plain_name(base.plain(), CONCEPT))
    vanilla = evaluate_concept(base.plain(), unnamed, positives, negatives_test, features, fmt)
    console.print(
        f"test recognition of {identifier} ({len(positives)} photos of it, {len(negatives_test)} of other subjects): "
        f"positive {result.positive:.2f}, negative {result.negative:.2f}, weighted {result.weighted:.2f} "
        f"(the base without the concept: weighted {vanilla.weighted:.2f})"
        + (" — the tiny model is random: expect chance" if model == "tiny" else "")
    )
    return result.summary()
