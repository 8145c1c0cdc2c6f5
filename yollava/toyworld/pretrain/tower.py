"""The dense vision stage: the toy CLIP's tower learns to name, on every patch, the attributes of the subject drawn there."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from yollava.toyworld.pretrain.config import PretrainConfig, StageConfig
from yollava.toyworld.pretrain.loop import train_loop, train_only
from yollava.toyworld.pretrain.scenes import PATCH_ROLES, PixelBank, patch_labels
from yollava.toyworld.world import ATTRIBUTES, Scene


class TowerProbe(torch.nn.Module):
    """Linear heads on the selected layer's patch features: one per attribute, one for the patch's role."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(v)) for v in [*ATTRIBUTES.values(), PATCH_ROLES])

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features) for head in self.heads]

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of every head over every labelled patch (labels: :func:`patch_labels`)."""
        return sum(F.cross_entropy(lg.flatten(0, 1), labels[..., j].flatten(), ignore_index=-100) for j, lg in enumerate(self(features)))

    @torch.no_grad()
    def main_accuracy(self, bank: PixelBank, labels: torch.Tensor, batch_size: int = 250) -> dict[str, float]:
        """Per attribute: the main subject's value read from its patches (summed log-probabilities)."""
        hits = {a: [0, 0] for a in ATTRIBUTES}
        for start in range(0, len(labels), batch_size):
            index = torch.arange(start, min(start + batch_size, len(labels)))
            lab = labels[index]
            main = (lab[..., -1] == 2).float().unsqueeze(-1)
            for j, (attribute, logits) in enumerate(zip(ATTRIBUTES, self(bank[index]))):
                pooled = (F.log_softmax(logits, -1) * main).sum(1)
                target = torch.where((lab[..., j] != -100) & (lab[..., -1] == 2), lab[..., j], -1).max(1).values
                known = target >= 0
                hits[attribute][0] += (pooled.argmax(-1)[known] == target[known]).sum().item()
                hits[attribute][1] += known.sum().item()
        return {a: round(h / max(t, 1), 4) for a, (h, t) in hits.items()}


def supervise_tower(
    model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, bank: PixelBank, scenes: Sequence[Scene],
    log: Callable[[str], None], heldout: tuple[PixelBank, Sequence[Scene]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Dense supervision of the vision tower: every patch names the attributes of the subject on it.

    The toy CLIP's contrastive features carry the attributes weakly (linear heads on them read the
    main subject's colour at 0.50, shape at 0.31); LLaVA can only compare what its tower sees.
    Linear heads (discarded afterwards) on the layer LLaVA reads (``vision_feature_layer``) learn
    with the tower, batch ``2 * batch_size`` images. Returns the log and the held-out accuracy of
    the main subject's attributes read from its patches.
    """
    torch.manual_seed(config.seed)
    tower = model.model.vision_tower
    train_only(model, [tower])
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    labels = torch.from_numpy(np.stack([patch_labels(s, grid) for s in scenes]))
    probe = TowerProbe(model.config.vision_config.hidden_size)
    optimizer = torch.optim.AdamW([
        {"params": probe.parameters(), "scale": 1.0, "weight_decay": 0.0},
        {"params": tower.parameters(), "scale": stage.vision_lr_scale, "weight_decay": config.weight_decay},
    ], lr=stage.lr)
    heldout_labels = torch.from_numpy(np.stack([patch_labels(s, grid) for s in heldout[1]])) if heldout is not None else None
    generator = torch.Generator().manual_seed(config.seed)

    def loss() -> torch.Tensor:
        index = torch.randint(len(bank), (2 * config.batch_size,), generator=generator)
        return probe.loss(bank[index], labels[index])

    history = train_loop(
        stage.name, tower, optimizer, loss, steps=stage.steps, peak_lr=stage.lr, warmup=stage.warmup, log_every=config.log_every, log=log,
        clip=([*tower.parameters(), *probe.parameters()], config.grad_clip),
        evaluate=(lambda: probe.main_accuracy(heldout[0], heldout_labels)) if heldout is not None else None, eval_every=config.eval_every,
    )
    model.requires_grad_(False)
    return history, history[-1].get("eval", {}) if history else {}
