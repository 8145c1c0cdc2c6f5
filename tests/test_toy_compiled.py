"""The compiled comparison circuit of the toy LLaVA (yollava/toyworld/pretrain/circuit.py), on a fresh model.

The image codes are fed in directly (the projector is bypassed), so these tests check the circuit's
logic, not the vision tower's accuracy (which the pretraining report measures).
"""

from __future__ import annotations

import random

import pytest
import torch

from yollava.toyworld.clip import create_toy_clip
from yollava.toyworld.pretrain import circuit as C
from yollava.toyworld.pretrain.batches import SampleEncoder, collate_pretrain, embed_batch, forward_hidden
from yollava.toyworld.pretrain.config import PretrainConfig, StageConfig, compiled_arch
from yollava.toyworld.pretrain.fresh import new_model
from yollava.toyworld.pretrain.mix import DataMix, MixWeights, ToySample
from yollava.toyworld.pretrain.scenes import draw_scene, excluded_identities
from yollava.toyworld.pretrain.stages import train_mix
from yollava.toyworld.pretrain.vocabulary import build_tokenizer, required_words
from yollava.toyworld.toy_llava import TOKENIZER_FILE, ToyLlavaArch, wrap_tokenizer


@pytest.fixture(scope="module")
def circuit(tmp_path_factory):
    """A compiled model, a mix of 60 scenes, their exact image codes as the feature bank, and an encoder."""
    folder = tmp_path_factory.mktemp("compiled")
    build_tokenizer(required_words()).save(str(folder / TOKENIZER_FILE))
    tokenizer = wrap_tokenizer(folder / TOKENIZER_FILE)
    clip, _, _ = create_toy_clip()
    model = new_model(compiled_arch(), tokenizer, clip, seed=0)
    model.requires_grad_(False)
    cfg = C.CircuitConfig()
    C.compile_embeddings(model, tokenizer, cfg)
    C.compile_attention(model, cfg)
    C.compile_readout(model, cfg, tokenizer)
    C.quiet_learnt_outputs(model)
    exclude = excluded_identities()
    mix = DataMix([draw_scene(0, "test-compiled", i, 64, exclude) for i in range(60)], exclude)
    bank = C.code_targets(mix.scenes, model.config.text_config.hidden_size, 8, cfg)
    model.model.multi_modal_projector.forward = lambda features: features  # the bank holds projector outputs
    encoder = SampleEncoder(tokenizer, model.config.image_token_id, 64)
    return model, tokenizer, cfg, mix, bank, encoder


def test_the_default_arch_is_refused(tmp_path):
    clip, _, _ = create_toy_clip()
    build_tokenizer(required_words()).save(str(tmp_path / TOKENIZER_FILE))
    model = new_model(ToyLlavaArch(), wrap_tokenizer(tmp_path / TOKENIZER_FILE), clip, seed=0)
    with pytest.raises(ValueError, match="head_dim"):
        C.check_arch(model)
    rotating = new_model(ToyLlavaArch(head_dim=64), wrap_tokenizer(tmp_path / TOKENIZER_FILE), clip, seed=0)
    with pytest.raises(ValueError, match="RoPE base"):
        C.check_arch(rotating)


def test_every_input_row_has_the_same_rms_and_words_carry_their_slots(circuit):
    model, tokenizer, cfg, _, _, _ = circuit
    rows = model.model.language_model.embed_tokens.weight[: len(tokenizer)]
    torch.testing.assert_close(rows.pow(2).mean(1).sqrt(), torch.full((len(tokenizer),), cfg.row_scale), rtol=1e-4, atol=0)
    red = rows[tokenizer.convert_tokens_to_ids("red")] / cfg.row_scale
    slots = {C.SLOTS[i] for i in range(len(C.SLOTS)) if red[C.WORD + i] > 0}
    assert slots == {("color", "red"), ("accessory_color", "red")} and red[C.FLAG] == pytest.approx(cfg.flag)
    hat, pet = (rows[tokenizer.convert_tokens_to_ids(w)] / cfg.row_scale for w in ("hat", "pet"))
    assert hat[C.WORD + C.ANY_ACCESSORY] == pytest.approx(-cfg.code) and pet[C.WORD + C.ANY_ACCESSORY] == pytest.approx(cfg.code)
    the = rows[tokenizer.convert_tokens_to_ids("the")] / cfg.row_scale
    assert float(the[: C.FREE_START].abs().sum() - the[C.CONST].abs()) == pytest.approx(0.0, abs=1e-5)


