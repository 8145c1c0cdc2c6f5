"""The cached-prefix path equals the full forward: loss, gradients, scores and greedy answers; the memory policy's tiers."""

from __future__ import annotations

import pytest
import torch

from yollava.chat import greedy_generate, greedy_generate_batch
from yollava.concept import attach, init_concept
from yollava.config import ConceptConfig, ModelConfig, load_config
from yollava.evaluate import YesNoScorer
from yollava.forward import (
    FeatureCache,
    ImageRef,
    PrefixCache,
    collate,
    make_cache,
    next_token_logprobs,
    prefix_items,
    prefix_length,
    reference_loss,
    supervised_loss,
)
from yollava.models import build_tiny_base, load_base
from yollava.prompts import ChatFormat, Turn, encode, render
from yollava.toyworld.toy_llava import toy_llava_available

from conftest import make_image

needs_toy = pytest.mark.skipif(not toy_llava_available(), reason="toy LLaVA weights not installed")
QUESTIONS = ["Is <bo> in this photo?", "Can you see <bo> here?", "What colour is <bo>?"]
ANSWERS = ["Yes, <bo> is here.", "No.", "<bo> is red and round, a small ball."]


def _base(name: str):
    torch.manual_seed(0)
    return build_tiny_base() if name == "tiny" else load_base(ModelConfig(name="toy"))


@pytest.fixture(scope="module", params=["tiny", pytest.param("toy", marks=needs_toy)])
def model(request):
    base = _base(request.param)
    params = init_concept(base, "bo", ConceptConfig(k=4), seed=0)
    attach(base, params)
    return base, params


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [make_image(folder / f"{i}.png", (200 - 40 * i, 30 + 50 * i, 60), "circle" if i % 2 else "square", size=64) for i in range(3)]


def _item(base, params, photo, question, answer):
    fmt = ChatFormat.load("llava_v1")
    turn = Turn(question, answer, images=1 if photo else 0)
    enc = encode(base.tokenizer, render(fmt, [turn], base.tokenizer.eos_token, params.tokens.soft_prompt), base.image_token_id, base.num_image_tokens)
    return enc.input_ids, enc.labels, [ImageRef(str(photo))] if photo else []


def _loss_and_grads(base, params, batch, cache):
    params.embed_rows.grad = params.head_rows.grad = None
    loss = supervised_loss(base, batch, cache)
    loss.backward()
    return loss.detach(), params.embed_rows.grad.clone(), params.head_rows.grad.clone()


# image sample alone, text-only sample alone, two images (equal prefixes stacked), and a mix of
# image and text-only rows (prefixes of different lengths, suffixes of different lengths)
CASES = {"image": [(0, 0)], "text-only": [(None, 2)], "two images": [(0, 0), (1, 1)], "mixed": [(0, 0), (None, 2), (2, 1), (1, 2)]}


@pytest.mark.parametrize("case", list(CASES))
def test_prefix_path_loss_and_gradients_equal_the_full_forward(model, photos, case):
    base, params = model
    items = [_item(base, params, None if p is None else photos[p], QUESTIONS[q], ANSWERS[q]) for p, q in CASES[case]]
    batch = collate(items, base.tokenizer.pad_token_id, base.device)
    full = _loss_and_grads(base, params, batch, FeatureCache(base))
    cached = PrefixCache(base)
    for _ in range(2):  # a miss (computed now) and a hit (served from the cache) give the same numbers
        fast = _loss_and_grads(base, params, batch, cached)
        for a, b in zip(fast, full):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert cached.stats.hits == len(items)  # the second step computed no prefix
    reference = reference_loss(base, batch)  # transformers' own forward with pixel values, full logits
    torch.testing.assert_close(fast[0], reference, rtol=1e-5, atol=1e-5)


def test_prefix_ends_before_the_soft_prompt_and_after_the_image(model, photos):
    base, params = model
    ids, labels, _ = _item(base, params, photos[0], QUESTIONS[0], ANSWERS[0])
    image_end = max(i for i, t in enumerate(ids) if t == base.image_token_id) + 1
    first_concept = min(i for i, t in enumerate(ids) if t >= base.base_tokenizer_size)
    assert prefix_length(base, ids, labels) == image_end <= first_concept
    text_ids, text_labels, _ = _item(base, params, None, QUESTIONS[2], ANSWERS[2])
    assert prefix_length(base, text_ids, text_labels) == min(i for i, t in enumerate(text_ids) if t >= base.base_tokenizer_size)
    # no concept token (a vanilla prompt): the question after the image is still suffix
    vanilla = encode(base.tokenizer, render(ChatFormat.load("llava_v1"), [Turn("Is it here?", None, images=1)], base.tokenizer.eos_token),
                     base.image_token_id, base.num_image_tokens).input_ids
    assert prefix_length(base, vanilla) == max(i for i, t in enumerate(vanilla) if t == base.image_token_id) + 1
    # the position predicting the first answer token always stays in the suffix
    first_label = next(i for i, x in enumerate(labels) if x != -100)
    assert prefix_length(base, ids[:first_label + 3], [-100] * 5 + [1] * (first_label - 2)) == 4


def test_each_prefix_is_computed_once_and_shared_by_questions_concepts_and_methods(model, photos):
    base, params = model
    cache = PrefixCache(base)
    items = [_item(base, params, photo, q, a) for photo in photos for q, a in zip(QUESTIONS[:2], ANSWERS[:2])]
    items += [_item(base, params, None, QUESTIONS[2], ANSWERS[2])] * 2
    for _ in range(3):  # three "epochs"
        for item in items:
            supervised_loss(base, collate([item], base.tokenizer.pad_token_id, base.device), cache)
    assert cache.stats.computed == len(photos) + 1  # one per image, one text-only prefix
    fmt = ChatFormat.load("llava_v1")
    before = cache.stats.computed
    for prefix, question in ((params.tokens.soft_prompt, "Is <bo> in this photo?"), ("", "Is bo in this photo?"), ("bo is a red ball.", "Is bo here?")):
        YesNoScorer(base, fmt, prefix, question, cache).logprobs([str(p) for p in photos])
    assert cache.stats.computed == before  # scoring methods and questions reuse the training prefixes


