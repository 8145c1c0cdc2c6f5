"""Fault injection: count the filesystem writes a command makes, then fail the N-th one (raise, or die).

A *write point* is any call that changes the file system under the watched roots: opening a file
for writing (``open``/``os.open`` with a write flag), ``mkdir``, ``rename``/``replace``, ``link``,
``symlink``, ``unlink``/``remove``/``rmdir`` (also ``shutil.rmtree``'s fd-relative ones), ``fsync``,
and the native whole-file writers Python cannot see into (safetensors, faiss, parquet).

``Injector(fail_at=N, mode="raise")`` makes the N-th point raise ``OSError(EIO)``;
``mode="exit"`` calls ``os._exit`` there instead, which is a kill -9 as far as the files are
concerned (no ``finally``, no cleanup). :func:`run_killed` runs a scenario in a child forked from a
fork server that imported everything once, so each kill costs milliseconds, not an interpreter start.
"""

from __future__ import annotations

import builtins
import errno
import io
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

EXIT_CODE = 77
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Injector:
    """Counts write points under ``roots``; fails the ``fail_at``-th (1-based) by raising or exiting."""

    def __init__(self, roots: list[Path], fail_at: int | None = None, mode: str = "raise"):
        self.roots = [str(Path(r).resolve()) for r in roots]
        self.fail_at = fail_at
        self.mode = mode
        self.points: list[tuple[str, str]] = []
        self.fired = False

    @property
    def count(self) -> int:
        return len(self.points)

    def _watched(self, path: object, dir_fd: int | None = None) -> str | None:
        if isinstance(path, int):  # a file descriptor
            try:
                path = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return None
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            try:
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            except OSError:
                return None
        full = os.path.abspath(path)
        try:
            full = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
        except OSError:
            pass
        return full if any(full == r or full.startswith(r + os.sep) for r in self.roots) else None

    def hit(self, op: str, path: object, dir_fd: int | None = None) -> None:
        where = self._watched(path, dir_fd)
        if where is None:
            return
        self.points.append((op, where))
        if self.fail_at is not None and len(self.points) == self.fail_at:
            self.fired = True
            if self.mode == "exit":
                os._exit(EXIT_CODE)
            raise OSError(errno.EIO, f"injected fault #{self.fail_at} ({op})", where)

    @contextmanager
    def installed(self) -> Iterator["Injector"]:
        """Patch the write primitives for the duration of the block."""
        import faiss
        import pyarrow.parquet as pq
        import safetensors.torch

        import yollava.storage

        saved: list[tuple[object, str, object]] = []

        def patch(owner: object, name: str, make: Callable[[Callable], Callable]) -> None:
            original = getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, make(original))

        def path_op(op: str, n_paths: int = 1):
            def make(original):
                def wrapper(*args, **kwargs):
                    for i in range(min(n_paths, len(args))):
                        self.hit(op, args[i], kwargs.get("dir_fd") if i == 0 else kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))
                    return original(*args, **kwargs)
                return wrapper
            return make

        def open_op(original):
            def wrapper(file, mode="r", *args, **kwargs):
                if isinstance(mode, str) and any(c in mode for c in "wax+"):
                    self.hit("open", file)
                return original(file, mode, *args, **kwargs)
            return wrapper

        def os_open_op(original):
            def wrapper(path, flags, *args, **kwargs):
                if flags & _WRITE_FLAGS:
                    self.hit("open", path, kwargs.get("dir_fd"))
                return original(path, flags, *args, **kwargs)
            return wrapper

        def fsync_op(original):
            def wrapper(fd):
                self.hit("fsync", fd if isinstance(fd, int) else fd.fileno())
                return original(fd)
            return wrapper

        def native(op: str, path_index: int):
            def make(original):
                def wrapper(*args, **kwargs):
                    target = args[path_index] if len(args) > path_index else None
                    if isinstance(target, (str, os.PathLike)):
                        self.hit(op, target)
                    return original(*args, **kwargs)
                return wrapper
            return make

        patch(builtins, "open", open_op)
        patch(io, "open", open_op)
        patch(os, "open", os_open_op)
        patch(os, "fsync", fsync_op)
        for name in ("rename", "replace", "link", "symlink"):
            patch(os, name, path_op(name, 2))
        for name in ("mkdir", "unlink", "remove", "rmdir"):
            patch(os, name, path_op(name))
        patch(yollava.storage, "save_file", native("safetensors", 1))
        patch(safetensors.torch, "save_file", native("safetensors", 1))
        patch(faiss, "write_index", native("faiss", 1))
        patch(pq, "write_table", native("parquet", 1))
        try:
            yield self
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)


def count_points(run: Callable[[], object], roots: list[Path]) -> list[tuple[str, str]]:
    """The write points ``run()`` makes (it must succeed)."""
    injector = Injector(roots)
    with injector.installed():
        run()
    return injector.points


# ----------------------------------------------------------------------------- killed children

_CONTEXT = None
# Imported once by the fork server, so a child starts in milliseconds (datasets alone takes ~1.5 s).
PRELOAD = [
    "datasets", "faiss", "pyarrow.parquet", "safetensors.torch", "yollava.concept", "yollava.data", "yollava.models",
    "yollava.retrieval.index", "yollava.retrieval.mine", "yollava.toyworld.benchmark",
]


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        # the server imports the heavy modules once; every child is a fork of it (no torch work ran
        # in the server, so forking is safe for its thread pools)
        _CONTEXT.set_forkserver_preload(["faults", "fault_scenarios", *PRELOAD])
    return _CONTEXT


def _child(scenario: str, workspace: str, fail_at: int, roots: list[str]) -> None:
    import fault_scenarios

    run = fault_scenarios.SCENARIOS[scenario].command
    injector = Injector([Path(r) for r in roots], fail_at=fail_at, mode="exit")
    with injector.installed():
        run(Path(workspace))
    os._exit(0)


def run_killed(scenario: str, workspace: Path, fail_at: int, roots: list[Path], timeout: float = 120.0) -> int:
    """Run ``scenario`` in a child that dies (``os._exit``) at its ``fail_at``-th write; its exit code."""
    process = _context().Process(target=_child, args=(scenario, str(workspace), fail_at, [str(r) for r in roots]))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"{scenario}: child with fault #{fail_at} did not finish in {timeout} s")
    return process.exitcode


def leftovers(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Hidden files and folders and ``*.tmp-*`` under ``root``: staging (``.x.tmp-*``, mkdtemp's ``.x.abcd1234``), old
    versions (``.x.old``) and locks (``.x.lock``), none of which may outlive a finished run.

    Nothing else in the test workspaces has a name starting with a dot.
    """
    return [path for path in root.rglob("*")
            if (path.name.startswith(".") or ".tmp-" in path.name) and not any(part in skip for part in path.relative_to(root).parts)]


def copy_workspace(template: Path, destination: Path) -> Path:
    """A fresh copy of a prepared workspace (files copied, so hard links never tie runs together)."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(template, destination, symlinks=True)
    return destination
