"""Pretrain the toy LLaVA on toy-world scenes and write its weights, tokenizer, config and quality report.

The compiled recipe (yollava/toyworld/pretrain/, docs/toyworld.md), LLaVA-1.5's in miniature:

1. ``vision``: the toy CLIP's tower, supervised densely (every patch's linear heads name the
   attributes of the subject drawn on it; ``pretrain.tower``); then frozen. Its layer -2 patch
   features of the training scenes are computed once (benchmark concept identities of seed 0 are
   never drawn);
2. ``code``: the projector regresses each patch onto the circuit's attribute code;
3. ``compile``: the comparison circuit is written into layers 0-2 (``pretrain.circuit``) and its
   free numbers are picked on training questions;
4. ``instruct``: everything else learns the task mix in yollava's chat format around the frozen
   circuit: captions, attribute questions, yes/no presence of described subjects, subjects
   introduced by a description ("<x03> is a … . Is <x03> in this photo?") and text-only questions;
5. held-out quality gates, a per-sample cost measurement through yollava's own training path,
   then ``yollava/assets/toy_llava/{model.safetensors, config.json, tokenizer.json, quality.json, README.md}``.

Usage (the shipped build: 69 minutes with two threads on a shared 2-core machine; run it in the background):

    nohup python scripts/pretrain_toy.py --threads 2 > runs/pretrain_toy.log 2>&1 &

``--quick`` runs a few steps of every stage (~30 s) for checking the pipeline: into a temporary
folder that is removed afterwards, or into ``--out DIR``, which is kept.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Tokenizer

from yollava.images import file_sha256
from yollava.toyworld import toy_llava as toy
from yollava.toyworld.clip import TOY_CLIP_ASSETS, create_toy_clip
from yollava.toyworld.clip import WEIGHTS_FILE as CLIP_WEIGHTS_FILE
from yollava.toyworld.pretrain import circuit as compiled
from yollava.toyworld.pretrain.config import PretrainConfig, apply_overrides, quick
from yollava.toyworld.pretrain.fresh import new_model
from yollava.toyworld.pretrain.quality import quick_report, tensors_sha256
from yollava.toyworld.pretrain.scenes import HELDOUT_STREAM, IMAGE_SIZE, TRAIN_STREAM, draw_scene
from yollava.toyworld.pretrain.stages import Pretraining
from yollava.toyworld.pretrain.vocabulary import build_tokenizer, required_words
from yollava.toyworld.world import GENERATOR_VERSION


def measure_concept_step(folder: Path, repeats: int = 30) -> dict[str, float]:
    """Milliseconds of one yollava concept-training step (batch 1, forward + backward + AdamW) on the saved model.

    Uses yollava's own path: load_base(name="toy" layout), init_concept + attach (k=16), a recognition
    prompt with the soft prompt, cached image features, supervised_loss.
    """
    from yollava.concept import attach, init_concept
    from yollava.config import ConceptConfig
    from yollava.forward import FeatureCache, ImageRef, collate, supervised_loss
    from yollava.prompts import ChatFormat, RecognitionBank, Turn, encode, render
    from yollava.toyworld.render import render_scene

    base = toy.load_toy_base(folder)
    params = init_concept(base, "probe", ConceptConfig())
    attach(base, params)
    scene = draw_scene(0, "llava-timing", 0, IMAGE_SIZE, frozenset())
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "probe.png"
        render_scene(scene).save(image)
        question, answer = RecognitionBank.load().sample(random.Random(0), params.tokens.identifier, True)
        fmt = ChatFormat.load("llava_v1")
        encoded = encode(base.tokenizer, render(fmt, [Turn(question, answer, images=1)], base.tokenizer.eos_token, params.tokens.soft_prompt),
                         base.image_token_id, base.num_image_tokens)
        cache = FeatureCache(base)
        batch = collate([(encoded.input_ids, encoded.labels, [ImageRef(str(image))])], base.tokenizer.pad_token_id, base.device)
        optimizer = torch.optim.AdamW([params.embed_rows, params.head_rows], lr=1e-3)
        times = []
        for i in range(repeats + 5):
            started = time.perf_counter()
            loss = supervised_loss(base, batch, cache)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= 5:
                times.append(time.perf_counter() - started)
    times.sort()
    return {"prompt_tokens": len(encoded.input_ids), "median_ms": round(1000 * times[len(times) // 2], 1), "min_ms": round(1000 * times[0], 1)}


def write_readme(out: Path, report: dict) -> None:
    """The assets README: how the model was made and its measured quality."""
    q = report["quality"]
    arch = report["config"]["arch"]
    earlier = [s for part in report["config"].get("earlier_stages", []) for s in part["stages"]]
    stages = "\n".join(
        f"| {s['name']} | {s['trains']} | {s['task']} | {s['steps']} | {s['lr']} |" for s in [*earlier, *report["config"]["stages"]]
    )
    vision = report.get("vision") or {}
    vision_line = "- the vision tower was not supervised"
    tower_training = "frozen"
    if vision:
        tower_training = "fine-tuned by the dense `vision` stage (every patch names the\n  attributes of the subject on it), then frozen"
        read = ", ".join(f"{k} {v:.3f}" for k, v in vision.items())
        vision_line = f"- the vision tower's patches, read by the dense stage's linear heads (main subject, held-out scenes): {read}"
    gates = "\n".join(f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in q["gates"].items())

    def yes_no(key: str) -> str:
        part = q[key]
        kinds = ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in part["by_kind"].items())
        return f"accuracy **{part['accuracy']:.3f}**, yes-rate {part['yes_rate']:.3f} (true {part['true_yes_rate']:.3f}); {kinds}"

    attribute_kinds = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in q["attribute"]["by_kind"].items())
    text = f"""# toy LLaVA (`--model toy`)