def test_scores_equal_the_full_forward_one_by_one_and_batched(model, photos):
    base, params = model
    fmt = ChatFormat.load("llava_v1")
    prompts, refs = [], []
    for prefix in (params.tokens.soft_prompt, ""):
        ids = encode(base.tokenizer, render(fmt, [Turn("Is <bo> in this photo?", None, images=1)], base.tokenizer.eos_token, prefix),
                     base.image_token_id, base.num_image_tokens).input_ids
        prompts += [ids] * len(photos)
        refs += [[ImageRef(str(p))] for p in photos]
    text = encode(base.tokenizer, render(fmt, [Turn("What colour is <bo>?", None)], base.tokenizer.eos_token, params.tokens.soft_prompt),
                  base.image_token_id, base.num_image_tokens).input_ids
    prompts.append(text)
    refs.append([])
    features = FeatureCache(base)
    one_by_one = torch.cat([next_token_logprobs(base, [p], [r], features) for p, r in zip(prompts, refs)])
    for cache in (features, PrefixCache(base)):
        for batch_size in (1, 3, 16):
            torch.testing.assert_close(next_token_logprobs(base, prompts, refs, cache, batch_size=batch_size), one_by_one, rtol=1e-5, atol=1e-5)


def test_memory_policy_device_then_host_then_recompute(model, photos):
    base, params = model
    items = [_item(base, params, photo, QUESTIONS[0], ANSWERS[0]) for photo in photos]
    one = PrefixCache(base).entry_bytes(prefix_length(base, items[0][0], items[0][1]))
    batch = collate(items, base.tokenizer.pad_token_id, base.device)
    expected = _loss_and_grads(base, params, batch, FeatureCache(base))
    gb = one / 2**30
    # a budget for one entry on the device and one in host memory: the third is recomputed at each use
    cache = PrefixCache(base, device_gb=gb * 1.5, cpu_gb=gb * 1.5)
    if base.device.type == "cpu":
        assert cache.cpu_budget == 0  # on a CPU the host tier is the device tier
        cache.cpu_budget = int(gb * 1.5 * 2**30)
    for _ in range(2):
        for a, b in zip(_loss_and_grads(base, params, batch, cache), expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    stats = cache.stats
    assert (stats.on_device, stats.on_cpu, stats.device_bytes, stats.cpu_bytes) == (1, 1, one, one)
    assert len(cache) == 2 and stats.computed == 3 + 1 and stats.not_kept == 2  # the third prefix ran twice
    # no budget at all: everything recomputed, still exact
    none = PrefixCache(base, device_gb=0, cpu_gb=0)
    for a, b in zip(_loss_and_grads(base, params, batch, none), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(none) == 0 and none.stats.not_kept == 3


def test_warm_keeps_the_most_used_prefixes_when_the_budget_is_short(model, photos):
    base, params = model
    used_once = _item(base, params, photos[0], QUESTIONS[1], ANSWERS[1])
    used_often = _item(base, params, photos[1], QUESTIONS[0], ANSWERS[0])
    one = PrefixCache(base).entry_bytes(prefix_length(base, used_once[0], used_once[1]))
    cache = PrefixCache(base, device_gb=one / 2**30, cpu_gb=0)
    cache.warm(prefix_items(base, [used_once] + [used_often] * 5))
    assert len(cache) == 1 and cache.stats.computed == 2
    kept = next(iter(cache._entries))
    assert kept[1][0][0] == cache.features._key(ImageRef(str(photos[1])))[0]


def test_make_cache_follows_the_config(model, photos):
    base, params = model
    config = load_config().train
    assert isinstance(make_cache(base, config), PrefixCache)
    config.prefix_cache = False
    assert type(make_cache(base, config)) is FeatureCache
    config.prefix_cache = True
    warmed = make_cache(base, config, warm=[_item(base, params, p, QUESTIONS[0], ANSWERS[0]) for p in photos])
    assert len(warmed) == len(photos) and warmed.stats.computed == len(photos)


def test_batched_greedy_answers_equal_one_by_one(model, photos):
    base, params = model
    fmt = ChatFormat.load("llava_v1")
    questions = ["What colour is this subject?", "What shape is it?", "Describe the subject in detail please.", "Size?"]
    prompts, refs = [], []
    for photo in photos[:2]:
        for question in questions:
            prompts.append(encode(base.tokenizer, render(fmt, [Turn(question, None, images=1)], base.tokenizer.eos_token),
                                  base.image_token_id, base.num_image_tokens).input_ids)
            refs.append([ImageRef(str(photo))])
    prompts.append(encode(base.tokenizer, render(fmt, [Turn("Tell me about <bo>.", None)], base.tokenizer.eos_token, params.tokens.soft_prompt),
                          base.image_token_id, base.num_image_tokens).input_ids)
    refs.append([])
    features = FeatureCache(base)
    expected = [greedy_generate(base, p, r, features, max_new_tokens=12) for p, r in zip(prompts, refs)]
    cache = PrefixCache(base, features)
    assert greedy_generate_batch(base, prompts, refs, cache, max_new_tokens=12, batch_size=5) == expected
    assert cache.stats.computed == 3  # two photos' prefixes (each shared by its 4 questions) and the text-only one
