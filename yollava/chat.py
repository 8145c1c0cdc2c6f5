"""Generation with loaded concepts: one-shot answers and multi-turn sessions, greedy and streamed."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import TextStreamer

from yollava.concept import ConceptArtifact
from yollava.forward import FeatureCache, ImageRef, PrefixCache, collate, generation_inputs, run_language_model, suffix_forward
from yollava.images import load_rgb
from yollava.base import Base
from yollava.prompts import IGNORE_INDEX, ChatFormat, Turn, encode, render, soft_prompt_text


class _CallbackStreamer(TextStreamer):
    """transformers' TextStreamer, sending finished text pieces to a callback instead of stdout."""

    def __init__(self, tokenizer, callback: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.callback = callback

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.callback(text)


@torch.no_grad()
def greedy_generate(
    base: Base,
    prompt_ids: list[int],
    images: Sequence[ImageRef],
    cache: FeatureCache,
    max_new_tokens: int = 128,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Greedy decoding from ``prompt_ids`` (images' features from ``cache``); returns the answer text.

    Generation starts from input embeddings, so new tokens are decoded through the concept-aware
    embedding and head like any other token.
    """
    inputs = generation_inputs(base, prompt_ids, images, cache)
    streamer = _CallbackStreamer(base.tokenizer, on_text) if on_text else None
    output = base.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=base.tokenizer.eos_token_id,
        pad_token_id=base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else base.tokenizer.eos_token_id,
        streamer=streamer,
    )
    return base.tokenizer.decode(output[0], skip_special_tokens=True).strip()


# generation_config settings that make decoding more than an argmax; with any of them set,
# greedy_generate_batch hands each prompt to transformers' generate instead
_PROCESSOR_SETTINGS = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "min_new_tokens": (None, 0), "min_length": (None, 0),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,),
}


def _plain_argmax(base: Base) -> bool:
    config = base.model.generation_config
    return all(getattr(config, key, None) in allowed for key, allowed in _PROCESSOR_SETTINGS.items())


@torch.no_grad()
def greedy_generate_batch(
    base: Base,
    prompts: Sequence[list[int]],
    images: Sequence[Sequence[ImageRef]],
    cache: FeatureCache | PrefixCache,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to several prompts at once; each equals :func:`greedy_generate`'s answer to it alone.

    Prompts that share an image share its prefix keys/values (computed once, see
    :class:`yollava.forward.PrefixCache`); the prompts' own tokens run ``batch_size`` at a time,
    left-padded behind the prefixes so every row's next token is decoded in the same column. Each
    row keeps its own positions and its padding is masked, so batching changes no answer (up to
    float rounding in a near-tie). This is what makes conversation-data generation fast: 10
    questions per photo decode together instead of one after another.
    """
    if not _plain_argmax(base):
        return [greedy_generate(base, list(p), list(refs), cache, max_new_tokens) for p, refs in zip(prompts, images)]
    prefixes = cache if isinstance(cache, PrefixCache) else PrefixCache(base, cache)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        answers += _greedy_rows(base, prefixes, prompts[start : start + batch_size], images[start : start + batch_size], max_new_tokens)
    return answers


def _greedy_rows(base: Base, cache: PrefixCache, prompts: Sequence[list[int]], images: Sequence[Sequence[ImageRef]], max_new_tokens: int) -> list[str]:
    tokenizer = base.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = collate([(list(p), [IGNORE_INDEX] * len(p), list(refs)) for p, refs in zip(prompts, images)], pad, base.device)
    out = suffix_forward(base, cache, batch.input_ids, batch.attention_mask, batch.images, pad_suffix_left=True)
    head, embed = base.model.get_output_embeddings(), base.model.get_input_embeddings()
    rows = len(prompts)
    hidden, mask, past = out.hidden[:, -1], out.full_mask, out.cache
    positions = torch.tensor([p + s for p, s in zip(out.prefix_lengths, out.suffix_lengths)], device=base.device)
    done = torch.zeros(rows, dtype=torch.bool, device=base.device)
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        next_ids = head(hidden).float().argmax(-1).masked_fill(done, pad)
        generated.append(next_ids)
        done |= next_ids == tokenizer.eos_token_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        slot = torch.tensor([mask.shape[1] - 1], device=base.device)
        hidden = run_language_model(base, embed(next_ids[:, None]), mask, positions[:, None], past, slot)[:, -1]
        positions = positions + 1
    tokens = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in range(rows)]
    texts = []
    for row in tokens:
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


class ChatSession:
    """A conversation with zero or more concepts loaded.

    The concepts' soft prompts go in front of the first user message. LLaVA-1.5 holds one image
    per conversation, placed in the first user turn; setting a new image starts a new conversation.
    """

    def __init__(self, base: Base, concepts: Sequence[ConceptArtifact], fmt: ChatFormat, max_new_tokens: int = 128):
        self.base = base
        self.fmt = fmt
        self.max_new_tokens = max_new_tokens
        self.prefix = soft_prompt_text([c.params.tokens.soft_prompt for c in concepts])
        self.cache = FeatureCache(base)
        self.turns: list[Turn] = []
        self.image: str | None = None

    def set_image(self, path: str | None) -> None:
        """Use ``path`` for the conversation (validated now) and start over."""
        if path is not None:
            load_rgb(path, option="image")
        self.image = path
        self.reset()

    def reset(self) -> None:
        self.turns = []

    def prompt_ids(self, question: str) -> list[int]:
        turns = [*self.turns, Turn(question, None, images=1 if (self.image and not self.turns) else 0)]
        segments = render(self.fmt, turns, self.base.tokenizer.eos_token, self.prefix)
        return encode(self.base.tokenizer, segments, self.base.image_token_id, self.base.num_image_tokens).input_ids

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer ``question`` in the context of the conversation so far; the turn is remembered."""
        ids = self.prompt_ids(question)
        images = [ImageRef(self.image)] if self.image else []
        answer = greedy_generate(self.base, ids, images, self.cache, self.max_new_tokens, on_text)
        self.turns.append(Turn(question, answer, images=1 if (self.image and not self.turns) else 0))
        return answer
