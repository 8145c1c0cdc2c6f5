"""The toy LLaVA: word-level tokenizer, tiny LlavaConfig over the toy CLIP, pretraining data mix and stages, quality gates, loader."""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
)
from transformers import LlavaForConditionalGeneration

from yollava.errors import YollavaError
from yollava.prompts import (
    IGNORE_INDEX,
    ChatFormat,
    Turn,
    encode,
    load_template,
    render,
    templates_dir,
)
from yollava.toyworld.benchmark import plan_concepts
from yollava.toyworld.clip import images_to_tensor
from yollava.toyworld.render import render_scene
from yollava.toyworld.toy_llava import (  # noqa: F401  (re-exported for the pretraining script and tests)
    BOS,
    CONFIG_FILE,
    EOS,
    FORMAT,
    FORMAT_VERSION,
    IMAGE,
    MODEL_ID,
    TOY_LLAVA_ASSETS,
    PAD,
    QUALITY_FILE,
    README_FILE,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    UNK,
    WEIGHTS_FILE,
    ToyLlavaArch,
    llava_config,
    load_toy_base,
    save_toy_llava,
    set_generation_defaults,
    toy_llava_folder,
    vision_config,
    wrap_tokenizer,
)
from yollava.toyworld.world import (
    ACCESSORIES,
    ACCESSORY_COLORS,
    ATTRIBUTES,
    BACKGROUNDS,
    COUNT_WORDS,
    FINE_ATTRIBUTES,
    TEXT_QUESTIONS,
    VISUAL_QUESTIONS,
    Scene,
    Subject,
    article,
    caption,
    describe_subject,
    item_rng,
    sample_scene,
    sample_subject,
    side_of,
    variant,
    vocabulary,
)


# Placeholder names for subjects introduced by a description during pretraining ("<x07> is a red
# round pet. Is <x07> in this photo?"). A concept called x00..x31 would clash and is refused by
# yollava.concept.attach with a rename hint.
NAME_TOKENS = tuple(f"<x{i:02d}>" for i in range(32))
# names standing in for a concept's latent tokens in the "bound" task's soft-prompt-shaped prefix
BOUND_LATENTS = 16
# Names of fixed pretraining identities ("known subjects"): each always means the same subject, so
# "Is <p07> in this photo?" is learnable image by image, and the model learns what a concept
# identifier is for: an embedding that says what to look for (see DataMix.named).
KNOWN_TOKENS = tuple(f"<p{i:02d}>" for i in range(64))
# Words, "'s" (one token, so "Riley's" decodes back to "Riley's"), and single punctuation marks.
WORD_PATTERN = r"'s|\w+|[^\w\s]"
_TEMPLATE_FIELD = re.compile(r"\{\w+\}")

STAND_IN = {"person": "Riley", "other": "this subject"}
CAPTION_QUESTIONS = (
    "Describe this photo.",
    "What is in this image?",
    "Give a short caption for this picture.",
    "What do you see in this photo?",
)
PRESENCE_QUESTIONS = (
    "Is there {desc} in this photo?",
    "Can you see {desc} in this image?",
    "Does this picture show {desc}?",
    "Is there {desc} anywhere in this image?",
    "Is there {desc} in this photo? Answer with a single word or phrase.",
)
PRESENCE_ANSWERS = {True: ("Yes.", "Yes, there is one."), False: ("No.", "No, there is none.")}
CATEGORY_ANSWERS = {True: "Yes.", False: "No."}
# Subjects in a multi-subject scene are named by two attributes ("the red pet"); the second is
# always the family except when the family itself is asked.
REFERENCE_PAIRS = (("color", "family"), ("pattern", "family"), ("size", "family"), ("color", "shape"))


# ----------------------------------------------------------------------------- answers about a subject


def _a(words: str) -> str:
    return f"{article(words)} {words}"


def _accessory_phrase(subject: Subject) -> str:
    return _a(f"{subject.accessory_color} {subject.accessory}")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def conversation_answer(subject: Subject, question: str, name: str) -> str:
    """The toy world's answer to a templates/conversation.yaml question about ``subject`` called ``name``.

    Args:
        subject: the subject asked about.
        question: the question template exactly as in conversation.yaml (with ``{name}``).
        name: how the subject is called ("this subject", "Riley", or an identifier like ``<x03>``).

    Returns:
        One sentence that names the subject the way the question did (so yollava can swap the
        stand-in for the concept identifier) and states the attributes asked about.

    Raises:
        YollavaError: a question the toy world has no answer rule for (conversation.yaml changed).
    """
    s, cap = name, _capital(name)
    acc = subject.accessory != "none"
    looks = f"{subject.color} and {subject.pattern}"
    rules = {
        "What colour is {name}?": f"{cap} is {subject.color}.",
        "What shape is {name}?": f"{cap} is {subject.shape}.",
        "What is {name} made of or covered with?": f"{cap} is covered with {_a(f'{subject.pattern} {subject.color}')} surface.",
        "What kind of thing is {name}?": f"{cap} is {_a(subject.family)}.",
        "How big is {name}?": f"{cap} is {subject.size}.",
        "What pattern or markings does {name} have?": f"{cap} is {subject.pattern}.",
        "Does {name} wear or carry any accessory?": f"Yes, {s} has {_accessory_phrase(subject)}." if acc else f"No, {s} has no accessory.",
        "What does the surface of {name} look like?": f"The surface of {s} is {looks}.",
        "Describe the overall appearance of {name}.": f"{cap} is {describe_subject(subject)}.",
        "What is the most distinctive feature of {name}?": f"{cap} has {_accessory_phrase(subject)}." if acc else f"{cap} is {looks}.",
        "What colour is {name}'s hair?": f"{cap}'s hair is {subject.color}.",
        "How would you describe {name}'s hairstyle?": f"{cap}'s hairstyle is {subject.shape} and {subject.pattern}.",
        "What colour are {name}'s eyes?": f"I cannot tell the colour of {s}'s eyes.",
        "Does {name} wear glasses?": f"No, {s} wears {_accessory_phrase(subject)}." if acc else f"No, {s} wears no glasses.",
        "How would you describe {name}'s skin tone?": f"{cap} is {looks}.",
        "About how old does {name} look?": f"{cap} is {_a(subject.size)} person.",
        "Does {name} have a beard or moustache?": f"No, {s} has no beard.",
        "What kind of clothes is {name} wearing?": f"{cap} wears {subject.pattern} {subject.color} clothes"
        + (f" and {_accessory_phrase(subject)}." if acc else "."),
        "How would you describe the shape of {name}'s face?": f"{cap}'s face is {subject.shape}.",
        "What is the most distinctive thing about how {name} looks?": f"{cap} has {_accessory_phrase(subject)}." if acc else f"{cap} is {looks}.",
    }
    if question not in rules:
        raise YollavaError(f"toy LLaVA: no answer rule for conversation question {question!r}; add one in conversation_answer")
    for attribute, template in TEXT_QUESTIONS.items():
        if template == question:
            # the world's question bank asks this exact question too ("What shape is {name}?"):
            # one question must have one answer format, and the benchmark's is the bare word
            return attribute_answer(subject, attribute)
    return rules[question]


def attribute_answer(subject: Subject, attribute: str) -> str:
    """Bare-word answer to a world question (toyworld TEXT_QUESTIONS), e.g. "striped" or "none"."""
    return str(getattr(subject, attribute))


def attribute_question(attribute: str, name: str, subject: Subject) -> str:
    """A world question (TEXT_QUESTIONS) about ``attribute`` of the subject called ``name``."""
    return TEXT_QUESTIONS[attribute].format(name=name, accessory=subject.accessory)


def conversation_bank() -> dict[str, list[str]]:
    """conversation.yaml's question templates per category ("person", "other")."""
    data = load_template("conversation")
    return {category: list(data[category]["questions"]) for category in ("person", "other")}


def category_of(subject: Subject) -> str:
    """The conversation category yollava uses for a subject."""
    return "person" if subject.is_person else "other"


# ----------------------------------------------------------------------------- tokenizer


def split_text(text: str) -> list[str]:
    """The tokenizer's pre-tokenization of a text (template fields like ``{name}`` removed)."""
    return re.findall(WORD_PATTERN, _TEMPLATE_FIELD.sub(" ", text))


def _template_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _template_strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _template_strings(item)]
    return []


def template_words() -> set[str]:
    """Every word of every file in templates/ (system prompt, recognition and conversation phrasings)."""
    words: set[str] = set()
    for path in sorted(templates_dir().glob("*.yaml")):
        for text in _template_strings(yaml.safe_load(path.read_text(encoding="utf-8"))):
            words.update(split_text(text))
    return words


def _data_words() -> set[str]:
    """Words of every answer and question template the pretraining mix can produce."""
    words: set[str] = set()
    texts = [*CAPTION_QUESTIONS, *PRESENCE_QUESTIONS, *TEXT_QUESTIONS.values(), *VISUAL_QUESTIONS.values()]
    texts += [a for answers in PRESENCE_ANSWERS.values() for a in answers]
    texts += ["the subject", "one", "this subject", "Riley", "Describe"]
    rng = random.Random(0)
    bank = conversation_bank()
    for _ in range(400):
        subject = sample_subject(rng)
        texts.append(caption(sample_scene(rng, subject, n_distractors=rng.randint(0, 3))))
        for category, questions in bank.items():
            for question in questions:
                texts.append(conversation_answer(subject, question, STAND_IN[category]))
    for text in texts:
        words.update(split_text(text))
    return words


