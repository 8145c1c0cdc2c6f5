"""The toy world's phrasings and answer rules: how pretraining asks about a subject and what the right answer is."""

from __future__ import annotations

from yollava.errors import YollavaError
from yollava.prompts import load_template
from yollava.toyworld.world import TEXT_QUESTIONS, Subject, article, describe_subject

# the neutral names yollava's conversation data uses before swapping in the identifier (DESIGN §2)
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
YES_NO = {True: "Yes.", False: "No."}


def with_article(words: str) -> str:
    """"a red hat", "an orange pet"."""
    return f"{article(words)} {words}"


def capitalised(text: str) -> str:
    """``text`` with its first letter upper-case (sentence starts)."""
    return text[:1].upper() + text[1:]


def _accessory_phrase(subject: Subject) -> str:
    return with_article(f"{subject.accessory_color} {subject.accessory}")


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
    s, cap = name, capitalised(name)
    acc = subject.accessory != "none"
    looks = f"{subject.color} and {subject.pattern}"
    rules = {
        "What colour is {name}?": f"{cap} is {subject.color}.",
        "What shape is {name}?": f"{cap} is {subject.shape}.",
        "What is {name} made of or covered with?": f"{cap} is covered with {with_article(f'{subject.pattern} {subject.color}')} surface.",
        "What kind of thing is {name}?": f"{cap} is {with_article(subject.family)}.",
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
        "About how old does {name} look?": f"{cap} is {with_article(subject.size)} person.",
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
