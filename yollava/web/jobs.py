"""Training jobs of the web page: a queue, one background worker, live progress from the recipe's observer, cancel."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from yollava.errors import YollavaError
from yollava.progress import TrainEvent, TrainObserver, TrainStage

log = logging.getLogger(__name__)

# The loss chart keeps about this many points per epoch (a toy epoch has ~300 steps, a real one too).
LOSS_POINTS_PER_EPOCH = 50


class JobState(str, Enum):
    """Where a job is: waiting, training, or finished one of three ways."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.done, JobState.failed, JobState.cancelled)


class TrainingCancelled(Exception):
    """Raised by a job's observer inside the recipe when the user cancelled it (the store stays untouched)."""


@dataclass(frozen=True)
class JobSpec:
    """What to train: the concept, its photo set folder, the negatives choice (a server-side key), epochs."""

    name: str
    images_dir: Path
    photos: int
    negatives: str
    epochs: int
    overwrite: bool = False


@dataclass
class Job:
    """One training job and everything the page shows about it (copied out under the queue's lock)."""

    id: int
    spec: JobSpec
    state: JobState = JobState.queued
    stage: str = "waiting in the queue"
    message: str = ""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    last: TrainEvent | None = None
    losses: list[tuple[float, float]] = field(default_factory=list)  # (fractional epoch, running loss)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # the recipe's per-epoch records
    result: dict[str, Any] | None = None
    cancel_requested: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


# A trainer runs one job to the end, reporting through the observer; the server's calls train_concept.
Trainer = Callable[[JobSpec, TrainObserver], dict[str, Any]]