def required_words() -> list[str]:
    """The toy tokenizer's words: world vocabulary, templates/*.yaml, the data mix, capitalised forms.

    Returns:
        Sorted words (no special tokens, no placeholder names).
    """
    words = set(vocabulary()) | template_words() | _data_words()
    for values in ATTRIBUTES.values():
        words.update(v for v in values)
    words.update(BACKGROUNDS)
    # sentence-initial forms of every word ("Red." as a caption start, "Is" in questions)
    words |= {_capital(w) for w in words}
    return sorted(w for w in words if w not in SPECIAL_TOKENS)


def build_tokenizer(words: Sequence[str]) -> Tokenizer:
    """A word-level ``tokenizers`` tokenizer with offsets, LLaVA's special tokens and the name pool.

    Ids: the five special tokens (``<unk> <s> </s> <pad> <image>``), the placeholder names
    ``<x00>``…, then ``words`` in order. ``<s>`` is prepended by the post-processor. The decoder
    joins words with spaces and glues punctuation back ("Yes, Riley's hat.").
    """
    names = (*NAME_TOKENS, *KNOWN_TOKENS)
    tokens = [*SPECIAL_TOKENS, *names, *[w for w in words if w not in SPECIAL_TOKENS and w not in names]]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # the same kind of AddedToken yollava.concept.attach adds for concept identifiers
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in names])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokens.index(BOS))]
    )
    return tokenizer


def new_model(arch: ToyLlavaArch, tokenizer: Any, clip_model: Any, seed: int) -> LlavaForConditionalGeneration:
    """A fresh toy LLaVA whose vision tower holds the toy CLIP's vision weights (language model random).

    Args:
        arch: language-model size.
        tokenizer: the wrapped toy tokenizer (sets the vocabulary rows and special ids).
        clip_model: the trained open_clip toy CLIP.
        seed: torch seed of the random language model and projector.
    """
    from yollava.toyworld.clip import hf_vision_state_dict

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


# ----------------------------------------------------------------------------- scenes and features


def excluded_identities(seeds: Sequence[int] = (0,), max_concepts: int = 20) -> frozenset[Subject]:
    """Identities of every benchmark planned from ``seeds`` with 1..``max_concepts`` concepts.

    A benchmark with fewer concepts draws another lookalike than the 20-concept one, so all sizes
    are excluded, not only the default (a superset of the toy CLIP's exclusion).
    """
    return frozenset(spec.subject for seed in seeds for n in range(1, max_concepts + 1) for spec in plan_concepts(n, seed))


def draw_scene(seed: int, stream: str, index: int, image_size: int, exclude: frozenset, n_distractors: int | None = None) -> Scene:
    """One world scene (0-3 distractors unless given) from its own seeded random source."""
    rng = item_rng(seed, stream, index)
    main = sample_subject(rng, exclude=exclude)
    count = rng.randint(0, 3) if n_distractors is None else n_distractors
    return sample_scene(rng, main, image_size=image_size, n_distractors=count, exclude=exclude)


def known_identities(seed: int, exclude: frozenset) -> list[Subject]:
    """The subjects behind :data:`KNOWN_TOKENS` (distinct, never a benchmark identity)."""
    rng = random.Random(f"{seed}:known-identities")
    out: list[Subject] = []
    while len(out) < len(KNOWN_TOKENS):
        subject = sample_subject(rng, exclude=exclude)
        if subject not in out:
            out.append(subject)
    return out


def known_scenes(seed: int, stream: str, identities: Sequence[Subject], image_size: int, exclude: frozenset,
                 positives: int, lookalikes: int) -> tuple[list[Scene], list[tuple[int, bool]]]:
    """Scenes of each known identity (as main subject) and of its one-attribute lookalikes.

    Returns:
        The scenes and, per scene, (identity index, whether the identity itself is in it).
    """
    banned = exclude | frozenset(identities)
    scenes: list[Scene] = []
    owners: list[tuple[int, bool]] = []
    for i, subject in enumerate(identities):
        for j in range(positives + lookalikes):
            rng = item_rng(seed, f"{stream}/{i}", j)
            main = subject
            if j >= positives:
                main = None
                while main is None or main in banned:
                    main = _lookalike(subject, rng.choice([*FINE_ATTRIBUTES, "color", "family", "shape", "size"]), rng)
            scenes.append(sample_scene(rng, main, image_size=image_size, n_distractors=rng.randint(0, 3), exclude=banned))
            owners.append((i, j < positives))
    return scenes, owners


@torch.no_grad()
def scene_features(model: LlavaForConditionalGeneration, scenes: Sequence[Scene], batch_size: int = 256) -> torch.Tensor:
    """The frozen vision tower's selected features (before the projector), ``[N, patches, width]`` fp16.

    Computed once per scene: the tower never trains, and it costs as much as the whole language
    model step. fp16 halves the bank (30k scenes x 64 x 96 = 370 MB).
    """
    config = model.config
    out = []
    for start in range(0, len(scenes), batch_size):
        pixels = images_to_tensor([np.asarray(render_scene(s)) for s in scenes[start : start + batch_size]])
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[config.vision_feature_layer]
        out.append(hidden[:, 1:].to(torch.float16))
    return torch.cat(out)


