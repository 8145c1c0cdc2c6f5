"""Toy CLIP: registry + safetensors loading through open_clip, tokenizer, HF mapping, trained-weight quality."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from yollava.errors import YollavaError
from yollava.toyworld.clip import (
    END_ID,
    START_ID,
    TOY_CLIP_ASSETS,
    TOY_CLIP_MODEL_NAME,
    UNK_ID,
    WEIGHTS_FILE,
    ToyTokenizer,
    create_toy_clip,
    images_to_tensor,
    to_hf_vision_model,
)
from yollava.toyworld.clip_train import (
    coarse_caption,
    embed_scenes,
    heldout_scenes,
    multi_positive_clip_loss,
    same_label_image_loss,
)
from yollava.toyworld.render import render_scene
from yollava.toyworld.world import caption, vocabulary


@pytest.fixture(scope="module")
def toy_clip():
    torch.set_num_threads(1)
    return create_toy_clip(pretrained=True)


@pytest.fixture(scope="module")
def scenes():
    # 16 held-out subjects x 4 scenes each: a stream the pretraining never drew from.
    return heldout_scenes(seed=0, n_identities=16, per_identity=4)


def test_shipped_weights_are_small_safetensors_loaded_through_open_clip(toy_clip):
    model, _, tokenizer = toy_clip
    weights = TOY_CLIP_ASSETS / WEIGHTS_FILE
    assert weights.stat().st_size < 10 * 2**20
    assert TOY_CLIP_MODEL_NAME in open_clip.list_models()
    assert isinstance(model, open_clip.CLIP) and not model.training
    assert model.token_embedding.num_embeddings >= tokenizer.vocab_size


def test_only_safetensors_are_accepted(tmp_path):
    pickle_file = tmp_path / "toy.pt"
    pickle_file.write_bytes(b"not a checkpoint")
    with pytest.raises(YollavaError, match="safetensors"):
        create_toy_clip(weights=pickle_file)
    with pytest.raises(YollavaError, match="not found"):
        create_toy_clip(weights=tmp_path / "missing.safetensors")


def test_tokenizer_round_trip_and_layout():
    tokenizer = ToyTokenizer(vocabulary())
    ids = tokenizer(["a red pet", "a zebra"])
    assert ids.shape == (2, 32) and ids.dtype == torch.long
    assert ids[0, 0] == START_ID and ids[0, 4] == END_ID and ids[0, 5:].eq(0).all()
    assert ids[1, 2] == UNK_ID
    assert tokenizer.decode(ids[0]) == "a red pet"
    long = tokenizer(" ".join(["red"] * 100))
    assert long[0, -1] == END_ID


def test_preprocess_matches_fast_tensor_path(toy_clip, scenes):
    _, preprocess, _ = toy_clip
    image = render_scene(scenes[0])
    assert torch.allclose(preprocess(image), images_to_tensor([np.asarray(image)])[0], atol=1e-6)


def test_same_subject_embeds_closer_than_different_subjects(toy_clip, scenes):
    model, _, _ = toy_clip
    embeddings = embed_scenes(model, scenes)
    identity = np.repeat(np.arange(16), 4)
    same = identity[:, None] == identity[None, :]
    off_diagonal = ~np.eye(len(scenes), dtype=bool)
    sim = embeddings @ embeddings.T
    assert sim[same & off_diagonal].mean() > sim[~same].mean() + 0.2
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)
    # Chance is 3/63; the shipped weights score ~0.4 (the nearest scene often shares all but
    # one fine attribute, which is what hard-negative mining wants to find).
    assert np.mean(identity[nearest] == identity) > 0.25


def test_image_finds_its_caption(toy_clip, scenes):
    model, _, tokenizer = toy_clip
    images = embed_scenes(model, scenes)
    with torch.no_grad():
        texts = tokenizer([caption(s, background=False) for s in scenes])
        texts = model.encode_text(texts, normalize=True).numpy()
    top1 = (images @ texts.T).argmax(axis=1)
    # A hit is the query's own caption (trained without the place); chance 1/64, shipped ~0.7.
    assert np.mean(top1 == np.arange(len(scenes))) > 0.4


def test_vision_tower_maps_onto_transformers_clip(toy_clip, scenes):
    model, _, _ = toy_clip
    hf = to_hf_vision_model(model)
    pixels = images_to_tensor([np.asarray(render_scene(s)) for s in scenes[:4]])
    with torch.no_grad():
        expected = model.encode_image(pixels)
        out = hf(pixel_values=pixels, output_hidden_states=True)
    assert torch.allclose(out.image_embeds, expected, atol=1e-4)
    assert out.last_hidden_state.shape == (4, 65, hf.config.hidden_size)


def test_coarse_captions_and_the_multi_positive_loss(scenes):
    crowded = next(s for s in scenes if len(s.distractors) >= 1)
    words = coarse_caption(crowded).split()
    assert words[:3] == [words[0], crowded.main.subject.color, crowded.main.subject.family] and "next" in words
    assert coarse_caption(crowded, color=False).split()[1] == crowded.main.subject.family
    generator = torch.Generator().manual_seed(0)
    images, texts = (torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1) for _ in range(2))
    scale = torch.tensor(14.0)
    distinct = multi_positive_clip_loss(images, texts, scale, [f"c{i}" for i in range(6)])
    assert torch.allclose(distinct, open_clip.ClipLoss()(images, texts, scale), atol=1e-6)
    # two images share a caption (and, as in training, its text embedding): each may match either
    texts[1] = texts[0]
    shared = multi_positive_clip_loss(images, texts, scale, ["a", "a", "b", "c", "d", "e"])
    logits = scale * images @ texts.T
    p = logits.softmax(dim=1)
    image_side = -torch.log(p[[0, 1], :2].sum(dim=1)).sum() - torch.log(p.diagonal()[2:]).sum()
    q = logits.T.softmax(dim=1)
    text_side = -torch.log(q[[0, 1], :2].sum(dim=1)).sum() - torch.log(q.diagonal()[2:]).sum()
    assert torch.allclose(shared, (image_side + text_side) / 12, atol=1e-5)


def test_same_label_image_loss_counts_only_other_images_with_the_label():
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    scale = torch.tensor(10.0)
    assert same_label_image_loss(images, scale, list("abcde")) == 0  # nobody has a positive
    logits = scale * images @ images.T
    logits.fill_diagonal_(float("-inf"))
    p = logits.softmax(dim=1)
    # "a" at 0, 1, 4: each anchor's positives are the other two; "b", "c" have none and are skipped
    want = -torch.log(torch.stack([p[0, [1, 4]].sum(), p[1, [0, 4]].sum(), p[4, [0, 1]].sum()])).mean()
    assert torch.allclose(same_label_image_loss(images, scale, ["a", "a", "b", "c", "a"]), want, atol=1e-5)