class TrainingQueue:
    """Jobs trained one at a time by a background thread, in the order they were submitted.

    The page never waits for training: :meth:`submit` returns at once, :meth:`snapshot` reads the
    progress, :meth:`cancel` takes a queued job out or makes the running one's observer raise
    :class:`TrainingCancelled` at its next step (the recipe then leaves the store untouched).
    """

    def __init__(self, trainer: Trainer, history: int = 20):
        self._trainer = trainer
        self._lock = threading.Condition()
        self._jobs: dict[int, Job] = {}
        self._waiting: collections.deque[int] = collections.deque()
        self._ids = itertools.count(1)
        self._history = history
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="yollava-training", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ the page's side

    def submit(self, spec: JobSpec) -> Job:
        """Queue ``spec``.

        Raises:
            YollavaError: a job for the same concept is already queued or training.
        """
        with self._lock:
            if self._closed:
                raise YollavaError("the server is shutting down; no new training is accepted")
            for job in self._jobs.values():
                if job.name == spec.name and not job.state.finished:
                    raise YollavaError(f"'{spec.name}' is already {'training' if job.state == JobState.running else 'in the queue'}; "
                                       "wait for it or cancel it first")
            job = Job(next(self._ids), spec)
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            self._forget_old()
            self._lock.notify_all()
            return replace(job)

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job now, or the running one at its next step; returns what happened, in words.

        Raises:
            YollavaError: no such job, or it has already finished.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise YollavaError(f"no training job {job_id}")
            if job.state.finished:
                raise YollavaError(f"job {job_id} ('{job.name}') has already {job.state.value}")
            if job.state == JobState.queued:
                self._waiting.remove(job_id)
                self._finish(job, JobState.cancelled, "cancelled before it started; nothing was trained or stored")
                return f"'{job.name}' taken out of the queue"
            job.cancel_requested = True
            job.stage = "cancelling"
            return f"cancelling '{job.name}': it stops at its next step and leaves the store untouched"

    def snapshot(self) -> list[Job]:
        """Copies of every job, oldest first (lists copied too, so the page reads them without the lock)."""
        with self._lock:
            return [replace(j, losses=list(j.losses), epochs=list(j.epochs)) for j in self._jobs.values()]

    def busy_names(self) -> set[str]:
        """Concepts queued or training (the page refuses to remove them)."""
        with self._lock:
            return {j.name for j in self._jobs.values() if not j.state.finished}

    def images_dirs(self) -> list[Path]:
        """Photo folders of jobs not finished yet (kept when unused uploads are pruned)."""
        with self._lock:
            return [j.spec.images_dir for j in self._jobs.values() if not j.state.finished]

    def wait(self, job_id: int, timeout: float) -> Job:
        """Block until the job finishes or ``timeout`` seconds pass; returns its copy (tests, scripts)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._jobs[job_id].state.finished and time.monotonic() < deadline:
                self._lock.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            job = self._jobs[job_id]
            return replace(job, losses=list(job.losses), epochs=list(job.epochs))

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting jobs, cancel the queued ones and the running one, wait for the worker."""
        with self._lock:
            self._closed = True
            while self._waiting:
                self._finish(self._jobs[self._waiting.popleft()], JobState.cancelled, "the server stopped before it started")
            for job in self._jobs.values():
                if job.state == JobState.running:
                    job.cancel_requested = True
            self._lock.notify_all()
        self._worker.join(timeout)

    # ------------------------------------------------------------------ the worker's side

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.state.finished]
        for job_id in finished[: max(0, len(finished) - self._history)]:
            del self._jobs[job_id]

    def _finish(self, job: Job, state: JobState, message: str) -> None:
        job.state = state
        job.message = message
        job.stage = state.value
        job.finished = time.time()
        self._lock.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if not self._waiting:
                    return
                job = self._jobs[self._waiting.popleft()]
                job.state = JobState.running
                job.stage = "starting"
                job.started = time.time()
            self._run(job)

    def _run(self, job: Job) -> None:
        def observe(event: TrainEvent) -> None:
            with self._lock:
                self._record(job, event)
                if job.cancel_requested:
                    raise TrainingCancelled

        try:
            result = self._trainer(job.spec, observe)
        except TrainingCancelled:
            with self._lock:
                done = len(job.epochs)
                kept = f"; the checkpoint of epoch {done} is kept in the run folder (`yollava train --concept {job.name} --resume` continues it)" if done else ""
                self._finish(job, JobState.cancelled, f"cancelled: the concept store is untouched{kept}")
        except YollavaError as exc:
            with self._lock:
                self._finish(job, JobState.failed, str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else: the page says so in one line, the log has the traceback
            log.exception("training job %d ('%s') failed", job.id, job.name)
            first = (str(exc).splitlines() or [""])[0][:160]
            with self._lock:
                self._finish(job, JobState.failed, f"training failed: {exc.__class__.__name__}{': ' + first if first else ''} (details in the server log)")
        else:
            with self._lock:
                job.result = result
                self._finish(job, JobState.done, result.get("message", "trained"))

    @staticmethod
    def _record(job: Job, event: TrainEvent) -> None:
        job.last = event
        if event.stage == TrainStage.data:
            job.stage = "the base describes the photos (conversation data)"
        elif event.stage == TrainStage.train:
            job.stage = f"training epoch {event.epoch} of {event.epochs}"
            every = max(1, (event.total or 1) // LOSS_POINTS_PER_EPOCH)
            if event.loss is not None and (event.done % every == 0 or event.done == event.total):
                job.losses.append((event.epoch - 1 + event.done / (event.total or 1), event.loss))
        elif event.stage == TrainStage.score:
            job.stage = f"scoring epoch {event.epoch} on the training photos"
        elif event.stage == TrainStage.epoch and event.record is not None:
            job.epochs.append(dict(event.record))
            job.stage = f"epoch {event.epoch} of {event.epochs} done"
        elif event.stage == TrainStage.save:
            job.stage = "saving the concept"


def job_progress(job: Job) -> dict[str, Any]:
    """The numbers the page shows for a job: stage, epoch, step, loss, training recognition, elapsed, ETA."""
    event = job.last
    best = max(job.epochs, key=lambda r: r.get("weighted", -1.0)) if job.epochs else None
    out: dict[str, Any] = {
        "id": job.id, "name": job.name, "state": job.state.value, "stage": job.stage, "message": job.message,
        "epoch": event.epoch if event else 0, "epochs": job.spec.epochs,
        "step": event.done if event and event.stage == TrainStage.train else None,
        "steps": event.total if event and event.stage == TrainStage.train else None,
        "loss": event.loss if event and event.loss is not None else None,
        "weighted": job.epochs[-1].get("weighted") if job.epochs else None,
        "best_weighted": best.get("weighted") if best else None,
        "best_epoch": best.get("epoch") if best else None,
        "elapsed_s": ((job.finished or time.time()) - job.started) if job.started else 0.0,
        "eta_s": event.eta_s if event and not job.state.finished else None,
    }
    return out
