"""The recipe's numbers are pinned (torchtune style): a short fixed run on the tiny model gives the stored losses.

A change anywhere in the recipe — sample order, templates, the initialisation, the loss, the optimizer,
which epoch is kept — moves these numbers. If a change is meant to move them, re-measure with this test's
run and update the constants in the same commit, saying why in its message.
"""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from yollava.models import build_tiny_base
from yollava.storage import CONCEPT_WEIGHTS, load_tensors
from yollava.train import train_concept

# measured on the pre-restructure recipe (commit c77e14e) and unchanged since
EPOCH_LOSSES = [6.459908, 6.364846, 6.281602]
SAVED_EMBED_ABS_SUM = 5.5773816
SAVED_HEAD_ABS_SUM = 0.7995193


def test_a_short_tiny_run_gives_the_pinned_losses(tiny_config, image_dirs, tmp_path):
    pos, neg = image_dirs
    tiny_config.train.epochs = 3
    torch.manual_seed(0)
    result = train_concept(tiny_config, "bo", pos, neg, store=tmp_path / "store", base=build_tiny_base(), console=Console(quiet=True))
    assert [h["loss"] for h in result.history] == pytest.approx(EPOCH_LOSSES, rel=1e-4)
    saved = load_tensors(tmp_path / "store" / "bo" / CONCEPT_WEIGHTS)
    assert float(saved["embed_rows"].double().abs().sum()) == pytest.approx(SAVED_EMBED_ABS_SUM, rel=1e-4)
    assert float(saved["head_rows"].double().abs().sum()) == pytest.approx(SAVED_HEAD_ABS_SUM, rel=1e-4)
