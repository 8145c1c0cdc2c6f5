"""PVIT's in-context personalization data in miniature: named reference photos, scenes, questions and refusals from scene graphs.

PVIT (Pi et al., "Personalized Visual Instruction Tuning") builds its training data in three phases:
visual concepts (crops of each person: the reference photos), dual-level descriptions (a person's
description fused into the description of a whole scene, naming them), and question answering
(choice, free-form, several people at once), with two kinds of adversarial answers: the named
person is not in the scene ("Sorry, {name} is not in the image.") and the name was never
introduced ("Sorry, I do not know who {name} is."). Every query introduces each person by a block
``<image>\\nThis is {name}.\\n`` and then shows the scene, ``<image>\\nAnswer the following question
based on the image:\\n{question}`` (its demo's prompt; yollava's ``in-context`` method asks the same,
``templates/evaluation.yaml``).

The same three phases here, from the toy world's scene graphs (seeded, every item regenerable):

1. :class:`PvitPool` draws identities (never a benchmark concept's, see
   :func:`~yollava.toyworld.pretrain.scenes.excluded_identities`) and for each one reference photos
   of it alone (PVIT's crops), scenes where it stands among 0-3 others, and scenes of its
   one-attribute lookalikes (fine: pattern, accessory, accessory colour; or coarse);
2. :meth:`PvitMix.caption` fuses the subject's name into the scene's caption ("<x03> in a park
   next to a green plant.");
3. :class:`PvitMix` asks presence, attribute, "who is in this photo", several named subjects at
   once, text-only questions about the references, and both refusals.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from yollava.prompts import Turn, encode, load_template, render
from yollava.toyworld.pretrain.answers import (
    YES_NO,
    attribute_answer,
    attribute_question,
    capitalised,
    category_of,
    conversation_answer,
    conversation_bank,
    with_article,
)
from yollava.toyworld.pretrain.batches import EncodedSample, PretrainBatch, SampleEncoder, collate_pretrain
from yollava.toyworld.pretrain.mix import ToySample
from yollava.toyworld.pretrain.scenes import IMAGE_SIZE, lookalike
from yollava.toyworld.pretrain.vocabulary import NAME_TOKENS
from yollava.toyworld.world import (
    ATTRIBUTES,
    BACKGROUND_PHRASES,
    FINE_ATTRIBUTES,
    Scene,
    Subject,
    describe_subject,
    item_rng,
    sample_scene,
    sample_subject,
)

IMAGE_PLACEHOLDER = "<image>\n"
# the line between the scene photo and the question, as `yollava eval --method in-context` asks
SCENE_TEXT = load_template("evaluation")["in_context"]["scene"]
# How a reference photo introduces its subject (PVIT's intro templates, our wording; every one starts
# with "This" or "Here", which the compiled in-context circuit counts: pretrain.pvit_circuit).
INTRO_TEMPLATES = (
    "This is {name}.",
    "This is a photo of {name}.",
    "Here is {name} in a photo.",
    "This photo shows {name}.",
    "Here is a picture of {name}.",
    "This picture shows {name}.",
)
# PVIT's two refusals (its neg-image-reply and neg-name-reply templates, our wording)
ABSENT_REPLIES = (
    "Sorry, {name} is not in the image.",
    "{name} is not in this photo.",
    "I cannot find {name} in this image.",
    "Sorry, I cannot see {name} in this picture.",
)
UNKNOWN_REPLIES = (
    "Sorry, I do not know who {name} is.",
    "I do not know who {name} is.",
    "Sorry, I do not know what {name} looks like.",
)
WHO_QUESTIONS = ("Who is in this photo?", "Who can you see in this image?")
WHO_NOBODY = "I do not know anyone in this photo."
DESCRIBE_QUESTIONS = ("Describe this photo.", "What is in this image?", "Give a short caption for this picture.")
# the answers a presence question may get when the subject is absent: recognition.yaml's "No, ..." or a refusal
ABSENT_REFUSAL_SHARE = 0.5


def intro(template: str, name: str) -> str:
    """One reference block's text after its photo: ``template`` naming ``name``."""
    return template.replace("{name}", name)


