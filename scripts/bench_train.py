"""Training speed, side by side in one run: the Yo'LLaVA reference loop against yollava's cached-prefix path.

Both train the same samples from the same seed on the same model. Measured: time per training step
(batch 1, and yollava batched), time per recognition score, time per prefix (tower + the frozen
prefix's forward, once per image), peak memory (RSS; CUDA max allocated on a GPU), achieved FLOP/s
(from yollava.bench.flops) and, on a GPU, MFU against the device's dense bf16 peak.

Models: ``scale`` is LLaVA-1.5-13B's exact width with random weights and ``--layers`` decoder layers;
every figure is also measured with one more (identical) layer, and the 40-layer figures are
extrapolated linearly in depth, t(40) = t(L) + (40 - L) * (t(L+1) - t(L)), which is what the FLOP
model says (every decoder layer costs the same). ``toy`` is the shipped toy LLaVA; ``tiny`` a random
test model. Time per concept is built from the measured unit costs and the recipe's counts (samples per
epoch, images scored per epoch, epochs: 15 for the reference, and for yollava the early-stopped mean
of --epochs-run); with --concept NAME --data DIR (toy world) both recipes also run end to end.

    python scripts/bench_train.py --model scale --layers 1 --steps 3
    python scripts/bench_train.py --model toy --steps 20 --concept ozzy --data toyworld

The last printed line is a JSON object (per_step_ratio, per_step_ratio_40_layers, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from yollava.bench import flops as F  # noqa: E402
from yollava.bench.reference import ReferenceLoop, reference_logprobs  # noqa: E402
from yollava.bench.scale import LLAVA_13B_LAYERS, add_decoder_layer, build_scale_base  # noqa: E402
from yollava.concept import attach, init_concept  # noqa: E402
from yollava.config import ConceptConfig, HeadRows, ModelConfig  # noqa: E402
from yollava.evaluate import YesNoScorer  # noqa: E402
from yollava.forward import (  # noqa: E402
    FeatureCache, ImageRef, PrefixCache, collate, image_features, pixel_values, prefix_items, split_lengths, supervised_loss,
)
from yollava.models import build_tiny_base, load_base  # noqa: E402
from yollava.prompts import ChatFormat, RecognitionBank, Turn, encode, render  # noqa: E402

# Dense bf16 peaks (TFLOP/s) by device name, for MFU; unknown devices get no MFU.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
# Recipe counts of one concept with yollava's defaults: 5 positives asked 40 ways against 200 negatives
# (100 hard + 100 easy), 50 conversation samples; every training image scored after each epoch.
RECIPE = {"samples_per_epoch": 450, "images_scored_per_epoch": 205, "images": 205, "reference_epochs": 15}


class PeakMemory:
    """Peak memory of a phase: CUDA max allocated on a GPU, else the process's RSS sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Distinct pictures (coloured shapes on noise): every image gets its own prefix."""
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        image = Image.effect_noise((size, size), 40).convert("RGB")
        draw = ImageDraw.Draw(image)
        box = sorted(rng.sample(range(size), 2))
        draw.ellipse((box[0], box[0], box[1], box[1]), fill=tuple(rng.randrange(256) for _ in range(3)))
        path = folder / f"{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def build(args) -> object:
    if args.model == "scale":
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        return build_scale_base(args.layers, device=device, dtype=dtype)
    if args.model == "tiny":
        return build_tiny_base()
    return load_base(ModelConfig(name=args.model))


def encoded_samples(base, soft_prompt: str, identifier: str, images: list[Path], n: int, seed: int):
    """Recognition samples (half positive, half negative) over ``images`` with the soft prompt: what a step trains on."""
    fmt = ChatFormat.load("llava_v1")
    bank = RecognitionBank.load()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question, answer = bank.sample(rng, identifier, positive=i % 2 == 0)
        enc = encode(base.tokenizer, render(fmt, [Turn(question, answer, images=1)], base.tokenizer.eos_token, soft_prompt),
                     base.image_token_id, base.num_image_tokens)
        out.append((enc.input_ids, enc.labels, [ImageRef(str(images[i % len(images)]))]))
    return out


