"""Pretrain the toy LLaVA on toy-world scenes and write its weights, tokenizer, config and quality report.

The recipe is LLaVA-1.5's in miniature (yollava/toyworld/llava.py holds every piece):

1. ``vision``: the toy CLIP's tower, supervised densely (every patch's linear heads name the
   attributes of the subject drawn on it; see ``supervise_tower``); then frozen. Its layer -2 patch
   features of 30,000 fresh scenes are computed once (benchmark concept identities of seed 0 are
   never drawn);
2. the comparison curriculum (``comparison_stages``), one word group at a time in the short format:
   ``compare_<group>`` ("<x03> is a small red … . Is <x03> blue?", language model) and
   ``see_<group>`` ("Is this subject blue?" on single-subject photos, language model + projector);
   ``ground`` first moves each projected patch onto the embeddings of the words describing it;
3. ``language``: the language model learns the world's text (text-only questions about subjects
   introduced by a description; loss on the answers);
4. ``instruct``: language model + projector learn the task mix in yollava's chat format:
   captions, attribute questions, yes/no presence of described subjects, subjects introduced by
   a description ("<x03> is a … . Is <x03> in this photo?") and text-only questions about them;
5. held-out quality gates, a per-sample cost measurement through yollava's own training path,
   then ``yollava/assets/toy_llava/{model.safetensors, config.json, tokenizer.json, quality.json, README.md}``.

Usage (one thread, ~80 minutes on a shared 2-core machine; run it in the background):

    nohup python scripts/pretrain_toy.py > runs/pretrain_toy.log 2>&1 &

``--quick`` runs a few steps of every stage into /tmp for checking the pipeline (~2 minutes).
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
from yollava.toyworld import compiled
from yollava.toyworld import llava as toy
from yollava.toyworld.clip import TOY_CLIP_ASSETS, WEIGHTS_FILE, create_toy_clip
from yollava.toyworld.world import GENERATOR_VERSION

TRAIN_STREAM = "llava-train"
HELDOUT_STREAM = "llava-heldout"
IMAGE_SIZE = 64
# the compiled circuit's free numbers, chosen on training scenes (see compiled.calibrate_circuit)
CALIBRATION_GRID = {"threshold": (0.8, 0.85, 0.9), "size_weight": (1.0, 0.5), "shape_weight": (1.0, 0.5)}


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
    scene = toy.draw_scene(0, "llava-timing", 0, IMAGE_SIZE, frozenset())
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
Loaded by `yollava.models.load_base(ModelConfig(name="toy"))` → `yollava.toyworld.llava.load_toy_base()`.

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
- known identities ("Is <p07> in this photo?", new scenes): {yes_no('named') if q.get('named') else 'not trained'}

Cost of one concept-training step (yollava's path, batch 1, k=16, {report['concept_step']['prompt_tokens']} tokens, forward + backward + AdamW):
median {report['concept_step']['median_ms']} ms on {report['torch_threads']} thread(s).

All numbers: `quality.json` (also the training log). Reproduce: `python scripts/pretrain_toy.py`.
"""
    (out / toy.README_FILE).write_text(text, encoding="utf-8")