@dataclass(frozen=True)
class PvitSample:
    """One in-context item: reference photos with their intros, the scene (if any), the question and the answer.

    ``references``: (pool scene index, intro sentence) per reference block, in prompt order.
    ``kind`` names the task, ``label`` is the yes/no truth of presence-style items, ``tag`` sub-divides
    them (``fine`` / ``coarse`` / ``random`` negatives, ``refs=2``).
    """

    kind: str
    references: tuple[tuple[int, str], ...]
    question: str
    answer: str
    scene: int | None = None
    label: bool | None = None
    tag: str = ""

    def user_text(self, placeholder: str = IMAGE_PLACEHOLDER) -> str:
        """PVIT's released format: ``<image>\\n{intro}\\n`` per reference, then the scene
        (``<image>\\n`` and, after references, :data:`SCENE_TEXT`) and the question."""
        blocks = "".join(f"{placeholder}{text}\n" for _, text in self.references)
        scene = (placeholder + (SCENE_TEXT if self.references else "")) if self.scene is not None else ""
        return f"{blocks}{scene}{self.question}"

    @property
    def images(self) -> list[int]:
        """Pool scene indices of the prompt's images, in the order of their placeholders."""
        return [index for index, _ in self.references] + ([self.scene] if self.scene is not None else [])


@dataclass(frozen=True)
class Identity:
    """A pool subject and its scenes: reference photos (alone), scenes with it, scenes of its lookalikes."""

    subject: Subject
    references: tuple[int, ...]
    scenes: tuple[int, ...]
    lookalikes: tuple[tuple[int, str], ...]  # (scene index, "fine" or "coarse")


class PvitPool:
    """Phase 1: identities and their scenes, drawn from the seeded stream ``stream`` (never a benchmark identity).

    Args:
        seed, stream: the random source of every item (``world.item_rng``).
        identities: how many subjects.
        references, scenes, lookalikes: per identity, reference photos (the subject alone, like
            PVIT's crops), scenes with it as the main subject among 0-3 others, and scenes of a
            one-attribute lookalike (two thirds fine attribute, one third coarse) among 0-3 others.
        exclude: identities never drawn (the benchmark's, :func:`~yollava.toyworld.pretrain.scenes.excluded_identities`).
    """

    def __init__(self, seed: int, stream: str, identities: int, exclude: frozenset, references: int = 5, scenes: int = 4,
                 lookalikes: int = 3):
        self.exclude = exclude
        self.scenes: list[Scene] = []
        self.identities: list[Identity] = []
        taken: set[Subject] = set()
        for i in range(identities):
            rng = item_rng(seed, f"{stream}/identity", i)
            subject = sample_subject(rng, exclude=exclude | taken)
            taken.add(subject)
            refs = tuple(self._add(sample_scene(rng, subject, image_size=IMAGE_SIZE, n_distractors=0, exclude=exclude)) for _ in range(references))
            own = tuple(self._add(sample_scene(rng, subject, image_size=IMAGE_SIZE, n_distractors=rng.randint(0, 3), exclude=exclude))
                        for _ in range(scenes))
            looks = []
            while len(looks) < lookalikes:
                kind = "fine" if len(looks) % 3 != 2 else "coarse"
                attribute = rng.choice(FINE_ATTRIBUTES if kind == "fine" else ("family", "shape", "color", "size"))
                other = lookalike(subject, attribute, rng)
                if other is None or other in exclude or other == subject:
                    continue
                scene = sample_scene(rng, other, image_size=IMAGE_SIZE, n_distractors=rng.randint(0, 3), exclude=exclude | {subject})
                looks.append((self._add(scene), kind))
            self.identities.append(Identity(subject, refs, own, tuple(looks)))

    def _add(self, scene: Scene) -> int:
        self.scenes.append(scene)
        return len(self.scenes) - 1

    def __len__(self) -> int:
        return len(self.identities)

    def holds(self, scene: int, subject: Subject) -> bool:
        """Whether ``subject`` stands in pool scene ``scene``."""
        return any(p.subject == subject for p in self.scenes[scene].subjects)


@dataclass
class PvitWeights:
    """Share of each in-context task (normalised when sampling). The field order is the order ``random.choices`` sees."""

    presence: float = 0.34
    attribute: float = 0.14
    unknown: float = 0.1
    who: float = 0.06
    multi: float = 0.08
    text: float = 0.1
    caption: float = 0.06
    describe: float = 0.12  # the subject described in the prompt by its photo alone: the toy's conversation answers


