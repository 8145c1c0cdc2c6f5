"""The one training loop and the one learning-rate schedule that every pretraining stage runs."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then cosine decay to 10 % of it at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_only(model: LlavaForConditionalGeneration, modules: Sequence[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Freeze the whole model, then make ``modules``' parameters trainable (returned)."""
    model.requires_grad_(False)
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def train_loop(
    name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor], *,
    steps: int, peak_lr: float, warmup: int, log_every: int, log: Callable[[str], None],
    clip: tuple[Sequence[torch.nn.Parameter], float] | None = None, after_step: Callable[[], None] | None = None,
    evaluate: Callable[[], dict[str, Any]] | None = None, eval_every: int = 0,
) -> list[dict[str, Any]]:
    """Run ``steps`` optimizer steps on ``loss_fn()`` and return the log records.

    Each step: every param group's lr = :func:`learning_rate` x its ``"scale"``, then the loss,
    backward, gradient clipping (``clip``: parameters and max norm), the optimizer step and
    ``after_step`` (e.g. restoring frozen parts). Every ``log_every`` steps (and at the last) a
    record {stage, step, mean loss since the last record, lr, seconds} is logged; every
    ``eval_every`` steps (and at the last) it also holds ``evaluate()``, run with ``module`` in
    eval mode. ``module`` (the part that trains) is in train mode during the loop, in eval mode after.
    Deterministic for a fixed thread count when ``loss_fn`` draws from seeded sources.
    """
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    started = time.perf_counter()
    module.train()
    for step in range(steps):
        lr = learning_rate(step, steps, peak_lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip[0], clip[1])
        optimizer.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        last = step == steps - 1
        if (step + 1) % log_every == 0 or last:
            record: dict[str, Any] = {
                "stage": name, "step": step + 1, "loss": round(sum(losses) / len(losses), 4),
                "lr": round(lr, 6), "seconds": round(time.perf_counter() - started, 1),
            }
            losses = []
            if evaluate is not None and ((step + 1) % eval_every == 0 or last):
                module.eval()
                record["eval"] = evaluate()
                module.train()
            history.append(record)
            log(json.dumps(record))
    module.eval()
    return history
