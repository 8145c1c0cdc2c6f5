"""Pretrain the toy CLIP on toy-world scenes and write its safetensors, vocabulary and held-out metrics.

Usage (CPU, one thread, ~20 minutes; run in the background):

    nohup python scripts/pretrain_toy_clip.py > runs/toy_clip.log 2>&1 &

Writes ``yollava/assets/toy_clip/{toy_clip.safetensors, vocab.json, metrics.json}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from yollava.toyworld.clip import (
    METRICS_FILE,
    TOY_CLIP_ASSETS,
    TOY_CLIP_MODEL_NAME,
    VOCAB_FILE,
    WEIGHTS_FILE,
)
from yollava.toyworld.clip_train import (
    ToyClipTrainConfig,
    config_dict,
    evaluate_toy_clip,
    excluded_identities,
    heldout_scenes,
    train_toy_clip,
)
from yollava.toyworld.world import GENERATOR_VERSION


def main() -> None:
    """Parse flags, train, evaluate on held-out scenes, save."""
    defaults = ToyClipTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TOY_CLIP_ASSETS, help="output folder")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--family-color-weight", type=float, default=defaults.family_color_weight,
                        help="weight of the 'a red pet next to a green plant' captions' loss (0: off)")
    parser.add_argument("--family-weight", type=float, default=defaults.family_weight,
                        help="weight of the 'a pet next to a plant' captions' loss (0: off)")
    parser.add_argument("--image-family-weight", type=float, default=defaults.image_family_weight,
                        help="weight of the image-to-image loss with 'same main family' as positives (0: off)")
    parser.add_argument("--image-family-color-weight", type=float, default=defaults.image_family_color_weight,
                        help="weight of the image-to-image loss with 'same main family and colour' as positives (0: off)")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--init", type=Path, default=None, help="continue from these toy CLIP weights (default: from scratch)")
    parser.add_argument("--first-item", type=int, default=defaults.first_item,
                        help="training-stream items to skip (what the --init run drew: 153600 for the first shipped model)")
    parser.add_argument("--eval-identities", type=int, default=300, help="held-out subjects (8 scenes each)")
    args = parser.parse_args()
    # Other jobs share the machine's two cores; one thread also makes the run bit-reproducible.
    torch.set_num_threads(1)
    config = ToyClipTrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        family_color_weight=args.family_color_weight,
        family_weight=args.family_weight,
        image_family_weight=args.image_family_weight,
        image_family_color_weight=args.image_family_color_weight,
        init_weights=str(args.init) if args.init else None,
        first_item=args.first_item,
    )
    if args.init and args.init.resolve() == (args.out / WEIGHTS_FILE).resolve():
        # safetensors maps the file; overwriting it in place while loaded is unsafe, and the run
        # should not depend on a file it replaces
        parser.error("--init must not be the file this run writes; copy it elsewhere first")
    started = time.perf_counter()
    model, tokenizer, history = train_toy_clip(config, log=lambda line: print(line, flush=True))
    train_seconds = time.perf_counter() - started
    scenes = heldout_scenes(config.seed, args.eval_identities, exclude=excluded_identities(config))
    metrics = evaluate_toy_clip(model, tokenizer, scenes)
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model_name": TOY_CLIP_MODEL_NAME, "generator_version": GENERATOR_VERSION, "steps": str(config.steps)}
    save_file(state, str(args.out / WEIGHTS_FILE), metadata=metadata)
    tokenizer.save(args.out / VOCAB_FILE)
    report = {
        "model_name": TOY_CLIP_MODEL_NAME,
        "generator_version": GENERATOR_VERSION,
        "config": config_dict(config),
        "init_sha256": hashlib.sha256(args.init.read_bytes()).hexdigest() if args.init else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "final_loss": history[-1]["loss"],
        "heldout": metrics,
        "history": history,
    }
    (args.out / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2), flush=True)


if __name__ == "__main__":
    main()