class Timings:
    """Wall and CPU seconds of named calls, collected in interleaved rounds so load changes hit every figure alike."""

    def __init__(self, device: torch.device):
        self.device = device
        self.samples: dict[str, list[tuple[float, float]]] = {}

    def __call__(self, name: str, fn, per: int = 1) -> None:
        sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(self.device)
        self.samples.setdefault(name, []).append(((time.perf_counter() - wall) / per, (time.process_time() - cpu) / per))

    def median(self, name: str) -> dict[str, float]:
        rows = self.samples[name]
        return {"wall_s": statistics.median(r[0] for r in rows), "cpu_s": statistics.median(r[1] for r in rows), "repeats": len(rows)}


class YollavaRunner:
    """yollava's path on one depth: a fresh prefix cache (warmed: its time is the once-per-image cost), steps, scores."""

    def __init__(self, base, params, samples, images, args, timings: Timings):
        self.base, self.params, self.samples, self.images = base, params, samples, images
        self.optimizer = torch.optim.AdamW([params.embed_rows, params.head_rows], lr=1e-3)
        self.pad = base.tokenizer.pad_token_id or 0
        self.cache = PrefixCache(base, FeatureCache(base), device_gb=args.prefix_cache_gb)
        timings("yollava.warm_per_image", lambda: self.cache.warm(prefix_items(base, samples)), per=len(images))
        self.scorer = YesNoScorer(base, ChatFormat.load("llava_v1"), params.tokens.soft_prompt,
                                        RecognitionBank.load().eval_prompt(params.tokens.identifier), self.cache)
        self.cursor = 0

    def step(self, size: int) -> None:
        chunk = [self.samples[(self.cursor + j) % len(self.samples)] for j in range(size)]
        self.cursor += size
        loss = supervised_loss(self.base, collate(chunk, self.pad, self.base.device), self.cache)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def score(self) -> None:
        self.scorer.logprobs([str(p) for p in self.images])

    def recompute(self) -> None:
        """What a prefix that did not fit the budget costs at each use (its image features stay cached)."""
        self.cache._compute(prefix_items(self.base, self.samples[:1]))

    def tower(self) -> None:
        """The vision tower + projector on one image: the other half of a prefix's first computation."""
        image_features(self.base, pixel_values(self.base, [ImageRef(str(self.images[0])).load()]))


class ReferenceRunner:
    def __init__(self, base, loop: ReferenceLoop, samples, images, prompt_ids):
        self.base, self.loop, self.samples, self.images, self.prompt_ids = base, loop, samples, images, prompt_ids
        self.pad = base.tokenizer.pad_token_id or 0
        self.cursor = 0

    def step(self) -> None:
        sample = self.samples[self.cursor % len(self.samples)]
        self.cursor += 1
        self.loop.step(collate([sample], self.pad, self.base.device))

    def score(self) -> None:
        reference_logprobs(self.base, self.prompt_ids, ImageRef(str(self.images[self.cursor % len(self.images)])))


def set_depth(base, layers: int) -> None:
    """Run only the first ``layers`` decoder layers (transformers' Llama loops over ``layers[:num_hidden_layers]``)."""
    for config in {id(c): c for c in (base.model.model.language_model.config, base.model.config.text_config)}.values():
        config.num_hidden_layers = layers


