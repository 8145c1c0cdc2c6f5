"""The real defaults (llava-hf LLaVA-1.5 from the hub): skipped offline, run with -m network / -m gpu."""

from __future__ import annotations

import pytest
import torch

from yollava.config import DEFAULT_MODEL, load_config

SMALL_REAL = "llava-hf/llava-1.5-7b-hf"


@pytest.mark.network
def test_real_tokenizer_scores_yes_no_on_single_tokens():
    """With LLaVA's Llama tokenizer, ' Yes' and ' No' are single, different first answer tokens."""
    from transformers import AutoProcessor

    from yollava.prompts import IGNORE_INDEX, ChatFormat, Turn, encode, render

    processor = AutoProcessor.from_pretrained(DEFAULT_MODEL)
    tok = processor.tokenizer
    fmt = ChatFormat.load("llava_v1")
    image_id = tok.convert_tokens_to_ids("<image>")
    firsts = []
    for answer in ("Yes, it is.", "No, it is not."):
        enc = encode(tok, render(fmt, [Turn("Is it here?", answer, images=1)], tok.eos_token), image_id, 576)
        first = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
        firsts.append(tok.convert_ids_to_tokens(enc.input_ids[first]))
        assert enc.input_ids.count(image_id) == 576
    assert firsts == ["▁Yes", "▁No"]


@pytest.mark.network
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_13b_trains_a_concept_without_touching_the_base(tmp_path):
    """One epoch on the default base; the 32064-row matrices keep their shape and bits."""
    from PIL import Image

    from yollava.models import load_base
    from yollava.train import train_concept

    pos, neg = tmp_path / "pos", tmp_path / "neg"
    pos.mkdir(), neg.mkdir()
    for i in range(3):
        Image.new("RGB", (336, 336), (200, 40 * i, 40)).save(pos / f"{i}.png")
        Image.new("RGB", (336, 336), (40, 40 * i, 200)).save(neg / f"{i}.png")
    config = load_config(overrides=["train.epochs=1", f"train.runs_dir={tmp_path / 'runs'}"])
    base = load_base(config.model)
    assert base.base_rows == 32064 and base.base_tokenizer_size == 32002
    head_before = base.model.get_output_embeddings().weight.detach().clone()
    train_concept(config, "bo", pos, neg, store=tmp_path / "store", base=base)
    assert torch.equal(base.model.get_output_embeddings().weight, head_before)
