"""Shared fixtures: offline environment, tiny bases, generated image folders."""

from __future__ import annotations

import os

# Before anything imports transformers/datasets/albumentations: no network, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # as the CLI does (yollava.progress)
# Subprocesses (scripts, `python -m yollava.cli`) import this checkout's yollava, not an installed
# copy of another one (an editable install of a second worktree would otherwise answer for it).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

from pathlib import Path

import pytest
import numpy as np
import torch
from PIL import Image, ImageDraw

from yollava.config import Config, load_config
from yollava.models import build_tiny_base


class QuadrantColours:
    """Test encoder: the mean colour of each image quadrant (12-d), so embeddings can be built as pictures."""

    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(batch, 2).permute(0, 2, 3, 1).flatten(1)


def preprocess(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.resize((16, 16), Image.NEAREST), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def make_image(path: Path, colour: tuple[int, int, int], shape: str = "circle", size: int = 48) -> Path:
    """A small generated photo: a coloured shape on grey."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Embedding/download caches go to a per-test folder, never the user's ~/.cache."""
    monkeypatch.setenv("YOLLAVA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_base():
    """A fresh tiny LLaVA (0.1 s to build; fresh because attaching concepts changes its tokenizer)."""
    torch.manual_seed(0)
    return build_tiny_base()


@pytest.fixture
def image_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """``pos/`` with 4 red circles and ``neg/`` with 8 blue squares."""
    pos, neg = tmp_path / "pos", tmp_path / "neg"
    for i in range(4):
        make_image(pos / f"p{i}.png", (200 + 10 * i, 30, 30))
    for i in range(8):
        make_image(neg / f"n{i}.png", (30, 30 + 20 * i, 200), shape="square")
    return pos, neg


@pytest.fixture
def tiny_config(tmp_path: Path) -> Config:
    """Config for quick runs on the tiny model: 2 epochs, recognition data only, runs under tmp_path."""
    return load_config(overrides=["model.name=tiny", "train.epochs=2", "data.recipe=recognition", f"train.runs_dir={tmp_path / 'runs'}"])