def measure(runners: dict[int, "YollavaRunner"], ref: "ReferenceRunner", base, args, timings: dict[int, Timings]) -> dict[int, dict]:
    """``args.steps`` rounds, each timing every figure at every depth in turn (after one untimed warm-up round); medians.

    Interleaving the depths as well as the two loops keeps a change of machine load from showing up
    as a difference between depths, which the 40-layer extrapolation multiplies by 39.
    """
    size = args.batch_size

    def plan(yol: "YollavaRunner"):
        rows = [("reference.step_b1", ref.step, 1), ("yollava.step_b1", lambda: yol.step(1), 1)]
        if size > 1:
            rows.append((f"yollava.step_b{size}", lambda: yol.step(size), 1))
        return rows + [("reference.score_per_image", ref.score, 1), ("yollava.score_per_image", yol.score, len(yol.images)),
                       ("yollava.prefix_recompute_per_image", yol.recompute, 1), ("yollava.tower_per_image", yol.tower, 1)]

    with ref.loop:
        for round_index in range(args.steps + 1):
            for depth, yol in runners.items():
                set_depth(base, depth)
                for name, fn, per in plan(yol):
                    if round_index:
                        timings[depth](name, fn, per)
                    else:
                        fn()  # warm-up
    out: dict[int, dict] = {}
    for depth, yol in runners.items():
        out[depth] = {"yollava": {}, "reference": {}}
        for name in timings[depth].samples:
            who, figure = name.split(".", 1)
            out[depth][who][figure] = timings[depth].median(name)
        y = out[depth]["yollava"]
        # a prefix's first computation: its image through the tower, then the prefix forward (medians of both)
        y["prefix_per_image"] = {k: y["tower_per_image"][k] + y["prefix_recompute_per_image"][k] for k in ("wall_s", "cpu_s")}
        y["prefix_cache"] = dataclasses.asdict(yol.cache.stats)
    set_depth(base, max(runners))
    return out


def extrapolate(at_l: float, at_l1: float, layers: int, target: int = LLAVA_13B_LAYERS) -> float:
    """Linear in depth: every decoder layer costs the same (the FLOP model)."""
    return at_l + (target - layers) * (at_l1 - at_l)