def test_gather_head_writes_the_mean_code_of_the_description(circuit):
    model, tokenizer, cfg, mix, bank, encoder = circuit
    sample = mix.presence(0, random.Random(0), True)
    item = encoder(sample, with_answer=False)
    batch = collate_pretrain([item], tokenizer.pad_token_id)
    hidden = model.model.language_model(inputs_embeds=embed_batch(model, batch, bank), attention_mask=batch.mask,
                                        output_hidden_states=True).hidden_states[1][0, -1]
    words = [w for w in tokenizer.convert_ids_to_tokens(item.ids) if C.word_slots(w)]
    expected = torch.zeros(len(C.SLOTS))
    for word in words:
        for slot, sign in C.word_slots(word).items():
            expected[slot] += sign * cfg.code / len(words)
    torch.testing.assert_close(hidden[C.WORD : C.WORD + len(C.SLOTS)] / cfg.row_scale, expected, atol=0.02, rtol=0.02)


def test_match_finds_described_subjects_and_refuses_one_attribute_lookalikes(circuit):
    model, _, cfg, mix, bank, encoder = circuit
    rng = random.Random(1)
    samples = [mix.presence(i % 60, rng, i % 2 == 0) for i in range(80)]
    samples += [mix.introduced(i % 60, rng, i % 2 == 0, eval_question=True, second=False) for i in range(80)]
    values = C.match_values(model, encoder, samples, bank, cfg)
    correct = [(v > 0.5) == s.label for v, s in zip(values, samples)]
    assert sum(correct) / len(correct) >= 0.95
    fine = [ok for ok, s in zip(correct, samples) if s.tag == "fine"]
    assert len(fine) >= 10 and sum(fine) / len(fine) >= 0.9


def test_without_a_description_nothing_matches(circuit):
    model, _, cfg, mix, bank, encoder = circuit
    samples = [ToySample("named", "Is <x03> in this photo?", "No.", i, False) for i in range(20)]
    assert max(C.match_values(model, encoder, samples, bank, cfg)) < 0.05


def _answers(model, encoder, samples, bank):
    """Greedy first answer token of each sample (whole vocabulary)."""
    out = []
    for start in range(0, len(samples), 40):
        items = [encoder(s, with_answer=False) for s in samples[start : start + 40]]
        hidden, _ = forward_hidden(model, encoder, items, bank)
        last = hidden[torch.arange(len(items)), torch.tensor([len(e.ids) - 1 for e in items])]
        out.extend(encoder.tokenizer.convert_ids_to_tokens(model.lm_head(last).argmax(-1).tolist()))
    return out


def test_the_readout_answers_the_asked_attribute_of_the_referenced_subject(circuit):
    model, tokenizer, cfg, mix, bank, encoder = circuit
    rng = random.Random(2)
    samples = []
    while len(samples) < 160:
        sample = mix.attribute(rng.randrange(len(mix.scenes)), rng)
        if sample.kind == "attribute":
            samples.append(sample)
    correct = [answer == s.answer for answer, s in zip(_answers(model, encoder, samples, bank), samples)]
    assert sum(correct) / len(correct) >= 0.95
    # "What color is the hat of X?" reads the hat's colour, "What color is X?" the body's: same words, other slots
    for tag in ("accessory_color", "color", "accessory"):
        subset = [ok for ok, s in zip(correct, samples) if s.tag == tag]
        assert len(subset) >= 5 and sum(subset) / len(subset) >= 0.9, tag


