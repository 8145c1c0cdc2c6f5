"""The toy LLaVA's comparison circuit, written into the weights instead of learnt.

Eight sessions of probes (docs/toyworld.md) showed a 128-wide language model learning every
lookup-like skill of the toy world quickly and sitting at chance for thousands of steps on the one
skill personalization needs: comparing a description (or a soft prompt) with the subjects in a
photo. This module builds that skill by construction, the way RASP-style compiled transformers do,
in frozen pieces of an ordinary ``LlavaForConditionalGeneration``:

- **the word code**: each attribute word's input row carries a flag and a one-hot slot per
  attribute it can be the value of ("red": body colour red and accessory colour red); every row has
  the same RMS, so RMSNorm keeps these values exact;
- **the image code**: the projector regresses each patch of the (dense-trained) vision tower onto
  the one-hot attribute slots of the subject drawn there, an image flag, a subject flag and the
  background (:func:`image_targets`); by least squares it outputs attribute posteriors;
- **two layers**: layer 0, head 0 averages the word code of every attribute word in the context
  into the current position (the description, or the soft prompt's latent tokens once a concept
  has learnt them); layer 0, head 1 and its MLP smooth each patch's code over its subject's
  patches and sharpen it; layer 1, head 0 scores every image patch by the share of the
  description it shows and puts its attention on the best patches, or on ``<s>`` when no patch
  reaches :attr:`CircuitConfig.threshold` (an attention sink), and writes the attended image flag
  to the ``match`` dimension; head 1 retrieves the attribute code of the subject the description
  points at ("the red pet"; any subject when there is none) for attribute questions; head 2 is a
  gentle match (``soft_match``) that gives a soft prompt far from every subject a gradient;
- **the attribute readout** (layer 2): head 0 gathers the question type from its type word
  ("color", "shape", "kind", "pattern", "accessory", "big"; :data:`TYPE_WORDS`) and the first MLP
  units amplify only the asked attribute's slots of the retrieved code (the hat's colour for
  "What color is the hat of X?", the body's for "What color is X?", the same words), so the answer
  word is a linear read of the residual; its lm_head rows start there (:func:`compile_readout`).

Everything else (which dimension answers "Yes", captions, conversation answers, text questions)
is learnt by the ``instruct`` stage on the task mix while these pieces stay bit-identical
(:class:`Frozen`). A trained soft prompt talks to the circuit like any description does: its
latent tokens must become flagged attribute codes, which is a smooth target for gradient descent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from yollava.toyworld.pretrain.batches import SampleEncoder, forward_hidden
from yollava.toyworld.pretrain.mix import ToySample
from yollava.toyworld.pretrain.scenes import patch_labels
from yollava.toyworld.world import ATTRIBUTES, BACKGROUNDS, Scene

# (attribute, value) slots of the code; "none" (no accessory) has no slot of its own. The last slot,
# ("accessory", "any"), is an image's "has an accessory"; in words, a family word puts +1 there and
# an accessory word -1, and the match head weighs it negatively: a description that names no
# accessory ("a red striped round pet") then refuses a patch whose subject carries one, while one
# that names an accessory is indifferent to it (+1 - 1).
SLOTS: tuple[tuple[str, str], ...] = (*((a, v) for a, values in ATTRIBUTES.items() for v in values if v != "none"), ("accessory", "any"))
ANY_ACCESSORY = len(SLOTS) - 1
# dimensions of the residual stream (the language model's hidden size must be >= FREE_START)
WORD = 0  # word code: SLOTS
IMAGE_CODE = len(SLOTS)  # image code: SLOTS
BACKGROUND = 2 * len(SLOTS)  # background one-hot: BACKGROUNDS
CONST = BACKGROUND + len(BACKGROUNDS)
FLAG = CONST + 1  # attribute word
IMAGE = CONST + 2  # image token
SUBJECT = CONST + 3  # image token over a subject
SINK = CONST + 4  # <s>
MATCH = CONST + 5  # written by the match head
SOFT_MATCH = CONST + 6  # written by the soft match head
# question types of the attribute readout (layer 2): what a world question (TEXT_QUESTIONS) asks.
# "What color is the hat of X?" asks the accessory colour: colour plus an accessory word in the
# gathered description (WORD), see readout_units.
TYPES = ("family", "shape", "color", "pattern", "accessory", "size")
TYPE = CONST + 7  # one dimension per TYPES entry: a type word's row, and the gathered question type
TYPE_WORDS = {"kind": "family", "shape": "shape", "color": "color", "pattern": "pattern", "accessory": "accessory", "big": "size"}
NONE = TYPE + len(TYPES)  # written by the readout when an accessory question finds no accessory
FREE_START = NONE + 1
COMPILED_HEADS = 3  # heads 0-2 of layer 1 are compiled (match, retrieve, soft match)
READOUT_LAYER = 2  # its head 0 gathers the question type, the first READOUT_UNITS of its MLP gate the answer


@dataclass
class CircuitConfig:
    """Magnitudes of the circuit, in units of the RMS-normalised residual stream (mean square 1)."""

    code: float = 3.0  # a word's value in each of its slots (and <s>'s sink entry)
    flag: float = 3.0  # an attribute word's flag
    # an image token's value per slot and its flags: small, so that what layer 0 adds to image
    # tokens (the smoothed code, the sharpened slots) moves their RMS by ~10 % only
    image_code: float = 1.0
    image_flag: float = 1.0
    free: float = 0.5  # std of the free (learnt) dimensions of other tokens' rows
    row_scale: float = 0.02  # input rows are the normalised vectors times this (the usual init scale)
    gather_logit: float = 12.0  # attention logit of an attribute word in the gather head (others: 0)
    match_sharpness: float = 100.0  # logit per unit of matched description share
    threshold: float = 0.9  # matched share at which a patch outweighs <s>
    # weight of each attribute's slots in the matched share (size and shape are the ones the tower
    # reads worst; a lower weight trades coarse negatives for positives; calibrated on training scenes)
    size_weight: float = 1.0
    shape_weight: float = 1.0
    image_margin: float = 30.0  # logit every image token gets over text tokens in layer 1
    retrieve_sharpness: float = 20.0
    retrieve_subject: float = 1.0  # bonus share of subject patches (picks "this subject" with no description)
    match_gain: float = 1.0  # residual (row-scale units) written to MATCH per unit attention on matching patches
    # a second, gentle match head (layer 1, head 2): its patches get attention long before they
    # reach the threshold, so a soft prompt that starts far from any subject still has a gradient
    # (the sharp head's sink takes all of it until a patch comes within ~5 % of the threshold)
    soft_sharpness: float = 10.0
    soft_threshold: float = 0.5
    rope_static_from: int = 12  # RoPE frequency index from which a pair is taken as non-rotating
    smooth_sharpness: float = 30.0  # layer-0 logit between two patches with the same seven slots
    smooth_sink: float = 0.5  # <s> logit in units of smooth_sharpness
    # layer 0's MLP replaces each image slot by gain * clip((p - low) / (high - low), 0, 1) (p: smoothed posterior)
    sharpen_low: float = 0.3
    sharpen_high: float = 0.55
    sharpen_gain: float = 1.0
    sharpen_slope: float = 20.0  # gate slope of the ramp units (silu approaches relu)
    # attribute readout (layer 2): the question-type gather and the gate that amplifies the
    # retrieved code of the asked attribute only ("red" as body colour, not as hat colour)
    type_logit: float = 40.0  # attention logit of a type word (others 0), at row-scale RMS
    readout_slope: float = 20.0  # gate slope per unit of gathered type share
    readout_threshold: float = 0.4  # type share above which an attribute's slots are amplified
    readout_and: float = 0.5  # colour share and accessory-word code above which accessory-colour slots are amplified
    readout_gain: float = 8.0  # amplified slot = (1 + gain) x retrieved slot, for a full type share
    answer_logit: float = 2.0  # initial lm_head weight of an answer word on its amplified slots
    type_bonus: float = 2.0  # initial lm_head weight of an answer word on its attribute's type share

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_arch(model: LlavaForConditionalGeneration) -> None:
    """Refuse a model the circuit does not fit (hidden size, head size, RoPE base)."""
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if text.hidden_size < FREE_START + 16:
        raise ValueError(f"compiled circuit: hidden size {text.hidden_size} < {FREE_START + 16}")
    if head_dim < 64 or text.num_attention_heads < COMPILED_HEADS + 1 or text.num_hidden_layers < 3:
        raise ValueError(f"compiled circuit: needs head_dim >= 64, >= {COMPILED_HEADS + 1} heads and >= 3 layers")
    rope = getattr(text, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(text, "rope_theta", None))
    if theta is None or theta < 1e8:
        raise ValueError(f"compiled circuit: RoPE base {theta} rotates the matching dimensions; use >= 1e8 (pretrain.config.compiled_arch())")


def static_dims(head_dim: int, start: int) -> list[int]:
    """Head dimensions whose RoPE frequency index is >= ``start`` (they barely rotate with a large base)."""
    half = head_dim // 2
    return [j for j in range(head_dim) if j % half >= start]


def word_slots(word: str) -> dict[int, float]:
    """Slots a word fills (+1 per attribute it can be the value of) and its sign on ANY_ACCESSORY."""
    out = {i: 1.0 for i, (_, value) in enumerate(SLOTS[:ANY_ACCESSORY]) if value == word}
    if word in ATTRIBUTES["family"]:
        out[ANY_ACCESSORY] = 1.0
    elif word in ATTRIBUTES["accessory"]:
        out[ANY_ACCESSORY] = -1.0
    return out


def _row(hidden: int, entries: dict[int, float], scale: float, free: torch.Tensor | None = None) -> torch.Tensor:
    """A normalised row (mean square 1) with ``entries``, optional free part, the rest filled by CONST, times ``scale``."""
    x = torch.zeros(hidden)
    for dim, value in entries.items():
        x[dim] = value
    if free is not None:
        x[FREE_START:] = free
    rest = hidden - float(x.pow(2).sum())
    if rest <= 1.0:
        raise ValueError("compiled circuit: row entries exceed the row's norm; lower CircuitConfig magnitudes")
    x[CONST] = math.sqrt(rest)
    return x * scale


def compile_embeddings(model: LlavaForConditionalGeneration, tokenizer: Any, cfg: CircuitConfig, seed: int = 0) -> None:
    """Rewrite every input row: attribute words get flag + code, question-type words (:data:`TYPE_WORDS`)
    their type, ``<s>`` the sink, others a random free part.

    All rows have the same RMS (the CONST entry absorbs the difference), so layer 0 sees exactly
    the configured values.
    """
    embed = model.model.language_model.embed_tokens.weight
    hidden = embed.shape[1]
    words = {v for _, v in SLOTS[:ANY_ACCESSORY]}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for token_id in range(embed.shape[0]):
            token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
            if token in words:
                entries = {FLAG: cfg.flag, **{WORD + s: sign * cfg.code for s, sign in word_slots(token).items()}}
                embed[token_id] = _row(hidden, entries, cfg.row_scale)
            elif token in TYPE_WORDS:
                free = cfg.free * torch.randn(hidden - FREE_START, generator=generator)
                embed[token_id] = _row(hidden, {TYPE + TYPES.index(TYPE_WORDS[token]): cfg.code}, cfg.row_scale, free)
            elif token == tokenizer.bos_token:
                embed[token_id] = _row(hidden, {SINK: cfg.code}, cfg.row_scale)
            else:
                free = cfg.free * torch.randn(hidden - FREE_START, generator=generator)
                embed[token_id] = _row(hidden, {}, cfg.row_scale, free)


def image_targets(labels: torch.Tensor, backgrounds: Sequence[str], hidden: int, cfg: CircuitConfig) -> torch.Tensor:
    """Projector targets per scene and patch from :func:`~yollava.toyworld.pretrain.scenes.patch_labels`.

    Args:
        labels: (scenes, patches, len(ATTRIBUTES) + 1) value indices (-100: none) and role.
        backgrounds: each scene's background.
        hidden: the language model's hidden size.
    """
    n, patches, _ = labels.shape
    x = torch.zeros(n, patches, hidden)
    x[..., IMAGE] = cfg.image_flag
    on = labels[..., -1] > 0
    x[..., SUBJECT] = cfg.image_flag * on.float()
    offset = 0
    for j, (attribute, values) in enumerate(ATTRIBUTES.items()):
        real = [v for v in values if v != "none"]
        for k, value in enumerate(values):
            if value == "none":
                continue
            x[..., IMAGE_CODE + offset + real.index(value)] = cfg.image_code * (on & (labels[..., j] == k)).float()
        offset += len(real)
    accessory = list(ATTRIBUTES).index("accessory")
    x[..., IMAGE_CODE + ANY_ACCESSORY] = cfg.image_code * (on & (labels[..., accessory] > 0)).float()
    index = torch.tensor([BACKGROUNDS.index(b) for b in backgrounds])
    x[..., BACKGROUND:BACKGROUND + len(BACKGROUNDS)] = cfg.image_code * (~on).unsqueeze(-1).float() * F.one_hot(index, len(BACKGROUNDS)).unsqueeze(1).float()
    x[..., CONST] = (hidden - x.pow(2).sum(-1)).clamp(min=1.0).sqrt()
    return x * cfg.row_scale


def _image_const(hidden: int, cfg: CircuitConfig) -> float:
    """CONST of a typical subject patch's target (image and subject flags, seven code slots)."""
    return math.sqrt(hidden - 2 * cfg.image_flag ** 2 - 7 * cfg.image_code ** 2)


