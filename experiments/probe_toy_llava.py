"""Train the toy LLaVA on one task of the data mix alone and print held-out accuracy every 100 steps.

A research probe, not part of the package (it imports it): how fast, if at all, does a language
model of a given size learn one skill of the toy world? docs/toyworld.md ("Probe history") has
what such probes measured and why the default recipe compiles the comparison instead of
learning it. Examples (one thread, deterministic):

    python experiments/probe_toy_llava.py --task text_verify --steps 900 --lr 2e-3     # "<x03> is … . Is <x03> red?"
    python experiments/probe_toy_llava.py --task verify --steps 300 --init DIR          # "Is this subject medium?" on the image
    python experiments/probe_toy_llava.py --task attribute --steps 400 --init DIR       # "What color is this subject?"
    python experiments/probe_toy_llava.py --task text_verify --width 256 --steps 900    # a wider fresh language model

Without ``--init`` the language model is fresh (random) over the shipped toy CLIP's tower;
``--tower-from`` takes the tower of a saved model (e.g. ``pretrain_toy.py --stages vision --out DIR``).
The probes of identity names, bound names, the comparison curriculum and projector grounding need
code that is no longer in the package: ``git show 116f528:scripts/probe_toy_llava.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer

from yollava.toyworld import toy_llava as toy
from yollava.toyworld.clip import create_toy_clip
from yollava.toyworld.pretrain.batches import SampleEncoder
from yollava.toyworld.pretrain.config import PretrainConfig, StageConfig
from yollava.toyworld.pretrain.fresh import new_model
from yollava.toyworld.pretrain.mix import DataMix, ToySample
from yollava.toyworld.pretrain.quality import exact_matches, yes_no_predictions
from yollava.toyworld.pretrain.scenes import HELDOUT_STREAM, IMAGE_SIZE, TRAIN_STREAM, draw_scene, excluded_identities, scene_features
from yollava.toyworld.pretrain.stages import train_mix
from yollava.toyworld.pretrain.vocabulary import build_tokenizer, required_words
from yollava.toyworld.world import sample_subject

TASKS = ("text_verify", "verify", "attribute", "introduced", "presence")


def build_model(init: Path | None, arch: toy.ToyLlavaArch, tower_from: Path | None) -> tuple:
    """The model, its tokenizer and the tokenizer file (``tower_from``: take that saved model's vision tower)."""
    if init is not None:
        base = toy.load_toy_base(init)
        model, tokenizer, tokenizer_file = base.model, base.tokenizer, init / toy.TOKENIZER_FILE
    else:
        clip, _, _ = create_toy_clip()
        tokenizer_file = Path(tempfile.mkdtemp(prefix="probe_tokenizer_")) / toy.TOKENIZER_FILE
        build_tokenizer(required_words()).save(str(tokenizer_file))
        tokenizer = toy.wrap_tokenizer(tokenizer_file)
        model = new_model(arch, tokenizer, clip, seed=0)
    if tower_from is not None:
        tower = toy.load_toy_base(tower_from).model.model.vision_tower
        model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    return model, tokenizer, tokenizer_file


def draw(mix: DataMix, task: str, rng: random.Random, eval_question: bool = False) -> ToySample:
    """One sample of ``task`` (attribute: open questions with a bare-word answer only)."""
    positive = rng.random() < 0.5
    if task == "text_verify":
        return mix.text_verify(sample_subject(rng, exclude=mix.exclude), rng, positive)
    if task == "verify":
        return mix.verify(rng.randrange(len(mix.scenes)), rng, positive)
    if task == "introduced":
        return mix.introduced(rng.randrange(len(mix.scenes)), rng, positive, eval_question=eval_question)
    if task == "presence":
        return mix.presence(rng.randrange(len(mix.scenes)), rng, positive)
    while True:
        sample = mix.attribute(rng.randrange(len(mix.scenes)), rng)
        if sample.kind == "attribute":
            return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--init", type=Path, default=None, help="a saved toy LLaVA to start from (default: fresh language model)")
    parser.add_argument("--tower-from", type=Path, default=None, help="take the vision tower of this saved toy LLaVA")
    parser.add_argument("--width", type=int, default=toy.ToyLlavaArch.hidden_size, help="fresh language model: hidden size (MLP 3x)")
    parser.add_argument("--layers", type=int, default=toy.ToyLlavaArch.num_hidden_layers, help="fresh language model: layers")
    parser.add_argument("--heads", type=int, default=0, help="fresh language model: attention heads (default: width / 32, at least 4)")
    parser.add_argument("--rope-theta", type=float, default=toy.ToyLlavaArch.rope_theta, help="fresh language model: RoPE base")
    parser.add_argument("--init-std", type=float, default=toy.ToyLlavaArch.initializer_range, help="fresh language model: initial weight std")
    parser.add_argument("--name-noise", type=float, default=PretrainConfig.name_noise, help="share of samples whose names get fresh vectors")
    parser.add_argument("--scenes", type=int, default=3000, help="single-subject training scenes (held out: a tenth)")
    parser.add_argument("--eval-items", type=int, default=300, help="held-out questions scored every 100 steps")
    parser.add_argument("--eval-task", choices=TASKS, default=None, help="score this task instead of --task")
    parser.add_argument("--save", type=Path, default=None, help="save the probed model here (loadable with --init)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    arch = toy.ToyLlavaArch(hidden_size=args.width, intermediate_size=3 * args.width, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads or max(4, args.width // 32), initializer_range=args.init_std,
                            rope_theta=args.rope_theta)
    model, tokenizer, tokenizer_file = build_model(args.init, arch, args.tower_from)
    exclude = excluded_identities()
    train = DataMix([draw_scene(0, TRAIN_STREAM, i, IMAGE_SIZE, exclude, 0) for i in range(args.scenes)], exclude)
    heldout = DataMix([draw_scene(0, HELDOUT_STREAM, i, IMAGE_SIZE, exclude, 0) for i in range(max(20, args.scenes // 10))], exclude)
    bank, heldout_bank = scene_features(model, train.scenes), scene_features(model, heldout.scenes)
    encoder = SampleEncoder(tokenizer, model.config.image_token_id, bank.shape[1])
    rng = random.Random(1)
    eval_task = args.eval_task or args.task
    items = [draw(heldout, eval_task, rng, eval_question=True) for _ in range(args.eval_items)]

    def evaluate() -> dict:
        if eval_task == "attribute":
            predicted = correct = exact_matches(model, encoder, items, heldout_bank)
        else:
            predicted = yes_no_predictions(model, encoder, items, heldout_bank)
            correct = [p == s.label for p, s in zip(predicted, items)]
        hits, totals = Counter(), Counter()
        for sample, ok in zip(items, correct):
            hits[sample.tag] += ok
            totals[sample.tag] += 1
        report = {"accuracy": round(sum(correct) / len(correct), 3)}
        if eval_task != "attribute":
            report["yes_rate"] = round(sum(predicted) / len(predicted), 3)
        return {**report, **{tag: round(hits[tag] / totals[tag], 2) for tag in sorted(totals)}}

    stage = StageConfig("probe", steps=args.steps, lr=args.lr, trains="all", task="mix", warmup=30)
    config = PretrainConfig(name_noise=args.name_noise, eval_every=100, log_every=50)
    print(json.dumps({"step": 0, "eval": evaluate()}), flush=True)
    train_mix(model, stage, config, lambda r: draw(train, args.task, r), bank, encoder, lambda line: print(line, flush=True), evaluate)
    if args.save is not None:
        saved_arch = arch if args.init is None else toy.ToyLlavaArch(**json.loads((args.init / toy.CONFIG_FILE).read_text())["arch"])
        probe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        toy.save_toy_llava(args.save, model, Tokenizer.from_file(str(tokenizer_file)), saved_arch, {"probe": probe})


if __name__ == "__main__":
    main()
