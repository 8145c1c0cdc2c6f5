"""The progress bar every long loop uses (counts, elapsed time, ETA, and a free-text field)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console) -> Progress:
    """A rich Progress writing to ``console``; tasks carry an ``info`` field (loss, scores...)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False,
    )


class Tracker:
    """Counts, elapsed time and ETA of a long loop that read well on a terminal and in a log file.

    On a terminal it is a rich bar; otherwise (output redirected to a log) it prints one plain line
    at the start, every ``every_fraction`` of the work or ``every_s`` seconds, and at the end:
    ``eval 120/400 (30%) 0:01:02 elapsed, eta 0:02:24 | soft-prompt bo recognition``.
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


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
