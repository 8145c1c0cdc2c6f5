"""Running the frozen base with concept rows: cached image features, cached prefix keys/values, losses, logits where needed."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers import DynamicCache

from yollava.images import file_sha256, load_rgb
from yollava.base import Base
from yollava.prompts import IGNORE_INDEX


@dataclass(frozen=True)
class ImageRef:
    """An image on disk plus a variant name (``""`` or ``"hflip"``): each variant is cached separately."""

    path: str
    variant: str = ""

    def load(self) -> Image.Image:
        image = load_rgb(self.path)
        return ImageOps.mirror(image) if self.variant == "hflip" else image


def pixel_values(base: Base, images: Sequence[Image.Image]) -> torch.Tensor:
    """Preprocess PIL images with the base's image processor."""
    values = base.image_processor(list(images), return_tensors="pt")["pixel_values"]
    return values.to(device=base.device, dtype=base.dtype)


def image_features(base: Base, values: torch.Tensor) -> torch.Tensor:
    """Vision tower + projector output, ``[n_images, num_image_tokens, hidden]``.

    transformers 5 returns an output object whose ``pooler_output`` is a list per image;
    4.57 returns the tensor itself.
    """
    config = base.model.config
    out = base.model.model.get_image_features(
        pixel_values=values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    if hasattr(out, "pooler_output"):
        out = out.pooler_output
    if isinstance(out, (list, tuple)):
        out = torch.stack(list(out))
    return out


class FeatureCache:
    """Image features keyed by (file sha256, variant), computed once and reused every epoch.

    The vision tower and projector are frozen, so their output for an image never changes; at
    LLaVA-1.5 scale recomputing them costs more than the whole language-model step on a CPU.
    Features live on ``storage`` (CPU by default: 576x5120 bf16 = 5.9 MB per image for 13B).
    """

    def __init__(self, base: Base, enabled: bool = True, storage: str = "cpu"):
        self.base = base
        self.enabled = enabled
        self.storage = storage
        self._features: dict[tuple[str, str], torch.Tensor] = {}
        self._hashes: dict[str, str] = {}
        self.computed = 0

    def _key(self, ref: ImageRef) -> tuple[str, str]:
        if ref.path not in self._hashes:
            self._hashes[ref.path] = file_sha256(ref.path)
        return self._hashes[ref.path], ref.variant

    @torch.no_grad()
    def get(self, refs: Sequence[ImageRef]) -> torch.Tensor:
        """Features for ``refs`` in order, ``[len(refs), tokens, hidden]`` on the model's device."""
        if not self.enabled:
            self.computed += len(refs)
            return image_features(self.base, pixel_values(self.base, [r.load() for r in refs]))
        keys = [self._key(r) for r in refs]
        missing = [(k, r) for k, r in dict(zip(keys, refs)).items() if k not in self._features]
        if missing:
            feats = image_features(self.base, pixel_values(self.base, [r.load() for _, r in missing]))
            self.computed += len(missing)
            for (key, _), value in zip(missing, feats):
                self._features[key] = value.to(self.storage)
        return torch.stack([self._features[k] for k in keys]).to(self.base.device)

    def __len__(self) -> int:
        return len(self._features)


@dataclass
class Batch:
    """Right-padded token ids, labels and attention mask, plus the images in order of appearance."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    images: list[ImageRef]


def collate(items: Sequence[tuple[list[int], list[int], list[ImageRef]]], pad_id: int, device: torch.device) -> Batch:
    """Pad (ids, labels, images) triples into one batch."""
    length = max(len(ids) for ids, _, _ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    images: list[ImageRef] = []
    for row, (ids, labs, refs) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
        images.extend(refs)
    return Batch(input_ids.to(device), labels.to(device), mask.to(device), images)


def input_embeddings(base: Base, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings (concept rows included) with image features scattered into ``<image>`` slots."""
    embeds = base.model.get_input_embeddings()(input_ids)
    if features is None:
        return embeds
    mask = (input_ids == base.image_token_id).unsqueeze(-1)
    if int(mask.sum()) != features.shape[0] * features.shape[1]:
        raise ValueError(f"{int(mask.sum())} image positions but features for {features.shape[0]}x{features.shape[1]}")
    return embeds.masked_scatter(mask.expand_as(embeds), features.to(embeds.dtype))


def hidden_states(base: Base, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Last hidden states of the language model (no output head applied)."""
    embeds = input_embeddings(base, input_ids, features)
    out = base.model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def _loss_from_hidden(base: Base, hidden: torch.Tensor, labels: torch.Tensor, head_at_supervised_only: bool) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised tokens, from the hidden states of the same positions."""
    targets = labels[:, 1:]
    hidden = hidden[:, :-1]
    head = base.model.get_output_embeddings()
    if head_at_supervised_only:
        where = targets != IGNORE_INDEX
        logits = head(hidden[where])
        return F.cross_entropy(logits.float(), targets[where])
    logits = head(hidden)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def supervised_loss(base: Base, batch: Batch, cache: "FeatureCache | PrefixCache", head_at_supervised_only: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens.

    Fast path: cached image features, and the output head applied only at the positions that
    predict a supervised token (a few dozen of ~600; the head is the largest matmul at 32k vocab).
    With a :class:`PrefixCache` the language model runs on the suffix only (soft prompt, question,
    answer: ~50 of ~660 tokens at LLaVA-1.5 scale), attending to the frozen prefix's stored keys and
    values; loss and gradients equal the full forward's (tests/test_prefix_cache.py).
    ``head_at_supervised_only=False`` computes full logits, as the reference loop does.
    """
    if isinstance(cache, PrefixCache):
        suffix = suffix_forward(base, cache, batch.input_ids, batch.attention_mask, batch.images, batch.labels)
        return _loss_from_hidden(base, suffix.hidden, suffix.labels, head_at_supervised_only)
    features = cache.get(batch.images) if batch.images else None
    hidden = hidden_states(base, batch.input_ids, batch.attention_mask, features)
    return _loss_from_hidden(base, hidden, batch.labels, head_at_supervised_only)


def reference_loss(base: Base, batch: Batch) -> torch.Tensor:
    """The reference-style step: transformers' full forward with pixel values and full logits.

    Recomputes the vision tower every step and applies the head at every position; kept for
    benchmarking against :func:`supervised_loss` and as a cross-check of the fast path.
    """
    values = pixel_values(base, [r.load() for r in batch.images]) if batch.images else None
    out = base.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=values, use_cache=False)
    logits = out.logits[:, :-1]
    targets = batch.labels[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


# One scoring forward takes at most SCORE_BATCH prompts and at most SCORE_BATCH_BYTES of stacked
# prefix keys/values (LLaVA-1.5-13B in bf16: 4 images of 0.5 GB).
SCORE_BATCH = 16
SCORE_BATCH_BYTES = 2 * 2**30


@torch.no_grad()
def next_token_logprobs(
    base: Base, prompts: Sequence[list[int]], refs: Sequence[Sequence[ImageRef]], cache: "FeatureCache | PrefixCache",
    batch_size: int = SCORE_BATCH,
) -> torch.Tensor:
    """Log-probabilities of the token following each prompt, ``[len(prompts), vocab]`` (float32).

    Prompts are scored ``batch_size`` at a time (right-padded; causal attention keeps each row
    exact). With a :class:`PrefixCache`, an image's prefix is computed once and shared by every
    prompt, concept, method and epoch that asks about it.
    """
    if not prompts:
        return torch.empty(0)
    if isinstance(cache, PrefixCache):
        per_row = cache.entry_bytes(max(len(p) for p in prompts))
        batch_size = max(1, min(batch_size, SCORE_BATCH_BYTES // max(1, per_row)))
    pad = base.tokenizer.pad_token_id or 0
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = [
            (list(ids), [IGNORE_INDEX] * len(ids), list(images))
            for ids, images in zip(prompts[start : start + batch_size], refs[start : start + batch_size])
        ]
        batch = collate(chunk, pad, base.device)
        if isinstance(cache, PrefixCache):
            suffix = suffix_forward(base, cache, batch.input_ids, batch.attention_mask, batch.images)
            hidden, mask = suffix.hidden, suffix.attention_mask
        else:
            features = cache.get(batch.images) if batch.images else None
            hidden = hidden_states(base, batch.input_ids, batch.attention_mask, features)
            mask = batch.attention_mask
        final = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
        logits = base.model.get_output_embeddings()(final)
        rows.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.cat(rows)


def to_path_refs(paths: Sequence[str | Path]) -> list[ImageRef]:
    return [ImageRef(str(p)) for p in paths]


def generation_inputs(base: Base, ids: list[int], refs: Sequence[ImageRef], cache: FeatureCache) -> dict[str, Any]:
    """``inputs_embeds`` + attention mask for ``model.generate`` (cached image features reused)."""
    input_ids = torch.tensor([ids], device=base.device)
    features = cache.get(list(refs)) if refs else None
    embeds = input_embeddings(base, input_ids, features)
    return {"inputs_embeds": embeds, "attention_mask": torch.ones_like(input_ids)}


# ----------------------------------------------------------------------------- cached prefix keys/values


def prefix_length(base: Base, input_ids: Sequence[int], labels: Sequence[int] | None = None) -> int:
    """How many leading tokens of a sequence form its frozen prefix (keys/values reusable from a cache).

    The prefix ends before the first concept token (its row is trainable) and at the end of the last
    image block before that, so an image's prefix (system text, ``USER:``, the image tokens) is the
    same for every question, concept and method; text-only samples share the system-text prefix.
    The position predicting the first supervised token, and the last position, stay in the suffix:
    the suffix's hidden states are then all that the loss and the next-token logits need.
    """
    n = len(input_ids)
    cut = n - 1
    first_concept = base.base_tokenizer_size
    for index, token in enumerate(input_ids):
        if token >= first_concept:
            cut = min(cut, index)
            break
    if labels is not None:
        for index, label in enumerate(labels):
            if label != IGNORE_INDEX:
                cut = min(cut, index - 1)
                break
    image = base.image_token_id
    end_of_images = None
    index = 0
    while index < cut:
        if input_ids[index] != image:
            index += 1
            continue
        stop = index
        while stop < n and input_ids[stop] == image:
            stop += 1
        if stop > cut:  # never split an image block: the whole block goes to the suffix
            cut = index
            break
        end_of_images = stop
        index = stop
    if end_of_images is not None:
        cut = min(cut, end_of_images)
    return max(cut, 0)


@functools.lru_cache(maxsize=None)
def _forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def run_language_model(
    base: Base, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    cache: DynamicCache | None, cache_position: torch.Tensor,
) -> torch.Tensor:
    """The language model over ``embeds``, after the keys/values already in ``cache``; last hidden states.

    transformers 5.x names the cache argument ``cache`` (``past_key_values`` is a deprecated alias)
    and finds the slots from the cache; 4.57 takes ``past_key_values`` and ``cache_position``.
    ``position_ids`` are each token's logical position (RoPE), ``cache_position`` its slot in the
    cache; they differ where a row's prefix or suffix is padded. ``attention_mask`` covers every slot.
    """
    model = base.model.model.language_model
    names = _forward_parameters(type(model))
    kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": cache is not None}
    if cache is not None:
        kwargs["cache" if "cache" in names else "past_key_values"] = cache
    if "cache_position" in names:
        kwargs["cache_position"] = cache_position
    return model(**kwargs).last_hidden_state


def layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a filled cache: ``cache.layers`` on 4.56+ and 5.x, else the older lists."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def cache_from_tensors(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A fresh ``DynamicCache`` holding copies of ``layers`` (``[batch, kv_heads, tokens, head_dim]`` each).

    A cache grows in place during a forward, so every step builds a new one from the stored
    tensors; ``update`` is the filling method that transformers 4.57 and 5.x both have.
    """
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


@dataclass
class SuffixOutput:
    """The language model's output over the suffixes of a batch (what follows each row's cached prefix).

    ``hidden`` is ``[batch, suffix width, hidden]``; ``input_ids``/``labels``/``attention_mask`` are
    the padded suffixes; ``full_mask`` covers prefix and suffix slots; ``cache`` holds both parts'
    keys/values (decoding continues from it); ``prefix_lengths`` are the rows' real prefix lengths.
    """

    hidden: torch.Tensor
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    full_mask: torch.Tensor
    cache: DynamicCache
    prefix_lengths: list[int]
    suffix_lengths: list[int]


def _split_rows(base: Base, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Sequence[ImageRef], labels: torch.Tensor | None):
    """Per row: (ids, labels, prefix length, images in the prefix, images in the suffix)."""
    ids_rows = input_ids.tolist()
    valid = attention_mask.sum(1).tolist()
    label_rows = labels.tolist() if labels is not None else None
    image_id, per_image = base.image_token_id, base.num_image_tokens
    remaining = list(images)
    rows = []
    for row, ids in enumerate(ids_rows):
        ids = ids[: valid[row]]
        labs = label_rows[row][: valid[row]] if label_rows is not None else None
        n_images = sum(1 for t in ids if t == image_id) // per_image
        refs, remaining = remaining[:n_images], remaining[n_images:]
        cut = prefix_length(base, ids, labs)
        in_prefix = sum(1 for t in ids[:cut] if t == image_id) // per_image
        rows.append((ids, labs, cut, refs[:in_prefix], refs[in_prefix:]))
    if remaining:
        raise ValueError(f"{len(remaining)} image(s) more than the batch's <image> blocks")
    return rows


def suffix_forward(
    base: Base, cache: "PrefixCache", input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Sequence[ImageRef],
    labels: torch.Tensor | None = None, pad_suffix_left: bool = False,
) -> SuffixOutput:
    """Run the language model on each row's suffix, attending to its prefix's keys/values from ``cache``.

    Args:
        base: the frozen base with concepts attached.
        cache: where prefixes come from (computed on a miss).
        input_ids / attention_mask / labels: a right-padded batch of whole sequences (:func:`collate`).
        images: the batch's images in order of appearance, rows in order.
        pad_suffix_left: pad suffixes on the left, so every row's last token is in the last column
            (generation), instead of on the right (training, scoring).

    Rows may have prefixes of different lengths (an image's and the text-only one): shorter ones
    are left-padded and masked, and each token keeps its own position, so every row is exact.
    """
    rows = _split_rows(base, input_ids, attention_mask, images, labels)
    device = base.device
    prefix_lengths = [cut for _, _, cut, _, _ in rows]
    suffix_lengths = [len(ids) - cut for ids, _, cut, _, _ in rows]
    n, width = len(rows), max(suffix_lengths)
    pad = base.tokenizer.pad_token_id or 0
    suffix_ids = torch.full((n, width), pad, dtype=torch.long)
    suffix_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    suffix_mask = torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    suffix_refs: list[ImageRef] = []
    for row, (ids, labs, cut, _, after) in enumerate(rows):
        length = len(ids) - cut
        cols = slice(width - length, width) if pad_suffix_left else slice(0, length)
        suffix_ids[row, cols] = torch.tensor(ids[cut:])
        if labs is not None:
            suffix_labels[row, cols] = torch.tensor(labs[cut:])
        suffix_mask[row, cols] = 1
        positions[row, cols] = torch.arange(cut, cut + length)
        suffix_refs.extend(after)
    prefix_width = max(prefix_lengths)
    if prefix_width:
        layers, prefix_mask = cache.lookup([(ids[:cut], before) for ids, _, cut, before, _ in rows])
        past = cache_from_tensors(layers)
        del layers
    else:  # nothing cached to attend to; the fresh cache still collects the suffix's keys/values for decoding
        past, prefix_mask = DynamicCache(), torch.zeros((n, 0), dtype=torch.long, device=device)
    suffix_ids, suffix_labels, suffix_mask, positions = (t.to(device) for t in (suffix_ids, suffix_labels, suffix_mask, positions))
    features = cache.get(suffix_refs) if suffix_refs else None
    embeds = input_embeddings(base, suffix_ids, features)
    full_mask = torch.cat([prefix_mask, suffix_mask], dim=1)
    slots = torch.arange(prefix_width, prefix_width + width, device=device)
    hidden = run_language_model(base, embeds, full_mask, positions, past, slots)
    return SuffixOutput(hidden, suffix_ids, suffix_labels, suffix_mask, full_mask, past, prefix_lengths, suffix_lengths)


PrefixKey = tuple[tuple[int, ...], tuple[tuple[str, str], ...]]
# A prefix forward computes at most this many bytes of entries at once (LLaVA-1.5-13B bf16: 2 images).
PREFIX_BATCH_BYTES = 2**30


@dataclass
class PrefixCacheStats:
    """What a :class:`PrefixCache` did: prefix forwards run (rows), lookups served, entries and bytes per tier."""

    computed: int = 0
    hits: int = 0
    on_device: int = 0
    on_cpu: int = 0
    not_kept: int = 0
    device_bytes: int = 0
    cpu_bytes: int = 0


class PrefixCache:
    """Keys/values of the frozen prompt prefix, computed once per (prefix tokens, images) and reused.

    The prefix (system text, ``USER:``, the image tokens: everything before the soft prompt) depends
    on no trainable row, so under causal attention its keys and values are the same at every step,
    epoch, concept and method. An entry holds ``layers x 2 x prefix tokens x kv width`` numbers:
    LLaVA-1.5-13B in bf16, 40 x 2 x ~610 x 5120 x 2 B = 0.50 GB per image; the toy LLaVA in fp32,
    4 x 2 x 95 x 256 x 4 B = 0.8 MB.

    Memory policy: entries stay on the model's device while ``device_gb`` lasts; then in host
    memory (pinned, copied to the device at each use) while ``cpu_gb`` lasts, when the device is
    not the CPU itself; past both, a prefix is recomputed (no grad) at each use. :meth:`warm` fills
    the cache most-used first, so the positives (asked ~40 times an epoch) are the ones kept close.

    It wraps a :class:`FeatureCache` and answers ``get`` like one, so it can be passed wherever a
    FeatureCache is; :func:`supervised_loss`, :func:`next_token_logprobs` and
    :func:`yollava.chat.greedy_generate_batch` take the suffix-only path when given one.
    """

    def __init__(self, base: Base, features: FeatureCache | None = None, device_gb: float = 4.0, cpu_gb: float = 32.0, prefix_batch: int = 8):
        self.base = base
        self.features = features if features is not None else FeatureCache(base)
        self.device_budget = int(device_gb * 2**30)
        self.cpu_budget = 0 if base.device.type == "cpu" else int(cpu_gb * 2**30)
        self.prefix_batch = prefix_batch
        self.stats = PrefixCacheStats()
        self._entries: dict[PrefixKey, torch.Tensor] = {}

    # a FeatureCache's interface, so code that only needs image features takes either
    @property
    def enabled(self) -> bool:
        return self.features.enabled

    @property
    def computed(self) -> int:
        return self.features.computed

    def get(self, refs: Sequence[ImageRef]) -> torch.Tensor:
        return self.features.get(refs)

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, prefix_ids: Sequence[int], refs: Sequence[ImageRef]) -> PrefixKey:
        return tuple(prefix_ids), tuple(self.features._key(r) for r in refs)

    def entry_bytes(self, prefix_tokens: int) -> int:
        """Bytes of one entry of ``prefix_tokens`` tokens: layers x 2 x tokens x kv heads x head size x element size."""
        text = self.base.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        return text.num_hidden_layers * 2 * prefix_tokens * kv_heads * head_dim * torch.finfo(self.base.dtype).bits // 8

    @torch.no_grad()
    def _compute(self, items: Sequence[tuple[Sequence[int], Sequence[ImageRef]]]) -> list[torch.Tensor]:
        """Prefix keys/values, ``[layers, 2, kv_heads, tokens, head_dim]`` per item; equal lengths run batched."""
        out: list[torch.Tensor | None] = [None] * len(items)
        by_length: dict[int, list[int]] = {}
        for index, (ids, _) in enumerate(items):
            by_length.setdefault(len(ids), []).append(index)
        device = self.base.device
        for length, indices in by_length.items():
            # the forward's cache and the entries cut from it hold two copies: cap the rows per forward by bytes
            rows = max(1, min(self.prefix_batch, PREFIX_BATCH_BYTES // max(1, self.entry_bytes(length))))
            for start in range(0, len(indices), rows):
                chunk = indices[start : start + rows]
                ids = torch.tensor([list(items[i][0]) for i in chunk], device=device)
                refs = [r for i in chunk for r in items[i][1]]
                features = self.features.get(refs) if refs else None
                embeds = input_embeddings(self.base, ids, features)
                past = DynamicCache()
                positions = torch.arange(length, device=device).unsqueeze(0).expand(len(chunk), -1)
                run_language_model(self.base, embeds, torch.ones_like(ids), positions, past, torch.arange(length, device=device))
                layers = layer_tensors(past)
                for row, index in enumerate(chunk):
                    out[index] = torch.stack([torch.stack([k[row], v[row]]) for k, v in layers])  # [L, 2, h, T, d], one copy
                del layers, past
                self.stats.computed += len(chunk)
        return out  # type: ignore[return-value]

    def _keep(self, key: PrefixKey, entry: torch.Tensor) -> None:
        size = entry.numel() * entry.element_size()
        if self.stats.device_bytes + size <= self.device_budget:
            self._entries[key] = entry
            self.stats.device_bytes += size
            self.stats.on_device += 1
        elif self.stats.cpu_bytes + size <= self.cpu_budget:
            host = entry.to("cpu")
            try:  # pinned pages copy to the device asynchronously; plain ones still work if pinning is refused
                host = host.pin_memory()
            except RuntimeError:
                pass
            self._entries[key] = host
            self.stats.cpu_bytes += size
            self.stats.on_cpu += 1
        else:
            self.stats.not_kept += 1

    def warm(self, items: Sequence[tuple[Sequence[int], Sequence[ImageRef]]]) -> None:
        """Compute the prefixes of ``items`` ((prefix ids, prefix images) pairs), most used first, keeping what the budgets allow."""
        counts: dict[PrefixKey, int] = {}
        first: dict[PrefixKey, tuple[Sequence[int], Sequence[ImageRef]]] = {}
        for ids, refs in items:
            key = self.key(ids, refs)
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, (ids, refs))
        todo = [k for k in sorted(counts, key=lambda k: -counts[k]) if k not in self._entries]
        for start in range(0, len(todo), self.prefix_batch):
            keys = todo[start : start + self.prefix_batch]
            for key, entry in zip(keys, self._compute([first[k] for k in keys])):
                self._keep(key, entry)

    def lookup(self, items: Sequence[tuple[Sequence[int], Sequence[ImageRef]]]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Stacked prefix keys/values of a batch, per layer ``[batch, kv_heads, longest prefix, head_dim]``, and their mask.

        Shorter prefixes are left-padded with zeros that the returned ``[batch, longest]`` mask hides.
        Missing prefixes are computed (one batched forward per length) and kept as the budgets allow.
        """
        keys = [self.key(ids, refs) for ids, refs in items]
        entries: list[torch.Tensor | None] = [self._entries.get(k) for k in keys]
        missing: dict[PrefixKey, int] = {}
        for index, (key, entry) in enumerate(zip(keys, entries)):
            if entry is None:
                missing.setdefault(key, index)
            else:
                self.stats.hits += 1
        if missing:
            fresh = dict(zip(missing, self._compute([items[i] for i in missing.values()])))
            for key, entry in fresh.items():
                self._keep(key, entry)
            entries = [fresh[k] if e is None else e for k, e in zip(keys, entries)]
        device = self.base.device
        lengths = [e.shape[3] for e in entries]  # type: ignore[union-attr]
        width = max(lengths)
        mask = torch.zeros((len(entries), width), dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            mask[row, width - length :] = 1
        layers = []
        for layer in range(entries[0].shape[0]):  # type: ignore[union-attr]
            if len(entries) == 1:
                kv = entries[0][layer].to(device, non_blocking=True).unsqueeze(1)  # type: ignore[index]
            else:
                _, heads, _, head_dim = entries[0][layer].shape  # type: ignore[index]
                kv = entries[0].new_zeros((2, len(entries), heads, width, head_dim), device=device)  # type: ignore[union-attr]
                for row, entry in enumerate(entries):
                    kv[:, row, :, width - lengths[row] :] = entry[layer].to(device, non_blocking=True)  # type: ignore[index]
            layers.append((kv[0], kv[1]))
        return layers, mask


def split_lengths(base: Base, input_ids: Sequence[int], labels: Sequence[int] | None = None) -> tuple[int, int]:
    """(prefix length, suffix length) of a sequence: what batching buckets on."""
    cut = prefix_length(base, input_ids, labels)
    return cut, len(input_ids) - cut


def make_cache(
    base: Base, config: Any, warm: Sequence[tuple[Sequence[int], Sequence[int] | None, Sequence[ImageRef]]] = (),
) -> "FeatureCache | PrefixCache":
    """The cache a run passes around, from ``train.*`` settings: a :class:`PrefixCache` over a :class:`FeatureCache`, or the latter alone.

    Args:
        base: the frozen base.
        config: a :class:`yollava.config.TrainConfig` (``prefix_cache``, ``prefix_cache_gb``,
            ``prefix_cache_cpu_gb``, ``cache_image_features``).
        warm: (ids, labels, images) of the sequences the run will train on; their prefixes are
            computed now, most used first, so the budget keeps the most used ones close.
    """
    features = FeatureCache(base, enabled=config.cache_image_features)
    if not config.prefix_cache:
        return features
    cache = PrefixCache(base, features, device_gb=config.prefix_cache_gb, cpu_gb=config.prefix_cache_cpu_gb)
    if warm:
        cache.warm(prefix_items(base, warm))
    return cache


def prefix_items(base: Base, sequences: Sequence[tuple[Sequence[int], Sequence[int] | None, Sequence[ImageRef]]]) -> list[tuple[list[int], list[ImageRef]]]:
    """(prefix ids, prefix images) of each (ids, labels, images) sequence, as :meth:`PrefixCache.warm` takes them."""
    out = []
    for ids, labels, refs in sequences:
        cut = prefix_length(base, ids, labels)
        in_prefix = sum(1 for t in ids[:cut] if t == base.image_token_id) // base.num_image_tokens
        out.append((list(ids[:cut]), list(refs[:in_prefix])))
    return out
