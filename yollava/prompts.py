"""Chat format, soft-prompt text, and token ids + label masks built from message segments."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from yollava.errors import YollavaError

IGNORE_INDEX = -100


def templates_dir() -> Path:
    """Folder of question banks and chat formats: the repo's templates/ or the installed copy."""
    repo = Path(__file__).resolve().parent.parent / "templates"
    if repo.is_dir():
        return repo
    return Path(str(resources.files("yollava") / "_templates"))


@functools.lru_cache(maxsize=None)
def load_template(name: str) -> dict[str, Any]:
    """Load ``templates/<name>.yaml``.

    Raises:
        YollavaError: no such template.
    """
    path = templates_dir() / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in templates_dir().glob("*.yaml"))
        raise YollavaError(f"template '{name}' not found in {templates_dir()}; available: {', '.join(available)}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ChatFormat:
    """A conversation format loaded from a template file (see templates/llava_v1.yaml)."""

    name: str
    version: int
    system: str
    user_role: str
    assistant_role: str
    separator: str
    role_suffix: str
    answer_end: str
    image_placeholder: str

    @classmethod
    def load(cls, name: str) -> "ChatFormat":
        data = load_template(name)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation; ``masked`` pieces carry no loss."""

    text: str
    masked: bool


@dataclass
class Turn:
    """One exchange: the user's text (with ``images`` placeholders in front) and the answer, if any."""

    user: str
    answer: str | None = None
    images: int = 0


def soft_prompt_text(soft_prompts: Sequence[str]) -> str:
    """The soft prompts of every loaded concept, in order, joined by spaces."""
    return " ".join(soft_prompts)


def render(fmt: ChatFormat, turns: Sequence[Turn], eos: str, prefix: str = "") -> list[Segment]:
    """Render a conversation into segments.

    ``prefix`` (the concepts' soft prompt) goes in front of the first user message, after its
    images. The last turn may have ``answer=None``: the segments then end with the assistant role,
    ready for generation. The space between the role and the answer belongs to the answer, so the
    generation prompt is exactly the training prompt (" Yes" is one token in LLaVA's tokenizer).
    """
    segments: list[Segment] = [Segment(fmt.system + fmt.separator if fmt.system else "", True)]
    for index, turn in enumerate(turns):
        user = turn.user
        if index == 0 and prefix:
            user = f"{prefix} {user}"
        text = f"{fmt.user_role}{fmt.role_suffix}{fmt.image_placeholder * turn.images}{user}{fmt.separator}"
        text += f"{fmt.assistant_role}{fmt.role_suffix.rstrip()}"
        segments.append(Segment(text, True))
        if turn.answer is None:
            if index != len(turns) - 1:
                raise ValueError("only the last turn may be unanswered")
            break
        end = fmt.answer_end.replace("{eos}", eos)
        segments.append(Segment(" " + turn.answer.strip() + end, False))
    return [s for s in segments if s.text]


@dataclass
class Encoded:
    """Token ids (images expanded) and labels (IGNORE_INDEX where masked)."""

    input_ids: list[int]
    labels: list[int]
    n_images: int
    answer_spans: list[tuple[int, int]] = field(default_factory=list)


def encode(tokenizer: Any, segments: Sequence[Segment], image_token_id: int, num_image_tokens: int) -> Encoded:
    """Tokenize the whole conversation once and label each token from the segment it came from.

    A token belongs to the segment holding its last character; a token that starts inside an
    earlier segment is allowed only if that earlier part is whitespace (" Yes" after "ASSISTANT:").
    Any other straddle raises: labels are never guessed.

    Each ``<image>`` token is then expanded to ``num_image_tokens`` copies (masked).

    Raises:
        ValueError: a token straddles a masked/unmasked boundary, or an answer does not end in EOS.
    """
    text = "".join(s.text for s in segments)
    bounds: list[tuple[int, int, bool]] = []
    position = 0
    for segment in segments:
        bounds.append((position, position + len(segment.text), segment.masked))
        position += len(segment.text)
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids: list[int] = encoding["input_ids"]
    offsets: list[tuple[int, int]] = encoding["offset_mapping"]
    labels: list[int] = []
    segment_of_token: list[int] = []
    for token_id, (start, end) in zip(ids, offsets):
        if end <= start:  # special tokens added by the tokenizer (BOS) carry no text
            labels.append(IGNORE_INDEX)
            segment_of_token.append(-1)
            continue
        seg = next(i for i, (lo, hi, _) in enumerate(bounds) if lo < end <= hi)
        lo = bounds[seg][0]
        if start < lo and text[start:lo].strip():
            raise ValueError(f"token {tokenizer.convert_ids_to_tokens(token_id)!r} straddles segments at {text[start:end]!r}")
        labels.append(IGNORE_INDEX if bounds[seg][2] else token_id)
        segment_of_token.append(seg)
    spans: list[tuple[int, int]] = []
    eos = tokenizer.eos_token_id
    for seg, (_, _, masked) in enumerate(bounds):
        if masked:
            continue
        positions = [i for i, s in enumerate(segment_of_token) if s == seg]
        if not positions or ids[positions[-1]] != eos:
            raise ValueError(f"answer segment {segments[seg].text!r} does not end with the EOS token")
        spans.append((positions[0], positions[-1] + 1))
    n_images = sum(1 for i in ids if i == image_token_id)
    expanded_ids: list[int] = []
    expanded_labels: list[int] = []
    shift = 0
    new_spans = []
    span_starts = {a: b for a, b in spans}
    for index, (token_id, label) in enumerate(zip(ids, labels)):
        if index in span_starts:
            new_spans.append((index + shift, span_starts[index] + shift))
        if token_id == image_token_id:
            expanded_ids.extend([image_token_id] * num_image_tokens)
            expanded_labels.extend([IGNORE_INDEX] * num_image_tokens)
            shift += num_image_tokens - 1
        else:
            expanded_ids.append(token_id)
            expanded_labels.append(label)
    return Encoded(expanded_ids, expanded_labels, n_images, new_spans)


# ----------------------------------------------------------------------------- evaluation prompts

# option letters of multiple-choice questions, in order
LETTERS = "ABCDEFGHIJ"


def multiple_choice_prompt(question: str, options: Sequence[str]) -> str:
    """``question`` with ``options`` lettered A, B, ... in the given order (templates/evaluation.yaml's
    ``multiple_choice``: LLaVA-1.5's own format, ending "Answer with the option's letter from the given
    choices directly.")."""
    template = load_template("evaluation")["multiple_choice"]
    lines = "\n".join(template["option"].replace("{letter}", LETTERS[i]).replace("{text}", text) for i, text in enumerate(options))
    return template["prompt"].replace("{question}", question).replace("{options}", lines)


# ----------------------------------------------------------------------------- recognition


@dataclass(frozen=True)
class RecognitionBank:
    """Question and answer phrasings for recognition (templates/recognition.yaml)."""

    eval_question: str
    questions: tuple[str, ...]
    positive_answers: tuple[str, ...]
    negative_answers: tuple[str, ...]

    @classmethod
    def load(cls, name: str = "recognition") -> "RecognitionBank":
        data = load_template(name)
        bank = cls(data["eval_question"], tuple(data["questions"]), tuple(data["positive_answers"]), tuple(data["negative_answers"]))
        for answer in bank.positive_answers:
            if not answer.startswith("Yes"):
                raise YollavaError(f"templates/{name}.yaml: positive answer {answer!r} must start with 'Yes'")
        for answer in bank.negative_answers:
            if not answer.startswith("No"):
                raise YollavaError(f"templates/{name}.yaml: negative answer {answer!r} must start with 'No'")
        return bank

    def sample(self, rng: random.Random, identifier: str, positive: bool) -> tuple[str, str]:
        """A random (question, answer) pair naming ``identifier``."""
        question = rng.choice(self.questions)
        answer = rng.choice(self.positive_answers if positive else self.negative_answers)
        return question.replace("{name}", identifier), answer.replace("{name}", identifier)

    def eval_prompt(self, identifier: str) -> str:
        return self.eval_question.replace("{name}", identifier)
