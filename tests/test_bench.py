"""The benchmark's parts: the reference loop is the Yo'LLaVA way, the scale model is LLaVA-1.5-13B's shape, the FLOP model adds up, the script runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from yollava.bench import flops as F
from yollava.bench.reference import ReferenceLoop
from yollava.bench.scale import llava_13b_config
from yollava.concept import attach, concept_slots, init_concept
from yollava.config import ConceptConfig, HeadRows
from yollava.forward import FeatureCache, ImageRef, collate, supervised_loss
from yollava.models import tiny_tokenizer
from yollava.prompts import ChatFormat, Turn, encode, render

ROOT = Path(__file__).resolve().parent.parent


def _batch(base, params, photo):
    fmt = ChatFormat.load("llava_v1")
    enc = encode(base.tokenizer, render(fmt, [Turn("Is <bo> in this photo?", "Yes, <bo> is here.", images=1)], base.tokenizer.eos_token,
                                        params.tokens.soft_prompt), base.image_token_id, base.num_image_tokens)
    return collate([(enc.input_ids, enc.labels, [ImageRef(str(photo))])], base.tokenizer.pad_token_id, base.device)


def test_reference_loop_trains_full_matrices_and_restores_every_old_row(tiny_base, image_dirs):
    pos, _ = image_dirs
    params = init_concept(tiny_base, "bo", ConceptConfig(k=4, head_rows=HeadRows.all))
    ids = attach(tiny_base, params)
    batch = _batch(tiny_base, params, pos / "p0.png")
    ours = supervised_loss(tiny_base, batch, FeatureCache(tiny_base))  # same rows, same function
    embedding, head = tiny_base.model.get_input_embeddings(), tiny_base.model.get_output_embeddings()
    frozen_embed, frozen_head = embedding.base.weight.clone(), head.base.weight.clone()
    loop = ReferenceLoop(tiny_base, ids, params)
    with loop:
        assert tiny_base.model.get_input_embeddings() is loop.embed
        optimized = [p for group in loop.optimizer.param_groups for p in group["params"]]
        assert [p.shape for p in optimized] == [loop.embed.weight.shape, loop.head.weight.shape]  # whole vocab x hidden matrices
        first = loop.step(batch)
        for _ in range(2):
            loop.step(batch)
    assert first == pytest.approx(float(ours.detach()), rel=1e-5)
    rows = frozen_embed.shape[0]
    keep = torch.ones(rows, dtype=torch.bool)
    keep[torch.tensor(ids)] = False
    assert torch.equal(loop.embed.weight[:rows][keep], frozen_embed[keep]) and torch.equal(loop.head.weight[:rows][keep], frozen_head[keep])
    embed_rows, head_rows = loop.rows()
    assert head_rows.shape[0] == len(ids) and not torch.equal(head_rows, params.head_rows.detach())  # all k+1 head rows moved
    assert not torch.equal(embed_rows, params.embed_rows.detach())
    assert tiny_base.model.get_input_embeddings() is embedding and torch.equal(embedding.base.weight, frozen_embed)  # restored, untouched
    concept_slots(tiny_base).remove("bo")


def test_scale_model_is_llava_1_5_13b():
    config = llava_13b_config(40, tiny_tokenizer())
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    language = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    assert language == 40 * (4 * 5120**2 + 3 * 5120 * 13824 + 2 * 5120) + 2 * 32064 * 5120 + 5120
    assert 13.3e9 < sum(p.numel() for p in model.parameters()) < 13.4e9
    arch = F.arch_of(config)
    assert (arch.image_tokens, arch.vision_tokens, arch.hidden, arch.heads, arch.intermediate, arch.vocab) == (576, 577, 5120, 40, 13824, 32064)


def test_flop_model_matches_the_issue_arithmetic():
    arch = F.arch_of(llava_13b_config(40, tiny_tokenizer()))
    assert F.layer_linear(arch) == 2 * (4 * 5120**2 + 3 * 5120 * 13824)  # 634 MFLOP per token per layer
    assert 16e12 < F.lm_forward(arch, 660) < 18e12  # ~17 TFLOP forward over one sample
    reference, ours = F.reference_step(arch, 660), F.yollava_step(arch, 610, 50, 12)
    assert 33e12 < reference < 37e12 and 2.3e12 < ours < 2.9e12 and 12 < reference / ours < 15
    assert F.prefix_pass(arch, 610) == F.tower(arch) + F.lm_forward(arch, 610)
    assert F.lm_forward(arch.with_layers(2), 50, 610) == 2 * F.lm_forward(arch.with_layers(1), 50, 610)


def test_bench_script_prints_ratios_as_its_last_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--model", "tiny", "--steps", "1", "--batch-size", "2", "--images", "2",
         "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["per_step_ratio"] > 0 and result["per_concept_ratio"] > 0 and "per_step_ratio_40_layers" in result
    assert result["measured"]["2"]["yollava"]["prefix_cache"]["on_device"] == 2  # one prefix kept per distinct image
    assert json.loads((tmp_path / "bench.json").read_text())["per_step_ratio"] == result["per_step_ratio"]