class PixelBank:
    """Scenes kept as uint8 pixels; indexing runs the (trainable) vision tower, like a feature bank.

    Stages that fine-tune the vision tower cannot use precomputed features. ``bank[indices]``
    returns the selected layer's patch features ``[B, patches, width]`` with gradients when the
    tower trains (30k scenes x 64 x 64 x 3 = 370 MB).
    """

    def __init__(self, model: LlavaForConditionalGeneration, scenes: Sequence[Scene], batch_size: int = 512,
                 prefix: PixelBank | None = None):
        """``prefix``: a bank of the first scenes of ``scenes``, whose pixels are reused, not rendered again."""
        self.model = model
        chunks = [prefix.pixels] if prefix is not None else []
        for start in range(len(prefix) if prefix is not None else 0, len(scenes), batch_size):
            chunks.append(torch.from_numpy(np.stack([np.asarray(render_scene(s)) for s in scenes[start : start + batch_size]])))
        self.pixels = torch.cat(chunks)
        patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
        self.shape = (len(scenes), patches, model.config.vision_config.hidden_size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        pixels = images_to_tensor(self.pixels[index].numpy())
        hidden = self.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[self.model.config.vision_feature_layer]
        return hidden[:, 1:]


# ----------------------------------------------------------------------------- the data mix


@dataclass
class ToySample:
    """One pretraining or evaluation item: the user text, the answer, and the scene shown (if any).

    ``kind`` names the task; ``label`` is the yes/no truth for presence-style tasks; ``tag``
    sub-divides them for reporting (e.g. the kind of negative).
    """

    kind: str
    user: str
    answer: str
    scene: int | None = None
    label: bool | None = None
    tag: str = ""
    expected: str = ""
    # (name token, subject): the name's input vector is made from the subject's attribute words
    # (see bind_names) instead of its own row, as a learned concept identifier would carry it
    binding: tuple[str, Subject] | None = None


def _lookalike(subject: Subject, attribute: str, rng: random.Random) -> Subject | None:
    """``subject`` changed in one attribute (accessory may also be added or removed), or None."""
    if attribute == "accessory" and subject.accessory == "none":
        color = rng.choice([c for c in ACCESSORY_COLORS if c != subject.color])
        return Subject(**{**subject.to_dict(), "accessory": rng.choice(ACCESSORIES[1:]), "accessory_color": color})
    if attribute == "accessory" and rng.random() < 0.2:
        return Subject(**{**subject.to_dict(), "accessory": "none", "accessory_color": None})
    try:
        return variant(subject, attribute, rng)
    except YollavaError:
        return None


def _verify_question(name: str, target: Subject, attribute: str, positive: bool, rng: random.Random) -> str:
    """"Is {name} red?" about ``target``'s true value (positive) or another value of the attribute."""
    value = getattr(target, attribute)
    if not positive:
        value = rng.choice([v for v in ATTRIBUTES[attribute] if v not in (value, "none")])
    return {
        "family": f"Is {name} {_a(str(value))}?",
        "accessory": f"Does {name} have {_a(str(value))}?",
        "accessory_color": f"Is the {target.accessory} of {name} {value}?",
    }.get(attribute, f"Is {name} {value}?")


@dataclass
class MixWeights:
    """Share of each task in instruction tuning (normalised when sampling)."""

    caption: float = 0.02
    attribute: float = 0.17
    verify: float = 0.08
    presence: float = 0.1
    introduced: float = 0.1
    text: float = 0.07
    category: float = 0.02
    visual: float = 0.01
    named: float = 0.35
    named_text: float = 0.08
    # "<x03> is a red … hat. Is <x03> striped?" (the comparison curriculum's stages; the "text"
    # share above also holds some)
    text_verify: float = 0.0
    # "Is <x03> in this photo?" where <x03>'s vector is made from a subject's attributes (bind_names)
    bound: float = 0.0


class DataMix:
    """Generates the toy LLaVA's pretraining and evaluation samples from scene graphs.

    Every yes/no task is balanced 50/50. Negatives of presence-style questions are described
    subjects absent from the scene: one-attribute lookalikes of the main subject (fine attribute
    pattern/accessory/accessory colour, or coarse family/shape/colour/size), lookalikes of a
    distractor, or random subjects.
    """

    NEGATIVE_KINDS = (("fine", 0.45), ("coarse", 0.25), ("random", 0.15), ("distractor", 0.15))
    # share of recognition questions asked as templates/recognition.yaml's eval question with a
    # bare "Yes."/"No." (the rest: its varied questions and sentence answers)
    bare_share = 0.5

    def __init__(self, scenes: Sequence[Scene], exclude: frozenset, names: Sequence[str] = NAME_TOKENS,
                 known: Sequence[Subject] = (), owners: dict[int, tuple[int, bool]] | None = None):
        self.negative_kinds: Sequence[tuple[str, float]] = self.NEGATIVE_KINDS
        self.single_share = 0.0
        # attributes the yes/no comparisons ask about (None: all, plus two-attribute "partial" questions)
        self.verify_attributes: tuple[str, ...] | None = None
        self.scenes = list(scenes)
        self.exclude = exclude
        self.names = list(names)
        self.bank = conversation_bank()
        self.recognition = load_template("recognition")
        self.single = [i for i, s in enumerate(self.scenes) if not s.distractors]
        self.single_person = [i for i in self.single if self.scenes[i].main.subject.is_person]
        self.single_other = [i for i in self.single if not self.scenes[i].main.subject.is_person]
        # known identities: scene indices where each appears, and of its lookalikes
        self.known = list(known)
        owners = owners or {}
        self.known_in = {k: [i for i, (o, pos) in owners.items() if o == k and pos] for k in range(len(self.known))}
        self.known_look = {k: [i for i, (o, pos) in owners.items() if o == k and not pos] for k in range(len(self.known))}
        self.plain = [i for i in range(len(self.scenes)) if i not in owners]

    # -- pieces

    def _negative(self, scene: Scene, rng: random.Random, kind: str | None = None) -> tuple[Subject, str]:
        """A subject absent from ``scene`` and not a benchmark identity, with the kind of negative."""
        present = {p.subject for p in scene.subjects}
        for _ in range(50):
            chosen = kind or rng.choices([k for k, _ in self.negative_kinds], [w for _, w in self.negative_kinds])[0]
            if chosen == "fine":
                candidate = _lookalike(scene.main.subject, rng.choice(FINE_ATTRIBUTES), rng)
            elif chosen == "coarse":
                candidate = _lookalike(scene.main.subject, rng.choice(("family", "shape", "color", "size")), rng)
            elif chosen == "distractor" and scene.distractors:
                other = rng.choice(scene.distractors).subject
                candidate = _lookalike(other, rng.choice(list(ATTRIBUTES)[:-2] + ["accessory", "size"]), rng)
            else:
                chosen = "random"
                candidate = sample_subject(rng)
            if candidate is not None and candidate not in present and candidate not in self.exclude:
                return candidate, chosen
        raise RuntimeError("no absent subject found in 50 tries")

    def _described(self, scene: Scene, rng: random.Random, positive: bool) -> tuple[Subject, str]:
        if positive:
            if scene.distractors and rng.random() < 0.15:
                return rng.choice(scene.distractors).subject, "distractor"
            return scene.main.subject, "main"
        return self._negative(scene, rng)

    def _name(self, rng: random.Random, avoid: str | None = None) -> str:
        return rng.choice([n for n in self.names if n != avoid])

    def _reference(self, scene: Scene, target: Subject, attribute: str, rng: random.Random) -> str | None:
        """"the red pet": two attributes of ``target`` (not the asked one) that no other subject shares."""
        pairs = [p for p in REFERENCE_PAIRS if attribute not in p]
        rng.shuffle(pairs)
        for pair in pairs:
            matches = [p for p in scene.subjects if all(getattr(p.subject, a) == getattr(target, a) for a in pair)]
            if len(matches) == 1:
                first, second = (getattr(target, a) for a in pair)
                return f"the {first} {second}" if pair[1] == "family" else f"the {first} {second} subject"
        return None

    # -- tasks

    def caption(self, index: int, rng: random.Random) -> ToySample:
        """Caption of the scene (the projector-alignment task)."""
        return ToySample("caption", rng.choice(CAPTION_QUESTIONS), _capital(caption(self.scenes[index])) + ".", index)

    def attribute(self, index: int, rng: random.Random) -> ToySample:
        """A visual attribute question: about "this subject"/"Riley" alone, or "the red pet" among others."""
        scene = self.scenes[index]
        if not scene.distractors:
            subject = scene.main.subject
            if rng.random() < 0.5:
                category = category_of(subject)
                question = rng.choice(self.bank[category])
                name = STAND_IN[category]
                return ToySample("attribute_conversation", question.replace("{name}", name), conversation_answer(subject, question, name), index)
            attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"])
            return ToySample("attribute", attribute_question(attribute, STAND_IN["other"], subject), attribute_answer(subject, attribute), index, tag=attribute)
        for _ in range(10):
            target = rng.choice(scene.subjects).subject
            attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or target.accessory != "none"])
            reference = self._reference(scene, target, attribute, rng)
            if reference is not None:
                return ToySample("attribute", attribute_question(attribute, reference, target), attribute_answer(target, attribute), index, tag=attribute)
        return self.caption(index, rng)

    def verify(self, index: int, rng: random.Random, positive: bool) -> ToySample:
        """A one- or two-attribute yes/no question, the smallest comparison of text with the image.

        "Is this subject striped?" on single-subject scenes, "Is the red pet round?" among others,
        and "Is there a red pet in this photo?" (true when any subject matches).
        """
        scene = self.scenes[index]
        if self.verify_attributes is None and rng.random() < 0.3:
            first, second = rng.choice((("color", "family"), ("pattern", "family"), ("size", "family"), ("color", "shape")))
            target = rng.choice(scene.subjects).subject
            values = {first: getattr(target, first), second: getattr(target, second)}
            if not positive:
                changed = rng.choice((first, second))
                values[changed] = rng.choice([v for v in ATTRIBUTES[changed] if v != values[changed]])
            truth = any(all(getattr(p.subject, a) == v for a, v in values.items()) for p in scene.subjects)
            words = f"{values[first]} {values[second]}" if second == "family" else f"{values[first]} {values[second]} subject"
            return ToySample("verify", f"Is there {_a(words)} in this photo?", CATEGORY_ANSWERS[truth], index, truth, "partial")
        target = scene.main.subject if not scene.distractors else rng.choice(scene.subjects).subject
        attributes = self._verifiable(target)
        for _ in range(10):
            attribute = rng.choice(attributes)
            name = STAND_IN["other"] if not scene.distractors else self._reference(scene, target, attribute, rng)
            if name is not None:
                break
        else:
            return self.presence(index, rng, positive)
        return ToySample("verify", _verify_question(name, target, attribute, positive, rng), CATEGORY_ANSWERS[positive], index, positive, attribute)

    def _verifiable(self, subject: Subject) -> list[str]:
        """Attributes a comparison may ask about ``subject`` (``verify_attributes`` restricts them).

        A subject without an accessory cannot be asked about it: when only accessory attributes are
        wanted, such a subject is asked its colour instead (about a fifth of the accessory stage).
        """
        wanted = self.verify_attributes or tuple(ATTRIBUTES)
        usable = [a for a in wanted if a not in ("accessory", "accessory_color") or subject.accessory != "none"]
        return usable or [a for a in wanted if a not in ("accessory", "accessory_color")] or ["color"]

    def text_verify(self, subject: Subject, rng: random.Random, positive: bool) -> ToySample:
        """"<x03> is a red … hat. Is <x03> striped?": a yes/no comparison in text alone.

        Equality of a described and an asked attribute is an interaction with no first-order signal;
        small transformers learn it after a long plateau (about 600 steps of batch 32 here), which is
        far cheaper on short text than with 64 image tokens, and the image comparisons build on it.
        """
        name = self._name(rng)
        attribute = rng.choice(self._verifiable(subject))
        question = _verify_question(name, subject, attribute, positive, rng)
        return ToySample("text_verify", f"{name} is {describe_subject(subject)}. {question}", CATEGORY_ANSWERS[positive], None, positive, attribute)

    def presence(self, index: int, rng: random.Random, positive: bool) -> ToySample:
        """"Is there a small red striped round pet with a blue hat in this photo?" (full description)."""
        subject, tag = self._described(self.scenes[index], rng, positive)
        question = rng.choice(PRESENCE_QUESTIONS).format(desc=describe_subject(subject))
        return ToySample("presence", question, rng.choice(PRESENCE_ANSWERS[positive]), index, positive, tag)

    def introduced(self, index: int, rng: random.Random, positive: bool, eval_question: bool = False, second: bool | None = None) -> ToySample:
        """"<x03> is a red … hat. Is <x03> in this photo?" with recognition.yaml's phrasings.

        With ``second`` (20 % by default) another name is introduced too and either may be asked.
        """
        scene = self.scenes[index]
        subject, tag = self._described(scene, rng, positive)
        name = self._name(rng)
        intro = f"{name} is {describe_subject(subject)}."
        if second if second is not None else rng.random() < 0.2:
            other_name = self._name(rng, avoid=name)
            other, _ = self._described(scene, rng, rng.random() < 0.5)
            other_intro = f"{other_name} is {describe_subject(other)}."
            intro = f"{intro} {other_intro}" if rng.random() < 0.5 else f"{other_intro} {intro}"
            tag = f"{tag}+second"
        question, answer = self._recognition_turn(name, positive, eval_question, rng)
        return ToySample("introduced", f"{intro} {question}", answer, index, positive, tag)

    def _recognition_turn(self, name: str, positive: bool, eval_question: bool, rng: random.Random) -> tuple[str, str]:
        """A recognition.yaml question about ``name`` and its answer (the eval question gets a bare Yes./No.)."""
        rec = self.recognition
        if eval_question:
            return rec["eval_question"].replace("{name}", name), "Yes." if positive else "No."
        question = rng.choice(rec["questions"])
        answer = rng.choice(rec["positive_answers" if positive else "negative_answers"])
        return question.replace("{name}", name), answer.replace("{name}", name)

    def text(self, subject: Subject, rng: random.Random) -> ToySample:
        """Text-only question about a subject introduced by its description (what soft prompts carry)."""
        name = self._name(rng)
        intro = f"{name} is {describe_subject(subject)}."
        if rng.random() < 0.5:
            question = rng.choice(self.bank[category_of(subject)])
            return ToySample("text_conversation", f"{intro} {question.replace('{name}', name)}", conversation_answer(subject, question, name))
        attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"])
        return ToySample("text", f"{intro} {attribute_question(attribute, name, subject)}", attribute_answer(subject, attribute), tag=attribute)

    def named(self, rng: random.Random, positive: bool, eval_question: bool = False) -> ToySample:
        """"Is <p07> in this photo?" about a known identity: in the scene, or a lookalike / other subject instead."""
        k = rng.randrange(len(self.known))
        token, subject = KNOWN_TOKENS[k], self.known[k]
        if positive:
            index, tag = rng.choice(self.known_in[k]), "main"
        elif rng.random() < 0.5:
            index, tag = rng.choice(self.known_look[k]), "lookalike"
        else:
            while True:
                index = rng.choice(self.plain)
                if all(p.subject != subject for p in self.scenes[index].subjects):
                    break
            tag = "random"
        question, answer = self._recognition_turn(token, positive, eval_question, rng)
        return ToySample("named", question, answer, index, positive, tag)

    def bound(self, index: int, rng: random.Random, positive: bool, eval_question: bool = False,
              prefix: bool | None = None) -> ToySample:
        """"Is <x03> in this photo?" where <x03> carries a subject's attribute vector (:func:`bind_names`).

        The subject is in the scene or absent (one-attribute lookalikes first). With ``prefix`` (half
        the time by default) the question follows "<x03> is <x11> … <x27>." with sixteen other
        names, the shape of a trained concept's soft prompt.
        """
        subject, tag = self._described(self.scenes[index], rng, positive)
        name = self._name(rng)
        question, answer = self._recognition_turn(name, positive, eval_question, rng)
        if prefix if prefix is not None else rng.random() < 0.5:
            latents = rng.sample([n for n in self.names if n != name], BOUND_LATENTS)
            question = f"{name} is {' '.join(latents)}. {question}"
            tag = f"{tag}+prefix"
        return ToySample("bound", question, answer, index, positive, tag, binding=(name, subject))

    def named_text(self, rng: random.Random) -> ToySample:
        """"What colour is <p07>?" with no image: the identity's attributes, from its name alone."""
        k = rng.randrange(len(self.known))
        token, subject = KNOWN_TOKENS[k], self.known[k]
        if rng.random() < 0.3:
            return ToySample("named_text", f"Describe {token}.", _capital(describe_subject(subject)) + ".", tag="describe")
        attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"])
        return ToySample("named_text", attribute_question(attribute, token, subject), attribute_answer(subject, attribute), tag=attribute)

    def category(self, rng: random.Random, positive: bool) -> ToySample:
        """conversation.yaml's category question on a single-subject scene, balanced person / not."""
        index = rng.choice(self.single_person if positive else self.single_other)
        question = load_template("conversation")["category_question"]
        return ToySample("category", question, CATEGORY_ANSWERS[positive], index, positive)

    def visual(self, index: int, rng: random.Random) -> ToySample:
        """A benchmark-style visual question about an introduced main subject (place, side, count, neighbour)."""
        scene = self.scenes[index]
        name = self._name(rng)
        kinds = ["background", "side", "count"] + (["neighbor"] if scene.distractors else [])
        kind = rng.choice(kinds)
        if kind == "background":
            answer = scene.background
        elif kind == "side":
            answer = side_of(scene.main, scene.image_size)
        elif kind == "count":
            answer = COUNT_WORDS[len(scene.distractors)]
        else:
            answer = rng.choice(scene.distractors).subject.family
        intro = f"{name} is {describe_subject(scene.main.subject)}."
        return ToySample("visual", f"{intro} {VISUAL_QUESTIONS[kind].format(name=name)}", answer, index, tag=kind)

    def sample(self, rng: random.Random, weights: MixWeights) -> ToySample:
        """One instruction-tuning sample drawn from the mix."""
        kinds = list(asdict(weights))
        kind = rng.choices(kinds, [getattr(weights, k) for k in kinds])[0]
        index = rng.randrange(len(self.scenes))
        if kind in ("verify", "presence", "introduced") and rng.random() < self.single_share:
            index = rng.choice(self.single)
        positive = rng.random() < 0.5
        if kind == "caption":
            return self.caption(index, rng)
        if kind == "attribute":
            # half the attribute questions on single-subject scenes, where "this subject" is unambiguous
            return self.attribute(rng.choice(self.single) if rng.random() < 0.5 else index, rng)
        if kind == "verify":
            return self.verify(index, rng, positive)
        if kind == "presence":
            return self.presence(index, rng, positive)
        if kind == "introduced":
            return self.introduced(index, rng, positive, eval_question=rng.random() < self.bare_share)
        if kind == "text":
            subject = self.scenes[index].main.subject if rng.random() < 0.5 else sample_subject(rng, exclude=self.exclude)
            return self.text_verify(subject, rng, positive) if rng.random() < 0.5 else self.text(subject, rng)
        if kind == "category":
            return self.category(rng, positive)
        if kind == "named":
            return self.named(rng, positive, eval_question=rng.random() < self.bare_share)
        if kind == "named_text":
            return self.named_text(rng)
        if kind == "text_verify":
            return self.text_verify(sample_subject(rng, exclude=self.exclude), rng, positive)
        if kind == "bound":
            return self.bound(index, rng, positive, eval_question=rng.random() < self.bare_share)
        return self.visual(index, rng)


