"""Held-out quality of the pretrained base before any personalization: evaluation sets, scoring, the gates, the weights' digest."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import LlavaForConditionalGeneration

from yollava.prompts import IGNORE_INDEX
from yollava.toyworld.pretrain.batches import SampleEncoder, forward_hidden
from yollava.toyworld.pretrain.mix import DataMix, ToySample

# the gates on held-out scenes (docs/toyworld.md has the shipped model's numbers)
GATES = {"attribute": 0.95, "presence": 0.90, "introduced": 0.85}
YES_RATE_TOLERANCE = 0.05


@dataclass
class EvalSet:
    """Held-out evaluation items per measure (scenes never used in training)."""

    attribute: list[ToySample]
    conversation: list[ToySample]
    presence: list[ToySample]
    introduced: list[ToySample]
    verify: list[ToySample]
    text_verify: list[ToySample]
    text: list[ToySample]
    category: list[ToySample]


def build_eval_set(mix: DataMix, seed: int, n: int = 400) -> EvalSet:
    """``n`` items per measure from held-out scenes (the mix must hold only held-out scenes).

    Yes/no measures are balanced 50/50; half the negatives of the description-introduced measure
    are one-fine-attribute lookalikes of the main subject (the hard case).
    """
    rng = random.Random(f"{seed}:eval")
    attribute: list[ToySample] = []
    conversation: list[ToySample] = []
    while len(attribute) < n:
        # alternately a single-subject scene ("this subject") and any scene ("the red pet")
        sample = mix.attribute(rng.choice(mix.single) if len(attribute) % 2 else rng.randrange(len(mix.scenes)), rng)
        if sample.kind == "attribute":
            attribute.append(sample)
        elif sample.kind == "attribute_conversation":
            conversation.append(sample)
    presence = [mix.presence(rng.randrange(len(mix.scenes)), rng, i % 2 == 0) for i in range(n)]
    introduced = []
    for i in range(n):
        index = rng.randrange(len(mix.scenes))
        if i % 4 == 1:
            introduced.append(mix.introduced_lookalike(index, rng))
        else:
            introduced.append(mix.introduced(index, rng, i % 2 == 0, eval_question=True, second=False))
    verify = [mix.verify(rng.randrange(len(mix.scenes)), rng, i % 2 == 0) for i in range(n)]
    text_verify = [mix.text_verify(mix.scenes[rng.randrange(len(mix.scenes))].main.subject, rng, i % 2 == 0) for i in range(n)]
    text = [mix.text(mix.scenes[rng.randrange(len(mix.scenes))].main.subject, rng) for _ in range(n)]
    category = [mix.category(rng, i % 2 == 0) for i in range(n // 2)]
    return EvalSet(attribute=attribute[:n], conversation=conversation, presence=presence, introduced=introduced, verify=verify,
                   text_verify=text_verify, text=text, category=category)


@torch.no_grad()
def yes_no_predictions(model: LlavaForConditionalGeneration, encoder: SampleEncoder, samples: Sequence[ToySample], bank: Any,
                       fresh: torch.Generator | None = None, batch_size: int = 32) -> list[bool]:
    """Yes (True) / No from the first answer token's logits, as yollava's YesNoScorer scores.

    ``fresh``: placeholder names get new identifiers' vectors (see :func:`~yollava.toyworld.pretrain.batches.forward_hidden`).
    """
    yes_id, no_id = encoder.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    out: list[bool] = []
    for start in range(0, len(samples), batch_size):
        items = [encoder(s, with_answer=False) for s in samples[start : start + batch_size]]
        hidden, _ = forward_hidden(model, encoder, items, bank, fresh)
        last = hidden[torch.arange(len(items)), torch.tensor([len(e.ids) - 1 for e in items])]
        logits = model.lm_head(last)
        out.extend((logits[:, yes_id] > logits[:, no_id]).tolist())
    return out


@torch.no_grad()
def exact_matches(model: LlavaForConditionalGeneration, encoder: SampleEncoder, samples: Sequence[ToySample], bank: Any,
                  batch_size: int = 32) -> list[bool]:
    """Whether greedy decoding would reproduce each expected answer exactly (teacher-forced argmax, EOS included)."""
    out: list[bool] = []
    for start in range(0, len(samples), batch_size):
        items = [encoder(s) for s in samples[start : start + batch_size]]
        hidden, batch = forward_hidden(model, encoder, items, bank)
        targets = batch.labels[:, 1:]
        predicted = model.lm_head(hidden[:, :-1]).argmax(-1)
        ok = (predicted == targets) | (targets == IGNORE_INDEX)
        out.extend(ok.all(dim=1).tolist())
    return out


def _rate(values: Sequence[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def _by_kind(keys: Sequence[str], correct: Sequence[bool]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[bool]] = {}
    for key, ok in zip(keys, correct):
        groups.setdefault(key, []).append(ok)
    return {k: {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(groups.items())}


def yes_no_report(samples: Sequence[ToySample], predicted: Sequence[bool]) -> dict[str, Any]:
    """Accuracy, yes-rate (predicted and true) and accuracy per ``positive:tag`` / ``negative:tag``."""
    correct = [p == s.label for s, p in zip(samples, predicted)]
    keys = [f"{'positive' if s.label else 'negative'}:{s.tag}" for s in samples]
    return {
        "accuracy": _rate(correct), "yes_rate": _rate(list(predicted)), "true_yes_rate": _rate([bool(s.label) for s in samples]),
        "n": len(samples), "by_kind": _by_kind(keys, correct),
    }


def match_report(samples: Sequence[ToySample], matched: Sequence[bool]) -> dict[str, Any]:
    """Exact-match accuracy, overall and per tag (or kind)."""
    return {"accuracy": _rate(list(matched)), "n": len(samples), "by_kind": _by_kind([s.tag or s.kind for s in samples], matched)}


def evaluate_quality(model: LlavaForConditionalGeneration, encoder: SampleEncoder, eval_set: EvalSet, bank: Any, seed: int = 0) -> dict[str, Any]:
    """Held-out quality of the base before any personalization, with the issue's gates.

    Returns:
        ``attribute`` (exact bare-word answers to world attribute questions: "this subject" alone
        or "the red pet" among others), ``conversation`` (exact conversation.yaml answers),
        ``presence`` (described subject, yes/no accuracy and yes-rate), ``introduced`` (subject
        introduced by a description, pool names; half the negatives one-fine-attribute
        lookalikes), ``introduced_new_identifier`` (the same with mean-initialised identifiers),
        ``text`` (text-only answers about an introduced subject), ``category``, ``verify`` and
        ``text_verify`` (one-attribute comparisons on the image and in text), and ``gates``.
    """
    model.eval()

    def yes_no(samples: Sequence[ToySample], fresh: torch.Generator | None = None) -> dict[str, Any]:
        return yes_no_report(samples, yes_no_predictions(model, encoder, samples, bank, fresh))

    def match(samples: Sequence[ToySample]) -> dict[str, Any]:
        return match_report(samples, exact_matches(model, encoder, samples, bank))

    report: dict[str, Any] = {
        "attribute": match(eval_set.attribute),
        "conversation": match(eval_set.conversation),
        "text": match(eval_set.text),
        "presence": yes_no(eval_set.presence),
        "introduced": yes_no(eval_set.introduced),
        "introduced_new_identifier": yes_no(eval_set.introduced, fresh=torch.Generator().manual_seed(seed)),
        "category": yes_no(eval_set.category),
        "verify": yes_no(eval_set.verify),
        "text_verify": yes_no(eval_set.text_verify),
    }
    presence, introduced = report["presence"], report["introduced"]
    report["gates"] = {
        f"attribute>={GATES['attribute']:.2f}": report["attribute"]["accuracy"] >= GATES["attribute"],
        f"presence>={GATES['presence']:.2f}": presence["accuracy"] >= GATES["presence"],
        f"presence_yes_rate_within_{YES_RATE_TOLERANCE}": abs(presence["yes_rate"] - presence["true_yes_rate"]) <= YES_RATE_TOLERANCE,
        f"introduced>={GATES['introduced']:.2f}": introduced["accuracy"] >= GATES["introduced"],
        f"introduced_fine_lookalikes>={GATES['introduced']:.2f}":
            introduced["by_kind"].get("negative:fine", {}).get("accuracy", 0) >= GATES["introduced"],
    }
    return report


def quick_report(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of :func:`evaluate_quality` (for progress logs)."""
    return {
        "attribute": report["attribute"]["accuracy"], "conversation": report["conversation"]["accuracy"],
        "text": report["text"]["accuracy"], "presence": report["presence"]["accuracy"],
        "presence_yes_rate": report["presence"]["yes_rate"], "introduced": report["introduced"]["accuracy"],
        "introduced_fine": report["introduced"]["by_kind"].get("negative:fine", {}).get("accuracy", float("nan")),
        "introduced_new_id": report["introduced_new_identifier"]["accuracy"], "category": report["category"]["accuracy"],
        "verify": report["verify"]["accuracy"], "verify_yes_rate": report["verify"]["yes_rate"],
        "text_verify": report["text_verify"]["accuracy"],
    }


def tensors_sha256(path: str | Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes; in name order).

    The file's own hash is no identity: safetensors (0.8) writes a metadata dict of two or more
    keys in hash-map order, which changes from process to process.
    """
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            tensor = f.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
