"""What ``yollava serve`` runs behind the page: the bases, the negatives it was started with, teaching, removing, who may connect."""

from __future__ import annotations

import copy
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from yollava.base import Base, share_weights
from yollava.concept import ConceptEntry, concept_dir, read_record, remove_concept, validate_name
from yollava.config import Config
from yollava.data import NegativeSource
from yollava.errors import YollavaError
from yollava.images import check_image, file_sha256
from yollava.progress import TrainObserver
from yollava.prompts import ChatFormat
from yollava.storage import CONCEPT_JSON, settle
from yollava.web.assistant import Assistant
from yollava.web.jobs import Job, JobSpec, TrainingQueue
from yollava.web.uploads import MAX_PHOTOS, MIN_PHOTOS, Photo, UploadStore

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_EPOCHS = 50
NO_NEGATIVES = "none"
LOOPBACK_NAMES = {"localhost"}


@dataclass(frozen=True)
class NegativeChoice:
    """A negatives source the server was started with: the browser sends ``key`` and sees ``label``, never a path."""

    key: str
    label: str
    source: NegativeSource | None


def negative_choices(source: NegativeSource) -> list[NegativeChoice]:
    """One choice per source given on the command line (pool, index, service, folder), then "none".

    Raises:
        YollavaError: a folder or index that does not exist (checked at start, not at the first Train).
    """
    common = {"per_image": source.per_image, "easy": source.easy, "embedder": source.embedder}
    choices = []
    if source.pool is not None:
        pool = _existing_dir(source.pool, "--pool")
        choices.append(NegativeChoice("pool", f"hard negatives mined from the pool '{pool.name}' ({_count_files(pool)} files)",
                                      NegativeSource(pool=str(pool), **common)))
    if source.index is not None:
        from yollava.retrieval.index import IndexHeader

        index = _existing_dir(source.index, "--index")
        header = IndexHeader.read(index)
        choices.append(NegativeChoice("index", f"hard negatives from the index '{index.name}' ({header.count} images)",
                                      NegativeSource(index=str(index), **common)))
    if source.service is not None:
        choices.append(NegativeChoice("service", f"hard negatives from the clip-retrieval service, index '{source.index_name}'",
                                      NegativeSource(service=source.service, index_name=source.index_name, **common)))
    if source.folder is not None:
        folder = _existing_dir(source.folder, "--negatives")
        choices.append(NegativeChoice("folder", f"the folder '{folder.name}' as negatives ({_count_files(folder)} files)",
                                      NegativeSource(folder=str(folder))))
    choices.append(NegativeChoice(NO_NEGATIVES, "none (not recommended: the concept learns to answer Yes to everything)", None))
    return choices


def _existing_dir(path: str, option: str) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise YollavaError(f"{option} {path}: no such directory; pass a folder that exists")
    return folder