def compile_attention(model: LlavaForConditionalGeneration, cfg: CircuitConfig) -> None:
    """Write layer 0 (gather head only: its other heads and MLP are zeroed) and heads 0-1 of layer 1."""
    text = model.config.text_config
    hidden = text.hidden_size
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    scale = math.sqrt(head_dim)
    static = static_dims(head_dim, cfg.rope_static_from)
    layers = model.model.language_model.layers
    const = math.sqrt(hidden - cfg.free ** 2 * (hidden - FREE_START))  # CONST of a typical non-word token (query side)
    n = len(SLOTS)
    with torch.no_grad():
        l0 = layers[0]
        for proj in (l0.self_attn.q_proj, l0.self_attn.k_proj, l0.self_attn.v_proj, l0.self_attn.o_proj,
                     l0.mlp.gate_proj, l0.mlp.up_proj, l0.mlp.down_proj):
            proj.weight.zero_()
        l0.input_layernorm.weight.fill_(1.0)
        l0.post_attention_layernorm.weight.fill_(1.0)
        # smooth: layer 0, head 1 averages each image token's code over the earlier patches that
        # share most of it (its own subject), or attends to <s> (value 0) when nothing does; the
        # average lands in the WORD dimensions, which image tokens do not otherwise use
        attn0 = l0.self_attn
        base = head_dim
        for s in range(n):
            attn0.q_proj.weight[base + static[s], IMAGE_CODE + s] = cfg.smooth_sharpness * scale / (7 * cfg.image_code ** 2)
            attn0.k_proj.weight[base + static[s], IMAGE_CODE + s] = 1.0
            attn0.v_proj.weight[base + s, IMAGE_CODE + s] = 1.0
            attn0.o_proj.weight[WORD + s, base + s] = cfg.row_scale
        ref = _image_const(hidden, cfg)
        attn0.q_proj.weight[base + static[n], CONST] = cfg.smooth_sink * cfg.smooth_sharpness * scale / ref
        attn0.k_proj.weight[base + static[n], SINK] = 1.0 / cfg.code
        # sharpen: layer 0's MLP replaces, per slot, the image code by gain * code * clip((avg - low) /
        # (high - low), 0, 1) (two ramp units: silu ~ relu at this slope), on image tokens only
        mlp = l0.mlp
        if mlp.gate_proj.weight.shape[0] < 3 * n:
            raise ValueError(f"compiled circuit: layer 0 MLP has {mlp.gate_proj.weight.shape[0]} units, needs {3 * n}")
        k = cfg.sharpen_slope / cfg.image_code
        span = (cfg.sharpen_high - cfg.sharpen_low) * cfg.image_code
        for s in range(n):
            for unit, threshold, sign in ((3 * s, cfg.sharpen_low, 1.0), (3 * s + 1, cfg.sharpen_high, -1.0)):
                mlp.gate_proj.weight[unit, WORD + s] = k
                # off on text tokens: IMAGE/flag - CONST/ref is 0 on a subject patch, about -1 elsewhere
                mlp.gate_proj.weight[unit, IMAGE] = k * 4 * cfg.image_code / cfg.image_flag
                mlp.gate_proj.weight[unit, CONST] = -k * (threshold + 4) * cfg.image_code / ref
                mlp.up_proj.weight[unit, CONST] = 1.0 / ref
                mlp.down_proj.weight[IMAGE_CODE + s, unit] = sign * cfg.sharpen_gain * cfg.image_code / (k * span) * cfg.row_scale
            # and one linear unit (silu of a large constant) that removes the patch's own soft value
            # (exact while the token's RMS is the row scale; the smoothed code moves it ~2 %)
            linear = 3 * s + 2
            mlp.gate_proj.weight[linear, CONST] = cfg.sharpen_slope / ref
            mlp.up_proj.weight[linear, IMAGE_CODE + s] = 1.0
            mlp.down_proj.weight[IMAGE_CODE + s, linear] = -cfg.row_scale / cfg.sharpen_slope
        # gather: q = const, k = flag; logit gather_logit on attribute words, 0 elsewhere
        j = static[-1]
        l0.self_attn.q_proj.weight[j, CONST] = 1.0 / const
        l0.self_attn.k_proj.weight[j, FLAG] = cfg.gather_logit * scale / cfg.flag
        # value: the word code; written back into WORD at row scale (a mean of codes)
        for s in range(n):
            l0.self_attn.v_proj.weight[s, WORD + s] = 1.0
            l0.self_attn.o_proj.weight[WORD + s, s] = cfg.row_scale

        l1 = layers[1]
        attn = l1.self_attn
        l1.input_layernorm.weight.fill_(1.0)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[: COMPILED_HEADS * head_dim] = 0.0
        attn.o_proj.weight[:, : COMPILED_HEADS * head_dim] = 0.0
        # layer 1's learnt heads and MLP write only free dimensions: MATCH and the retrieved code stay clean
        attn.o_proj.weight[:FREE_START] = 0.0
        l1.mlp.down_proj.weight[:FREE_START] = 0.0
        if len(static) < n + 2:
            raise ValueError(f"compiled circuit: {len(static)} static RoPE dims per head, need {n + 2}")
        heads = ((0, cfg.match_sharpness, cfg.threshold), (1, cfg.retrieve_sharpness, None), (2, cfg.soft_sharpness, cfg.soft_threshold))
        for head, sharp, threshold in heads:
            base = head * head_dim
            # matched share: sum_s d_s p_s, with d the mean word code (code per slot, averaged) and
            # p the patch's sharpened code (gain * image_code per slot): a full match gives 1 (each
            # word matches one slot); ANY_ACCESSORY counts negatively (see SLOTS). The retrieve head
            # leaves that slot out (its dimension goes to the subject bonus).
            slots = range(ANY_ACCESSORY) if head == 1 else range(n)
            for i, s in enumerate(slots):
                sign = -1.0 if s == ANY_ACCESSORY else {"size": cfg.size_weight, "shape": cfg.shape_weight}.get(SLOTS[s][0], 1.0)
                attn.q_proj.weight[base + static[i], WORD + s] = sign * sharp * scale / (cfg.code * cfg.image_code * cfg.sharpen_gain)
                attn.k_proj.weight[base + static[i], IMAGE_CODE + s] = 1.0
            image_dim, sink_dim = static[len(slots)], static[len(slots) + 1]
            # image tokens: + margin; <s>: margin + threshold (match) or margin - 1 (retrieve)
            attn.q_proj.weight[base + image_dim, CONST] = cfg.image_margin * scale / const
            attn.k_proj.weight[base + image_dim, IMAGE] = 1.0 / cfg.image_flag
            sink = cfg.image_margin + (-1.0 if threshold is None else threshold * sharp)
            attn.q_proj.weight[base + sink_dim, CONST] = sink * scale / const
            attn.k_proj.weight[base + sink_dim, SINK] = 1.0 / cfg.code
            if head == 1:
                attn.q_proj.weight[base + static[len(slots) + 2], CONST] = cfg.retrieve_subject * sharp * scale / const
                attn.k_proj.weight[base + static[len(slots) + 2], SUBJECT] = 1.0 / cfg.image_flag
        # match value: the image flag -> MATCH; retrieve value: the image code -> IMAGE_CODE at the query
        attn.v_proj.weight[0, IMAGE] = 1.0 / cfg.image_flag
        attn.o_proj.weight[MATCH, 0] = cfg.match_gain * cfg.row_scale
        attn.v_proj.weight[2 * head_dim, IMAGE] = 1.0 / cfg.image_flag
        attn.o_proj.weight[SOFT_MATCH, 2 * head_dim] = cfg.match_gain * cfg.row_scale
        for s in range(n):
            attn.v_proj.weight[head_dim + s, IMAGE_CODE + s] = 1.0
            attn.o_proj.weight[IMAGE_CODE + s, head_dim + s] = cfg.row_scale