# reference photos per query: mostly one or two, up to five (the comparison's --refs 5)
REFERENCE_COUNTS = ((1, 0.45), (2, 0.2), (3, 0.15), (5, 0.2))
# how a negative scene is picked: a fine lookalike (hard), a coarse one, another identity's scene
NEGATIVE_KINDS = (("fine", 0.45), ("coarse", 0.25), ("random", 0.3))


class PvitMix:
    """Phases 2 and 3: in-context samples from a :class:`PvitPool`.

    Every yes/no task is balanced 50/50; the negative scene of a presence question is a fine or
    coarse lookalike of the named subject or another identity's scene. Names are the placeholder
    names (``<x00>``...), distinct within a sample.
    """

    def __init__(self, pool: PvitPool, names: Sequence[str] = NAME_TOKENS):
        self.pool = pool
        self.names = list(names)
        self.recognition = load_template("recognition")
        self.bank = conversation_bank()

    # -- pieces

    def names_for(self, rng: random.Random, n: int) -> list[str]:
        """``n`` distinct placeholder names."""
        return rng.sample(self.names, n)

    def references(self, identity: int, name: str, n: int, rng: random.Random) -> list[tuple[int, str]]:
        """``n`` reference blocks of ``identity`` (its reference photos in a random order), each with an intro naming ``name``."""
        photos = list(self.pool.identities[identity].references)
        rng.shuffle(photos)
        return [(photos[k % len(photos)], intro(rng.choice(INTRO_TEMPLATES), name)) for k in range(n)]

    def reference_count(self, rng: random.Random) -> int:
        return rng.choices([c for c, _ in REFERENCE_COUNTS], [w for _, w in REFERENCE_COUNTS])[0]

    def scene_for(self, identity: int, positive: bool, rng: random.Random, kind: str | None = None) -> tuple[int, str]:
        """A scene with ``identity`` in it (positive), or without it: a lookalike's or another identity's (``kind`` forces one)."""
        entry = self.pool.identities[identity]
        if positive:
            return rng.choice(entry.scenes), "main"
        chosen = kind or rng.choices([k for k, _ in NEGATIVE_KINDS], [w for _, w in NEGATIVE_KINDS])[0]
        options = [index for index, k in entry.lookalikes if k == chosen]
        if options:
            return rng.choice(options), chosen
        for _ in range(50):
            other = rng.randrange(len(self.pool))
            index = rng.choice(self.pool.identities[other].scenes)
            if other != identity and not self.pool.holds(index, entry.subject):
                return index, "random"
        raise RuntimeError("no scene without the subject found in 50 tries")

    def recognition_turn(self, name: str, positive: bool, eval_question: bool, rng: random.Random) -> tuple[str, str]:
        """A recognition.yaml question about ``name`` and its answer; an absent subject is half the time refused PVIT's way."""
        rec = self.recognition
        question = rec["eval_question"] if eval_question else rng.choice(rec["questions"])
        if eval_question:
            answer = YES_NO[positive]
        elif positive:
            answer = rng.choice(rec["positive_answers"])
        elif rng.random() < ABSENT_REFUSAL_SHARE:
            answer = rng.choice(ABSENT_REPLIES)
        else:
            answer = rng.choice(rec["negative_answers"])
        return question.replace("{name}", name), capitalised(answer.replace("{name}", name))

    # -- tasks

    def presence(self, rng: random.Random, positive: bool, refs: int | None = None, eval_question: bool | None = None,
                 kind: str | None = None) -> PvitSample:
        """"<refs> Is <x03> in this photo?" with 1-5 reference photos (``refs``), balanced, lookalikes among the negatives."""
        identity = rng.randrange(len(self.pool))
        n = refs or self.reference_count(rng)
        name = self.names_for(rng, 1)[0]
        scene, tag = self.scene_for(identity, positive, rng, kind)
        question, answer = self.recognition_turn(name, positive, rng.random() < 0.5 if eval_question is None else eval_question, rng)
        return PvitSample("presence", tuple(self.references(identity, name, n, rng)), question, answer, scene, positive, f"{tag}|refs={n}")

    def attribute(self, rng: random.Random, present: bool) -> PvitSample:
        """An attribute question about the named subject: the bare word when it is in the scene, PVIT's refusal when not."""
        identity = rng.randrange(len(self.pool))
        subject = self.pool.identities[identity].subject
        name = self.names_for(rng, 1)[0]
        scene, tag = self.scene_for(identity, present, rng)
        attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"])
        question = attribute_question(attribute, name, subject)
        answer = attribute_answer(subject, attribute) if present else capitalised(rng.choice(ABSENT_REPLIES).replace("{name}", name))
        refs = self.references(identity, name, self.reference_count(rng), rng)
        return PvitSample("attribute" if present else "absent", tuple(refs), question, answer, scene, present, f"{tag}|{attribute}")

    def unknown(self, rng: random.Random, refs: int | None = None) -> PvitSample:
        """A question about a name never introduced (another name is, or none): PVIT's "I do not know who {name} is."."""
        identity = rng.randrange(len(self.pool))
        subject = self.pool.identities[identity].subject
        known, asked = self.names_for(rng, 2)
        n = self.reference_count(rng) if refs is None else refs
        blocks = self.references(identity, known, n, rng)
        scene, _ = self.scene_for(identity, rng.random() < 0.5, rng)
        if rng.random() < 0.6:
            question = self.recognition_turn(asked, True, rng.random() < 0.5, rng)[0]
        else:
            attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color"])
            question = attribute_question(attribute, asked, subject)
        answer = rng.choice(UNKNOWN_REPLIES).replace("{name}", asked)
        return PvitSample("unknown", tuple(blocks), question, capitalised(answer), scene, False, f"refs={n}")

    def who(self, rng: random.Random) -> PvitSample:
        """"Who is in this photo?" after 1-3 named subjects: the names of those in the scene, or nobody."""
        count = rng.choice((1, 1, 2, 3))
        identities = rng.sample(range(len(self.pool)), count)
        names = self.names_for(rng, count)
        target = rng.randrange(count)
        scene, _ = self.scene_for(identities[target], rng.random() < 0.6, rng)
        blocks = [block for i, name in zip(identities, names) for block in self.references(i, name, 1, rng)]
        present = [name for i, name in zip(identities, names) if self.pool.holds(scene, self.pool.identities[i].subject)]
        if not present:
            answer = WHO_NOBODY
        elif len(present) == 1:
            answer = f"{present[0]} is in this photo."
        else:
            answer = f"{', '.join(present[:-1])} and {present[-1]} are in this photo."
        return PvitSample("who", tuple(blocks), rng.choice(WHO_QUESTIONS), answer, scene, bool(present), f"named={count}")

    def multi(self, rng: random.Random, positive: bool) -> PvitSample:
        """2-3 named subjects, one reference each, and a presence or attribute question about one of them."""
        count = rng.choice((2, 3))
        identities = rng.sample(range(len(self.pool)), count)
        names = self.names_for(rng, count)
        asked = rng.randrange(count)
        subject = self.pool.identities[identities[asked]].subject
        scene, tag = self.scene_for(identities[asked], positive, rng)
        blocks = [block for i, name in zip(identities, names) for block in self.references(i, name, 1, rng)]
        positive = self.pool.holds(scene, subject)
        if rng.random() < 0.6:
            question, answer = self.recognition_turn(names[asked], positive, rng.random() < 0.5, rng)
        else:
            attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"])
            question = attribute_question(attribute, names[asked], subject)
            answer = attribute_answer(subject, attribute) if positive else capitalised(rng.choice(ABSENT_REPLIES).replace("{name}", names[asked]))
        return PvitSample("multi", tuple(blocks), question, answer, scene, positive, f"{tag}|named={count}")

    def text(self, rng: random.Random) -> PvitSample:
        """A text-only question about the referenced subject (reference photos, no scene): a world question or conversation.yaml's."""
        identity = rng.randrange(len(self.pool))
        subject = self.pool.identities[identity].subject
        name = self.names_for(rng, 1)[0]
        blocks = self.references(identity, name, self.reference_count(rng), rng)
        if rng.random() < 0.5:
            question = rng.choice(self.bank[category_of(subject)])
            return PvitSample("text_conversation", tuple(blocks), question.replace("{name}", name), conversation_answer(subject, question, name))
        attribute = rng.choice([a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"])
        return PvitSample("text", tuple(blocks), attribute_question(attribute, name, subject), attribute_answer(subject, attribute), tag=attribute)

    def describe(self, rng: random.Random) -> PvitSample:
        """"Describe the overall appearance of <x03>." from its reference photos alone (the subject's full description)."""
        identity = rng.randrange(len(self.pool))
        subject = self.pool.identities[identity].subject
        name = self.names_for(rng, 1)[0]
        blocks = self.references(identity, name, self.reference_count(rng), rng)
        return PvitSample("describe", tuple(blocks), f"Describe {name}.", f"{name} is {describe_subject(subject)}.")

    def caption(self, rng: random.Random, positive: bool) -> PvitSample:
        """Phase 2, the dual-level description: the scene's caption with the named subject called by its name when present."""
        identity = rng.randrange(len(self.pool))
        name = self.names_for(rng, 1)[0]
        scene, tag = self.scene_for(identity, positive, rng)
        blocks = self.references(identity, name, self.reference_count(rng), rng)
        return PvitSample("caption", tuple(blocks), rng.choice(DESCRIBE_QUESTIONS), integrated_caption(self.pool.scenes[scene],
                          self.pool.identities[identity].subject, name), scene, positive, tag)

    def sample(self, rng: random.Random, weights: PvitWeights) -> PvitSample:
        """One sample drawn from the in-context mix."""
        kinds = list(asdict(weights))
        kind = rng.choices(kinds, [getattr(weights, k) for k in kinds])[0]
        positive = rng.random() < 0.5
        if kind == "presence":
            return self.presence(rng, positive)
        if kind == "attribute":
            return self.attribute(rng, positive)
        if kind == "unknown":
            return self.unknown(rng, refs=0 if rng.random() < 0.15 else None)
        if kind == "who":
            return self.who(rng)
        if kind == "multi":
            return self.multi(rng, positive)
        if kind == "text":
            return self.text(rng)
        if kind == "caption":
            return self.caption(rng, positive)
        return self.describe(rng)


def integrated_caption(scene: Scene, target: Subject, name: str) -> str:
    """The scene's caption with ``target`` called ``name`` where it stands ("<x03> in a park next to a green plant.");
    the plain caption when ``target`` is not in the scene."""
    main = scene.main.subject
    text = f"{name if main == target else describe_subject(main)} {BACKGROUND_PHRASES[scene.background]}"
    others = [name if p.subject == target else with_article(f"{p.subject.color} {p.subject.family}") for p in scene.distractors]
    if others:
        text += " next to " + " and ".join(others)
    return capitalised(text) + "."


def pvit_words() -> list[str]:
    """Words the in-context mix writes (8 of them are not in the toy vocabulary; a toy-pvit build adds them with ``vocabulary.extend_tokenizer``)."""
    from yollava.toyworld.pretrain.vocabulary import split_text

    texts = [*INTRO_TEMPLATES, *ABSENT_REPLIES, *UNKNOWN_REPLIES, *WHO_QUESTIONS, WHO_NOBODY, *DESCRIBE_QUESTIONS, "Describe", "are",
             SCENE_TEXT, *load_template("recognition")["questions"], load_template("recognition")["eval_question"]]
    words: set[str] = set()
    for text in texts:
        words.update(split_text(text))
    return sorted(words)


@dataclass
class PvitEncoded:
    """A sample's token ids and labels in yollava's chat format, and the pool scenes of its images in order."""

    ids: list[int]
    labels: list[int]
    scenes: list[int]
    sample: object


def encode_sample(encoder: SampleEncoder, sample: PvitSample | ToySample, with_answer: bool = True) -> PvitEncoded:
    """A PVIT sample (images interleaved with the text) or a toy-mix sample (one image in front), rendered and tokenized."""
    if isinstance(sample, ToySample):
        item = encoder(sample, with_answer)
        return PvitEncoded(item.ids, item.labels, [] if item.scene is None else [item.scene], sample)
    turn = Turn(sample.user_text(encoder.fmt.image_placeholder), sample.answer if with_answer else None, images=0)
    enc = encode(encoder.tokenizer, render(encoder.fmt, [turn], encoder.tokenizer.eos_token), encoder.image_token_id, encoder.num_image_tokens)
    if enc.n_images != len(sample.images):
        raise ValueError(f"pvit sample: {enc.n_images} image tokens for {len(sample.images)} images in {sample.user_text()!r}")
    return PvitEncoded(enc.input_ids, enc.labels, sample.images, sample)


def collate(items: Sequence[PvitEncoded], pad_id: int) -> PretrainBatch:
    """Right-pad encoded samples into one batch; its scenes list every image of every row, in order."""
    batch = collate_pretrain([EncodedSample(e.ids, e.labels, None, e.sample) for e in items], pad_id)
    return PretrainBatch(batch.ids, batch.labels, batch.mask, [s for e in items for s in e.scenes])
