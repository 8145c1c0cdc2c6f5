"""LLaVA-1.5-13B's full size on a GPU (random weights, 40 layers): peak memory of training and scoring, bf16 and 4-bit.

Goals: <= 40 GB peak with a bf16 base, <= 20 GB with a 4-bit base (prefix cache at its default
4 GB device budget, the rest of the prefixes in host memory). Run with ``pytest -m gpu -s``.
"""

from __future__ import annotations

import time

import pytest
import torch

from yollava.concept import attach, init_concept
from yollava.config import ConceptConfig
from yollava.evaluate import YesNoScorer
from yollava.forward import FeatureCache, PrefixCache, collate, prefix_items, supervised_loss
from yollava.prompts import ChatFormat, RecognitionBank

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
GIB = 2**30
N_IMAGES = 24  # 24 x 0.5 GB of prefixes: more than the 4 GB device budget, so the host tier is used too
BATCH = 8


def _run(base, tmp_path) -> dict:
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).resolve().parent.parent / "scripts" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = bench
    spec.loader.exec_module(bench)
    params = init_concept(base, "bo", ConceptConfig(k=16), seed=0)
    attach(base, params)
    images = bench.make_images(tmp_path, N_IMAGES, 336)
    samples = bench.encoded_samples(base, params.tokens.soft_prompt, params.tokens.identifier, images, 4 * BATCH, seed=0)
    optimizer = torch.optim.AdamW([params.embed_rows, params.head_rows], lr=1e-3)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    cache = PrefixCache(base, FeatureCache(base))
    start = time.perf_counter()
    cache.warm(prefix_items(base, samples))
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - start
    pad = base.tokenizer.pad_token_id
    steps = []
    for step in range(4):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = supervised_loss(base, collate(samples[step * BATCH : (step + 1) * BATCH], pad, base.device), cache)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        steps.append(time.perf_counter() - start)
        assert torch.isfinite(loss)
    scorer = YesNoScorer(base, ChatFormat.load("llava_v1"), params.tokens.soft_prompt, RecognitionBank.load().eval_prompt("<bo>"), cache)
    start = time.perf_counter()
    scores = scorer.logprobs([str(p) for p in images])
    torch.cuda.synchronize()
    figures = {
        "peak_gib": torch.cuda.max_memory_allocated() / GIB, "warm_s_per_image": warm_s / N_IMAGES,
        "step_s_batch8": sorted(steps)[len(steps) // 2], "score_s_per_image": (time.perf_counter() - start) / N_IMAGES,
        "cache": cache.stats,
    }
    assert len(scores) == N_IMAGES and cache.stats.on_cpu > 0
    print(figures)
    return figures


def test_13b_bf16_trains_and_scores_within_40_gb(tmp_path):
    from yollava.bench.scale import build_scale_base

    base = build_scale_base(40, device="cuda", dtype=torch.bfloat16)
    figures = _run(base, tmp_path)
    assert figures["peak_gib"] <= 40


def test_13b_4bit_trains_and_scores_within_20_gb(tmp_path):
    pytest.importorskip("bitsandbytes")
    from yollava.bench.scale import build_scale_base, quantize_4bit

    base = build_scale_base(40, device="cuda", dtype=torch.bfloat16)
    quantize_4bit(base)
    torch.cuda.empty_cache()
    figures = _run(base, tmp_path)
    assert figures["peak_gib"] <= 20
