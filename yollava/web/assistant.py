"""The page's chat model: one answer at a time on the chat base, with exactly the concepts a conversation asked for attached."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from yollava.base import Base
from yollava.chat import ChatSession
from yollava.concept import ConceptArtifact, ConceptEntry, check_base, detach, list_concepts, load_concept, read_record, validate_name
from yollava.errors import YollavaError
from yollava.prompts import ChatFormat, Turn

# At most this many concepts in one conversation (each adds k+2 prompt tokens and its rows).
MAX_CHAT_CONCEPTS = 8
MAX_QUESTION_CHARS = 2000


@dataclass
class Conversation:
    """One browser tab's conversation, kept on the server (never sent back by the browser).

    Attributes:
        names: the concepts it talks about.
        image: the photo of the conversation (a stored upload), or None.
        turns: the answered questions so far.
    """

    names: tuple[str, ...] = ()
    image: str | None = None
    turns: list[Turn] = field(default_factory=list)

    def restart(self, names: Sequence[str], image: str | None) -> bool:
        """Start over when the concepts or the photo change (LLaVA-1.5 holds one photo per conversation); True if it did."""
        names = tuple(names)
        if names == self.names and image == self.image:
            return False
        self.names, self.image, self.turns = names, image, []
        return True


def chat_examples(names: Sequence[str]) -> list[str]:
    """Example prompts for the chosen concepts (the first one's identifier), with and without a photo."""
    if not names:
        return ["What is in this photo?", "Describe this photo."]
    name = f"<{names[0]}>"
    return [f"Is {name} in this photo?", f"What colour is {name}?", f"What is {name} doing?", f"Describe {name}."]


class Assistant:
    """Chat on one base shared by every browser tab: answers are generated one at a time under a lock.

    Before each answer the base's attached concepts are made exactly the conversation's (loaded from
    the store, reloaded when a concept was retrained, detached when no longer asked for), so no other
    tab's concept can appear in an answer.
    """

    def __init__(self, base: Base, store: str | Path, fmt: ChatFormat, max_new_tokens: int = 128):
        self.base = base
        self.store = Path(store)
        self.fmt = fmt
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()
        self._attached: dict[str, ConceptArtifact] = {}

    def entries(self) -> list[ConceptEntry]:
        """Every concept in the store with its status."""
        return list_concepts(self.store)

    def usable(self, entry: ConceptEntry) -> str | None:
        """None when ``entry`` can be chatted with on this base, else why not (damaged, other base)."""
        if not entry.ok or entry.record is None:
            return entry.status
        try:
            check_base(entry.record, self.base)
        except YollavaError as exc:
            return str(exc)
        return None

    def chat_names(self) -> list[str]:
        """Concepts that load on this base."""
        return [e.name for e in self.entries() if self.usable(e) is None]

    def use(self, names: Sequence[str]) -> list[ConceptArtifact]:
        """Attach exactly ``names`` to the base (call with :attr:`lock` held).

        Raises:
            YollavaError: a bad or missing name, a damaged concept, one trained on another base, too many.
        """
        names = list(dict.fromkeys(names))
        if len(names) > MAX_CHAT_CONCEPTS:
            raise YollavaError(f"{len(names)} concepts chosen; talk about at most {MAX_CHAT_CONCEPTS} at once")
        records = {}
        for name in names:
            validate_name(name)
            records[name] = read_record(self.store, name)
            check_base(records[name], self.base)
        for name, artifact in list(self._attached.items()):
            if name not in records or artifact.record.weights_sha256 != records[name].weights_sha256:
                detach(self.base, name)
                del self._attached[name]
        for name in names:
            if name not in self._attached:
                self._attached[name] = load_concept(self.base, self.store, name)
        return [self._attached[name] for name in names]

    def forget(self, name: str) -> None:
        """Detach ``name`` if it is attached (call with :attr:`lock` held; e.g. before it is removed)."""
        if name in self._attached:
            detach(self.base, name)
            del self._attached[name]

    def release(self) -> None:
        """Detach every concept (call with :attr:`lock` held): the base is as loaded."""
        for name in list(self._attached):
            detach(self.base, name)
            del self._attached[name]

    def ask(self, conversation: Conversation, question: str) -> Iterator[str]:
        """Answer ``question`` in ``conversation``, yielding the answer as it grows; the turn is remembered.

        The answer is generated in a thread of its own (so the text streams while it is made); a
        caller that stops reading does not stop it, and the next answer waits for it.

        Raises:
            YollavaError: an empty or overlong question, or what :meth:`use` raises.
        """
        question = question.strip()
        if not question:
            raise YollavaError("type a question first")
        if len(question) > MAX_QUESTION_CHARS:
            raise YollavaError(f"the question has {len(question)} characters; ask in at most {MAX_QUESTION_CHARS}")
        pieces: queue.Queue = queue.Queue()
        done = object()
        turns = list(conversation.turns)

        def generate() -> None:
            try:
                with self.lock:
                    session = ChatSession(self.base, self.use(conversation.names), self.fmt, self.max_new_tokens)
                    session.image = conversation.image
                    session.turns = turns
                    pieces.put(("answer", session.ask(question, on_text=lambda text: pieces.put(("text", text)))))
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
                pieces.put(("error", exc))
            finally:
                pieces.put((done, None))

        threading.Thread(target=generate, name="yollava-chat", daemon=True).start()
        text = ""
        answer = None
        while True:
            kind, value = pieces.get()
            if kind is done:
                break
            if kind == "error":
                raise value
            if kind == "text":
                text += value
                yield text
            elif kind == "answer":
                answer = value
        if answer is not None:
            conversation.turns.append(Turn(question, answer, images=1 if (conversation.image and not conversation.turns) else 0))
            if answer != text:
                yield answer