def main() -> None:
    """Parse flags, run the stages, evaluate, save the assets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=toy.TOY_LLAVA_ASSETS, help="output folder")
    parser.add_argument("--clip-weights", type=Path, default=TOY_CLIP_ASSETS / WEIGHTS_FILE, help="toy CLIP safetensors")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the run bit-reproducible on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-items", type=int, default=400, help="held-out items per gate")
    parser.add_argument("--recipe", choices=toy.RECIPES, default="compiled", help="named stage list (README \"The toy world\")")
    parser.add_argument("--stage-steps", default="", help="override steps per stage, e.g. language=200,instruct=1000 (experiments)")
    parser.add_argument("--stage-set", default="", help="override stage fields, e.g. instruct.trains=all,instruct.lr=2e-3 (experiments)")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage, into a temp folder (pipeline check)")
    parser.add_argument("--init", type=Path, default=None, help="start from this saved toy LLaVA (its tokenizer too) instead of a fresh one")
    parser.add_argument("--tower-from", type=Path, default=None,
                        help="take the vision tower from this saved toy LLaVA (e.g. after a separate vision stage; with or without --init)")
    parser.add_argument("--stages", default="", help="run only these stages, e.g. vision,instruct (with --init)")
    parser.add_argument("--eval-only", action="store_true", help="with --init: no training, re-run the held-out evaluation and rewrite the report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = toy.PretrainConfig(seed=args.seed, stages=toy.recipe_stages(args.recipe), arch=toy.recipe_arch(args.recipe))
    heldout_count = 2000
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
    for item in filter(None, args.stage_set.split(",")):
        key, value = item.split("=")
        name, field_name = key.split(".")
        stage = next(s for s in config.stages if s.name == name)
        if field_name == "mix":  # instruct.mix=named:0.4/verify:0.3/text:0.3 (other tasks 0)
            shares = {task: 0.0 for task in asdict(toy.MixWeights())}
            given = {task: float(share) for task, share in (part.split(":") for part in value.split("/"))}
            if set(given) - set(shares):
                raise SystemExit(f"--stage-set {key}: unknown task(s) {sorted(set(given) - set(shares))}; tasks: {', '.join(shares)}")
            stage.mix = toy.MixWeights(**{**shares, **given})
            continue
        current = getattr(stage, field_name)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--stage-set {key}: expected true or false, got {value!r}")
            setattr(stage, field_name, value.lower() == "true")
            continue
        setattr(stage, field_name, type(current)(value))
    for item in filter(None, args.stage_steps.split(",")):
        name, steps = item.split("=")
        next(s for s in config.stages if s.name == name).steps = int(steps)
    if args.quick:
        config.train_scenes, heldout_count, args.eval_items = 600, 300, 40
        config.vision_scenes = 900
        config.known_scenes, config.known_heldout_scenes = (3, 2), (2, 1)
        for stage in config.stages:
            stage.steps, stage.warmup = 4, 2
        config.log_every, config.eval_every = 2, 4
        args.out = Path(tempfile.mkdtemp(prefix="toy_llava_quick_"))

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {line}", flush=True)

    if args.init is not None:
        tokenizer_json = Tokenizer.from_file(str(args.init / toy.TOKENIZER_FILE))
        tokenizer = toy.wrap_tokenizer(args.init / toy.TOKENIZER_FILE)
        model = toy.load_toy_base(args.init).model
        config.arch = toy.ToyLlavaArch(**json.loads((args.init / toy.CONFIG_FILE).read_text(encoding="utf-8"))["arch"])
        log(f"starting from {args.init}")
    else:
        clip_model, _, _ = create_toy_clip(weights=args.clip_weights)
        words = toy.required_words()
        tokenizer_json = toy.build_tokenizer(words)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_json.save(str(Path(tmp) / toy.TOKENIZER_FILE))
            tokenizer = toy.wrap_tokenizer(Path(tmp) / toy.TOKENIZER_FILE)
        model = toy.new_model(config.arch, tokenizer, clip_model, seed=config.seed)
    if args.tower_from is not None:
        tower = toy.load_toy_base(args.tower_from).model.model.vision_tower
        model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
        log(f"vision tower from {args.tower_from}")
    exclude = toy.excluded_identities(config.excluded_seeds, config.excluded_max_concepts)
    log(f"tokenizer {len(tokenizer)} entries; model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {len(exclude)} excluded identities")

    train_scenes = [toy.draw_scene(config.seed, TRAIN_STREAM, i, IMAGE_SIZE, exclude) for i in range(config.train_scenes)]
    heldout_scenes = [toy.draw_scene(config.seed, HELDOUT_STREAM, i, IMAGE_SIZE, exclude) for i in range(heldout_count)]
    # known identities: fixed subjects behind <p00>..<p63>, with their own scenes (and their lookalikes')
    known = toy.known_identities(config.seed, exclude)
    extra, owners = toy.known_scenes(config.seed, f"{TRAIN_STREAM}/known", known, IMAGE_SIZE, exclude, *config.known_scenes)
    train_owners = {len(train_scenes) + i: o for i, o in enumerate(owners)}
    train_scenes += extra
    extra, owners = toy.known_scenes(config.seed, f"{HELDOUT_STREAM}/known", known, IMAGE_SIZE, exclude, *config.known_heldout_scenes)
    heldout_owners = {len(heldout_scenes) + i: o for i, o in enumerate(owners)}
    heldout_scenes += extra
    banks: dict[str, tuple] = {}

    def banks_for(stage_trains: str) -> tuple:
        """(train, held-out) banks: pixels when the tower trains, else its features (recomputed after it changed)."""
        if stage_trains.startswith("vision"):
            banks.pop("features", None)
            if "pixels" not in banks:
                banks["pixels"] = (toy.PixelBank(model, train_scenes), toy.PixelBank(model, heldout_scenes))
            return banks["pixels"]
        if "features" not in banks:
            banks["features"] = (toy.scene_features(model, train_scenes), toy.scene_features(model, heldout_scenes))
            log(f"features of {len(train_scenes)} training and {len(heldout_scenes)} held-out scenes: {tuple(banks['features'][0].shape)}")
        return banks["features"]

    train_mix = toy.DataMix(train_scenes, exclude, known=known, owners=train_owners)
    heldout_mix = toy.DataMix(heldout_scenes, exclude, known=known, owners=heldout_owners)
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    encoder = toy.Encoder(tokenizer, model.config.image_token_id, patches)
    check = random.Random(config.seed)
    if any(tokenizer.unk_token_id in encoder(train_mix.sample(check, config.mix)).ids for _ in range(2000)):
        raise SystemExit("the data mix produces <unk> tokens; the vocabulary misses a word (see toy.required_words)")
    eval_set = toy.build_eval_set(heldout_mix, config.seed, args.eval_items)
    progress_set = toy.build_eval_set(heldout_mix, config.seed + 1, max(20, args.eval_items // 4))

    history = []
    vision_quality: dict = {}
    circuit = compiled.CircuitConfig()
    circuit_report: dict = {}
    frozen = None
    if args.init is not None:
        saved_circuit = json.loads((args.init / toy.CONFIG_FILE).read_text(encoding="utf-8")).get("circuit")
        if saved_circuit is not None:
            # a compiled model continues: its circuit stays frozen in every later stage
            circuit_report = {"sweep": saved_circuit.get("calibration", {})}
            circuit = compiled.CircuitConfig(**{k: v for k, v in saved_circuit.items() if k != "calibration"})
            frozen = compiled.frozen_parts(model)
    for stage in config.stages:
        log(f"stage {stage.name}: {stage.steps} steps, trains {stage.trains}, data {stage.task}")
        train_bank, heldout_bank = banks_for(stage.trains)
        evaluate = (lambda bank=heldout_bank: toy.quick_report(toy.evaluate_quality(model, encoder, progress_set, bank, config.seed))) if stage.task in ("mix", "text") else None
        if stage.task == "dense":
            # more scenes of the training stream than the later stages use (PretrainConfig.vision_scenes)
            scenes = train_scenes + [toy.draw_scene(config.seed, TRAIN_STREAM, i, IMAGE_SIZE, exclude)
                                     for i in range(config.train_scenes, config.vision_scenes)]
            log(f"dense stage on {len(scenes)} scenes")
            dense_bank = toy.PixelBank(model, scenes, prefix=train_bank) if len(scenes) > len(train_scenes) else train_bank
            records, vision_quality = toy.supervise_tower(model, stage, config, dense_bank, scenes, log,
                                                          heldout=(heldout_bank, heldout_scenes[:1000]))
            del scenes, dense_bank
            history += records
        elif stage.task == "ground":
            history += toy.ground_projector(model, stage, config, train_mix, train_bank, tokenizer, log)
        elif stage.task == "align":
            history += toy.align_projector(model, stage, config, train_mix, train_bank, tokenizer, log)
        elif stage.task == "code":
            compiled.check_arch(model)
            targets = compiled.code_targets(train_scenes, config.arch.hidden_size, int(patches ** 0.5), circuit)
            history += compiled.fit_projector(model, train_bank, targets, stage.steps, stage.lr, seed=config.seed, log=log,
                                              tower_lr_scale=stage.vision_lr_scale if stage.trains.startswith("vision") else 0.0)
            del targets
        elif stage.task == "compile":
            compiled.check_arch(model)
            compiled.compile_embeddings(model, tokenizer, circuit, seed=config.seed)
            compiled.compile_attention(model, circuit)
            compiled.compile_readout(model, circuit, tokenizer)
            compiled.quiet_learnt_outputs(model)
            # the sink threshold is the one free number: chosen on training scenes
            rng = random.Random(f"{config.seed}:calibrate")
            per_task = 20 if args.quick else 200
            calibration = [train_mix.presence(rng.randrange(len(train_scenes)), rng, i % 2 == 0) for i in range(per_task)]
            calibration += [train_mix.introduced(rng.randrange(len(train_scenes)), rng, i % 2 == 0, eval_question=True, second=False)
                            for i in range(per_task)]
            circuit_report = compiled.calibrate_circuit(model, encoder, calibration, train_bank, circuit, CALIBRATION_GRID, log)
            history.append({"stage": stage.name, **circuit_report})
            frozen = compiled.frozen_parts(model)
        else:
            history += toy.run_stage(model, stage, config, train_mix, train_bank, encoder, log, evaluate, frozen=frozen)
    train_seconds = time.perf_counter() - started
    train_bank, heldout_bank = banks_for("language")

    quality = toy.evaluate_quality(model, encoder, eval_set, heldout_bank, config.seed)
    log(f"held-out quality: {json.dumps(toy.quick_report(quality))}")
    log(f"gates: {json.dumps(quality['gates'])}")

    # everything is written into a staging folder that replaces --out only when complete
    final_out = args.out
    args.out = final_out.with_name(final_out.name + ".staging")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    config_record = {"clip_weights_sha256": file_sha256(args.clip_weights), "generator_version": GENERATOR_VERSION}
    if circuit_report:
        config_record["circuit"] = {**circuit.to_dict(), "calibration": circuit_report["sweep"]}
    toy.save_toy_llava(args.out, model, tokenizer_json, config.arch, config_record)
    concept_step = measure_concept_step(args.out)
    log(f"concept training step: {concept_step}")
    if args.eval_only:
        # the model is unchanged: keep how it was trained
        prior = json.loads((args.init / toy.QUALITY_FILE).read_text(encoding="utf-8"))
        history, train_seconds = prior["history"], prior["train_seconds"]
        config_report = prior["config"]
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
                    "from": source.name, "weights_sha256": file_sha256(source / toy.WEIGHTS_FILE), "stages": prior["config"]["stages"]})
                if part == "tower" and not vision_quality:
                    vision_quality = prior.get("vision", {})
    report = {
        "model_id": toy.MODEL_ID,
        "config": config_report,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_mb": round((args.out / toy.WEIGHTS_FILE).stat().st_size / 1e6, 2),
        "tokenizer_size": len(tokenizer),
        "embedding_rows": model.config.text_config.vocab_size,
        "image_tokens": train_bank.shape[1],
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "heldout_scenes": heldout_count,
        "quality": quality,
        "vision": vision_quality or (prior.get("vision", {}) if args.eval_only else {}),
        "concept_step": concept_step,
        "history": history,
    }
    (args.out / toy.QUALITY_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_readme(args.out, report)
    if final_out.exists():
        old = final_out.with_name(final_out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final_out.rename(old)
        args.out.rename(final_out)
        shutil.rmtree(old)
    else:
        args.out.rename(final_out)
    log(f"wrote {final_out} ({report['weights_mb']} MB weights) in {report['seconds'] / 60:.1f} minutes")
    if args.quick:
        shutil.rmtree(final_out)


if __name__ == "__main__":
    main()