A transformers `LlavaForConditionalGeneration` pretrained on the toy world by `scripts/pretrain_toy.py`
(deterministic; {report['seconds'] / 60:.0f} minutes on {report['torch_threads']} CPU thread(s) of a shared 2-core machine).
Loaded by `yollava.models.load_base(ModelConfig(name="toy"))` → `yollava.toyworld.toy_llava.load_toy_base()`.

## Model ({report['parameters'] / 1e6:.2f}M parameters, {report['weights_mb']:.1f} MB safetensors, fp32)

- vision tower: the toy CLIP's (open_clip ViT, 64 px, patch 8, width 96, 4 layers) mapped onto
  transformers' `CLIPVisionModel`, {tower_training}; features from layer {arch['vision_feature_layer']}, CLS dropped → {report['image_tokens']} image tokens;
- projector: LLaVA-1.5's 2-layer GELU MLP (96 → {arch['hidden_size']} → {arch['hidden_size']});
- language model: Llama, hidden {arch['hidden_size']}, {arch['num_hidden_layers']} layers, {arch['num_attention_heads']} heads, MLP {arch['intermediate_size']}, untied head;
- tokenizer: word level (`tokenizers` WordLevel, offsets for label masks), {report['tokenizer_size']} entries:
  `<unk> <s> </s> <pad> <image>`, 32 placeholder names `<x00>`…`<x31>`, 64 names of fixed known
  identities `<p00>`…`<p63>`, every word of the toy world,
  of `templates/*.yaml` and of the pretraining answers (with capitalised forms). `<s>` is prepended;
  " Yes" / " No" are single tokens. Embedding rows are padded to {report['embedding_rows']} (concept tokens are added past them).

## Recipe

Scenes: {report['config']['train_scenes']} training scenes (stream `{TRAIN_STREAM}`; the dense `vision` stage sees
{report['config'].get('vision_scenes', report['config']['train_scenes'])} scenes of that stream) and held-out scenes (stream
`{HELDOUT_STREAM}`), main subject + 0-3 distractors, generator version {GENERATOR_VERSION}. Every concept identity of the
benchmarks planned from seed(s) {list(report['config']['excluded_seeds'])} with 1-{report['config']['excluded_max_concepts']} concepts is excluded from all
images and descriptions. Every prompt is rendered with `yollava.prompts.render/encode` in the llava_v1 format.

| stage | trains | data | steps (batch {report['config']['batch_size']}) | peak lr |
|---|---|---|---|---|
{stages}

Instruction mix: {json.dumps(next((s['mix'] for s in report['config']['stages'] if s['name'] == 'instruct' and s.get('mix')), report['config']['mix']))}. Yes/no tasks are balanced 50/50; negatives are
one-attribute lookalikes of the main subject (fine: pattern/accessory/accessory colour; coarse:
family/shape/colour/size), lookalikes of a distractor, or random subjects. Introduced subjects use the
placeholder names; with probability {report['config']['name_noise']} a sample's names get fresh vectors
(vocabulary mean + σ·std·N(0,1), σ log-uniform in [{report['config']['name_noise_low']}, 1]) so that a new concept
identifier initialised by `concept.init=mean` (the default) is read as a name.

## Held-out quality (before any personalization)

| gate | result |
|---|---|
{gates}

