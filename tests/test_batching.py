"""Epoch batches: batch size 1 keeps the original order; larger batches are length-bucketed, complete and seeded; training with them works."""

from __future__ import annotations

import random

import pytest
import torch

from yollava.batching import epoch_batches, epoch_order, padding_fraction
from yollava.config import load_config
from yollava.data import NegativeSource
from yollava.train import train_concept


def _lengths(n=203, seed=0):
    rng = random.Random(seed)
    # image samples (prefix 98) and text-only ones (prefix 35), suffixes of 30-70 tokens
    return [(98 if rng.random() < 0.8 else 35, rng.randint(30, 70)) for _ in range(n)]


def test_batch_size_one_is_the_original_shuffle():
    lengths = _lengths()
    for epoch in range(3):
        original = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(7 * 100_003 + epoch)).tolist()
        assert epoch_order(len(lengths), 7, epoch) == original
        assert epoch_batches(lengths, 1, 7, epoch) == [[i] for i in original]


@pytest.mark.parametrize("batch_size", [2, 4, 8])
def test_every_sample_once_per_epoch_seeded_and_varying(batch_size):
    lengths = _lengths()
    batches = epoch_batches(lengths, batch_size, 0, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert len(batches) == -(-len(lengths) // batch_size)
    assert sum(len(b) < batch_size for b in batches) <= 1
    assert epoch_batches(lengths, batch_size, 0, 3) == batches
    assert epoch_batches(lengths, batch_size, 0, 4) != batches and epoch_batches(lengths, batch_size, 1, 3) != batches


def test_buckets_stack_equal_prefixes_and_pad_less_than_plain_chunks():
    lengths = _lengths(400)
    bucketed = epoch_batches(lengths, 8, 0, 0)
    plain = epoch_batches(lengths, 8, 0, 0, window=0)
    mixed = lambda batches: sum(len({lengths[i][0] for i in b}) > 1 for b in batches)  # noqa: E731
    assert mixed(bucketed) <= len(lengths) // (8 * 16) + 1 < mixed(plain)
    assert padding_fraction(bucketed, lengths) < 0.5 * padding_fraction(plain, lengths)
    assert padding_fraction([[0]], lengths) == 0.0


def test_training_with_and_without_the_prefix_cache_gives_the_same_losses(tiny_config, image_dirs, tmp_path):
    """The recipe end to end on the tiny model: cached prefixes change no number, at batch 1 and batched."""
    pos, neg = image_dirs
    histories = {}
    for cached in (True, False):
        for batch_size in (1, 3):
            config = load_config(base=tiny_config, overrides=[f"train.prefix_cache={cached}", f"train.batch_size={batch_size}", "train.epochs=2"])
            result = train_concept(config, "bo", pos, NegativeSource(folder=str(neg)), store=tmp_path / f"s{cached}{batch_size}")
            histories[cached, batch_size] = [(h["loss"], h["weighted"]) for h in result.history]
    for batch_size in (1, 3):
        for (a_loss, a_w), (b_loss, b_w) in zip(histories[True, batch_size], histories[False, batch_size]):
            assert a_loss == pytest.approx(b_loss, rel=1e-4) and a_w == b_w
    assert histories[True, 1][0][0] != pytest.approx(histories[True, 3][0][0], rel=1e-6)  # batch size does change training