# ----------------------------------------------------------------------------- batching and the step


@dataclass
class Encoded:
    """A sample's token ids and labels in our chat format, plus where it came from."""

    ids: list[int]
    labels: list[int]
    scene: int | None
    sample: ToySample


class Encoder:
    """Renders samples with yollava.prompts (the exact format training and evaluation use) and tokenizes them."""

    def __init__(self, tokenizer: Any, image_token_id: int, num_image_tokens: int, system: bool = True):
        self.tokenizer = tokenizer
        self.fmt = ChatFormat.load("llava_v1")
        if not system:
            # the short format of the comparison warm-up: no system text in front of "USER:"
            self.fmt = replace(self.fmt, system="")
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.name_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(NAME_TOKENS)))

    def __call__(self, sample: ToySample, with_answer: bool = True) -> Encoded:
        turn = Turn(sample.user, sample.answer if with_answer else None, images=0 if sample.scene is None else 1)
        enc = encode(self.tokenizer, render(self.fmt, [turn], self.tokenizer.eos_token), self.image_token_id, self.num_image_tokens)
        return Encoded(enc.input_ids, enc.labels, sample.scene, sample)


@dataclass
class Batch:
    ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    scenes: list[int]


def collate(items: Sequence[Encoded], pad_id: int, all_tokens: bool = False) -> Batch:
    """Right-pad a batch; ``all_tokens`` puts the loss on every real token (language-model stage)."""
    length = max(len(e.ids) for e in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, e in enumerate(items):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.ids)] = torch.tensor(e.ids if all_tokens else e.labels)
        mask[row, : len(e.ids)] = 1
    if all_tokens:
        labels[:, 0] = IGNORE_INDEX
    return Batch(ids, labels, mask, [e.scene for e in items if e.scene is not None])


