"""The offline quickstart: make a few photos, train a concept on the tiny model, chat with it, score it."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console

from yollava.chat import ChatSession
from yollava.concept import load_concept
from yollava.config import load_config
from yollava.evaluate import recognition_accuracy, yollava_split
from yollava.forward import FeatureCache
from yollava.models import load_base
from yollava.prompts import ChatFormat, RecognitionBank
from yollava.train import train_concept


def _photo(path: Path, rng: random.Random, colour: tuple[int, int, int], shape: str) -> None:
    size = 64
    image = Image.new("RGB", (size, size), tuple(rng.randint(90, 170) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    radius = rng.randint(14, 22)
    x, y = rng.randint(radius, size - radius), rng.randint(radius, size - radius)
    box = (x - radius, y - radius, x + radius, y + radius)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_demo_photos(root: Path, seed: int = 0) -> None:
    """A Yo'LLaVA-layout folder: ``bo`` (a red ball) and two other subjects, train/ and test/ splits."""
    rng = random.Random(seed)
    subjects = {"bo": ((210, 40, 40), "circle"), "kiwi": ((60, 170, 60), "circle"), "box": ((40, 60, 200), "square")}
    for name, (colour, shape) in subjects.items():
        for split, count in (("train", 5), ("test", 4)):
            for i in range(count):
                _photo(root / name / split / f"{i}.png", rng, colour, shape)
    for i in range(20):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        _photo(root / "negatives" / f"{i}.png", rng, colour, rng.choice(["circle", "square"]))


def run_demo(out: str | Path, model: str = "tiny", epochs: int = 3, console: Console | None = None) -> dict[str, float]:
    """Train ``bo`` on generated photos, chat about it, and score recognition on the test split.

    The tiny model is random: this demonstrates the whole pipeline offline in seconds, not learning.

    Returns:
        The test-split recognition metrics.
    """
    console = console or Console(stderr=True)
    out = Path(out)
    data = out / "photos"
    make_demo_photos(data)
    store = out / "concepts"
    config = load_config(overrides=[f"model.name={model}", f"train.epochs={epochs}", f"train.runs_dir={out / 'runs'}"])
    base = load_base(config.model)
    train_concept(config, "bo", data / "bo" / "train", data / "negatives", store=store, overwrite=True, base=base, console=console)
    base = load_base(config.model)
    concept = load_concept(base, store, "bo")
    session = ChatSession(base, [concept], ChatFormat.load(config.prompt.template), max_new_tokens=12)
    session.set_image(str(data / "bo" / "test" / "0.png"))
    question = "Is <bo> in this photo?"
    console.print(f"[bold]you>[/bold] {question}\n[bold]yollava>[/bold] {session.ask(question)}")
    positives, negatives = yollava_split(data, "bo")
    tokens = concept.params.tokens
    result = recognition_accuracy(base, session.fmt, tokens.soft_prompt, RecognitionBank.load().eval_prompt(tokens.identifier), positives, negatives, FeatureCache(base))
    console.print(
        f"test recognition: positive {result.positive:.2f}, negative {result.negative:.2f}, weighted {result.weighted:.2f}"
        + (" (the tiny model is random: expect chance; see README for the real model)" if model == "tiny" else "")
    )
    return result.summary()