def readout_units(cfg: CircuitConfig) -> list[tuple[int, dict[int, float], float, int, float]]:
    """Layer 2's compiled MLP units: (input dim of ``up``, gate weights on TYPE dims, gate threshold
    in type-share units, output dim, output weight per unit of gate excess).

    Per slot of a plain attribute, one unit: gate on its type share. Body colour is colour without
    an accessory word m in the gathered description (WORD: 3 / number of attribute words, so
    0.75-3); accessory colour is colour AND m (three units: relu(c + m - t) - relu(c - t) -
    relu(m - t) is t when both exceed t, else 0). ``NONE``: an accessory question whose
    retrieved subject has no accessory (up: CONST, gate lowered by the retrieved ANY slot).
    """
    t = {name: TYPE + i for i, name in enumerate(TYPES)}
    units = []
    plain_span = 1.0 - cfg.readout_threshold
    accessory_words = {WORD + s: 1.0 for s, (a, _) in enumerate(SLOTS[:ANY_ACCESSORY]) if a == "accessory"}
    for s, (attribute, _) in enumerate(SLOTS[:ANY_ACCESSORY]):
        dim = IMAGE_CODE + s
        if attribute == "accessory_color":
            for gate, sign in (({t["color"]: 1.0, **accessory_words}, 1.0), ({t["color"]: 1.0}, -1.0), (accessory_words, -1.0)):
                units.append((dim, gate, cfg.readout_and, dim, sign / cfg.readout_and))
        elif attribute == "color":
            units.append((dim, {t["color"]: 1.0, **{d: -2.0 for d in accessory_words}}, cfg.readout_threshold, dim, 1.0 / plain_span))
        else:
            units.append((dim, {t[attribute]: 1.0}, cfg.readout_threshold, dim, 1.0 / plain_span))
    units.append((CONST, {t["accessory"]: 1.0, IMAGE_CODE + ANY_ACCESSORY: -1.0}, cfg.readout_threshold, NONE, 1.0 / plain_span))
    return units