def replace_names(
    embeds: torch.Tensor, batch: Batch, name_ids: torch.Tensor, embedding: torch.Tensor, vocab_rows: int,
    generator: torch.Generator, p: float, low: float, high: float = 1.0,
) -> torch.Tensor:
    """Give placeholder names fresh vectors, so any new identifier row works as a name.

    A concept's identifier starts as ``concept.init`` says (default: vocabulary mean + 2 % noise)
    and is never one of the pool rows. With probability ``p`` per sample every name gets a vector
    mean + sigma * std * N(0, 1), sigma log-uniform in [``low``, ``high``] (one vector per distinct
    name, so "the same name" still means "the same vector"). Their answer positions lose their
    labels: the output head has no row for a vector that is not a token.
    """
    rows = embedding[:vocab_rows].detach()
    mean, std = rows.mean(0), rows.std(0)
    is_name = torch.isin(batch.ids, name_ids)
    for row in range(batch.ids.shape[0]):
        if not bool(is_name[row].any()) or float(torch.rand((), generator=generator)) >= p:
            continue
        for name_id in batch.ids[row][is_name[row]].unique().tolist():
            where = (batch.ids[row] == name_id).nonzero()[:, 0]
            sigma = math.exp(math.log(low) + (math.log(high) - math.log(low)) * float(torch.rand((), generator=generator)))
            vector = mean + sigma * std * torch.randn(mean.shape, generator=generator)
            embeds = embeds.index_put((torch.full_like(where, row), where), vector.expand(len(where), -1))
            batch.labels[row, where] = IGNORE_INDEX
    return embeds


def subject_vector(subject: Subject, embedding: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """The sum of the input rows of a subject's attribute words, divided by the square root of their count."""
    words = [getattr(subject, a) or "none" for a in ATTRIBUTES]
    rows = embedding[tokenizer.convert_tokens_to_ids(words)]
    return rows.sum(0) / math.sqrt(len(words))


def bind_names(embeds: torch.Tensor, batch: Batch, items: Sequence[Encoded], embedding: torch.Tensor, tokenizer: Any,
               generator: torch.Generator | None = None, noise: float = 0.0) -> torch.Tensor:
    """Give each bound name (``ToySample.binding``) its subject's vector, plus ``noise`` x vocabulary std of Gaussian noise.

    A trained concept identifier is a free vector found by gradient descent; a base that reads
    identities off such vectors, smoothly in attribute space, gives that descent somewhere to go.
    The name's answer positions lose their labels (no output row for the vector).
    """
    bound = [(row, item.sample.binding) for row, item in enumerate(items) if item.sample.binding is not None]
    if not bound:  # every step of every stage comes through here
        return embeds
    std = embedding[: len(tokenizer)].detach().std(0) if noise and generator is not None else None
    for row, (name, subject) in bound:
        where = (batch.ids[row] == tokenizer.convert_tokens_to_ids(name)).nonzero()[:, 0]
        vector = subject_vector(subject, embedding, tokenizer)
        if std is not None:
            vector = vector + noise * std * torch.randn(vector.shape, generator=generator)
        embeds = embeds.index_put((torch.full_like(where, row), where), vector.expand(len(where), -1))
        batch.labels[row, where] = IGNORE_INDEX
    return embeds


def embed_batch(model: LlavaForConditionalGeneration, batch: Batch, bank: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the projected features of each scene scattered into its image slots."""
    embeds = model.model.language_model.embed_tokens(batch.ids)
    if not batch.scenes:
        return embeds
    features = model.model.multi_modal_projector(bank[batch.scenes].to(embeds.dtype))
    where = (batch.ids == model.config.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(where.expand_as(embeds), features)


def batch_loss(model: LlavaForConditionalGeneration, batch: Batch, embeds: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged per sample and then over the batch (the head runs only where the loss needs it).

    Per-sample averaging keeps a one-word "Yes." worth as much as a twenty-word caption: with a
    plain token mean the yes/no decisions, one token each, get a few per cent of the gradient.
    """
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False).last_hidden_state
    targets = batch.labels[:, 1:]
    where = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][where])
    losses = F.cross_entropy(logits.float(), targets[where], reduction="none")
    rows = where.nonzero()[:, 0]
    counts = where.sum(1).clamp(min=1).float()
    per_sample = torch.zeros(where.shape[0]).index_add_(0, rows, losses) / counts
    return per_sample[where.any(1)].mean()


# ----------------------------------------------------------------------------- stages


@dataclass
class StageConfig:
    """One pretraining stage: what trains, on what, for how long."""

    name: str
    steps: int
    lr: float
    trains: str  # "vision" (tower only), "language" (LM only), "projector", "all" (LM + projector), "vision+projector" or "vision+all"
    task: str  # "dense" (see supervise_tower), "text" (text-only answers), "caption", "align" (see align_projector), or "mix"
    warmup: int = 50
    # kinds of absent subjects in yes/no questions, with weights (None: DataMix.NEGATIVE_KINDS)
    negatives: tuple[tuple[str, float], ...] | None = None
    # share of yes/no questions asked about single-subject scenes (the rest: any scene)
    single_share: float = 0.0
    # task shares of a "mix" stage (None: PretrainConfig.mix)
    mix: MixWeights | None = None
    # learning rate of the vision tower relative to ``lr`` (stages that train it)
    vision_lr_scale: float = 0.3
    # share of recognition questions asked as the eval question with a bare "Yes."/"No."
    bare_share: float = 0.5
    # False: prompts without llava_v1's system text. A colour comparison in text ("X is red … . Is X
    # blue?") reached 0.95 in 800 steps without it and stayed at chance with it (README).
    system: bool = True
    # attributes the stage's yes/no comparisons ask about (None: all; see DataMix.verify_attributes)
    attributes: tuple[str, ...] | None = None
    # share of samples whose names get fresh vectors (None: PretrainConfig.name_noise)
    name_noise: float | None = None


# The comparison curriculum: (group name, attributes, steps). Learning to compare colours gives
# accessory colours for free (the same words) and nothing for the other groups; each group alone
# leaves chance within 100-300 steps, all at once still sit near chance after 2,500 (README).
COMPARISON_GROUPS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("color", ("color",), 800),
    ("family", ("family",), 300),
    ("size", ("size",), 300),
    ("shape", ("shape",), 300),
    ("pattern", ("pattern",), 300),
    ("accessory", ("accessory",), 300),
    ("all", tuple(ATTRIBUTES), 600),
)