{vision_line}
- attribute questions (exact bare-word answer; "this subject" alone or "the red pet" among others):
  **{q['attribute']['accuracy']:.3f}** (n={q['attribute']['n']}; {attribute_kinds})
- conversation.yaml answers about "this subject"/"Riley" (exact sentence): {q['conversation']['accuracy']:.3f} (n={q['conversation']['n']})
- text-only answers about an introduced subject (exact): {q['text']['accuracy']:.3f} (n={q['text']['n']})
- yes/no presence of a described subject: {yes_no('presence')}
- yes/no for a subject introduced by a description (eval question of templates/recognition.yaml): {yes_no('introduced')}
- the same with a new, mean-initialised identifier instead of a placeholder name: {yes_no('introduced_new_identifier')}
- category question ("Is the main subject of this photo a person?"): {q['category']['accuracy']:.3f}
- yes/no comparisons: on the image ("Is this subject striped?") {yes_no('verify')}; in text ("<x03> is … . Is <x03> striped?") {yes_no('text_verify')}

Cost of one concept-training step (yollava's path, batch 1, k=16, {report['concept_step']['prompt_tokens']} tokens, forward + backward + AdamW):
median {report['concept_step']['median_ms']} ms on {report['torch_threads']} thread(s).

All numbers: `quality.json` (also the training log); docs/toyworld.md explains them. Reproduce: `python scripts/pretrain_toy.py`
(tensors sha256 `{report['tensors_sha256']}`).
"""
    (out / toy.README_FILE).write_text(text, encoding="utf-8")


def main() -> None:
    """Parse flags, run the stages, evaluate, save the assets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {toy.TOY_LLAVA_ASSETS}; with --quick a temporary one)")
    parser.add_argument("--clip-weights", type=Path, default=TOY_CLIP_ASSETS / CLIP_WEIGHTS_FILE, help="toy CLIP safetensors")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the run bit-reproducible on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-items", type=int, default=None, help="held-out items per gate (default 400; --quick: 40)")
    parser.add_argument("--stage-steps", default="", help="override steps per stage, e.g. vision=2000,instruct=500 (experiments)")
    parser.add_argument("--stage-set", default="", help="override stage fields, e.g. instruct.lr=2e-3,instruct.mix=presence:0.5/verify:0.5 (experiments)")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage on a few hundred scenes (pipeline check)")
    parser.add_argument("--init", type=Path, default=None, help="start from this saved toy LLaVA (its tokenizer too) instead of a fresh one")
    parser.add_argument("--tower-from", type=Path, default=None,
                        help="take the vision tower from this saved toy LLaVA (e.g. after a separate vision stage; with or without --init)")
    parser.add_argument("--stages", default="", help="run only these stages, e.g. vision or code,compile,instruct (with --init/--tower-from)")
    parser.add_argument("--eval-only", action="store_true", help="with --init: no training, re-run the held-out evaluation and rewrite the report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = PretrainConfig(seed=args.seed)
    if args.eval_only and args.init is None:
        raise SystemExit("--eval-only needs --init DIR (the model to evaluate)")
    if args.eval_only:
        config.stages = []
    if args.stages:
        wanted = args.stages.split(",")
        unknown = set(wanted) - {s.name for s in config.stages}
        if unknown:
            raise SystemExit(f"unknown stage(s) {sorted(unknown)}; the recipe has {[s.name for s in config.stages]}")
        config.stages = [s for s in config.stages if s.name in wanted]
    try:
        apply_overrides(config.stages, args.stage_set, args.stage_steps)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if args.quick:
        config = quick(config)
    if args.eval_items is not None:
        config.eval_items = args.eval_items
    temporary = args.quick and args.out is None
    final_out = Path(tempfile.mkdtemp(prefix="toy_llava_quick_")) if temporary else (args.out or toy.TOY_LLAVA_ASSETS)
    if args.quick and final_out.resolve() == toy.TOY_LLAVA_ASSETS.resolve():
        raise SystemExit("--quick builds no usable model: give it another --out than the shipped assets")

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {line}", flush=True)

    circuit, frozen, calibration = None, None, {}
    if args.init is not None:
        tokenizer_json = Tokenizer.from_file(str(args.init / toy.TOKENIZER_FILE))
        tokenizer = toy.wrap_tokenizer(args.init / toy.TOKENIZER_FILE)
        model = toy.load_toy_base(args.init).model
        saved = json.loads((args.init / toy.CONFIG_FILE).read_text(encoding="utf-8"))
        config.arch = toy.ToyLlavaArch(**saved["arch"])
        if saved.get("circuit") is not None:
            # a compiled model continues: its circuit stays frozen in every later stage
            calibration = saved["circuit"].get("calibration", {})
            circuit = compiled.CircuitConfig(**{k: v for k, v in saved["circuit"].items() if k != "calibration"})
            frozen = compiled.frozen_parts(model)
        log(f"starting from {args.init}")
    else:
        clip_model, _, _ = create_toy_clip(weights=args.clip_weights)
        tokenizer_json = build_tokenizer(required_words())
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_json.save(str(Path(tmp) / toy.TOKENIZER_FILE))
            tokenizer = toy.wrap_tokenizer(Path(tmp) / toy.TOKENIZER_FILE)
        model = new_model(config.arch, tokenizer, clip_model, seed=config.seed)
    if args.tower_from is not None:
        tower = toy.load_toy_base(args.tower_from).model.model.vision_tower
        model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
        log(f"vision tower from {args.tower_from}")
    run = Pretraining(model, tokenizer, config, log, circuit=circuit, frozen=frozen)
    log(f"tokenizer {len(tokenizer)} entries; model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"{len(run.exclude)} excluded identities; {len(run.train_scenes)} training and {len(run.heldout_scenes)} held-out scenes")
    if run.unknown_words():
        raise SystemExit("the data mix produces <unk> tokens; the vocabulary misses a word (see pretrain.vocabulary.required_words)")

    history = []
    for stage in config.stages:
        history += run.run(stage)
    train_seconds = time.perf_counter() - started
    quality = run.quality()
    log(f"held-out quality: {json.dumps(quick_report(quality))}")
    log(f"gates: {json.dumps(quality['gates'])}")

    # everything is written into a staging folder that replaces the output folder only when complete
    out = final_out.with_name(final_out.name + ".staging")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config_record = {"clip_weights_sha256": file_sha256(args.clip_weights), "generator_version": GENERATOR_VERSION}
    if run.circuit_report or circuit is not None:
        config_record["circuit"] = {**run.circuit.to_dict(), "calibration": run.circuit_report.get("sweep", calibration)}
    toy.save_toy_llava(out, model, tokenizer_json, config.arch, config_record)
    concept_step = measure_concept_step(out)
    log(f"concept training step: {concept_step}")
    vision_quality = run.vision_quality
    if args.eval_only:
        # the model is unchanged: keep how it was trained
        prior = json.loads((args.init / toy.QUALITY_FILE).read_text(encoding="utf-8"))
        history, train_seconds = prior["history"], prior["train_seconds"]
        config_report = prior["config"]
        vision_quality = prior.get("vision", {})
        started = time.perf_counter() - prior["seconds"]
    else:
        config_report = {**asdict(config), "excluded_seeds": list(config.excluded_seeds)}
        # stages run in earlier invocations (--init, --tower-from) keep their records
        for source, part in ((args.tower_from, "tower"), (args.init, "model")):
            if source is not None and (source / toy.QUALITY_FILE).is_file():
                prior = json.loads((source / toy.QUALITY_FILE).read_text(encoding="utf-8"))
                history = [{**r, "from": part} for r in prior["history"]] + history
                train_seconds += prior["train_seconds"]
                config_report.setdefault("earlier_stages", []).append({
                    "from": source.name, "tensors_sha256": tensors_sha256(source / toy.WEIGHTS_FILE), "stages": prior["config"]["stages"]})
                if part == "tower" and not vision_quality:
                    vision_quality = prior.get("vision", {})
    report = {
        "model_id": toy.MODEL_ID,
        "config": config_report,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_mb": round((out / toy.WEIGHTS_FILE).stat().st_size / 1e6, 2),
        "tensors_sha256": tensors_sha256(out / toy.WEIGHTS_FILE),
        "tokenizer_size": len(tokenizer),
        "embedding_rows": model.config.text_config.vocab_size,
        "image_tokens": run.grid ** 2,
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "heldout_scenes": config.heldout_scenes,
        "quality": quality,
        "vision": vision_quality,
        "concept_step": concept_step,
        "history": history,
    }
    (out / toy.QUALITY_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_readme(out, report)
    if final_out.exists():
        old = final_out.with_name(final_out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final_out.rename(old)
        out.rename(final_out)
        shutil.rmtree(old)
    else:
        out.rename(final_out)
    log(f"wrote {final_out} ({report['weights_mb']} MB weights, tensors sha256 {report['tensors_sha256']}) in {report['seconds'] / 60:.1f} minutes")
    if temporary:
        shutil.rmtree(final_out)


if __name__ == "__main__":
    main()
