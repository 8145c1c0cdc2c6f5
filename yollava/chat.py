"""Generation with loaded concepts: one-shot answers and multi-turn sessions, greedy and streamed."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import TextStreamer

from yollava.concept import ConceptArtifact
from yollava.forward import FeatureCache, ImageRef, generation_inputs
from yollava.images import load_rgb
from yollava.base import Base
from yollava.prompts import ChatFormat, Turn, encode, render, soft_prompt_text


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
