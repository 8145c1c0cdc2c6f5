"""Where toy-pvit's in-context match loses accuracy: the same held-out presence items scored four ways.

Issue 17's gate is one-reference presence >= 0.90 on held-out subjects. This probe takes held-out
one-reference presence items of toy-pvit's mix (``PvitMix.presence``, evaluation question, balanced,
fine lookalikes among the negatives) and reads the MATCH dimension (above 0.5: "a patch matches"):

1. ``compiled``: the extension of ``pretrain/pvit_circuit.py`` as it is (the reference photo's code
   bound and collected into the question, matched by the inserted match layer);
2. ``snapped``: the same, with the collected reference code replaced, at text positions, by its
   per-attribute argmax (one-hot, the typical slot value) through a forward hook;
3. ``oracle code``: the same, with the reference subject's true scene-graph code instead;
4. ``description``: no reference photo; the toy LLaVA's own compiled description match (its layer 1)
   given the reference subject's exact description ("<x03> is a small red striped round pet.
   {question}") on the same scenes.

(2) and (3) are hooks, not circuits: they measure what a cleaner reference code would buy. A large
gap between (3) and (4) puts the loss in the inserted match layer, not in the reference code.

    .venv/bin/python scripts/probe_pvit_match.py [--items 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import torch

from yollava.toyworld import toy_llava
from yollava.toyworld.pretrain import circuit as C
from yollava.toyworld.pretrain import pvit_circuit as P
from yollava.toyworld.pretrain.batches import SampleEncoder, embed_batch
from yollava.toyworld.pretrain.mix import ToySample
from yollava.toyworld.pretrain.pvit import PvitMix, PvitPool, collate, encode_sample
from yollava.toyworld.pretrain.scenes import excluded_identities, scene_features
from yollava.toyworld.world import ATTRIBUTES, describe_subject

CATEGORIES: dict[str, list[int]] = {}
for _slot, (_attribute, _value) in enumerate(C.SLOTS[: C.ANY_ACCESSORY]):
    CATEGORIES.setdefault(_attribute, []).append(_slot)


def scores(pred: torch.Tensor, labels: torch.Tensor, fine: torch.Tensor) -> dict[str, float]:
    """Accuracy, positives, negatives and fine-lookalike negatives of yes/no predictions."""
    return {
        "accuracy": float((pred == labels).float().mean()),
        "positive": float(pred[labels].float().mean()),
        "negative": float((~pred[~labels]).float().mean()),
        "fine_negative": float((~pred[fine & ~labels]).float().mean()),
    }


def true_codes(subjects: list) -> torch.Tensor:
    """(items, slots) one-hot scene-graph codes (accessory "none": no slot; ANY_ACCESSORY left to the model)."""
    out = torch.zeros(len(subjects), len(C.SLOTS))
    for row, subject in enumerate(subjects):
        for attribute in ATTRIBUTES:
            slot = (attribute, getattr(subject, attribute))
            if slot in C.SLOTS:
                out[row, C.SLOTS.index(slot)] = 1.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--identities", type=int, default=60, help="held-out identities in the probe's pool")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    start = time.perf_counter()
    base = toy_llava.load_toy_base()
    folder = toy_llava.toy_llava_folder()
    shipped = json.loads((folder / toy_llava.CONFIG_FILE).read_text())
    arch = toy_llava.ToyLlavaArch(**shipped["arch"])
    circuit_cfg = C.CircuitConfig(**{k: v for k, v in shipped["circuit"].items() if k in C.CircuitConfig.__dataclass_fields__})
    model, _ = P.insert_layers(base.model, base.tokenizer, arch)
    P.compile_pvit(model, base.tokenizer, P.PvitCircuitConfig())
    encoder = SampleEncoder(base.tokenizer, model.config.image_token_id, base.num_image_tokens)
    pool = PvitPool(1, "pvit-test/heldout", args.identities, excluded_identities())
    bank = scene_features(base.model, pool.scenes)
    mix = PvitMix(pool)
    rng = random.Random(0)
    items = [mix.presence(rng, i % 2 == 0, refs=1, eval_question=True) for i in range(args.items)]
    labels = torch.tensor([bool(s.label) for s in items])
    fine = torch.tensor([s.tag.startswith("fine") for s in items])
    subjects = [pool.scenes[s.references[0][0]].main.subject for s in items]
    truth = true_codes(subjects)

    encoded = [encode_sample(encoder, s, with_answer=False) for s in items]
    batch = collate(encoded, base.tokenizer.pad_token_id)
    last = torch.tensor([len(e.ids) - 1 for e in encoded])
    text = batch.ids != model.config.image_token_id

    def pvit_match(replace: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        def hook(module, hook_args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            rms = h.pow(2).mean(-1, keepdim=True).sqrt()
            code = h[..., C.IMAGE_CODE : C.IMAGE_CODE + len(C.SLOTS)]
            new = replace(code / rms) * rms
            h[..., C.IMAGE_CODE : C.IMAGE_CODE + len(C.SLOTS)] = torch.where(text.unsqueeze(-1), new, code)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = model.model.language_model.layers[P.COLLECT].register_forward_hook(hook) if replace else None
        try:
            with torch.no_grad():
                match = P.match_values(model, lambda: model.model.language_model(
                    inputs_embeds=embed_batch(model, batch, bank), attention_mask=batch.mask).last_hidden_state, last)
        finally:
            if handle is not None:
                handle.remove()
        return match > 0.5

    def collected_code() -> torch.Tensor:
        seen: dict[str, torch.Tensor] = {}
        handle = model.model.language_model.layers[P.COLLECT].register_forward_hook(
            lambda module, hook_args, output: seen.__setitem__("h", output[0] if isinstance(output, tuple) else output))
        try:
            with torch.no_grad():
                model.model.language_model(inputs_embeds=embed_batch(model, batch, bank), attention_mask=batch.mask)
        finally:
            handle.remove()
        h = seen["h"][torch.arange(len(items)), last]
        return h[:, C.IMAGE_CODE : C.IMAGE_CODE + len(C.SLOTS)] / h.pow(2).mean(-1, keepdim=True).sqrt()

    code = collected_code()
    magnitude = float(code[:, CATEGORIES["family"]].max(-1).values.median())
    agreement = {}
    for attribute, slots in CATEGORIES.items():
        top = code[:, slots].max(-1)
        snapped = torch.nn.functional.one_hot(top.indices, len(slots)).float() * (top.values > 0.1).unsqueeze(-1).float()
        agreement[attribute] = float(((snapped - truth[:, slots]).abs().sum(-1) < 0.5).float().mean())

    def snap(r: torch.Tensor) -> torch.Tensor:
        out = r.clone()
        for slots in CATEGORIES.values():
            top = r[..., slots].max(-1)
            one = torch.nn.functional.one_hot(top.indices, len(slots)).float() * (top.values > 0.1).unsqueeze(-1).float()
            out[..., slots] = one * magnitude
        return out

    def oracle(r: torch.Tensor) -> torch.Tensor:
        out = r.clone()
        # only where a reference code was collected (the question, not the text before the photos)
        has = (r[..., CATEGORIES["family"]].max(-1).values > 0.1).unsqueeze(-1).float()
        out[..., : C.ANY_ACCESSORY] = truth.unsqueeze(1)[..., : C.ANY_ACCESSORY] * magnitude * has
        return out

    results = {
        "compiled": scores(pvit_match(None), labels, fine),
        "snapped": scores(pvit_match(snap), labels, fine),
        "oracle code": scores(pvit_match(oracle), labels, fine),
    }
    described = []
    for s, subject in zip(items, subjects):
        name = s.references[0][1].split()[-1].rstrip(".")
        described.append(ToySample("presence", f"{name} is {describe_subject(subject)}. {s.question}", "", scene=s.scene))
    toy_match = torch.tensor(C.match_values(base.model, encoder, described, bank, circuit_cfg))
    results["description"] = scores(toy_match > 0.5, labels, fine)

    print(f"{args.items} held-out one-reference presence items ({int(labels.sum())} positive, "
          f"{int((fine & ~labels).sum())} fine lookalikes), {time.perf_counter() - start:.0f} s")
    print("collected reference code: per-attribute argmax agrees with the truth: "
          + ", ".join(f"{a} {v:.3f}" for a, v in agreement.items()))
    print(f"{'MATCH read':<14} {'accuracy':>9} {'positive':>9} {'negative':>9} {'fine neg':>9}")
    for name, row in results.items():
        print(f"{name:<14} {row['accuracy']:>9.3f} {row['positive']:>9.3f} {row['negative']:>9.3f} {row['fine_negative']:>9.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"items": args.items, "agreement": agreement, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
