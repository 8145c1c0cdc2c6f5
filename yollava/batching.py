"""An epoch's batches: the seeded shuffle at batch size 1, length-bucketed batches of equal-length prefixes above it."""

from __future__ import annotations

from typing import Sequence

import torch

# A bucket window holds this many batches: the shuffled order is cut into windows, each window is
# sorted by (prefix length, suffix length) and cut into batches, then the batches are shuffled. Wide
# enough that batches are nearly pad-free, narrow enough that a batch still mixes questions and labels.
BUCKET_WINDOW = 16


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch (the same permutation yollava has used at batch size 1 since v1)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def epoch_batches(lengths: Sequence[tuple[int, int]], batch_size: int, seed: int, epoch: int, window: int = BUCKET_WINDOW) -> list[list[int]]:
    """Indices of each batch of an epoch, in training order.

    Args:
        lengths: (prefix length, suffix length) of every sample (:func:`yollava.forward.split_lengths`).
        batch_size: samples per batch; 1 gives exactly :func:`epoch_order`.
        seed / epoch: the shuffle's seed.
        window: batches per bucket window (0: plain consecutive chunks of the shuffled order).

    Within a window, samples with the same prefix length (an image's vs the text-only one) and
    similar suffix lengths land together, so a batch stacks equal prefixes and pads its suffixes
    little; every sample still appears exactly once per epoch.
    """
    order = epoch_order(len(lengths), seed, epoch)
    if batch_size <= 1:
        return [[i] for i in order]
    span = batch_size * window if window > 0 else len(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        part = order[start : start + span]
        if window > 0:
            part = sorted(part, key=lambda i: tuple(lengths[i]))  # stable: ties keep the shuffled order
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    if window <= 0:
        return batches
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)).tolist()
    return [batches[i] for i in shuffle]


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[tuple[int, int]]) -> float:
    """Share of the suffix slots of ``batches`` that are padding (what bucketing saves)."""
    slots = real = 0
    for batch in batches:
        suffixes = [lengths[i][1] for i in batch]
        slots += max(suffixes) * len(suffixes)
        real += sum(suffixes)
    return 1.0 - real / slots if slots else 0.0
