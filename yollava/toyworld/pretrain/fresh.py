"""What pretraining starts from: a toy LLaVA whose vision tower is the toy CLIP's and whose language model is random."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaForConditionalGeneration

from yollava.toyworld.clip import hf_vision_state_dict
from yollava.toyworld.toy_llava import ToyLlavaArch, llava_config, set_generation_defaults


def new_model(arch: ToyLlavaArch, tokenizer: Any, clip_model: Any, seed: int) -> LlavaForConditionalGeneration:
    """A fresh toy LLaVA whose vision tower holds the toy CLIP's vision weights (language model and projector random).

    Args:
        arch: language-model size.
        tokenizer: the wrapped toy tokenizer (sets the vocabulary rows and special ids).
        clip_model: the trained open_clip toy CLIP.
        seed: torch seed of the random language model and projector (the global RNG is left as it was).
    """
    config = llava_config(arch, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    weights = hf_vision_state_dict(clip_model)
    tower = model.model.vision_tower
    # transformers 4.57 nests the trunk under "vision_model."; 5.x's CLIPVisionModel is the trunk itself
    tower.load_state_dict({key: weights[key.removeprefix("vision_model.")] for key in tower.state_dict()}, strict=True)
    set_generation_defaults(model, tokenizer)
    return model