def test_the_readout_stays_quiet_on_questions_that_ask_no_attribute(circuit):
    model, tokenizer, cfg, mix, bank, encoder = circuit
    rng = random.Random(3)
    asked = [s for s in (mix.attribute(i, rng) for i in range(30)) if s.kind == "attribute"][:10]
    presence = [mix.presence(i, rng, True) for i in range(10)]
    peaks = []
    for samples in (asked, presence):
        items = [encoder(s, with_answer=False) for s in samples]
        batch = collate_pretrain(items, tokenizer.pad_token_id)
        states = model.model.language_model(inputs_embeds=embed_batch(model, batch, bank), attention_mask=batch.mask,
                                            output_hidden_states=True).hidden_states[C.READOUT_LAYER + 1]
        last = states[torch.arange(len(items)), torch.tensor([len(e.ids) - 1 for e in items])]
        peaks.append(last[:, C.IMAGE_CODE : C.IMAGE_CODE + C.ANY_ACCESSORY].max(-1).values / cfg.row_scale)
    assert float(peaks[0].min()) > 1 + cfg.readout_gain / 2 and float(peaks[1].max()) < 1.5


def test_instruction_tuning_leaves_the_circuit_bit_identical(circuit):
    model, tokenizer, cfg, mix, bank, encoder = circuit
    frozen = C.frozen_parts(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stage = StageConfig("instruct", steps=3, lr=1e-2, trains="all", task="mix", warmup=1)
    config = PretrainConfig(batch_size=4, log_every=10)
    train_mix(model, stage, config, lambda rng: mix.sample(rng, MixWeights()), bank, encoder, lambda line: None, frozen=frozen)
    after = dict(model.named_parameters())
    names = {id(p): name for name, p in after.items()}
    for param in frozen.whole:
        assert torch.equal(param.detach(), before[names[id(param)]])
    for param, mask, _ in frozen.parts:
        assert torch.equal(param.detach()[mask], before[names[id(param)]][mask])
    layer2 = "model.language_model.layers.3.mlp.down_proj.weight"
    assert not torch.equal(after[layer2], before[layer2])  # the rest learns
    embed = "model.language_model.embed_tokens.weight"
    assert torch.equal(after[embed], before[embed])
    # layer 1's learnt heads may not write into the circuit's dimensions
    assert float(after["model.language_model.layers.1.self_attn.o_proj.weight"][: C.FREE_START, C.COMPILED_HEADS * 64 :].abs().sum()) == 0.0
    assert float(after["model.language_model.layers.2.self_attn.o_proj.weight"][: C.FREE_START, 64:].abs().sum()) == 0.0


def test_a_soft_prompt_far_from_any_subject_gets_its_gradient_from_the_soft_match(circuit):
    model, tokenizer, cfg, mix, bank, encoder = circuit
    item = encoder(ToySample("introduced", "<x01> is <x02> <x03> <x04> . Is <x01> in this photo?", "Yes.", 0, True), with_answer=False)
    batch = collate_pretrain([item], tokenizer.pad_token_id)
    embeds = embed_batch(model, batch, bank).detach()
    rows = model.model.language_model.embed_tokens.weight[: len(tokenizer)]
    latents = rows.mean(0).repeat(3, 1).requires_grad_(True)  # yollava's init=mean
    where = [item.ids.index(tokenizer.convert_tokens_to_ids(f"<x0{i}>")) for i in (2, 3, 4)]
    embeds = embeds.index_put((torch.zeros(3, dtype=torch.long), torch.tensor(where)), latents)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.mask, output_hidden_states=True).hidden_states[2][0, -1]
    sharp = torch.autograd.grad(hidden[C.MATCH], latents, retain_graph=True)[0].norm()
    soft = torch.autograd.grad(hidden[C.SOFT_MATCH], latents)[0].norm()
    assert float(sharp) < 1e-6 < float(soft)
