"""The stages of a pretraining run in order: its scenes, mixes and feature banks, and what each stage task does with them."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from yollava.toyworld.pretrain import circuit as compiled
from yollava.toyworld.pretrain.batches import SampleEncoder, batch_loss, collate_pretrain, embed_batch, replace_names
from yollava.toyworld.pretrain.config import PretrainConfig, StageConfig
from yollava.toyworld.pretrain.loop import train_loop, train_only
from yollava.toyworld.pretrain.mix import DataMix, ToySample
from yollava.toyworld.pretrain.quality import build_eval_set, evaluate_quality, quick_report
from yollava.toyworld.pretrain.scenes import (
    HELDOUT_STREAM,
    IMAGE_SIZE,
    TRAIN_STREAM,
    PixelBank,
    draw_scene,
    excluded_identities,
    scene_features,
    stream_scenes,
)
from yollava.toyworld.pretrain.tower import supervise_tower

Log = Callable[[str], None]


def fit_code(model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, bank: torch.Tensor,
             targets: torch.Tensor, log: Log) -> list[dict[str, Any]]:
    """The ``code`` stage: least-squares fit of the projector onto the circuit's image code (language model untouched).

    The loss is the mean squared error relative to the targets' mean square over the circuit's
    dimensions; the fit gives each slot about its posterior, which layer 0's MLP then sharpens
    (:func:`~yollava.toyworld.pretrain.circuit.compile_attention`). Batch ``2 * batch_size`` scenes, no weight decay.
    """
    projector = model.model.multi_modal_projector
    params = train_only(model, [projector])
    optimizer = torch.optim.AdamW([{"params": params, "scale": 1.0}], lr=stage.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    scale = targets[..., : compiled.FREE_START].pow(2).mean()

    def loss() -> torch.Tensor:
        index = torch.randint(len(bank), (2 * config.batch_size,), generator=generator)
        return F.mse_loss(projector(bank[index].float()), targets[index]) / scale

    history = train_loop(stage.name, projector, optimizer, loss, steps=stage.steps, peak_lr=stage.lr, warmup=stage.warmup,
                         log_every=config.log_every, log=log)
    model.requires_grad_(False)
    return history


def train_mix(
    model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, draw: Callable[[random.Random], ToySample],
    bank: Any, encoder: SampleEncoder, log: Log, evaluate: Callable[[], dict[str, Any]] | None = None,
    frozen: compiled.Frozen | None = None,
) -> list[dict[str, Any]]:
    """A ``mix`` stage: batches of ``draw(rng)`` samples in yollava's chat format, loss on the answers.

    AdamW (betas 0.9/0.98, weight decay on matrices only), gradient clipping, placeholder names
    replaced by fresh vectors in ``config.name_noise`` of the samples. Batches come from
    ``random.Random`` seeded by the stage name, noise from a seeded torch generator. ``frozen``:
    its whole parameters do not train, its partly frozen ones are restored after every step.
    """
    lm = model.model.language_model
    modules = {
        "language": [lm, model.lm_head],
        "projector": [model.model.multi_modal_projector],
        "all": [lm, model.lm_head, model.model.multi_modal_projector],
    }[stage.trains]
    params = train_only(model, modules)
    if frozen is not None:
        params = frozen.exclude(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, "scale": 1.0},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "scale": 1.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.98))
    rng = random.Random(f"{config.seed}:{stage.name}")
    generator = torch.Generator().manual_seed(config.seed)

    def loss() -> torch.Tensor:
        batch = collate_pretrain([encoder(draw(rng)) for _ in range(config.batch_size)], encoder.tokenizer.pad_token_id)
        embeds = replace_names(embed_batch(model, batch, bank), batch, encoder.name_ids, lm.embed_tokens.weight, len(encoder.tokenizer),
                               generator, p=config.name_noise, low=config.name_noise_low)
        return batch_loss(model, batch, embeds)

    history = train_loop(stage.name, model, optimizer, loss, steps=stage.steps, peak_lr=stage.lr, warmup=stage.warmup,
                         log_every=config.log_every, log=log, clip=(params, config.grad_clip),
                         after_step=frozen.restore if frozen is not None else None, evaluate=evaluate, eval_every=config.eval_every)
    model.requires_grad_(False)
    return history


class Pretraining:
    """One run: the model, its scenes (training and held-out streams), mixes, feature banks, evaluation sets and circuit.

    Args:
        circuit: the compiled circuit's settings (a model continued with ``--init`` brings its own).
        frozen: the compiled parts that later stages must leave bit-identical (set by the compile stage).
    """

    def __init__(self, model: LlavaForConditionalGeneration, tokenizer: Any, config: PretrainConfig, log: Log,
                 circuit: compiled.CircuitConfig | None = None, frozen: compiled.Frozen | None = None):
        self.model, self.tokenizer, self.config, self.log = model, tokenizer, config, log
        self.circuit = circuit or compiled.CircuitConfig()
        self.circuit_report: dict[str, Any] = {}
        self.frozen = frozen
        self.vision_quality: dict[str, float] = {}
        self.exclude = excluded_identities(config.excluded_seeds, config.excluded_max_concepts)
        self.train_scenes = stream_scenes(config.seed, TRAIN_STREAM, config.train_scenes, config.known_scenes, self.exclude)
        self.heldout_scenes = stream_scenes(config.seed, HELDOUT_STREAM, config.heldout_scenes, config.known_heldout_scenes, self.exclude)
        self.train_mix = DataMix(self.train_scenes, self.exclude)
        heldout_mix = DataMix(self.heldout_scenes, self.exclude)
        vision = model.config.vision_config
        self.grid = vision.image_size // vision.patch_size
        self.encoder = SampleEncoder(tokenizer, model.config.image_token_id, self.grid ** 2)
        self.eval_set = build_eval_set(heldout_mix, config.seed, config.eval_items)
        self.progress_set = build_eval_set(heldout_mix, config.seed + 1, max(20, config.eval_items // 4))
        self._banks: dict[str, tuple[Any, Any]] = {}

    def unknown_words(self, draws: int = 2000) -> int:
        """How many of ``draws`` samples of the mix hold an ``<unk>`` token (0: the vocabulary covers the mix)."""
        rng = random.Random(self.config.seed)
        unk = self.tokenizer.unk_token_id
        return sum(unk in self.encoder(self.train_mix.sample(rng, self.config.mix)).ids for _ in range(draws))

    def banks(self, pixels: bool) -> tuple[Any, Any]:
        """(training, held-out) banks: pixels while the tower trains, else its features (recomputed after it changed)."""
        if pixels:
            self._banks.pop("features", None)
            if "pixels" not in self._banks:
                self._banks["pixels"] = (PixelBank(self.model, self.train_scenes), PixelBank(self.model, self.heldout_scenes))
            return self._banks["pixels"]
        self._banks.pop("pixels", None)
        if "features" not in self._banks:
            self._banks["features"] = (scene_features(self.model, self.train_scenes), scene_features(self.model, self.heldout_scenes))
            self.log(f"features of {len(self.train_scenes)} training and {len(self.heldout_scenes)} held-out scenes: "
                     f"{tuple(self._banks['features'][0].shape)}")
        return self._banks["features"]

    def run(self, stage: StageConfig) -> list[dict[str, Any]]:
        """Run one stage on the model; returns its log records."""
        config, model = self.config, self.model
        self.log(f"stage {stage.name}: {stage.steps} steps, trains {stage.trains}, data {stage.task}")
        train_bank, heldout_bank = self.banks(pixels=stage.task == "dense")
        if stage.task == "dense":
            # more scenes of the training stream than the later stages use (PretrainConfig.vision_scenes)
            extra = [draw_scene(config.seed, TRAIN_STREAM, i, IMAGE_SIZE, self.exclude) for i in range(config.train_scenes, config.vision_scenes)]
            scenes = self.train_scenes + extra
            self.log(f"dense stage on {len(scenes)} scenes")
            dense_bank = PixelBank(model, scenes, prefix=train_bank) if extra else train_bank
            history, self.vision_quality = supervise_tower(model, stage, config, dense_bank, scenes, self.log,
                                                           heldout=(heldout_bank, self.heldout_scenes[:1000]))
            return history
        if stage.task == "code":
            compiled.check_arch(model)
            targets = compiled.code_targets(self.train_scenes, config.arch.hidden_size, self.grid, self.circuit)
            return fit_code(model, stage, config, train_bank, targets, self.log)
        if stage.task == "compile":
            return [self.compile(stage, train_bank)]
        weights = stage.mix or config.mix

        def evaluate() -> dict[str, Any]:
            return quick_report(evaluate_quality(model, self.encoder, self.progress_set, heldout_bank, config.seed))

        return train_mix(model, stage, config, lambda rng: self.train_mix.sample(rng, weights), train_bank, self.encoder, self.log,
                         evaluate, frozen=self.frozen)

    def compile(self, stage: StageConfig, train_bank: torch.Tensor) -> dict[str, Any]:
        """The ``compile`` stage: write the circuit, pick its free numbers on training questions, freeze it."""
        model, config = self.model, self.config
        compiled.check_arch(model)
        compiled.compile_embeddings(model, self.tokenizer, self.circuit, seed=config.seed)
        compiled.compile_attention(model, self.circuit)
        compiled.compile_readout(model, self.circuit, self.tokenizer)
        compiled.quiet_learnt_outputs(model)
        rng = random.Random(f"{config.seed}:calibrate")
        n, scenes = config.calibration_questions, len(self.train_scenes)
        questions = [self.train_mix.presence(rng.randrange(scenes), rng, i % 2 == 0) for i in range(n)]
        questions += [self.train_mix.introduced(rng.randrange(scenes), rng, i % 2 == 0, eval_question=True, second=False) for i in range(n)]
        self.circuit_report = compiled.calibrate_circuit(model, self.encoder, questions, train_bank, self.circuit,
                                                         config.calibration_grid, self.log)
        self.frozen = compiled.frozen_parts(model)
        return {"stage": stage.name, **self.circuit_report}

    def quality(self) -> dict[str, Any]:
        """The held-out quality report (:func:`~yollava.toyworld.pretrain.quality.evaluate_quality`) of the model now."""
        _, heldout_bank = self.banks(pixels=False)
        return evaluate_quality(self.model, self.encoder, self.eval_set, heldout_bank, self.config.seed)