def compile_readout(model: LlavaForConditionalGeneration, cfg: CircuitConfig, tokenizer: Any | None = None) -> None:
    """Layer 2: head 0 gathers the question type, the first ``len(readout_units)`` MLP units amplify
    the asked attribute's slots of the code that layer 1 retrieved. With ``tokenizer``, each answer
    word's lm_head row is initialised to read its amplified slots (instruct training refines it).

    Only the asked attribute is amplified, so the answer becomes a linear read of the residual:
    "What color is the hat of X?" amplifies the accessory-colour slots and not the body colour,
    although both are read by the same colour words.
    """
    text = model.config.text_config
    hidden = text.hidden_size
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    scale = math.sqrt(head_dim)
    static = static_dims(head_dim, cfg.rope_static_from)
    const = math.sqrt(hidden - cfg.free ** 2 * (hidden - FREE_START))
    layer = model.model.language_model.layers[READOUT_LAYER]
    attn, mlp = layer.self_attn, layer.mlp
    units = readout_units(cfg)
    if mlp.gate_proj.weight.shape[0] < len(units) + 16:
        raise ValueError(f"compiled circuit: layer {READOUT_LAYER} MLP has {mlp.gate_proj.weight.shape[0]} units, needs {len(units) + 16}")
    with torch.no_grad():
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:head_dim] = 0.0
        attn.o_proj.weight[:, :head_dim] = 0.0
        # the learnt heads write free dimensions only: the gate reads clean TYPE and code values
        attn.o_proj.weight[:FREE_START] = 0.0
        # head 0: q = CONST, k = sum of TYPE entries (type words: type_logit, others 0). No sink:
        # without a type word the attention spreads over ~100 tokens whose TYPE entries are 0, and
        # a sink's logit would have to be balanced against token RMS that the learnt layers move
        attn.q_proj.weight[static[0], CONST] = cfg.type_logit * scale / const
        attn.k_proj.weight[static[0], TYPE:TYPE + len(TYPES)] = 1.0 / cfg.code
        for i in range(len(TYPES)):
            attn.v_proj.weight[i, TYPE + i] = 1.0 / cfg.code
            attn.o_proj.weight[TYPE + i, i] = cfg.row_scale
        # MLP units: silu(slope * (sum_w share - threshold)) * up; shares and CONST scale alike
        # with the token's RMS, so the gate's sign does not depend on it
        n = len(units)
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[:n] = 0.0
        mlp.down_proj.weight[:, :n] = 0.0
        for u, (up_dim, gate, threshold, out_dim, weight) in enumerate(units):
            for dim, w in gate.items():
                # TYPE dims hold shares at row scale; the retrieved ANY slot is about 1 at row scale
                mlp.gate_proj.weight[u, dim] = cfg.readout_slope * w
            mlp.gate_proj.weight[u, CONST] = -cfg.readout_slope * threshold / const
            mlp.up_proj.weight[u, up_dim] = 1.0 if up_dim != CONST else cfg.image_code / const
            mlp.down_proj.weight[out_dim, u] = cfg.readout_gain * cfg.row_scale * weight / cfg.readout_slope
        if tokenizer is not None:
            head = model.lm_head.weight
            for s, (_, value) in enumerate(SLOTS[:ANY_ACCESSORY]):
                head[tokenizer.convert_tokens_to_ids(value), IMAGE_CODE + s] = cfg.answer_logit
            head[tokenizer.convert_tokens_to_ids("none"), NONE] = cfg.answer_logit
            for i, attribute in enumerate(TYPES):
                for value in ATTRIBUTES[attribute]:
                    if value != "none":
                        head[tokenizer.convert_tokens_to_ids(value), TYPE + i] = cfg.type_bonus


