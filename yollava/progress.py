"""Progress for every long loop: a live bar on a terminal, plain log lines (counts, elapsed, ETA) otherwise; events for observers."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Off a terminal a task logs one line every this many steps (and tasks added with ``log_every=1``,
# such as the epochs of a training run, one line per step).
LOG_EVERY = 50
# Environment switches of the libraries we call that draw their own tqdm bars.
THIRD_PARTY_BARS_OFF = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class TrainStage(str, Enum):
    """The stages a training run reports to an observer, in the order they happen."""

    data = "data"  # the base answers the conversation questions (done/total = questions)
    train = "train"  # one optimizer step done (done/total = steps of this epoch)
    score = "score"  # one training photo scored (done/total = photos)
    epoch = "epoch"  # an epoch finished and was checkpointed (``record`` holds its metrics)
    save = "save"  # every epoch is done; the concept is saved next (the last moment a stop leaves the store untouched)


@dataclass(frozen=True)
class TrainEvent:
    """One progress report of :func:`yollava.train.train_concept` to its ``observer``.

    Attributes:
        stage: what just happened (:class:`TrainStage`).
        done / total: units done in this stage (steps, photos, questions) and how many there are.
        epoch / epochs: the epoch in progress (1-based; 0 before training) and the configured number.
        loss: stage ``train``: the mean loss of the last 20 steps; stage ``epoch``: the epoch's mean.
        record: stage ``epoch``: the epoch's metrics as written to ``metrics.jsonl`` (loss, weighted,
            positive, negative, elapsed_s, ...).
        elapsed_s: seconds of training so far (a resumed run counts its earlier epochs).
        eta_s: estimated seconds until the last configured epoch ends (None until a step is timed);
            an upper bound when the run stops early.
    """

    stage: TrainStage
    done: int = 0
    total: int | None = None
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    record: dict[str, Any] | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


# Called with every event; raising from it stops the run as an interrupt would (store untouched).
TrainObserver = Callable[[TrainEvent], None]


def progress_bar(console: Console, *, every: int = LOG_EVERY) -> "Progress | LogProgress":
    """A rich Progress on a terminal; a :class:`LogProgress` writing whole lines when ``console`` is a file or pipe.

    Tasks carry an ``info`` field (loss, scores...). A task may set ``log_every=N`` to log every N
    steps off a terminal (the default is ``every``).
    """
    if not console.is_terminal:
        return LogProgress(console, every)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False,
    )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    info: str
    every: int
    started: float = field(default_factory=time.monotonic)
    start_count: float = 0.0
    logged_at: float = 0.0


class LogProgress:
    """The subset of rich's Progress the loops use, printing one line per ``every`` steps instead of redrawing a bar.

    A line reads ``epochs 3/15 | loss 0.1234 weighted 0.875 (best 0.900 @ 2) | 0:00:12 elapsed, eta 0:00:48``.
    """

    def __init__(self, console: Console, every: int = LOG_EVERY):
        self.console = console
        self.every = max(1, every)
        self.tasks: dict[int, _Task] = {}
        self._next = 0

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "",
                 log_every: int | None = None, **_: Any) -> int:
        task_id = self._next
        self._next += 1
        self.tasks[task_id] = _Task(description, total, completed, info, log_every or self.every,
                                    start_count=completed, logged_at=completed)
        return task_id

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, info: str | None = None, **_: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if info is not None:
            task.info = info
        if completed is not None:
            task.completed = completed
        if advance:
            task.completed += advance
        if task.completed - task.logged_at >= task.every:
            self._log(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)

    def _log(self, task: _Task) -> None:
        task.logged_at = task.completed
        elapsed = time.monotonic() - task.started
        done = task.completed - task.start_count
        count = f"{int(task.completed)}/{int(task.total)}" if task.total is not None else f"{int(task.completed)}"
        timing = f"{_clock(elapsed)} elapsed"
        if task.total is not None and done > 0 and task.completed < task.total:
            timing += f", eta {_clock(elapsed / done * (task.total - task.completed))}"
        parts = [f"{task.description} {count}", *([task.info] if task.info else []), timing]
        self.console.print(" | ".join(parts), markup=False, highlight=False, soft_wrap=True)


def quiet_third_party_bars() -> None:
    """Stop datasets / huggingface_hub from drawing their own tqdm bars into our output (set before they import)."""
    for key, value in THIRD_PARTY_BARS_OFF.items():
        os.environ.setdefault(key, value)
    import sys

    if "datasets" in sys.modules:  # already imported: their switch is read at import time
        from datasets.utils import disable_progress_bars

        disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars as hub_off

        hub_off()


class Tracker:
    """Counts, elapsed time and ETA of a long loop that read well on a terminal and in a log file.

    On a terminal it is a rich bar; otherwise (output redirected to a log) it prints one plain line
    at the start, every ``every_fraction`` of the work or ``every_s`` seconds, and at the end:
    ``eval 120/400 (30%) 0:01:02 elapsed, eta 0:02:24 | soft-prompt bo recognition``. Unlike
    :class:`LogProgress` (a line every N steps) it suits one loop over items of very unequal cost
    (an evaluation's tasks and methods: a caption takes far longer than a letter score).
    """

    def __init__(self, console: Console, description: str, total: int, every_s: float = 60.0, every_fraction: float = 0.1):
        self.console = console
        self.description = description
        self.total = max(total, 0)
        self.done = 0
        self.info = ""
        self.every_s = every_s
        self.step = max(1, int(self.total * every_fraction))
        self.live = console.is_terminal
        self._bar: Progress | None = None
        self._task = None
        self._start = 0.0
        self._last_time = 0.0
        self._last_done = 0

    def __enter__(self) -> "Tracker":
        self._start = self._last_time = time.perf_counter()
        if self.live:
            self._bar = progress_bar(self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        else:
            self._line()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None:
            self._line()

    def set_info(self, info: str) -> None:
        self.info = info
        if self._bar is not None:
            self._bar.update(self._task, info=info)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
            return
        now = time.perf_counter()
        if self.done - self._last_done >= self.step or now - self._last_time >= self.every_s:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        elapsed = now - self._start
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        self.console.print(
            f"{self.description} {self.done}/{self.total}{percent} {_clock(elapsed)} elapsed, eta {_clock(eta) if eta is not None else '?'}"
            + (f" | {self.info}" if self.info else ""), highlight=False, markup=False, soft_wrap=True,
        )
        self._last_time, self._last_done = now, self.done

