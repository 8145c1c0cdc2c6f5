"""The fast training path (cached features, head at supervised positions) equals the reference forward."""

from __future__ import annotations

import torch

from yollava.concept import attach, init_concept
from yollava.config import ConceptConfig
from yollava.forward import FeatureCache, ImageRef, collate, reference_loss, supervised_loss
from yollava.prompts import ChatFormat, Turn, encode, render


def batch_for(base, params, image_paths, answers):
    fmt = ChatFormat.load("llava_v1")
    items = []
    for path, answer in zip(image_paths, answers):
        turn = Turn("Is <bo> in this photo?", answer, images=1 if path else 0)
        enc = encode(base.tokenizer, render(fmt, [turn], base.tokenizer.eos_token, params.tokens.soft_prompt), base.image_token_id, base.num_image_tokens)
        items.append((enc.input_ids, enc.labels, [ImageRef(str(path))] if path else []))
    return collate(items, base.tokenizer.pad_token_id, base.device)


def test_fast_loss_equals_transformers_full_forward(tiny_base, image_dirs):
    pos, neg = image_dirs
    params = init_concept(tiny_base, "bo", ConceptConfig(k=4))
    attach(tiny_base, params)
    batch = batch_for(tiny_base, params, [pos / "p0.png", neg / "n1.png", None], ["Yes, <bo> is here.", "No.", "No, <bo> is not here."])
    reference = reference_loss(tiny_base, batch)
    for cache_on in (True, False):
        for head_only in (True, False):
            fast = supervised_loss(tiny_base, batch, FeatureCache(tiny_base, enabled=cache_on), head_only)
            torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_concept_rows_and_match_reference(tiny_base, image_dirs):
    pos, _ = image_dirs
    params = init_concept(tiny_base, "bo", ConceptConfig(k=4))
    attach(tiny_base, params)
    batch = batch_for(tiny_base, params, [pos / "p0.png"], ["Yes, <bo> is here."])
    supervised_loss(tiny_base, batch, FeatureCache(tiny_base)).backward()
    fast_grad = params.embed_rows.grad.clone()
    params.embed_rows.grad = None
    reference_loss(tiny_base, batch).backward()
    torch.testing.assert_close(fast_grad, params.embed_rows.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for n, p in tiny_base.model.named_parameters() if ".slots." not in n)


def test_feature_cache_computes_each_image_variant_once(tiny_base, image_dirs):
    pos, _ = image_dirs
    cache = FeatureCache(tiny_base)
    refs = [ImageRef(str(pos / "p0.png")), ImageRef(str(pos / "p1.png")), ImageRef(str(pos / "p0.png"), "hflip")]
    first = cache.get(refs)
    for _ in range(3):
        again = cache.get(refs + refs)
    assert cache.computed == 3 and len(cache) == 3
    assert torch.equal(again[:3], first)
    assert not torch.equal(first[0], first[2])  # the flipped variant has its own features
    off = FeatureCache(tiny_base, enabled=False)
    off.get(refs)
    off.get(refs)
    assert off.computed == 6