def _count_files(folder: Path) -> str:
    n = sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return f"{n:,}"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` → (user, password).

    Raises:
        YollavaError: not of that form.
    """
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise YollavaError("--auth takes USER:PASS (both non-empty), e.g. --auth me:a-long-password")
    return user, password


def exposure(host: str, auth: tuple[str, str] | None, insecure_no_auth: bool) -> str:
    """The one line saying who can open the page; refuses a network address with no login.

    Raises:
        YollavaError: ``host`` is not a loopback address and neither ``--auth`` nor ``--insecure-no-auth`` was given.
    """
    if is_loopback(host):
        return "only this machine can open it" + (" (login required)" if auth else "")
    if auth:
        return f"open to the network on {host}: a login is required (over plain http; put it behind https to keep the password private)"
    if insecure_no_auth:
        return f"open to the network on {host} WITHOUT a login (--insecure-no-auth): anyone who can reach this machine can teach, chat and remove concepts"
    raise YollavaError(
        f"--host {host} opens the page to the network: pass --auth USER:PASS to require a login, "
        "or --insecure-no-auth to serve it to anyone who can reach this machine"
    )


@dataclass(frozen=True)
class ConceptCard:
    """What the Concepts tab shows about one stored concept."""

    name: str
    status: str  # "ok", "damaged: why", or "other base: why"
    base: str
    trained: str
    weighted: float | None
    k: int | None
    photo: str | None  # a training photo that still exists and matches its recorded hash
    photos: int
    best_epoch: int | None
    epochs_run: int | None
    seconds: float | None

    @property
    def usable(self) -> bool:
        return self.status == "ok"


class WebServer:
    """Everything the page calls, without gradio: list, teach (queued), remove, chat (see :class:`Assistant`).

    The base given is the chat base; training runs on a second view of the same weights
    (:func:`yollava.base.share_weights`), so chat and training never see each other's concepts.
    """

    def __init__(self, config: Config, store: str | Path, base: Base, choices: Sequence[NegativeChoice],
                 console: Console | None = None):
        self.config = config
        self.store = Path(store)
        self.base = base
        self.train_base = share_weights(base)
        self.choices = {c.key: c for c in choices}
        self.console = console or Console(stderr=True, force_terminal=False, soft_wrap=True)
        self.fmt = ChatFormat.load(config.prompt.template)
        self.assistant = Assistant(base, self.store, self.fmt, config.prompt.max_new_tokens)
        self.uploads = UploadStore(self.store)
        self.queue = TrainingQueue(self._train)

    # ------------------------------------------------------------------ concepts

    def cards(self) -> list[ConceptCard]:
        """Every concept of the store, damaged ones included (with why)."""
        return [self._card(entry) for entry in self.assistant.entries()]

    def _card(self, entry: ConceptEntry) -> ConceptCard:
        record = entry.record
        if record is None:
            return ConceptCard(entry.name, entry.status, "-", "-", None, None, None, 0, None, None, None)
        training = record.training
        extra = training.model_extra if training is not None else {}
        positives = extra.get("positives") or []
        trained = _trained_when(self.store, entry.name)
        unusable = self.assistant.usable(entry)
        return ConceptCard(
            name=entry.name, status="ok" if unusable is None else f"other base: {unusable}", base=record.base_model.id,
            trained=trained, weighted=training.metrics.weighted if training else None, k=record.k,
            photo=_first_existing_photo(positives), photos=len(positives),
            best_epoch=training.best_epoch if training else None, epochs_run=extra.get("epochs_run"), seconds=extra.get("seconds"),
        )

    def training_photos(self, name: str, limit: int = MAX_PHOTOS) -> list[str]:
        """A stored concept's training photos that are still on this machine, in recorded order.

        Raises:
            YollavaError: a bad name, or no such concept.
        """
        validate_name(name)
        training = read_record(self.store, name).training
        return existing_photos((training.model_extra.get("positives") or []) if training else [], limit)

    def remove(self, name: str) -> str:
        """Delete a concept (and its uploaded photos no other concept uses); returns what happened.

        Raises:
            YollavaError: a bad name, no such concept, or it is queued or training.
        """
        validate_name(name)
        if name in self.queue.busy_names():
            raise YollavaError(f"'{name}' is queued or training; cancel that job before removing the concept")
        with self.assistant.lock:
            self.assistant.forget(name)
            remove_concept(self.store, name)
        self.prune_uploads()
        return f"removed '{name}' and everything stored with it"

    def prune_uploads(self) -> int:
        """Delete uploaded photos that no stored concept records and no unfinished job uses; returns how many went."""
        entries = self.assistant.entries()
        if any(not e.ok for e in entries):
            return 0  # a damaged record may name photos that cannot be read from it: remove nothing
        keep: list[str | Path] = list(self.queue.images_dirs())
        for entry in entries:
            training = entry.record.training if entry.record else None
            for positive in (training.model_extra.get("positives") or []) if training else []:
                if isinstance(positive, dict) and isinstance(positive.get("path"), str):
                    keep.append(positive["path"])
        return self.uploads.prune(keep)

    # ------------------------------------------------------------------ teaching

    def teach(self, name: str, files: Sequence[tuple[str, str]], negatives: str, epochs: int, overwrite: bool = False) -> Job:
        """Validate and store the photos, then queue the training; returns the queued job.

        Args:
            name: concept name.
            files: (server-side path of an upload the web framework received, the browser's file name) pairs.
            negatives: the key of one of the server's :class:`NegativeChoice`.
            epochs: training epochs (1 to :data:`MAX_EPOCHS`).
            overwrite: replace a stored concept of that name.

        Raises:
            YollavaError: one line naming every problem found (name, photos, negatives, epochs, existing concept).
        """
        if not name:
            raise YollavaError("give the concept a name first, e.g. bo (a-z, 0-9, '_' or '-')")
        validate_name(name)
        if negatives not in self.choices:
            raise YollavaError(f"unknown negatives choice '{str(negatives)[:40]}'; pick one of the list")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or int(epochs) != epochs or not 1 <= epochs <= MAX_EPOCHS:
            raise YollavaError(f"epochs must be a whole number from 1 to {MAX_EPOCHS}")
        existing = settle(concept_dir(self.store, name))
        if existing is not None and (existing / CONCEPT_JSON).exists() and not overwrite:
            raise YollavaError(f"concept '{name}' already exists; tick 'replace an existing concept' or pick another name")
        if not MIN_PHOTOS <= len(files) <= MAX_PHOTOS:
            raise YollavaError(f"{len(files)} photo(s) sent: teach a concept from {MIN_PHOTOS} to {MAX_PHOTOS} photos of it")
        photos: list[Photo] = []
        problems: list[str] = []
        for path, label in files:
            try:
                photos.append(self.uploads.add(path, label))
            except YollavaError as exc:
                problems.append(str(exc).split("; send a", 1)[0])
        if problems:
            raise YollavaError(f"{len(problems)} of {len(files)} photo(s) refused: " + "; ".join(problems)
                               + "; remove them or send JPEG/PNG/WebP photos")
        images_dir = self.uploads.make_set(photos)
        spec = JobSpec(name=name, images_dir=images_dir, photos=len({p.sha256 for p in photos}), negatives=negatives,
                       epochs=int(epochs), overwrite=overwrite)
        return self.queue.submit(spec)

    def _train(self, spec: JobSpec, observer: TrainObserver) -> dict[str, Any]:
        from yollava.train import train_concept

        config = copy.deepcopy(self.config)
        config.train.epochs = spec.epochs
        choice = self.choices[spec.negatives]
        result = train_concept(
            config, spec.name, spec.images_dir, choice.source or NegativeSource(), store=self.store, overwrite=spec.overwrite,
            base=self.train_base, console=self.console, no_negatives=choice.source is None, observer=observer,
        )
        best = result.best
        return {
            "message": f"saved <{spec.name}>: best epoch {best['epoch']} of {len(result.history)}, "
                       f"weighted recognition {best['weighted']:.3f} on its training photos",
            "best": best, "epochs_run": len(result.history),
        }

    def close(self) -> None:
        """Cancel queued and running training (the store stays as it is) and stop the worker."""
        self.queue.close()


def _trained_when(store: Path, name: str) -> str:
    """The concept file's modification time, in local time (what 'trained when' means for a stored concept)."""
    import datetime

    try:
        stamp = (concept_dir(store, name) / CONCEPT_JSON).stat().st_mtime
    except OSError:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _first_existing_photo(positives: list[Any]) -> str | None:
    photos = existing_photos(positives, limit=1)
    return photos[0] if photos else None


def existing_photos(positives: list[Any], limit: int = MAX_PHOTOS) -> list[str]:
    """Recorded training photos still on disk with their recorded content, at most ``limit`` (never a path from the browser)."""
    out: list[str] = []
    for positive in positives[:MAX_PHOTOS]:
        if len(out) >= limit:
            break
        if not isinstance(positive, dict) or not isinstance(positive.get("path"), str):
            continue
        path = Path(positive["path"])
        try:
            if path.is_file() and check_image(path) is None and file_sha256(path) == positive.get("sha256"):
                out.append(str(path))
        except OSError:
            continue
    return out
