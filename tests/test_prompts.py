"""Golden prompt strings and label masks built from message segments."""

from __future__ import annotations

import pytest

from yollava.concept import ConceptTokens
from yollava.prompts import IGNORE_INDEX, ChatFormat, RecognitionBank, Segment, Turn, encode, render

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. "
)


def test_soft_prompt_golden_strings():
    assert ConceptTokens("bo", 16).soft_prompt == "<bo> is " + "".join(f"<bo_{i}>" for i in range(1, 17)) + "."
    assert ConceptTokens("bo", 2).all == ["<bo>", "<bo_1>", "<bo_2>"]
    assert ConceptTokens("bo", 0).soft_prompt == "<bo>."


def test_llava_v1_rendering_golden():
    fmt = ChatFormat.load("llava_v1")
    soft = ConceptTokens("bo", 2).soft_prompt
    segments = render(fmt, [Turn("Is <bo> here?", "Yes, <bo> is here.", images=1), Turn("Colour?", None)], "</s>", soft)
    text = "".join(s.text for s in segments)
    assert text == (
        SYSTEM + "USER: <image>\n<bo> is <bo_1><bo_2>. Is <bo> here? ASSISTANT: Yes, <bo> is here.</s>"
        "USER: Colour? ASSISTANT:"
    )
    assert [s.masked for s in segments] == [True, True, False, True]


def test_text_only_rendering_has_no_image():
    fmt = ChatFormat.load("llava_v1")
    text = "".join(s.text for s in render(fmt, [Turn("What colour is <bo>?", None)], "</s>", "<bo>."))
    assert text == SYSTEM + "USER: <bo>. What colour is <bo>? ASSISTANT:"


def test_labels_cover_exactly_the_answer_and_eos(tiny_base):
    fmt = ChatFormat.load("llava_v1")
    tok = tiny_base.tokenizer
    segments = render(fmt, [Turn("Is it red?", "Yes, it is red.", images=1)], tok.eos_token)
    encoded = encode(tok, segments, tiny_base.image_token_id, tiny_base.num_image_tokens)
    supervised = [label for label in encoded.labels if label != IGNORE_INDEX]
    assert tok.decode(supervised) .strip() == "Yes, it is red.</s>"
    assert supervised[-1] == tok.eos_token_id
    assert encoded.input_ids.count(tiny_base.image_token_id) == tiny_base.num_image_tokens
    assert encoded.n_images == 1
    start, end = encoded.answer_spans[0]
    assert encoded.labels[start:end] == encoded.input_ids[start:end]
    assert all(label == IGNORE_INDEX for label in encoded.labels[:start])


def test_generation_prompt_is_the_training_prefix(tiny_base):
    fmt = ChatFormat.load("llava_v1")
    tok = tiny_base.tokenizer
    train = encode(tok, render(fmt, [Turn("Is it red?", "No, it is blue.", images=1)], tok.eos_token), tiny_base.image_token_id, 4)
    prompt = encode(tok, render(fmt, [Turn("Is it red?", None, images=1)], tok.eos_token), tiny_base.image_token_id, 4)
    first = next(i for i, label in enumerate(train.labels) if label != IGNORE_INDEX)
    assert train.input_ids[:first] == prompt.input_ids


def test_answer_without_eos_is_refused(tiny_base):
    tok = tiny_base.tokenizer
    with pytest.raises(ValueError, match="EOS"):
        encode(tok, [Segment("USER: hi ASSISTANT:", True), Segment(" hello", False)], tiny_base.image_token_id, 4)


def test_token_straddling_a_segment_boundary_is_refused(tiny_base):
    tok = tiny_base.tokenizer
    # "ASSISTANT" is one token in the tiny vocabulary; splitting it between segments must raise
    with pytest.raises(ValueError, match="straddles"):
        encode(tok, [Segment("USER: hi ASSIST", True), Segment("ANT: yes</s>", False)], tiny_base.image_token_id, 4)


def test_recognition_bank_has_enough_phrasings_and_yes_no_answers():
    bank = RecognitionBank.load()
    assert len(bank.questions) >= 30 and len(bank.positive_answers) >= 30 and len(bank.negative_answers) >= 30
    assert len(set(bank.questions)) == len(bank.questions)
    assert all(a.startswith("Yes") for a in bank.positive_answers)
    assert all(a.startswith("No") for a in bank.negative_answers)
    assert "<bo>" in bank.eval_prompt("<bo>")


def test_generated_answers_are_classified_strictly():
    from yollava.evaluate import classify_answer

    assert classify_answer("Yes, <bo> is here.") == "yes"
    assert classify_answer(" no.") == "no"
    assert classify_answer("Nope") == "other"
    assert classify_answer("I think yes") == "other"
    assert classify_answer("") == "other"
