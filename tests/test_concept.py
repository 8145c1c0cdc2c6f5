"""Concept invariants: frozen bits, trainable-number count, save/load identity, multi-concept, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from yollava.concept import (
    attached,
    attached_names,
    detach,
    attach,
    init_concept,
    load_concept,
    save_concept,
    validate_name,
)
from yollava.config import ConceptConfig, HeadRows, load_config
from yollava.errors import YollavaError
from yollava.models import build_tiny_base
from yollava.prompts import ChatFormat, Turn, encode, render
from yollava.storage import CONCEPT_JSON, CONCEPT_WEIGHTS
from yollava.train import train_concept


def base_weights(base) -> dict[str, torch.Tensor]:
    """Every original tensor of the base, under its original name (wrappers unwrapped)."""
    out = {}
    for key, value in base.model.state_dict().items():
        if ".slots." in key:
            continue
        out[key.replace("embed_tokens.base.", "embed_tokens.").replace("lm_head.base.", "lm_head.")] = value.detach().clone()
    return out


@pytest.mark.parametrize("name", ["bo", "my-mug", "a", "x_1", "0abc", "a" * 32])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["../x", "my dog", "Bo", "", "-bo", "_bo", "a" * 33, "bo/1", "bo.png", "<bo>"])
def test_invalid_names_are_refused(name):
    with pytest.raises(YollavaError, match="invalid concept name"):
        validate_name(name)


@pytest.mark.parametrize("head_rows,expected", [(HeadRows.identifier, (16 + 1) * 64 + 64), (HeadRows.all, 2 * (16 + 1) * 64)])
def test_optimizer_sees_exactly_the_new_rows(tiny_base, tiny_config, image_dirs, head_rows, expected, monkeypatch):
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kwargs):
        params = list(params)
        seen["count"] = sum(p.numel() for p in params)
        seen["requires_grad"] = [n for n, p in tiny_base.model.named_parameters() if p.requires_grad]
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    tiny_config.concept.head_rows = head_rows
    tiny_config.train.epochs = 1
    pos, neg = image_dirs
    train_concept(tiny_config, "bo", pos, neg, store=pos.parent / "store", base=tiny_base)
    assert seen["count"] == expected
    assert all(".slots." in n for n in seen["requires_grad"]), seen["requires_grad"]


def test_training_leaves_every_original_weight_bit_identical(tiny_base, tiny_config, image_dirs):
    before = base_weights(tiny_base)
    tiny_config.train.weight_decay = 0.1  # decay must never reach a frozen row
    pos, neg = image_dirs
    result = train_concept(tiny_config, "bo", pos, neg, store=pos.parent / "store", base=tiny_base)
    after = base_weights(tiny_base)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} changed"
    # ... and the concept's rows did move
    saved = load_concept(build_tiny_base(), pos.parent / "store", "bo").params
    fresh = init_concept(build_tiny_base(), "bo", tiny_config.concept, seed=tiny_config.train.seed)
    assert not torch.equal(saved.embed_rows, fresh.embed_rows)
    assert result.best_epoch >= 1


def test_only_concept_rows_change_the_effective_embedding(tiny_base):
    ids = torch.arange(tiny_base.base_rows).unsqueeze(0)
    before = tiny_base.model.get_input_embeddings()(ids).clone()
    params = init_concept(tiny_base, "bo", ConceptConfig(k=4))
    token_ids = attach(tiny_base, params)
    embedding = tiny_base.model.get_input_embeddings()
    after = embedding(ids)
    changed = sorted(set((before != after).any(-1).nonzero()[:, 1].tolist()))
    assert changed == sorted(i for i in token_ids if i < tiny_base.base_rows)
    assert torch.equal(embedding(torch.tensor([token_ids])), params.embed_rows.unsqueeze(0).detach())
    # matrices are never shrunk or resized, even though tokens were added past the padding rows
    assert embedding.weight.shape[0] == tiny_base.base_tokenizer_size + 8  # the tiny base's padding rows
    assert embedding.base.num_embeddings == tiny_base.base_rows


def test_tokens_past_the_matrix_get_logits(tiny_base):
    params = init_concept(tiny_base, "bo", ConceptConfig(k=16, head_rows=HeadRows.identifier))
    ids = attach(tiny_base, params)
    assert max(ids) >= tiny_base.base_rows  # 17 tokens, 8 padding rows: some ids lie past the matrix
    hidden = torch.randn(2, tiny_base.hidden_size)
    logits = tiny_base.model.get_output_embeddings()(hidden)
    assert logits.shape[-1] == max(ids) + 1
    assert torch.allclose(logits[:, ids[0]], hidden @ params.head_rows[0].detach())
    assert (logits[:, ids[1:]] == torch.finfo(logits.dtype).min).all()  # latents without head rows never generate


def test_save_then_load_into_fresh_model_gives_identical_logits(tiny_base, tiny_config, image_dirs, tmp_path):
    pos, neg = image_dirs
    store = tmp_path / "store"
    train_concept(tiny_config, "bo", pos, neg, store=store, base=tiny_base)
    fresh = build_tiny_base()
    artifact = load_concept(fresh, store, "bo")

    def logits(base, params):
        fmt = ChatFormat.load("llava_v1")
        seg = render(fmt, [Turn("What colour is <bo>?", None)], base.tokenizer.eos_token, params.tokens.soft_prompt)
        ids = torch.tensor([encode(base.tokenizer, seg, base.image_token_id, base.num_image_tokens).input_ids])
        with torch.no_grad():
            return base.model(input_ids=ids).logits

    # training detached its rows from the trainer's base; the saved (best) rows attach to it again
    assert attached_names(tiny_base) == []
    again = load_concept(tiny_base, store, "bo")
    assert torch.equal(logits(tiny_base, again.params), logits(fresh, artifact.params))
    record = json.loads((store / "bo" / CONCEPT_JSON).read_text())
    assert record["tokens"][0] == "<bo>" and record["k"] == 16 and record["hidden_size"] == 64
    assert record["base_model"]["id"] == "tiny"
    assert list(record) == sorted(record)


def test_two_concepts_load_together_and_keep_their_own_rows(tmp_path):
    trainer = build_tiny_base()
    store = tmp_path / "store"
    for seed, name in enumerate(["bo", "mam"]):
        params = init_concept(trainer, name, ConceptConfig(k=3), seed=seed)
        attach(trainer, params)
        save_concept(params, trainer, store)
    base = build_tiny_base()
    bo = load_concept(base, store, "bo").params
    mam = load_concept(base, store, "mam").params
    embedding = base.model.get_input_embeddings()
    bo_ids = base.tokenizer.convert_tokens_to_ids(bo.tokens.all)
    mam_ids = base.tokenizer.convert_tokens_to_ids(mam.tokens.all)
    assert set(bo_ids).isdisjoint(mam_ids)
    assert torch.equal(embedding(torch.tensor(bo_ids)), bo.embed_rows.detach())
    assert torch.equal(embedding(torch.tensor(mam_ids)), mam.embed_rows.detach())
    text = f"{bo.tokens.soft_prompt} {mam.tokens.soft_prompt} Are <bo> and <mam> friends?"
    ids = base.tokenizer(text)["input_ids"]
    assert bo_ids[0] in ids and mam_ids[0] in ids and mam_ids[-1] in ids
    with torch.no_grad():
        logits = base.model(input_ids=torch.tensor([ids])).logits
    assert torch.isfinite(logits[..., : base.base_rows]).all()


def test_concept_from_another_base_is_refused(tmp_path):
    trainer = build_tiny_base()
    params = init_concept(trainer, "bo", ConceptConfig(k=2))
    attach(trainer, params)
    save_concept(params, trainer, tmp_path)
    # the same name with another shape: --model tiny would load the very base that was refused
    with pytest.raises(YollavaError, match="records base tiny with hidden size 64 .* loaded tiny has 32 .* retrain") as refused:
        load_concept(build_tiny_base(hidden_size=32), tmp_path, "bo")
    assert "--model" not in str(refused.value)
    record = json.loads((tmp_path / "bo" / CONCEPT_JSON).read_text())
    record["base_model"]["id"] = "llava-hf/llava-1.5-7b-hf"
    (tmp_path / "bo" / CONCEPT_JSON).write_text(json.dumps(record))
    with pytest.raises(YollavaError, match="trained on base model llava-hf/llava-1.5-7b-hf"):
        load_concept(build_tiny_base(), tmp_path, "bo")


def test_token_clashes_are_refused(tiny_base):
    with pytest.raises(YollavaError, match="already in the base vocabulary"):
        attach(tiny_base, init_concept(tiny_base, "s", ConceptConfig(k=0)))  # "<s>" is the BOS token
    attach(tiny_base, init_concept(tiny_base, "bo", ConceptConfig(k=2)))
    with pytest.raises(YollavaError, match="clashes with loaded concept 'bo'"):
        attach(tiny_base, init_concept(tiny_base, "bo_1", ConceptConfig(k=0)))
    with pytest.raises(YollavaError, match="already loaded"):
        attach(tiny_base, init_concept(tiny_base, "bo", ConceptConfig(k=2)))


def test_tampered_or_missing_files_are_refused(tmp_path):
    trainer = build_tiny_base()
    params = init_concept(trainer, "bo", ConceptConfig(k=2))
    attach(trainer, params)
    save_concept(params, trainer, tmp_path)
    weights = tmp_path / "bo" / CONCEPT_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(YollavaError, match="does not match"):
        load_concept(build_tiny_base(), tmp_path, "bo")
    with pytest.raises(YollavaError, match="not found"):
        load_concept(build_tiny_base(), tmp_path, "nope")


@pytest.mark.parametrize("init", ["mean", "word", "random"])
def test_init_methods_give_finite_distinct_latents(tiny_base, init):
    config = load_config(overrides=[f"concept.init={init}", "concept.init_word=red", "concept.k=4"]).concept
    params = init_concept(tiny_base, "bo", config, seed=3)
    rows = params.embed_rows.detach()
    assert torch.isfinite(rows).all()
    if init != "word":
        assert torch.unique(rows, dim=0).shape[0] == 5


def test_detach_gives_back_the_base_and_refuses_the_retired_tokens(tiny_base):
    """peft-style: one base trains and scores many concepts in a row, each attached then detached."""
    fmt = ChatFormat.load("llava_v1")

    def logits(text):
        seg = render(fmt, [Turn(text, None)], tiny_base.tokenizer.eos_token)
        ids = torch.tensor([encode(tiny_base.tokenizer, seg, tiny_base.image_token_id, tiny_base.num_image_tokens).input_ids])
        with torch.no_grad():
            return tiny_base.model(input_ids=ids).logits

    before = logits("What colour is the ball?")
    params = init_concept(tiny_base, "bo", ConceptConfig(k=2))
    with attached(tiny_base, params) as ids:
        assert attached_names(tiny_base) == ["bo"]
        logits(f"{params.tokens.soft_prompt} Is <bo> red?")
    assert attached_names(tiny_base) == []
    after = logits("What colour is the ball?")
    others = [i for i in range(before.shape[-1]) if i not in ids]
    assert torch.equal(after[..., others], before[..., others])  # every other logit as it was
    assert (after[..., ids] == torch.finfo(after.dtype).min).all()  # a detached concept is never generated
    with pytest.raises(YollavaError, match="concept 'bo', which is not loaded"):
        logits("Is <bo> red?")
    with pytest.raises(YollavaError, match="not loaded"):
        detach(tiny_base, "bo")
    assert attach(tiny_base, params) == ids  # attaching again reuses the same token ids
    logits("Is <bo> red?")


def test_attached_detaches_on_errors(tiny_base):
    params = init_concept(tiny_base, "bo", ConceptConfig(k=1))
    with pytest.raises(RuntimeError):
        with attached(tiny_base, params):
            raise RuntimeError("boom")
    assert attached_names(tiny_base) == []


def test_a_shared_weights_base_has_its_own_concepts_and_no_weight_copied(tmp_path):
    from yollava.base import share_weights

    base = build_tiny_base()
    twin = share_weights(base)
    pointers = lambda b: [t.data_ptr() for t in (*b.model.parameters(), *b.model.buffers())]  # noqa: E731
    assert pointers(twin) == pointers(base) and twin.model is not base.model
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        reference = base.model(input_ids=ids).logits
    n = base.base_tokenizer_size
    with attached(twin, init_concept(twin, "bo", ConceptConfig(k=2))):
        assert attached_names(twin) == ["bo"] and attached_names(base) == []
        assert "<bo>" in twin.tokenizer.get_vocab() and "<bo>" not in base.tokenizer.get_vocab()
        with torch.no_grad():
            torch.testing.assert_close(base.model(input_ids=ids).logits, reference, rtol=0, atol=0)
            torch.testing.assert_close(twin.model(input_ids=ids).logits[..., :n], reference[..., :n], rtol=0, atol=0)  # concept ids past the vocabulary differ
    with pytest.raises(ValueError, match="before attaching"):
        share_weights(twin)
