"""Train the toy LLaVA on one task alone and print held-out accuracy every 100 steps.

These focused probes are how the toy LLaVA's blockers were measured (see README "The toy world"):
    python scripts/probe_toy_llava.py --task text_verify --steps 900 --lr 2e-3        # "X is … . Is X red?"
    python scripts/probe_toy_llava.py --task verify --steps 300 --init DIR             # "Is this subject medium?" on the image
    python scripts/probe_toy_llava.py --task attribute --steps 400 --init DIR --tower  # "What colour is this subject?"
    python scripts/probe_toy_llava.py --task named --steps 800 --known 16 --tower      # "Is <p03> in this photo?"
    python scripts/probe_toy_llava.py --task text_verify --width 256 --lr 2e-3 --steps 900  # a wider fresh language model
The comparison curriculum (colour in text, then colour on the image through a grounded projector):
    python scripts/probe_toy_llava.py --task text_verify --attributes color --steps 800 --lr 1e-3 --no-system \
        --name-noise 0 --tower-from VISION_DIR --save TEXT_DIR
    python scripts/probe_toy_llava.py --task verify --attributes color --steps 400 --lr 1e-3 --ground 1500 \
        --no-system --name-noise 0 --init TEXT_DIR
Identities (README "Known identities and bound names"):
    python scripts/probe_toy_llava.py --task named --known 64 --steps 1500 --init VISION_DIR --tower --save NAMED_DIR
    python scripts/probe_toy_llava.py --task bound --steps 1500 --init VISION_DIR --tower [--negatives random:1]
(VISION_DIR: a model after the dense ``vision`` stage, e.g. ``pretrain_toy.py --stages vision --out VISION_DIR``.)

Without ``--init`` the language model is fresh (random) on top of the toy CLIP's tower; ``--tower``
trains the tower too. One thread, deterministic.
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

from yollava.toyworld import llava as toy
from yollava.toyworld.clip import create_toy_clip
from yollava.toyworld.world import sample_subject

TASKS = ("text_verify", "verify", "attribute", "named", "introduced", "presence", "bound", "named+bound")


def build_model(init: Path | None, arch: toy.ToyLlavaArch, tower_from: Path | None) -> tuple:
    """The model, its tokenizer and the tokenizer file (``tower_from``: take that saved model's vision tower)."""
    if init is not None:
        base = toy.load_toy_base(init)
        model, tokenizer, tokenizer_file = base.model, base.tokenizer, init / toy.TOKENIZER_FILE
    else:
        clip, _, _ = create_toy_clip()
        tokenizer_file = Path(tempfile.mkdtemp(prefix="probe_tokenizer_")) / toy.TOKENIZER_FILE
        toy.build_tokenizer(toy.required_words()).save(str(tokenizer_file))
        tokenizer = toy.wrap_tokenizer(tokenizer_file)
        model = toy.new_model(arch, tokenizer, clip, seed=0)
    if tower_from is not None:
        tower = toy.load_toy_base(tower_from).model.model.vision_tower
        model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    return model, tokenizer, tokenizer_file


def build_mix(stream: str, scenes: int, known: list, per_identity: tuple[int, int], exclude: frozenset) -> toy.DataMix:
    """Scenes of ``stream`` (single-subject ones for the image probes) plus the known identities' scenes."""
    plain = [toy.draw_scene(0, stream, i, 64, exclude, 0) for i in range(scenes)]
    extra, owners = toy.known_scenes(0, f"{stream}/known", known, 64, exclude, *per_identity) if known else ([], [])
    return toy.DataMix(plain + extra, exclude, known=known, owners={len(plain) + i: o for i, o in enumerate(owners)})


def draw(mix: toy.DataMix, task: str, rng: random.Random, eval_question: bool = False) -> toy.ToySample:
    positive = rng.random() < 0.5
    if task == "text_verify":
        return mix.text_verify(sample_subject(rng, exclude=mix.exclude), rng, positive)
    if task == "verify":
        return mix.verify(rng.randrange(len(mix.scenes)), rng, positive)
    if task == "introduced":
        return mix.introduced(rng.randrange(len(mix.scenes)), rng, positive, eval_question=eval_question)
    if task == "presence":
        return mix.presence(rng.randrange(len(mix.scenes)), rng, positive)
    if task == "named+bound":
        return draw(mix, "named" if rng.random() < 0.5 else "bound", rng, eval_question)
    if task == "bound":
        return mix.bound(rng.randrange(len(mix.scenes)), rng, positive, eval_question=eval_question or rng.random() < 0.5)
    if task == "named":
        return mix.named(rng, positive, eval_question=eval_question or rng.random() < 0.25)
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
    parser.add_argument("--tower", action="store_true", help="train the vision tower too (at half the learning rate)")
    parser.add_argument("--known", type=int, default=16, help="known identities (task named)")
    parser.add_argument("--width", type=int, default=toy.ToyLlavaArch.hidden_size, help="fresh language model: hidden size (MLP 3x)")
    parser.add_argument("--layers", type=int, default=toy.ToyLlavaArch.num_hidden_layers, help="fresh language model: layers")
    parser.add_argument("--heads", type=int, default=0, help="fresh language model: attention heads (default: width / 32, at least 4)")
    parser.add_argument("--rope-theta", type=float, default=toy.ToyLlavaArch.rope_theta, help="fresh language model: RoPE base")
    parser.add_argument("--init-std", type=float, default=toy.ToyLlavaArch.initializer_range, help="fresh language model: initial weight std")
    parser.add_argument("--bare", action="store_true", help="task named: always the eval question with a bare Yes./No. answer")
    parser.add_argument("--no-system", action="store_true", help="train and evaluate without the llava_v1 system text")
    parser.add_argument("--ground", type=int, default=0, help="first re-ground the projector for this many steps (ground_projector, lr 3e-3)")
    parser.add_argument("--name-noise", type=float, default=toy.PretrainConfig.name_noise, help="share of samples whose names get fresh vectors")
    parser.add_argument("--attributes", default="", help="comparisons ask only about these attributes, e.g. color,size")
    parser.add_argument("--tower-from", type=Path, default=None, help="take the vision tower of this saved toy LLaVA (e.g. one after the dense vision stage)")
    parser.add_argument("--negatives", default="", help="kinds of absent subjects with weights, e.g. random:1 or fine:0.5/random:0.5 (default: DataMix's)")
    parser.add_argument("--scenes", type=int, default=3000, help="training scenes (held out: a tenth; known identities' scenes scale with it)")
    parser.add_argument("--eval-items", type=int, default=300, help="held-out questions scored every 100 steps")
    parser.add_argument("--eval-task", choices=TASKS, default=None, help="score this task instead of --task (e.g. train named, score bound)")
    parser.add_argument("--known-init", choices=("row", "attributes"), default="row",
                        help="attributes: start each known identity's row at its subject's attribute vector (toy.subject_vector)")
    parser.add_argument("--save", type=Path, default=None, help="save the probed model here (loadable with --init)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    arch = toy.ToyLlavaArch(hidden_size=args.width, intermediate_size=3 * args.width, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads or max(4, args.width // 32), initializer_range=args.init_std,
                            rope_theta=args.rope_theta)
    model, tokenizer, tokenizer_file = build_model(args.init, arch, args.tower_from)
    exclude = toy.excluded_identities()
    known = toy.known_identities(0, exclude)[: args.known] if "named" in args.task else []
    if args.known_init == "attributes":
        with torch.no_grad():
            rows = model.model.language_model.embed_tokens.weight
            for token, subject in zip(toy.KNOWN_TOKENS, known):
                rows[tokenizer.convert_tokens_to_ids(token)] = toy.subject_vector(subject, rows, tokenizer)
    # scenes per known identity (with it, with a lookalike) scale with --scenes: (120, 40) and (12, 6) at 3,000
    share = args.scenes / 3000
    train = build_mix("llava-train", args.scenes, known, (max(2, round(120 * share)), max(1, round(40 * share))), exclude)
    heldout = build_mix("llava-heldout", max(20, args.scenes // 10), known, (max(2, round(12 * share)), max(1, round(6 * share))), exclude)
    if args.tower:
        bank, heldout_bank = toy.PixelBank(model, train.scenes), toy.PixelBank(model, heldout.scenes)
    else:
        bank, heldout_bank = toy.scene_features(model, train.scenes), toy.scene_features(model, heldout.scenes)
    if args.ground:
        config = toy.PretrainConfig()
        toy.ground_projector(model, toy.StageConfig("ground", args.ground, 3e-3, "projector", "ground"), config, train, bank, tokenizer, print)
    encoder = toy.Encoder(tokenizer, model.config.image_token_id, bank.shape[1], system=not args.no_system)
    negatives = tuple((k, float(w)) for k, w in (part.split(":") for part in args.negatives.split("/"))) if args.negatives else None
    if args.attributes:
        train.verify_attributes = heldout.verify_attributes = tuple(args.attributes.split(","))
    train.sample = lambda rng, weights: draw(train, args.task, rng, eval_question=args.bare)
    rng = random.Random(1)
    items = [draw(heldout, args.eval_task or args.task, rng, eval_question=True) for _ in range(args.eval_items)]
    yes_no = (args.eval_task or args.task) != "attribute"

    def evaluate() -> dict:
        if yes_no:
            predicted = toy.yes_no_predictions(model, encoder, items, heldout_bank)
            correct = [p == s.label for p, s in zip(predicted, items)]
        else:
            predicted = correct = toy.exact_matches(model, encoder, items, heldout_bank)
        hits, totals = Counter(), Counter()
        for sample, ok in zip(items, correct):
            hits[sample.tag] += ok
            totals[sample.tag] += 1
        report = {"accuracy": round(sum(correct) / len(correct), 3)}
        if yes_no:
            report["yes_rate"] = round(sum(predicted) / len(predicted), 3)
        return {**report, **{tag: round(hits[tag] / totals[tag], 2) for tag in sorted(totals)}}

    stage = toy.StageConfig("probe", steps=args.steps, lr=args.lr, trains="vision+all" if args.tower else "all", task="mix",
                            warmup=30, vision_lr_scale=0.5, negatives=negatives)
    config = toy.PretrainConfig(name_noise=args.name_noise)
    config.eval_every, config.log_every = 100, 50
    print(json.dumps({"step": 0, "eval": evaluate()}), flush=True)
    toy.run_stage(model, stage, config, train, bank, encoder, lambda line: print(line, flush=True), evaluate)
    if args.save is not None:
        saved_arch = arch if args.init is None else toy.ToyLlavaArch(**json.loads((args.init / toy.CONFIG_FILE).read_text())["arch"])
        toy.save_toy_llava(args.save, model, Tokenizer.from_file(str(tokenizer_file)), saved_arch, {"probe": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