def comparison_stages() -> list[StageConfig]:
    """Per group of :data:`COMPARISON_GROUPS`, two short-format stages: ``compare_<group>``
    (``text_verify`` alone, trains the language model) then ``see_<group>`` (``verify`` alone on
    single-subject images, trains language model and projector); ``ground`` comes before the first
    ``see`` stage.

    Text colour comparison followed at once by the image one transfers (0.94 after 400 steps);
    after all seven groups in text the image colour comparison stayed at chance (README).
    """
    stages = []
    for group, attributes, steps in COMPARISON_GROUPS:
        for prefix, task, trains, count in (("compare", "text_verify", "language", steps), ("see", "verify", "all", max(300, steps // 2))):
            only = MixWeights(**{**{k: 0.0 for k in asdict(MixWeights())}, task: 1.0})
            stages.append(StageConfig(f"{prefix}_{group}", steps=count, lr=1e-3, trains=trains, task="mix", warmup=30, mix=only,
                                      single_share=1.0, system=False, attributes=attributes, name_noise=0.0))
    # grounding targets are the input embeddings: ground once the first text stage has shaped them
    stages.insert(1, StageConfig("ground", steps=1500, lr=3e-3, trains="projector", task="ground"))
    return stages


RECIPES = ("compiled", "curriculum", "classic")

# the instruct mix of the compiled recipe: no known identities (nothing of the circuit reads names)
COMPILED_MIX = MixWeights(caption=0.04, attribute=0.3, verify=0.1, presence=0.15, introduced=0.2, text=0.12,
                          category=0.03, visual=0.03, named=0.0, named_text=0.0)


def recipe_arch(recipe: str) -> ToyLlavaArch:
    """The language model a recipe builds: the compiled circuit needs 64-wide heads and a large RoPE base."""
    if recipe == "compiled":
        return ToyLlavaArch(head_dim=64, rope_theta=1e9)
    return ToyLlavaArch()


def recipe_stages(recipe: str) -> list[StageConfig]:
    """The stages of a named recipe (README "The toy world" has each one's measured quality).

    ``compiled`` (the default): vision, ``code`` (tower + projector regress each patch onto the
    circuit's attribute code), ``compile`` (the comparison circuit written into layers 0-1, see
    toyworld/compiled.py), instruct (everything else learns the task mix around the frozen circuit).
    ``curriculum``: vision, the comparison curriculum, language, instruct.
    ``classic``: vision, language, caption-free projector alignment, instruct (the previous default;
    better attribute answers, yes/no at chance).
    """
    # the toy CLIP's features name the attributes poorly: dense per-patch supervision first
    vision = StageConfig("vision", steps=14000, lr=3e-3, trains="vision", task="dense", warmup=50, vision_lr_scale=1.0)
    instruct = StageConfig("instruct", steps=3000, lr=1e-3, trains="all", task="mix", warmup=100)
    if recipe == "compiled":
        # the tower stays as the dense stage left it: fine-tuning it on the codes fitted the large
        # CONST entry better and the attribute slots worse (held-out presence 0.69 against 0.83)
        return [vision, StageConfig("code", steps=3000, lr=3e-3, trains="projector", task="code"),
                StageConfig("compile", steps=0, lr=0.0, trains="projector", task="compile"),
                replace(instruct, steps=1500, mix=COMPILED_MIX)]
    if recipe == "curriculum":
        # yes/no comparisons one word group at a time (mixed from the start they plateau), each
        # first in text, then on the image, where the text circuit applies; then text answers
        # about described and known subjects (comparisons kept in the "text" task)
        return [vision, *comparison_stages(),
                StageConfig("language", steps=2000, lr=1e-3, trains="language", task="text", warmup=50), instruct]
    if recipe == "classic":
        return [vision, StageConfig("language", steps=2000, lr=2e-3, trains="language", task="text", warmup=50),
                StageConfig("projector", steps=1000, lr=3e-3, trains="projector", task="align"), instruct]
    raise ValueError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")


@dataclass
class PretrainConfig:
    """The whole recipe (defaults: the shipped weights)."""

    seed: int = 0
    arch: ToyLlavaArch = field(default_factory=ToyLlavaArch)
    train_scenes: int = 30000
    # scenes of the dense ``vision`` stage: the training scenes, then more of the same stream. With the
    # 30,000 alone the tower overfitted (training loss kept falling from step 8,000 on, held-out
    # patch accuracy did not); every later stage reads the frozen tower on the training scenes only
    vision_scenes: int = 200000
    # scenes per known identity: (with it as main subject, with a one-attribute lookalike instead)
    known_scenes: tuple[int, int] = (120, 40)
    known_heldout_scenes: tuple[int, int] = (12, 6)
    batch_size: int = 32
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    name_noise: float = 0.5
    name_noise_low: float = 0.02
    # Gaussian noise on bound names' vectors, in vocabulary stds (see bind_names)
    bound_noise: float = 0.3
    mix: MixWeights = field(default_factory=MixWeights)
    stages: list[StageConfig] = field(default_factory=lambda: recipe_stages("curriculum"))
    excluded_seeds: tuple[int, ...] = (0,)
    excluded_max_concepts: int = 20
    log_every: int = 50
    eval_every: int = 500


def _lr(step: int, stage: StageConfig) -> float:
    """Linear warm-up, cosine decay to 10 %."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train_only(model: LlavaForConditionalGeneration, modules: Sequence[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Freeze the whole model, then make ``modules``' parameters trainable (returned)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _trainable(model: LlavaForConditionalGeneration, trains: str) -> list[torch.nn.Parameter]:
    modules = {
        "language": [model.model.language_model, model.lm_head],
        "projector": [model.model.multi_modal_projector],
        "all": [model.model.language_model, model.lm_head, model.model.multi_modal_projector],
    }[trains.removeprefix("vision+")]  # the tower's own parameters: _vision_params
    return _train_only(model, modules)


def _vision_params(model: LlavaForConditionalGeneration, trains: str) -> list[torch.nn.Parameter]:
    """The vision tower's parameters, made trainable, when the stage trains it (else [])."""
    if not trains.startswith("vision+"):
        return []
    params = list(model.model.vision_tower.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def _stage_sample(mix: DataMix, stage: StageConfig, rng: random.Random, weights: MixWeights) -> ToySample:
    if stage.task == "caption":
        return mix.caption(rng.randrange(len(mix.scenes)), rng)
    if stage.task == "text":
        draw = rng.random()
        if mix.known and draw < 0.3:
            return mix.named_text(rng)
        subject = sample_subject(rng, exclude=mix.exclude)
        return mix.text_verify(subject, rng, rng.random() < 0.5) if draw < 0.6 else mix.text(subject, rng)
    return mix.sample(rng, weights)


def run_stage(
    model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, mix: DataMix, bank: torch.Tensor,
    encoder: Encoder, log: Callable[[str], None], evaluate: Callable[[], dict[str, Any]] | None = None,
    frozen: Any = None,
) -> list[dict[str, Any]]:
    """Train one stage (AdamW, warm-up + cosine, batch ``config.batch_size``); returns its log records.

    Deterministic for a fixed thread count: batches come from ``random.Random`` seeded by the
    stage, noise from a seeded torch generator. ``frozen`` (a :class:`~yollava.toyworld.compiled.Frozen`):
    its whole parameters do not train, its partly frozen ones are restored after every optimizer step.
    """
    params = _trainable(model, stage.trains)
    vision = _vision_params(model, stage.trains)
    if frozen is not None:
        params, vision = frozen.exclude(params), frozen.exclude(vision)
    if not stage.system:
        encoder = Encoder(encoder.tokenizer, encoder.image_token_id, encoder.num_image_tokens, system=False)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, "scale": 1.0},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "scale": 1.0},
    ]
    if vision:
        groups.append({"params": vision, "weight_decay": 0.0, "scale": stage.vision_lr_scale})
    params = params + vision
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.98))
    rng = random.Random(f"{config.seed}:{stage.name}")
    mix.negative_kinds = stage.negatives or DataMix.NEGATIVE_KINDS
    mix.single_share = stage.single_share
    mix.bare_share = stage.bare_share
    mix.verify_attributes = stage.attributes
    name_noise = config.name_noise if stage.name_noise is None else stage.name_noise
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(stage.steps):
        items = [encoder(_stage_sample(mix, stage, rng, stage.mix or config.mix)) for _ in range(config.batch_size)]
        batch = collate(items, encoder.tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, stage) * group["scale"]
        embeds = embed_batch(model, batch, bank)
        embeds = replace_names(
            embeds, batch, encoder.name_ids, model.model.language_model.embed_tokens.weight, len(encoder.tokenizer),
            generator, p=name_noise, low=config.name_noise_low,
        )
        embeds = bind_names(embeds, batch, items, model.model.language_model.embed_tokens.weight, encoder.tokenizer,
                            generator, noise=config.bound_noise)
        loss = batch_loss(model, batch, embeds)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        if frozen is not None:
            frozen.restore()
        losses.append(loss.item())
        last = step == stage.steps - 1
        if (step + 1) % config.log_every == 0 or last:
            record: dict[str, Any] = {
                "stage": stage.name, "step": step + 1, "loss": round(sum(losses) / len(losses), 4),
                "lr": round(_lr(step, stage), 6), "seconds": round(time.perf_counter() - started, 1),
            }
            losses = []
            if evaluate is not None and ((step + 1) % config.eval_every == 0 or last):
                model.eval()
                record["eval"] = evaluate()
                model.train()
            history.append(record)
            log(json.dumps(record))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return history


def attribute_word_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Token ids of each attribute's values (accessory colour of a subject without accessory: "none")."""
    out = {}
    for attribute, values in ATTRIBUTES.items():
        words = list(values) + (["none"] if attribute == "accessory_color" else [])
        out[attribute] = tokenizer.convert_tokens_to_ids(words)
    return out