def per_concept(yol: dict, ref: dict, batch_key: str, epochs_yollava: float, kept: tuple[int, int, float] | None = None, key: str = "wall_s",
                epochs_batched: float | None = None) -> dict:
    """Seconds per concept from unit costs and the recipe's counts: training, per-epoch scoring, yollava's prefixes.

    ``kept``: (prefixes the device budget holds, prefixes the host budget holds, seconds to copy one
    to the device); None = every prefix on the device. Positives and the text-only prefix are kept
    first (used ~40 times an epoch); every other prefix is copied or recomputed at each of its two
    uses per epoch (its training step, its score).
    """
    r = RECIPE
    reference = r["reference_epochs"] * (r["samples_per_epoch"] * ref["step_b1"][key] + r["images_scored_per_epoch"] * ref["score_per_image"][key])
    total = r["images"] + 1
    on_device, on_host, copy_s = kept if kept is not None else (total, 0, 0.0)
    on_host = min(on_host, total - min(on_device, total))
    recomputed = max(0, total - on_device - on_host)

    def ours(step_key: str, per_step_samples: int) -> float:
        epochs = epochs_yollava if per_step_samples == 1 or epochs_batched is None else epochs_batched
        steps = -(-r["samples_per_epoch"] // per_step_samples)
        epoch = steps * yol[step_key][key] + r["images_scored_per_epoch"] * yol["score_per_image"][key]
        epoch += 2 * recomputed * yol["prefix_recompute_per_image"][key] + 2 * on_host * copy_s
        return r["images"] * yol["prefix_per_image"][key] + epochs * epoch

    out = {"reference_s": reference, "yollava_b1_s": ours("step_b1", 1), "prefixes_on_host": on_host, "prefixes_recomputed": recomputed}
    out["ratio_b1"] = reference / out["yollava_b1_s"]
    if batch_key in yol:
        size = int(batch_key.split("_b")[1])
        out[f"yollava_b{size}_s"] = ours(batch_key, size)
        out[f"ratio_b{size}"] = reference / out[f"yollava_b{size}_s"]
    return out


def flop_figures(arch: F.Arch, prefix: int, suffix: int, supervised: int, total: int, score_total: int) -> dict:
    return {
        "reference_step": F.reference_step(arch, total),
        "yollava_step": F.yollava_step(arch, prefix, suffix, supervised),
        "prefix_pass": F.prefix_pass(arch, prefix),
        "reference_score": F.reference_score(arch, score_total),
        "yollava_score": F.yollava_score(arch, prefix, score_total - prefix),
    }


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def run_concepts(base, args, console_print) -> dict:
    """Both recipes end to end on toy-world concepts: wall/CPU seconds, epochs run, test recognition."""
    from rich.console import Console

    from yollava.bench.reference import save_reference_concept, train_reference_concept
    from yollava.concept import ConceptTokens, attached, load_concept
    from yollava.config import load_config
    from yollava.data import NegativeSource
    from yollava.evaluate.layout import TRAIN, open_benchmark
    from yollava.evaluate.recognition import evaluate_concept
    from yollava.methods.soft_prompt import concept_personalization
    from yollava.prepare import build_samples, gather_inputs
    from yollava.train import encode_samples, train_concept

    console = Console(stderr=True, quiet=True)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    results = []
    data = open_benchmark(args.data)  # the published layout: DIR/{train,test}/<name>/
    for name in args.concept:
        positives = [Path(p) for p in data.images(TRAIN, name)[:5]]
        pos_dir = work / "positives" / name
        pos_dir.mkdir(parents=True)
        for p in positives:
            (pos_dir / p.name).symlink_to(p.resolve())
        config = load_config(overrides=[f"model.name={args.model}", f"train.runs_dir={work / 'runs'}", "data.recipe=recognition", *args.set])
        source = NegativeSource(pool=str(args.data / "pool"), embedder="toy")
        # retrieval once before either clock starts (its embeddings are cached on disk): both recipes get the same negatives
        inputs = gather_inputs(name, pos_dir, source, work / "ours", config)
        wall, cpu = time.perf_counter(), time.process_time()
        ours = train_concept(config, name, pos_dir, source, store=work / "ours", overwrite=True, base=load_base(config.model), console=console)
        ours_s = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "epochs": len(ours.history)}
        # the reference trains on the very samples yollava built (stored with the concept), from the same seed
        ref_base = load_base(config.model)
        wall, cpu = time.perf_counter(), time.process_time()
        training_set = build_samples(inputs, ref_base, work / "ours", config, FeatureCache(ref_base), console)
        tokens = ConceptTokens(name, config.concept.k)
        with attached(ref_base, init_concept(ref_base, name, config.concept)):  # the concept's tokens, so samples encode to its ids
            encoded = encode_samples(ref_base, ChatFormat.load(config.prompt.template), tokens.soft_prompt, training_set.samples, config.train.max_length)
        images = inputs.images
        reference = train_reference_concept(ref_base, config, name, encoded, images.positives, images.negatives,
                                            RecognitionBank.load().eval_prompt(tokens.identifier), tokens.soft_prompt)
        ref_s = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "epochs": len(reference.history)}
        save_reference_concept(reference, ref_base, work / "reference")
        test_pos, test_neg = data.test_split(name)
        scores = {}
        for label, store in (("yollava", work / "ours"), ("reference", work / "reference")):
            eval_base = load_base(config.model)
            artifact = load_concept(eval_base, store, name)
            scores[label] = evaluate_concept(eval_base, concept_personalization(artifact.params.tokens), test_pos, test_neg, PrefixCache(eval_base)).weighted
        row = {"concept": name, "yollava": ours_s, "reference": ref_s, "test_weighted": scores,
               "ratio_wall": ref_s["wall_s"] / ours_s["wall_s"], "ratio_cpu": ref_s["cpu_s"] / ours_s["cpu_s"]}
        console_print(f"concept {name}: reference {ref_s['cpu_s']:.0f} s CPU ({ref_s['epochs']} epochs), yollava {ours_s['cpu_s']:.0f} s CPU "
                      f"({ours_s['epochs']} epochs): {row['ratio_cpu']:.1f}x; test weighted recognition reference {scores['reference']:.3f}, yollava {scores['yollava']:.3f}")
        results.append(row)
    return {
        "concepts": results,
        "ratio_cpu_mean": statistics.fmean(r["ratio_cpu"] for r in results),
        "ratio_wall_mean": statistics.fmean(r["ratio_wall"] for r in results),
        "test_weighted_reference_mean": statistics.fmean(r["test_weighted"]["reference"] for r in results),
        "test_weighted_yollava_mean": statistics.fmean(r["test_weighted"]["yollava"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scale", help="scale (LLaVA-1.5-13B width, random), toy, tiny, or any model.name")
    parser.add_argument("--layers", type=int, default=1, help="decoder layers of the scale model (1 or 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per figure (medians), after one warm-up step")
    parser.add_argument("--batch-size", type=int, default=8, help="yollava's batched step (per-sample cost); 1 = skip")
    parser.add_argument("--images", type=int, default=4, help="distinct images the steps cycle through (each its own prefix)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) or cpu")
    parser.add_argument("--clock", default="auto", choices=["auto", "wall", "cpu"],
                        help="what the ratios use: auto = process CPU time on one CPU thread (robust to other load), else wall time")
    parser.add_argument("--prefix-cache-gb", type=float, default=4.0, help="device budget of the prefix cache (train.prefix_cache_gb)")
    parser.add_argument("--prefix-cache-cpu-gb", type=float, default=32.0, help="host budget, for the 40-layer per-concept estimate under a budget")
    parser.add_argument("--h2d-gbps", type=float, default=25.0, help="host-to-device copy rate for that estimate (PCIe 4 x16, pinned)")
    parser.add_argument("--epochs-run", type=float, default=None,
                        help="yollava's mean epochs per concept with early stop (e.g. from a toy bench); default: 15, no early-stop credit")
    parser.add_argument("--epochs-run-batched", type=float, default=None, help="the same for the batched recipe (default: --epochs-run)")
    parser.add_argument("--concept", nargs="*", default=[], help="toy-world concepts to run both recipes on end to end (needs --data)")
    parser.add_argument("--data", type=Path, default=None, help="toy world from `yollava toy generate` (for --concept)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for --concept runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `yollava train` does
    torch.manual_seed(0)

    def say(text: str) -> None:
        print(text, flush=True)

    t0 = time.perf_counter()
    base = build(args)
    device = base.device
    say(f"model {args.model}: {base.model.config.text_config.num_hidden_layers} decoder layers, hidden {base.hidden_size}, "
        f"{base.num_image_tokens} image tokens, {device} {base.dtype}, {torch.get_num_threads()} threads; built in {time.perf_counter() - t0:.0f} s")
    params = init_concept(base, "bo", ConceptConfig(k=16), seed=0)
    ids = attach(base, params)
    ref_init = init_concept(base, "bo", ConceptConfig(k=16, head_rows=HeadRows.all), seed=0)
    image_size = base.model.config.vision_config.image_size
    folder = Path(tempfile.mkdtemp(prefix="bench_images_"))
    images = make_images(folder, args.images, image_size)
    samples = encoded_samples(base, params.tokens.soft_prompt, params.tokens.identifier, images, max(args.images, args.batch_size * 2, 8), seed=0)
    prefix_len, suffix_len = split_lengths(base, samples[0][0], samples[0][1])
    supervised = sum(1 for x in samples[0][1] if x != -100)
    total = len(samples[0][0])
    prompt_ids = YesNoScorer(base, ChatFormat.load("llava_v1"), params.tokens.soft_prompt,
                                   RecognitionBank.load().eval_prompt(params.tokens.identifier), FeatureCache(base)).prompt_ids
    say(f"sample: {total} tokens = prefix {prefix_len} (system text, USER:, image) + suffix {suffix_len} ({supervised} supervised)")
    depths = [base.model.config.text_config.num_hidden_layers]
    # one CPU thread: process CPU time, which other processes' load barely moves; else wall time (GPU: synchronised)
    clock = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall")
    key = f"{clock}_s"
    L = depths[0]
    timings = {L: Timings(device)}
    gc.collect()
    with PeakMemory(device) as mem:  # yollava's memory first, before the reference allocates its matrices
        runners = {L: YollavaRunner(base, params, samples, images, args, timings[L])}
        runners[L].step(1)
        if args.batch_size > 1:
            runners[L].step(args.batch_size)
        runners[L].score()
    with PeakMemory(device) as ref_mem:
        loop = ReferenceLoop(base, ids, ref_init, lr=1e-3)
        ref = ReferenceRunner(base, loop, samples, images, prompt_ids)
        with loop:
            ref.step()
            ref.score()
    memory = {"yollava_peak_bytes": mem.peak, "reference_peak_bytes": ref_mem.peak}
    if args.model == "scale":  # one more identical layer: the per-layer cost, measured
        add_decoder_layer(base)
        depths.append(L + 1)
        timings[L + 1] = Timings(device)
        runners[L + 1] = YollavaRunner(base, params, samples, images, args, timings[L + 1])  # its prefixes have L+1 layers
    measured = measure(runners, ref, base, args, timings)
    for depth in depths:
        y, r = measured[depth]["yollava"], measured[depth]["reference"]
        say(f"{depth} layer(s), {clock}: step reference {r['step_b1'][key]:.3f} s, yollava {y['step_b1'][key]:.3f} s "
            f"({r['step_b1'][key] / y['step_b1'][key]:.1f}x)"
            + (f", yollava batch {args.batch_size} {y[f'step_b{args.batch_size}'][key] / args.batch_size:.3f} s/sample" if args.batch_size > 1 else "")
            + f"; score reference {r['score_per_image'][key]:.3f} s, yollava {y['score_per_image'][key]:.4f} s per image; "
            f"prefix {y['prefix_per_image'][key]:.3f} s per image (recomputed {y['prefix_recompute_per_image'][key]:.3f} s)")

    arch = F.arch_of(base.model.config)
    at = measured[L]
    batch_key = f"step_b{args.batch_size}"
    result: dict = {
        "model": args.model, "layers": L, "device": str(device), "dtype": str(base.dtype), "threads": torch.get_num_threads(), "clock": clock,
        "tokens": {"total": total, "prefix": prefix_len, "suffix": suffix_len, "supervised": supervised},
        "measured": {str(k): v for k, v in measured.items()}, "memory": memory,
    }
    result["per_step_ratio"] = at["reference"]["step_b1"][key] / at["yollava"]["step_b1"][key]
    result["per_step_ratio_wall"] = at["reference"]["step_b1"]["wall_s"] / at["yollava"]["step_b1"]["wall_s"]
    result["per_step_ratio_cpu"] = at["reference"]["step_b1"]["cpu_s"] / at["yollava"]["step_b1"]["cpu_s"]
    if batch_key in at["yollava"]:
        result["per_sample_ratio_batched"] = at["reference"]["step_b1"][key] / (at["yollava"][batch_key][key] / args.batch_size)
    epochs = args.epochs_run if args.epochs_run is not None else RECIPE["reference_epochs"]
    epochs_batched = args.epochs_run_batched if args.epochs_run_batched is not None else epochs
    result["per_concept"] = per_concept(at["yollava"], at["reference"], batch_key, epochs, key=key, epochs_batched=epochs_batched)
    result["per_concept"]["epochs_yollava"] = epochs
    result["per_concept"]["epochs_yollava_batched"] = epochs_batched
    result["per_concept_ratio"] = result["per_concept"]["ratio_b1"]
    flops_l = flop_figures(arch.with_layers(L), prefix_len, suffix_len, supervised, total, len(prompt_ids))
    result["flops"] = {str(L): flops_l}
    result["flop_ratio_step"] = flops_l["reference_step"] / flops_l["yollava_step"]
    result["achieved_flops_per_s"] = {
        "reference_step": flops_l["reference_step"] / at["reference"]["step_b1"][key],
        "yollava_step": flops_l["yollava_step"] / at["yollava"]["step_b1"][key],
    }
    peak = device_peak(device)
    if peak:
        result["mfu"] = {k: v / peak for k, v in result["achieved_flops_per_s"].items()}
    result["per_step_ratio_40_layers"] = None
    if len(depths) == 2:
        deeper = measured[depths[1]]

        def at40(kind: str, key: str) -> dict:
            a, b = measured[L][kind][key], deeper[kind][key]
            return {m: extrapolate(a[m], b[m], L) for m in ("wall_s", "cpu_s")}

        y40 = {k: at40("yollava", k) for k in at["yollava"] if k.startswith(("step_", "score_", "prefix_per", "prefix_recompute"))}
        r40 = {k: at40("reference", k) for k in at["reference"] if k.startswith(("step_", "score_"))}
        result["extrapolated_40_layers"] = {"yollava": y40, "reference": r40}
        result["per_step_ratio_40_layers"] = r40["step_b1"][key] / y40["step_b1"][key]
        result["per_step_ratio_40_layers_wall"] = r40["step_b1"]["wall_s"] / y40["step_b1"]["wall_s"]
        result["per_step_ratio_40_layers_cpu"] = r40["step_b1"]["cpu_s"] / y40["step_b1"]["cpu_s"]
        if batch_key in y40:
            result["per_sample_ratio_batched_40_layers"] = r40["step_b1"][key] / (y40[batch_key][key] / args.batch_size)
        result["per_concept_40_layers"] = per_concept(y40, r40, batch_key, epochs, key=key, epochs_batched=epochs_batched)
        result["per_concept_ratio_40_layers"] = result["per_concept_40_layers"]["ratio_b1"]
        # the same under a cache budget: 40 layers x 2 x prefix x kv width, in bf16 as on a GPU
        entry_40 = 40 * 2 * prefix_len * arch.kv_heads * arch.head_dim * 2
        kept = (int(args.prefix_cache_gb * 2**30 // entry_40), int(args.prefix_cache_cpu_gb * 2**30 // entry_40), entry_40 / (args.h2d_gbps * 1e9))
        result["per_concept_40_layers_budget"] = {**per_concept(y40, r40, batch_key, epochs, kept=kept, key=key, epochs_batched=epochs_batched), "entry_bytes_bf16": entry_40,
                                                  "device_gb": args.prefix_cache_gb, "cpu_gb": args.prefix_cache_cpu_gb, "h2d_gbps": args.h2d_gbps}
        flops_40 = flop_figures(arch.with_layers(LLAVA_13B_LAYERS), prefix_len, suffix_len, supervised, total, len(prompt_ids))
        result["flops"]["40"] = flops_40
        result["flop_ratio_step_40_layers"] = flops_40["reference_step"] / flops_40["yollava_step"]
    if args.concept:
        if args.data is None:
            parser.error("--concept needs --data (a toy world)")
        result["concepts"] = run_concepts(base, args, say)
    say("")
    say(f"per step ({clock} time): {result['per_step_ratio']:.1f}x measured at {L} layer(s) (wall {result['per_step_ratio_wall']:.1f}x, "
        f"CPU {result['per_step_ratio_cpu']:.1f}x; FLOPs {result['flop_ratio_step']:.1f}x)"
        + (f"; batch {args.batch_size}: {result['per_sample_ratio_batched']:.1f}x per sample" if "per_sample_ratio_batched" in result else ""))
    if result["per_step_ratio_40_layers"] is not None:
        say(f"per step at 40 layers (linear in depth): {result['per_step_ratio_40_layers']:.1f}x (FLOPs {result['flop_ratio_step_40_layers']:.1f}x); "
            f"per concept at 40 layers: {result['per_concept_ratio_40_layers']:.1f}x ({epochs:g} yollava epochs vs 15, every prefix kept), "
            f"{result['per_concept_40_layers_budget']['ratio_b1']:.1f}x with {args.prefix_cache_gb:g}+{args.prefix_cache_cpu_gb:g} GB for bf16 prefixes "
            f"({result['per_concept_40_layers_budget']['prefixes_on_host']} of 206 copied from the host, "
            f"{result['per_concept_40_layers_budget']['prefixes_recomputed']} recomputed at each use)")
    say(f"per concept at {L} layer(s): {result['per_concept_ratio']:.1f}x; peak memory yollava {memory['yollava_peak_bytes'] / 2**30:.2f} GiB, "
        f"reference {memory['reference_peak_bytes'] / 2**30:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
