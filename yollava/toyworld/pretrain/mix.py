"""The pretraining data mix: samples of every task (captions, attribute and yes/no questions, introduced subjects) drawn from scene graphs."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from yollava.prompts import load_template
from yollava.toyworld.pretrain.answers import (
    CAPTION_QUESTIONS,
    PRESENCE_ANSWERS,
    PRESENCE_QUESTIONS,
    STAND_IN,
    YES_NO,
    attribute_answer,
    attribute_question,
    capitalised,
    category_of,
    conversation_answer,
    conversation_bank,
    with_article,
)
from yollava.toyworld.pretrain.scenes import lookalike
from yollava.toyworld.pretrain.vocabulary import NAME_TOKENS
from yollava.toyworld.world import (
    ATTRIBUTES,
    COUNT_WORDS,
    FINE_ATTRIBUTES,
    VISUAL_QUESTIONS,
    Scene,
    Subject,
    caption,
    describe_subject,
    sample_subject,
    side_of,
)

# Subjects in a multi-subject scene are named by two attributes ("the red pet"); the second is
# always the family except when the family itself is asked.
REFERENCE_PAIRS = (("color", "family"), ("pattern", "family"), ("size", "family"), ("color", "shape"))


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


@dataclass
class MixWeights:
    """Share of each task in instruction tuning (normalised when sampling); defaults: the compiled recipe's.

    The field order is the order ``random.choices`` sees: reordering fields changes every draw.
    """

    caption: float = 0.04
    attribute: float = 0.3
    verify: float = 0.1
    presence: float = 0.15
    introduced: float = 0.2
    text: float = 0.12
    category: float = 0.03
    visual: float = 0.03


def verify_question(name: str, target: Subject, attribute: str, positive: bool, rng: random.Random) -> str:
    """"Is {name} red?" about ``target``'s true value (positive) or another value of the attribute."""
    value = getattr(target, attribute)
    if not positive:
        value = rng.choice([v for v in ATTRIBUTES[attribute] if v not in (value, "none")])
    return {
        "family": f"Is {name} {with_article(str(value))}?",
        "accessory": f"Does {name} have {with_article(str(value))}?",
        "accessory_color": f"Is the {target.accessory} of {name} {value}?",
    }.get(attribute, f"Is {name} {value}?")


def _askable(subject: Subject) -> list[str]:
    """Attributes an open question may ask about ``subject`` (the accessory colour only when it has an accessory)."""
    return [a for a in ATTRIBUTES if a != "accessory_color" or subject.accessory != "none"]