def align_projector(
    model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, mix: DataMix, bank: torch.Tensor,
    tokenizer: Any, log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Projector alignment on single-subject scenes: projected patches must name the subject's attributes.

    For each attribute a learned query (discarded afterwards) attention-pools the projected image
    tokens; the pooled vector's cosine with the language model's own (frozen) input embeddings of
    that attribute's words are the logits. This maps visual features into the word-embedding space
    like LLaVA's caption alignment, but every image gives seven targets and the language model is
    not run, so a step costs ~50 ms instead of ~1 s (captions also name one of several subjects
    arbitrarily; single-subject scenes have no such ambiguity).
    """
    torch.manual_seed(config.seed)
    projector = model.model.multi_modal_projector
    _train_only(model, [projector])
    vision = _vision_params(model, stage.trains)
    words = attribute_word_ids(tokenizer)
    embed = F.normalize(model.model.language_model.embed_tokens.weight.detach(), dim=-1)
    hidden = embed.shape[1]
    queries = torch.nn.Parameter(0.02 * torch.randn(len(words), hidden))
    groups = [{"params": [*projector.parameters(), queries], "scale": 1.0}]
    if vision:
        groups.append({"params": vision, "scale": stage.vision_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=0.0)
    values = {a: [*v, *([None] if a == "accessory_color" else [])] for a, v in ATTRIBUTES.items()}
    targets = {a: torch.tensor([values[a].index(getattr(s.main.subject, a)) for s in mix.scenes]) for a in words}
    single = torch.tensor(mix.single)
    generator = torch.Generator().manual_seed(config.seed)
    history, losses, hits = [], [], []
    started = time.perf_counter()
    for step in range(stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, stage) * group["scale"]
        index = single[torch.randint(len(single), (2 * config.batch_size,), generator=generator)]
        tokens = projector(bank[index].float())
        attention = torch.softmax(torch.einsum("bph,ah->bap", tokens, queries) / math.sqrt(hidden), dim=-1)
        pooled = F.normalize(torch.einsum("bap,bph->bah", attention, tokens), dim=-1)
        loss = torch.zeros(())
        for a, (attribute, ids) in enumerate(words.items()):
            # cosine logits at temperature 1/10: embeddings are small and near-orthogonal after stage 1
            logits = 10.0 * pooled[:, a] @ embed[ids].T
            loss = loss + F.cross_entropy(logits, targets[attribute][index])
            hits.append((logits.argmax(-1) == targets[attribute][index]).float().mean().item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0 or step == stage.steps - 1:
            record = {"stage": stage.name, "step": step + 1, "loss": round(sum(losses) / len(losses), 4),
                      "train_attribute_accuracy": round(sum(hits) / len(hits), 4), "seconds": round(time.perf_counter() - started, 1)}
            losses, hits = [], []
            history.append(record)
            log(json.dumps(record))
    for p in [*projector.parameters(), *vision]:
        p.requires_grad_(False)
    return history


def grounding_targets(scenes: Sequence[Scene], grid: int, embed: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """Per scene and patch: the sum of the word embeddings that describe what the patch shows.

    A patch over a subject gets the embeddings of its seven attribute words ("small red striped
    round pet blue hat"), a background patch its background's word. Text and image then meet in
    one space: comparing a description with a photo becomes the word-to-word comparison the
    language model already makes in text.
    """
    ids = attribute_word_ids(tokenizer)
    background_ids = dict(zip(BACKGROUNDS, tokenizer.convert_tokens_to_ids(list(BACKGROUNDS))))
    table = [embed[word_ids] for word_ids in ids.values()]
    out = torch.zeros(len(scenes), grid * grid, embed.shape[1])
    for n, scene in enumerate(scenes):
        labels = torch.from_numpy(patch_labels(scene, grid))
        out[n] = embed[background_ids[scene.background]]
        on_subject = labels[:, -1] > 0
        if bool(on_subject.any()):
            total = torch.zeros(int(on_subject.sum()), embed.shape[1])
            for j, rows in enumerate(table):
                value = labels[on_subject, j]
                known = value >= 0
                total[known] += rows[value[known]]
            out[n, on_subject] = total
    return out


def ground_projector(
    model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, mix: DataMix, bank: torch.Tensor,
    tokenizer: Any, log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Dense projector grounding: each projected patch regresses onto :func:`grounding_targets`.

    The language model's input embeddings are frozen targets; only the projector trains (mean
    squared error per patch, scaled by the targets' mean square). Costs ~30 ms a step of
    ``2 * batch_size`` images, the language model is not run.
    """
    torch.manual_seed(config.seed)
    projector = model.model.multi_modal_projector
    params = _train_only(model, [projector])
    grid = int(math.isqrt(bank.shape[1]))
    embed = model.model.language_model.embed_tokens.weight.detach()
    targets = grounding_targets(mix.scenes, grid, embed, tokenizer)
    scale = targets.pow(2).mean()
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    history, losses = [], []
    started = time.perf_counter()
    for step in range(stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, stage)
        index = torch.randint(len(mix.scenes), (2 * config.batch_size,), generator=generator)
        loss = F.mse_loss(projector(bank[index].float()), targets[index]) / scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0 or step == stage.steps - 1:
            record = {"stage": stage.name, "step": step + 1, "relative_mse": round(sum(losses) / len(losses), 4),
                      "seconds": round(time.perf_counter() - started, 1)}
            losses = []
            history.append(record)
            log(json.dumps(record))
    for p in params:
        p.requires_grad_(False)
    return history


VISION_ROLES = ("background", "distractor", "main")


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """Per patch of a ``grid`` x ``grid`` image: each attribute's value index of the subject drawn
    over the patch centre (-100: none) and its role (0 background, 1 distractor, 2 main).

    The main subject is drawn last, so it owns the patches it covers; among distractors the later
    one wins, like in :func:`render_scene`.
    """
    cell = scene.image_size / grid
    labels = np.full((grid * grid, len(ATTRIBUTES) + 1), -100, dtype=np.int64)
    order = [*scene.distractors, scene.main]
    for row in range(grid):
        for col in range(grid):
            x, y = (col + 0.5) * cell, (row + 0.5) * cell
            owner, role = None, 0
            for k, placed in enumerate(order):
                x0, y0, x1, y1 = placed.box
                if x0 <= x < x1 and y0 <= y < y1:
                    owner, role = placed.subject, 2 if k == len(order) - 1 else 1
            labels[row * grid + col, -1] = role
            if owner is not None:
                for j, (attribute, values) in enumerate(ATTRIBUTES.items()):
                    value = getattr(owner, attribute)
                    if value is not None:
                        labels[row * grid + col, j] = values.index(value)
    return labels


class TowerProbe(torch.nn.Module):
    """Linear heads on the selected layer's patch features: the dense supervision of the vision stage."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(v)) for v in [*ATTRIBUTES.values(), VISION_ROLES])

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features) for head in self.heads]

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(lg.flatten(0, 1), labels[..., j].flatten(), ignore_index=-100) for j, lg in enumerate(self(features)))

    @torch.no_grad()
    def main_accuracy(self, bank: PixelBank, labels: torch.Tensor, batch_size: int = 250) -> dict[str, float]:
        """Per attribute: the main subject's value read from its patches (summed log-probabilities)."""
        hits = {a: [0, 0] for a in ATTRIBUTES}
        for start in range(0, len(labels), batch_size):
            index = torch.arange(start, min(start + batch_size, len(labels)))
            lab = labels[index]
            main = (lab[..., -1] == 2).float().unsqueeze(-1)
            for j, (attribute, logits) in enumerate(zip(ATTRIBUTES, self(bank[index]))):
                pooled = (F.log_softmax(logits, -1) * main).sum(1)
                target = torch.where((lab[..., j] != -100) & (lab[..., -1] == 2), lab[..., j], -1).max(1).values
                known = target >= 0
                hits[attribute][0] += (pooled.argmax(-1)[known] == target[known]).sum().item()
                hits[attribute][1] += known.sum().item()
        return {a: round(h / max(t, 1), 4) for a, (h, t) in hits.items()}


def supervise_tower(
    model: LlavaForConditionalGeneration, stage: StageConfig, config: PretrainConfig, bank: PixelBank, scenes: Sequence[Scene],
    log: Callable[[str], None], heldout: tuple[PixelBank, Sequence[Scene]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Dense supervision of the vision tower: every patch names the attributes of the subject on it.

    The toy CLIP's contrastive features carry the attributes weakly (linear heads on them read the
    main subject's colour at 0.50, shape at 0.31); LLaVA can only compare what its tower sees.
    Linear heads (discarded afterwards) on the layer LLaVA reads (``vision_feature_layer``) learn
    with the tower, batch ``2 * batch_size`` images. Returns the log and the held-out accuracy of
    the main subject's attributes read from its patches.
    """
    torch.manual_seed(config.seed)
    tower = model.model.vision_tower
    _train_only(model, [tower])
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    labels = torch.from_numpy(np.stack([patch_labels(s, grid) for s in scenes]))
    probe = TowerProbe(model.config.vision_config.hidden_size)
    optimizer = torch.optim.AdamW([
        {"params": probe.parameters(), "scale": 1.0, "weight_decay": 0.0},
        {"params": tower.parameters(), "scale": stage.vision_lr_scale, "weight_decay": config.weight_decay},
    ], lr=stage.lr)
    heldout_labels = torch.from_numpy(np.stack([patch_labels(s, grid) for s in heldout[1]])) if heldout is not None else None
    generator = torch.Generator().manual_seed(config.seed)
    history, losses = [], []
    started = time.perf_counter()
    tower.train()
    for step in range(stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, stage) * group["scale"]
        index = torch.randint(len(bank), (2 * config.batch_size,), generator=generator)
        loss = probe.loss(bank[index], labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*tower.parameters(), *probe.parameters()], config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        last = step == stage.steps - 1
        if (step + 1) % config.log_every == 0 or last:
            record: dict[str, Any] = {"stage": stage.name, "step": step + 1, "loss": round(sum(losses) / len(losses), 4),
                                      "lr": round(_lr(step, stage), 6), "seconds": round(time.perf_counter() - started, 1)}
            losses = []
            if heldout is not None and ((step + 1) % config.eval_every == 0 or last):
                tower.eval()
                record["eval"] = probe.main_accuracy(heldout[0], heldout_labels)
                tower.train()
            history.append(record)
            log(json.dumps(record))
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    return history, history[-1].get("eval", {}) if history else {}


# ----------------------------------------------------------------------------- quality


@dataclass
class EvalSet:
    """Held-out evaluation items per gate (scenes never used in training)."""

    attribute: list[ToySample]
    conversation: list[ToySample]
    presence: list[ToySample]
    introduced: list[ToySample]
    verify: list[ToySample]
    text_verify: list[ToySample]
    text: list[ToySample]
    named: list[ToySample]
    category: list[ToySample]


def build_eval_set(mix: DataMix, seed: int, n: int = 400) -> EvalSet:
    """``n`` items per gate from held-out scenes (the mix must hold only held-out scenes).

    Yes/no gates are balanced 50/50; negatives of the description-introduced gate are forced to be
    one-fine-attribute lookalikes of the main subject for half of them.
    """
    rng = random.Random(f"{seed}:eval")
    single = mix.single
    attribute: list[ToySample] = []
    conversation: list[ToySample] = []
    while len(attribute) < n:
        # alternately a single-subject scene ("this subject") and any scene ("the red pet")
        sample = mix.attribute(rng.choice(single) if len(attribute) % 2 else rng.randrange(len(mix.scenes)), rng)
        if sample.kind == "attribute":
            attribute.append(sample)
        elif sample.kind == "attribute_conversation":
            conversation.append(sample)
    presence = [mix.presence(rng.randrange(len(mix.scenes)), rng, i % 2 == 0) for i in range(n)]
    introduced = []
    for i in range(n):
        index = rng.randrange(len(mix.scenes))
        positive = i % 2 == 0
        if not positive and i % 4 == 1:
            # half the negatives: a lookalike differing in one fine attribute (the hard case)
            subject, _ = mix._negative(mix.scenes[index], rng, "fine")
            name = mix._name(rng)
            question = mix.recognition["eval_question"].replace("{name}", name)
            introduced.append(ToySample("introduced", f"{name} is {describe_subject(subject)}. {question}", "No.", index, False, "fine"))
        else:
            introduced.append(mix.introduced(index, rng, positive, eval_question=True, second=False))
    verify = [mix.verify(rng.randrange(len(mix.scenes)), rng, i % 2 == 0) for i in range(n)]
    text_verify = [mix.text_verify(mix.scenes[rng.randrange(len(mix.scenes))].main.subject, rng, i % 2 == 0) for i in range(n)]
    text = [mix.text(mix.scenes[rng.randrange(len(mix.scenes))].main.subject, rng) for _ in range(n)]
    category = [mix.category(rng, i % 2 == 0) for i in range(n // 2)]
    named = [mix.named(rng, i % 2 == 0, eval_question=True) for i in range(n)] if mix.known else []
    return EvalSet(
        attribute=attribute[:n], conversation=conversation, presence=presence, introduced=introduced, verify=verify,
        text_verify=text_verify, text=text, category=category, named=named,
    )


@torch.no_grad()
def _hidden(model: LlavaForConditionalGeneration, encoder: Encoder, items: Sequence[Encoded], bank: torch.Tensor,
            fresh: torch.Generator | None) -> tuple[torch.Tensor, Batch]:
    batch = collate(items, encoder.tokenizer.pad_token_id)
    embeds = embed_batch(model, batch, bank)
    if fresh is not None:
        # new identifiers the way the default concept.init=mean makes them: vocabulary mean + 2 % noise
        embeds = replace_names(embeds, batch, encoder.name_ids, model.model.language_model.embed_tokens.weight,
                               len(encoder.tokenizer), fresh, p=1.0, low=0.02, high=0.02)
    embeds = bind_names(embeds, batch, items, model.model.language_model.embed_tokens.weight, encoder.tokenizer)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False).last_hidden_state
    return hidden, batch


def yes_no_predictions(model: LlavaForConditionalGeneration, encoder: Encoder, samples: Sequence[ToySample], bank: torch.Tensor,
                       fresh: torch.Generator | None = None, batch_size: int = 32) -> list[bool]:
    """Yes (True) / No from the first answer token's log-probability, as yollava's RecognitionScorer scores."""
    yes_id, no_id = encoder.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    out: list[bool] = []
    for start in range(0, len(samples), batch_size):
        items = [encoder(s, with_answer=False) for s in samples[start : start + batch_size]]
        hidden, _ = _hidden(model, encoder, items, bank, fresh)
        last = hidden[torch.arange(len(items)), torch.tensor([len(e.ids) - 1 for e in items])]
        logits = model.lm_head(last)
        out.extend((logits[:, yes_id] > logits[:, no_id]).tolist())
    return out


def exact_matches(model: LlavaForConditionalGeneration, encoder: Encoder, samples: Sequence[ToySample], bank: torch.Tensor,
                  batch_size: int = 32) -> list[bool]:
    """Whether greedy decoding would reproduce each expected answer exactly (teacher-forced argmax, EOS included)."""
    out: list[bool] = []
    for start in range(0, len(samples), batch_size):
        items = [encoder(s) for s in samples[start : start + batch_size]]
        hidden, batch = _hidden(model, encoder, items, bank, None)
        targets = batch.labels[:, 1:]
        predicted = model.lm_head(hidden[:, :-1]).argmax(-1)
        ok = (predicted == targets) | (targets == IGNORE_INDEX)
        out.extend(ok.all(dim=1).tolist())
    return out


def _rate(values: Sequence[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def _yes_no_report(samples: Sequence[ToySample], predicted: Sequence[bool]) -> dict[str, Any]:
    correct = [p == s.label for s, p in zip(samples, predicted)]
    groups: dict[str, list[bool]] = {}
    for s, ok in zip(samples, correct):
        groups.setdefault(f"{'positive' if s.label else 'negative'}:{s.tag}", []).append(ok)
    return {
        "accuracy": _rate(correct), "yes_rate": _rate(list(predicted)), "true_yes_rate": _rate([bool(s.label) for s in samples]),
        "n": len(samples), "by_kind": {k: {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(groups.items())},
    }


def _match_report(samples: Sequence[ToySample], matched: Sequence[bool]) -> dict[str, Any]:
    groups: dict[str, list[bool]] = {}
    for s, ok in zip(samples, matched):
        groups.setdefault(s.tag or s.kind, []).append(ok)
    return {"accuracy": _rate(list(matched)), "n": len(samples), "by_kind": {k: {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(groups.items())}}


GATES = {"attribute": 0.95, "presence": 0.90, "introduced": 0.85}


def evaluate_quality(model: LlavaForConditionalGeneration, encoder: Encoder, eval_set: EvalSet, bank: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """Held-out quality of the base before any personalization, with the issue's gates.

    Returns:
        ``attribute`` (exact bare-word answers to world attribute questions: "this subject" alone
        or "the red pet" among others), ``conversation`` (exact conversation.yaml answers),
        ``presence`` (described subject, yes/no accuracy and yes-rate), ``introduced`` (subject
        introduced by a description, pool names; half the negatives one-fine-attribute
        lookalikes), ``introduced_new_identifier`` (the same with mean-initialised identifiers),
        ``text`` (text-only answers about an introduced subject), ``category``, and ``gates``.
    """
    model.eval()
    report: dict[str, Any] = {
        "attribute": _match_report(eval_set.attribute, exact_matches(model, encoder, eval_set.attribute, bank)),
        "conversation": _match_report(eval_set.conversation, exact_matches(model, encoder, eval_set.conversation, bank)),
        "text": _match_report(eval_set.text, exact_matches(model, encoder, eval_set.text, bank)),
        "presence": _yes_no_report(eval_set.presence, yes_no_predictions(model, encoder, eval_set.presence, bank)),
        "introduced": _yes_no_report(eval_set.introduced, yes_no_predictions(model, encoder, eval_set.introduced, bank)),
        "introduced_new_identifier": _yes_no_report(
            eval_set.introduced, yes_no_predictions(model, encoder, eval_set.introduced, bank, fresh=torch.Generator().manual_seed(seed))
        ),
        "category": _yes_no_report(eval_set.category, yes_no_predictions(model, encoder, eval_set.category, bank)),
        "verify": _yes_no_report(eval_set.verify, yes_no_predictions(model, encoder, eval_set.verify, bank)),
        "text_verify": _yes_no_report(eval_set.text_verify, yes_no_predictions(model, encoder, eval_set.text_verify, bank)),
        "named": _yes_no_report(eval_set.named, yes_no_predictions(model, encoder, eval_set.named, bank)) if eval_set.named else None,
    }
    report["gates"] = {
        "attribute>=0.95": report["attribute"]["accuracy"] >= GATES["attribute"],
        "presence>=0.90": report["presence"]["accuracy"] >= GATES["presence"],
        "presence_yes_rate_within_0.05": abs(report["presence"]["yes_rate"] - report["presence"]["true_yes_rate"]) <= 0.05,
        "introduced>=0.85": report["introduced"]["accuracy"] >= GATES["introduced"],
        "introduced_fine_lookalikes>=0.85": report["introduced"]["by_kind"].get("negative:fine", {}).get("accuracy", 0) >= GATES["introduced"],
    }
    return report


def quick_report(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of :func:`evaluate_quality` (for progress logs)."""
    return {
        "attribute": report["attribute"]["accuracy"], "conversation": report["conversation"]["accuracy"],
        "text": report["text"]["accuracy"], "presence": report["presence"]["accuracy"],
        "presence_yes_rate": report["presence"]["yes_rate"], "introduced": report["introduced"]["accuracy"],
        "introduced_fine": report["introduced"]["by_kind"].get("negative:fine", {}).get("accuracy", float("nan")),
        "introduced_new_id": report["introduced_new_identifier"]["accuracy"], "category": report["category"]["accuracy"],
        "verify": report["verify"]["accuracy"], "verify_yes_rate": report["verify"]["yes_rate"],
        "text_verify": report["text_verify"]["accuracy"],
        **({"named": report["named"]["accuracy"], "named_yes_rate": report["named"]["yes_rate"],
            "named_lookalike": report["named"]["by_kind"].get("negative:lookalike", {}).get("accuracy")} if report["named"] else {}),
    }
