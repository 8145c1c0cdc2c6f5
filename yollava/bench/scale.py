"""A true-width LLaVA-1.5-13B with random weights and few decoder layers: per-layer costs at real width on any machine.

Exactly llava-hf/llava-1.5-13b-hf's architecture (CLIP ViT-L/14 at 336 px, 576 image tokens, hidden
5120, 40 heads, intermediate 13824, vocabulary 32064 rows, a 2-layer GELU projector), except the
number of decoder layers. It uses the committed tiny tokenizer, whose token counts for our prompts
are close to Llama's (29 tokens for the system text), padded to 32064 rows like the real checkpoint.
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from yollava.base import Base, clip_image_processor, count_image_tokens, freeze
from yollava.models import tiny_tokenizer

SCALE_ID = "scale-llava-1.5-13b"
LLAVA_13B_LAYERS = 40


def llava_13b_config(layers: int, tokenizer) -> LlavaConfig:
    """LLaVA-1.5-13B's config with ``layers`` decoder layers."""
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=layers, num_attention_heads=40, num_key_value_heads=40,
        vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
    )


def build_scale_base(layers: int = 1, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Base:
    """The true-width model with ``layers`` decoder layers, frozen, built directly on ``device`` in ``dtype``.

    Weights are transformers' own random initialisation (normal, std 0.02), so activations have a
    realistic size; a 40-layer model in bf16 takes 26 GB and is never allocated twice.
    """
    tokenizer = tiny_tokenizer()
    config = llava_13b_config(layers, tokenizer)
    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    freeze(model)
    return Base(
        model=model, tokenizer=tokenizer, image_processor=clip_image_processor(336), model_id=SCALE_ID, revision=None,
        image_token_id=config.image_token_id, num_image_tokens=count_image_tokens(config), base_tokenizer_size=len(tokenizer),
    )


def add_decoder_layer(base: Base) -> None:
    """Append a copy of the last decoder layer (its own cache slot): one more layer of identical cost."""
    import copy

    language_model = base.model.model.language_model
    layer = copy.deepcopy(language_model.layers[-1])
    index = len(language_model.layers)
    layer.self_attn.layer_idx = index
    if hasattr(layer, "layer_idx"):
        layer.layer_idx = index
    language_model.layers.append(layer)
    for config in (language_model.config, base.model.config.text_config):
        config.num_hidden_layers = index + 1
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and len(layer_types) < index + 1:
            config.layer_types = list(layer_types) + [layer_types[-1]]


def quantize_4bit(base: Base) -> None:
    """Replace the decoder's linear layers by bitsandbytes NF4 ones (bf16 compute), as ``model.quantization=4bit`` loads them.

    Raises:
        ImportError: bitsandbytes is not installed.
    """
    import bitsandbytes as bnb

    language_model = base.model.model.language_model
    for layer in language_model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                                  compute_dtype=torch.bfloat16, quant_type="nf4")
                    quantized.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
                    setattr(parent, name, quantized.to(child.weight.device))
    freeze(base.model)