def _verifiable(subject: Subject) -> list[str]:
    """Attributes a yes/no comparison may ask about ``subject`` (accessory and its colour only when it has one)."""
    return [a for a in ATTRIBUTES if a not in ("accessory", "accessory_color") or subject.accessory != "none"]


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
    BARE_SHARE = 0.5

    def __init__(self, scenes: Sequence[Scene], exclude: frozenset, names: Sequence[str] = NAME_TOKENS):
        self.scenes = list(scenes)
        self.exclude = exclude
        self.names = list(names)
        self.bank = conversation_bank()
        conversation = load_template("conversation")
        self.category_question = conversation["category_question"]
        self.recognition = load_template("recognition")
        self.single = [i for i, s in enumerate(self.scenes) if not s.distractors]
        self.single_person = [i for i in self.single if self.scenes[i].main.subject.is_person]
        self.single_other = [i for i in self.single if not self.scenes[i].main.subject.is_person]

    # -- pieces

    def negative(self, scene: Scene, rng: random.Random, kind: str | None = None) -> tuple[Subject, str]:
        """A subject absent from ``scene`` and not a benchmark identity, with the kind of negative (``kind``: force one)."""
        present = {p.subject for p in scene.subjects}
        for _ in range(50):
            chosen = kind or rng.choices([k for k, _ in self.NEGATIVE_KINDS], [w for _, w in self.NEGATIVE_KINDS])[0]
            if chosen == "fine":
                candidate = lookalike(scene.main.subject, rng.choice(FINE_ATTRIBUTES), rng)
            elif chosen == "coarse":
                candidate = lookalike(scene.main.subject, rng.choice(("family", "shape", "color", "size")), rng)
            elif chosen == "distractor" and scene.distractors:
                other = rng.choice(scene.distractors).subject
                candidate = lookalike(other, rng.choice(list(ATTRIBUTES)[:-2] + ["accessory", "size"]), rng)
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
        return self.negative(scene, rng)

    def pick_name(self, rng: random.Random, avoid: str | None = None) -> str:
        """A placeholder name (:data:`~yollava.toyworld.pretrain.vocabulary.NAME_TOKENS`) other than ``avoid``."""
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

    def recognition_turn(self, name: str, positive: bool, eval_question: bool, rng: random.Random) -> tuple[str, str]:
        """A recognition.yaml question about ``name`` and its answer (the eval question gets a bare Yes./No.)."""
        rec = self.recognition
        if eval_question:
            return rec["eval_question"].replace("{name}", name), YES_NO[positive]
        question = rng.choice(rec["questions"])
        answer = rng.choice(rec["positive_answers" if positive else "negative_answers"])
        return question.replace("{name}", name), answer.replace("{name}", name)

    # -- tasks

    def caption(self, index: int, rng: random.Random) -> ToySample:
        """Caption of the scene (the projector-alignment task)."""
        return ToySample("caption", rng.choice(CAPTION_QUESTIONS), capitalised(caption(self.scenes[index])) + ".", index)

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
            attribute = rng.choice(_askable(subject))
            return ToySample("attribute", attribute_question(attribute, STAND_IN["other"], subject), attribute_answer(subject, attribute), index, tag=attribute)
        for _ in range(10):
            target = rng.choice(scene.subjects).subject
            attribute = rng.choice(_askable(target))
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
        if rng.random() < 0.3:
            first, second = rng.choice(REFERENCE_PAIRS)
            target = rng.choice(scene.subjects).subject
            values = {first: getattr(target, first), second: getattr(target, second)}
            if not positive:
                changed = rng.choice((first, second))
                values[changed] = rng.choice([v for v in ATTRIBUTES[changed] if v != values[changed]])
            truth = any(all(getattr(p.subject, a) == v for a, v in values.items()) for p in scene.subjects)
            words = f"{values[first]} {values[second]}" if second == "family" else f"{values[first]} {values[second]} subject"
            return ToySample("verify", f"Is there {with_article(words)} in this photo?", YES_NO[truth], index, truth, "partial")
        target = scene.main.subject if not scene.distractors else rng.choice(scene.subjects).subject
        attributes = _verifiable(target)
        for _ in range(10):
            attribute = rng.choice(attributes)
            name = STAND_IN["other"] if not scene.distractors else self._reference(scene, target, attribute, rng)
            if name is not None:
                break
        else:
            return self.presence(index, rng, positive)
        return ToySample("verify", verify_question(name, target, attribute, positive, rng), YES_NO[positive], index, positive, attribute)

    def text_verify(self, subject: Subject, rng: random.Random, positive: bool) -> ToySample:
        """"<x03> is a red … hat. Is <x03> striped?": a yes/no comparison in text alone.

        Equality of a described and an asked attribute is an interaction with no first-order signal;
        learnt by gradient descent it took a long plateau (about 600 steps of batch 32,
        docs/toyworld.md), which is why the compiled recipe builds the comparison instead.
        """
        name = self.pick_name(rng)
        attribute = rng.choice(_verifiable(subject))
        question = verify_question(name, subject, attribute, positive, rng)
        return ToySample("text_verify", f"{name} is {describe_subject(subject)}. {question}", YES_NO[positive], None, positive, attribute)

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
        name = self.pick_name(rng)
        intro = f"{name} is {describe_subject(subject)}."
        if second if second is not None else rng.random() < 0.2:
            other_name = self.pick_name(rng, avoid=name)
            other, _ = self._described(scene, rng, rng.random() < 0.5)
            other_intro = f"{other_name} is {describe_subject(other)}."
            intro = f"{intro} {other_intro}" if rng.random() < 0.5 else f"{other_intro} {intro}"
            tag = f"{tag}+second"
        question, answer = self.recognition_turn(name, positive, eval_question, rng)
        return ToySample("introduced", f"{intro} {question}", answer, index, positive, tag)

    def introduced_lookalike(self, index: int, rng: random.Random) -> ToySample:
        """The eval question about an introduced one-fine-attribute lookalike of the main subject (answer "No.")."""
        subject, _ = self.negative(self.scenes[index], rng, "fine")
        name = self.pick_name(rng)
        question = self.recognition["eval_question"].replace("{name}", name)
        return ToySample("introduced", f"{name} is {describe_subject(subject)}. {question}", YES_NO[False], index, False, "fine")

    def text(self, subject: Subject, rng: random.Random) -> ToySample:
        """Text-only question about a subject introduced by its description (what soft prompts carry)."""
        name = self.pick_name(rng)
        intro = f"{name} is {describe_subject(subject)}."
        if rng.random() < 0.5:
            question = rng.choice(self.bank[category_of(subject)])
            return ToySample("text_conversation", f"{intro} {question.replace('{name}', name)}", conversation_answer(subject, question, name))
        attribute = rng.choice(_askable(subject))
        return ToySample("text", f"{intro} {attribute_question(attribute, name, subject)}", attribute_answer(subject, attribute), tag=attribute)

    def category(self, rng: random.Random, positive: bool) -> ToySample:
        """conversation.yaml's category question on a single-subject scene, balanced person / not."""
        index = rng.choice(self.single_person if positive else self.single_other)
        return ToySample("category", self.category_question, YES_NO[positive], index, positive)

    def visual(self, index: int, rng: random.Random) -> ToySample:
        """A benchmark-style visual question about an introduced main subject (place, side, count, neighbour)."""
        scene = self.scenes[index]
        name = self.pick_name(rng)
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
        if kind in ("verify", "presence", "introduced"):
            # an unused draw: earlier recipes moved a share of these questions to single-subject
            # scenes here (0 in the compiled recipe); the shipped weights were drawn with it
            rng.random()
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
            return self.introduced(index, rng, positive, eval_question=rng.random() < self.BARE_SHARE)
        if kind == "text":
            subject = self.scenes[index].main.subject if rng.random() < 0.5 else sample_subject(rng, exclude=self.exclude)
            return self.text_verify(subject, rng, positive) if rng.random() < 0.5 else self.text(subject, rng)
        if kind == "category":
            return self.category(rng, positive)
        return self.visual(index, rng)