def quiet_learnt_outputs(model: LlavaForConditionalGeneration) -> None:
    """Zero what the learnt heads and MLP units of layers 1 and up write (their output projections).

    A fresh model's random layers write about as much as a token row holds (row scale 0.02), which
    moves every token's RMS and so the logits of the compiled heads downstream. Starting the
    learnt branches at zero output (like zero-initialised residual branches) lets the circuit work
    from the first instruct step; the gradients still reach them through the output projections.
    """
    frozen = frozen_parts(model)
    kept = {id(p): mask for p, mask, _ in frozen.parts}
    layers = model.model.language_model.layers
    with torch.no_grad():
        for layer in layers[1:]:
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                mask = kept.get(id(proj.weight))
                if mask is None:
                    proj.weight.zero_()
                else:
                    proj.weight[~mask] = 0.0


class Frozen:
    """Parameters, or parts of them, that training must leave bit-identical.

    Whole parameters are taken out of training (:meth:`exclude`: no gradient, no optimizer state);
    partly frozen ones are restored after every optimizer step (a gradient mask is not enough:
    AdamW's decoupled weight decay would still shrink them).
    """

    def __init__(self) -> None:
        self.whole: list[torch.nn.Parameter] = []
        self.parts: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def add(self, param: torch.nn.Parameter, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self.whole.append(param)
        else:
            self.parts.append((param, mask, param.detach()[mask].clone()))

    def exclude(self, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """``params`` without the wholly frozen ones, which stop requiring gradients."""
        for param in self.whole:
            param.requires_grad_(False)
        ids = {id(p) for p in self.whole}
        return [p for p in params if id(p) not in ids]

    def restore(self) -> None:
        with torch.no_grad():
            for param, mask, value in self.parts:
                param.data[mask] = value


def frozen_parts(model: LlavaForConditionalGeneration, layers: tuple[int, int, int] = (0, 1, READOUT_LAYER)) -> Frozen:
    """The compiled pieces: input rows, projector, tower, layer 0, layer 1's norm, heads 0-2 and its
    writes to reserved dimensions, layer 2's norms, head 0, readout units and its heads' reserved writes.

    ``layers``: where the circuit's layers 0, 1 and 2 are in ``model`` (toy-pvit inserts layers after layer 0).
    """
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    frozen = Frozen()
    lm = model.model.language_model
    frozen.add(lm.embed_tokens.weight)
    for p in [*model.model.multi_modal_projector.parameters(), *model.model.vision_tower.parameters(), *lm.layers[layers[0]].parameters()]:
        frozen.add(p)
    l1 = lm.layers[layers[1]]
    frozen.add(l1.input_layernorm.weight)
    for proj in (l1.self_attn.q_proj, l1.self_attn.k_proj, l1.self_attn.v_proj):
        mask = torch.zeros_like(proj.weight, dtype=torch.bool)
        mask[: COMPILED_HEADS * head_dim] = True
        frozen.add(proj.weight, mask)
    mask = torch.zeros_like(l1.self_attn.o_proj.weight, dtype=torch.bool)
    mask[:, : COMPILED_HEADS * head_dim] = True
    mask[:FREE_START] = True
    frozen.add(l1.self_attn.o_proj.weight, mask)
    mask = torch.zeros_like(l1.mlp.down_proj.weight, dtype=torch.bool)
    mask[:FREE_START] = True
    frozen.add(l1.mlp.down_proj.weight, mask)
    # layer 2: norms, head 0, the learnt heads' writes to reserved dimensions, the readout units
    l2 = lm.layers[layers[2]]
    frozen.add(l2.input_layernorm.weight)
    frozen.add(l2.post_attention_layernorm.weight)
    for proj in (l2.self_attn.q_proj, l2.self_attn.k_proj, l2.self_attn.v_proj):
        mask = torch.zeros_like(proj.weight, dtype=torch.bool)
        mask[:head_dim] = True
        frozen.add(proj.weight, mask)
    mask = torch.zeros_like(l2.self_attn.o_proj.weight, dtype=torch.bool)
    mask[:, :head_dim] = True
    mask[:FREE_START] = True
    frozen.add(l2.self_attn.o_proj.weight, mask)
    n = len(readout_units(CircuitConfig()))
    for proj in (l2.mlp.gate_proj, l2.mlp.up_proj):
        mask = torch.zeros_like(proj.weight, dtype=torch.bool)
        mask[:n] = True
        frozen.add(proj.weight, mask)
    mask = torch.zeros_like(l2.mlp.down_proj.weight, dtype=torch.bool)
    mask[:, :n] = True
    frozen.add(l2.mlp.down_proj.weight, mask)
    return frozen


def code_targets(scenes: Sequence[Scene], hidden: int, grid: int, cfg: CircuitConfig) -> torch.Tensor:
    """:func:`image_targets` of ``scenes`` (their patch labels on a ``grid`` x ``grid`` raster)."""
    labels = torch.stack([torch.from_numpy(patch_labels(s, grid)) for s in scenes])
    return image_targets(labels, [s.background for s in scenes], hidden, cfg)


@torch.no_grad()
def match_values(model: LlavaForConditionalGeneration, encoder: SampleEncoder, samples: Sequence[ToySample], bank: torch.Tensor,
                 cfg: CircuitConfig, batch_size: int = 50) -> list[float]:
    """The MATCH dimension after layer 1 at each prompt's last position (about 1: a patch matches)."""
    seen: dict[str, torch.Tensor] = {}
    handle = model.model.language_model.layers[1].register_forward_hook(
        lambda module, args, output: seen.__setitem__("h", output[0] if isinstance(output, tuple) else output))
    out: list[float] = []
    try:
        for start in range(0, len(samples), batch_size):
            items = [encoder(s, with_answer=False) for s in samples[start : start + batch_size]]
            forward_hidden(model, encoder, items, bank)
            last = torch.tensor([len(e.ids) - 1 for e in items])
            out.extend((seen["h"][torch.arange(len(items)), last, MATCH] / cfg.row_scale).tolist())
    finally:
        handle.remove()
    return out


def sweep_grid(cfg: Any, grid: dict[str, Sequence[float]], recompile: Callable[[], None], score: Callable[[], float],
               log: Callable[[str], None], label: str) -> dict[str, Any]:
    """Set every combination of ``grid`` (``cfg`` field -> candidates) on ``cfg``, ``recompile()``, ``score()``;
    keep the best (ties go to the first candidate of each field), recompile with it and return it with the sweep."""
    sweep = {}
    for values in itertools.product(*grid.values()):
        for name, value in zip(grid, values):
            setattr(cfg, name, value)
        recompile()
        key = ",".join(f"{name}={value}" for name, value in zip(grid, values))
        sweep[key] = (values, score())
        log(f"{label} {key}: MATCH accuracy {sweep[key][1]:.3f}")
    best = max(sweep.values(), key=lambda item: item[1])[0]
    for name, value in zip(grid, best):
        setattr(cfg, name, value)
    recompile()
    return {**dict(zip(grid, best)), "sweep": {key: round(score, 4) for key, (_, score) in sweep.items()}}


def calibrate_circuit(model: LlavaForConditionalGeneration, encoder: SampleEncoder, samples: Sequence[ToySample], bank: torch.Tensor,
                        cfg: CircuitConfig, grid: dict[str, Sequence[float]], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Pick the circuit's free numbers (``grid``: CircuitConfig field -> candidates, e.g. threshold,
    size_weight) by yes/no accuracy of MATCH > 0.5 on ``samples`` (training scenes), recompile with
    the best, and return the sweep. Ties go to the first candidate of each field."""

    def score() -> float:
        values = match_values(model, encoder, samples, bank, cfg)
        return sum((v > 0.5) == s.label for v, s in zip(values, samples)) / len(samples)

    return sweep_grid(cfg, grid, lambda: compile_attention(model, cfg), score, log, f"circuit ({len(samples)} training questions)")
