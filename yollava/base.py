"""The frozen base every command works on: transformers' LLaVA with its tokenizer and image processor."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import LlavaConfig, LlavaForConditionalGeneration


@dataclass
class Base:
    """A frozen LLaVA with what is needed to talk to it.

    Attributes:
        model: transformers' own ``LlavaForConditionalGeneration``, every parameter frozen.
        tokenizer: its tokenizer (concept tokens are added to it when concepts attach).
        image_processor: turns PIL images into ``pixel_values``.
        model_id: hub id or path as given (recorded in concept files).
        revision: hub commit hash when known.
        image_token_id: id of the ``<image>`` placeholder token.
        num_image_tokens: how many positions each image occupies (576 for LLaVA-1.5 at 336 px).
        base_tokenizer_size: tokenizer length before any concept token was added.
        free_names: name tokens the base reads as "a subject introduced in this prompt" (the toy
            LLaVA's ``<x00>``...), for methods that name a subject its tokenizer cannot spell.
        plain_tokenizer: a copy of the tokenizer taken before any concept token was added: methods
            that train nothing spell ``<bo>`` with it as plain text, even after concept ``bo`` was
            attached and detached (its token then stays in ``tokenizer``, refused without its rows).
    """

    model: LlavaForConditionalGeneration
    tokenizer: Any
    image_processor: Any
    model_id: str
    revision: str | None
    image_token_id: int
    num_image_tokens: int
    base_tokenizer_size: int
    free_names: tuple[str, ...] = ()
    plain_tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.plain_tokenizer is None:
            if len(self.tokenizer) != self.base_tokenizer_size:
                raise ValueError("build the Base before attaching concepts: its plain tokenizer must not know them")
            self.plain_tokenizer = copy.deepcopy(self.tokenizer)

    def plain(self) -> "Base":
        """The same model with :attr:`plain_tokenizer`: prompts spell concept names as plain text."""
        return dataclasses.replace(self, tokenizer=self.plain_tokenizer)

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def base_rows(self) -> int:
        """Rows of the original embedding matrix (may exceed the tokenizer: 32064 vs 32002 on llava-hf)."""
        embedding = self.model.get_input_embeddings()
        return getattr(embedding, "base", embedding).weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def describe(self) -> dict[str, Any]:
        """What a concept records about the base it was trained on."""
        return {
            "id": self.model_id,
            "revision": self.revision,
            "hidden_size": self.hidden_size,
            "vocab_rows": self.base_rows,
            "tokenizer_size": self.base_tokenizer_size,
        }


def count_image_tokens(config: LlavaConfig) -> int:
    """Positions one image occupies in the language model's sequence."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def freeze(model: torch.nn.Module) -> None:
    """Freeze every parameter and switch off dropout: the base never trains."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()


def clip_image_processor(size: int) -> Any:
    """CLIP preprocessing at ``size`` px, PIL-backed on transformers 5 (``CLIPImageProcessorPil``) and 4.57."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def share_weights(base: Base) -> Base:
    """A second :class:`Base` over the same frozen weights, with its own modules, tokenizer and concept slots.

    Two threads can then use one loaded model at once (``yollava serve`` trains on one while chatting
    on the other) without either seeing the other's concepts. No weight is copied: every parameter
    and buffer is the same tensor in both (the module objects around them are new).

    Raises:
        ValueError: a concept was attached to ``base`` (its tokenizer knows concept tokens): share first.
    """
    if len(base.tokenizer) != base.base_tokenizer_size:
        raise ValueError("share the base's weights before attaching any concept to it")
    shared = {id(tensor): tensor for tensor in itertools.chain(base.model.parameters(), base.model.buffers())}
    return dataclasses.replace(base, model=copy.deepcopy(base.model, memo=shared), tokenizer=copy.deepcopy(base.tokenizer))
