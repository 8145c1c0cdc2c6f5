"""File names of every artifact in one place, and the one write protocol: lock, stage a folder, swap it in, recover.

Every artifact yollava keeps (a concept, its negatives, its training set, an index, a toy world) is a
folder that is replaced as one unit:

1. :func:`artifact_lock` — an advisory lock held from the writer's existence check to its final swap;
   a second writer waits for it or fails with one line naming the holder's PID.
2. :func:`staged_folder` — the new version is written into ``.<name>.tmp-<id>`` next to the target,
   flushed, then swapped in by two renames (target → ``.<name>.old``, staged → target); the old
   version is deleted last.
3. :func:`settle` — run by every reader (and by writers before they look): a crash between the two
   renames is undone (the old folder moved back), a finished swap's leftovers and stale staging
   folders are removed, and the reader is told which folder holds a complete version.

At every instant a reader therefore sees the complete old version or the complete new one. Every
``OSError`` of a write (disk full, permissions, read-only file system) becomes one
:class:`~yollava.errors.YollavaError` line naming the artifact and saying that nothing was changed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from yollava.errors import YollavaError

log = logging.getLogger(__name__)

CONCEPT_JSON = "concept.json"
CONCEPT_WEIGHTS = "concept.safetensors"
RUN_CONFIG = "config.yaml"
RUN_METRICS = "metrics.jsonl"
RUN_PLOT = "metrics.png"
RUN_SAMPLES = "train_samples.jsonl"
RUN_DONE = "DONE"
# one file: the rows and optimizer moments as tensors, the run state as JSON in its metadata, so a
# crash can never pair one epoch's state with another's tensors
CHECKPOINT_FILE = "checkpoint.safetensors"
# a concept's training set: <store>/<name>/data/ is an HF dataset (datasets.load_from_disk reads it) plus our record
DATA_DIR = "data"
# a concept's mined negatives: <store>/<name>/negatives/ (yollava.retrieval.mine writes and reads it)
NEGATIVES_DIR = "negatives"
DATA_INFO = "training_set.json"
# base captions and summary of a subject's training photos (auto-long / auto-short), next to its concept
AUTO_DESCRIPTION = "auto_description.json"
# photos uploaded through `yollava serve`, by content hash (hidden: never listed as a concept)
UPLOADS_DIR = ".uploads"

# Names of the protocol's own files next to a target ``<parent>/<name>``.
STAGING_INFIX = ".tmp-"
OLD_SUFFIX = ".old"
LOCK_SUFFIX = ".lock"
# How often a waiting writer retries a held lock.
LOCK_POLL_S = 0.1

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.ENAMETOOLONG: "file name too long",
}


class LockedError(YollavaError):
    """Another process holds the artifact's lock."""


def describe_os_error(exc: OSError) -> str:
    """``no space left on the device (ENOSPC)``: a short reason with the errno's name."""
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or exc.__class__.__name__).lower()
    return f"{reason} ({name})" if name else reason


def write_error(exc: OSError, target: str | Path) -> YollavaError:
    """The one line for a failed write of ``target``: what failed, and that nothing was changed."""
    where = f" at {exc.filename}" if exc.filename and str(exc.filename) != str(target) else ""
    hint = "free some space and run it again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that and run it again"
    return YollavaError(f"cannot write {target}: {describe_os_error(exc)}{where}; nothing was changed, {hint}")


@contextmanager
def writing(target: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into :func:`write_error` for ``target`` (one line, no traceback)."""
    try:
        yield
    except YollavaError:
        raise
    except OSError as exc:
        raise write_error(exc, target) from exc


# ----------------------------------------------------------------------------- locks


def lock_path(target: str | Path) -> Path:
    """``<parent>/.<name>.lock``: the lock file of ``target`` (it exists only while held)."""
    target = Path(target)
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


# Locks this process holds: lock file -> depth. Re-entrant, so a command holding a concept's lock can
# call library functions that take it again (train → retrieve into the same concept).
_HELD: dict[str, int] = {}


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text.split()[0] if text else "unknown"


@contextmanager
def artifact_lock(target: str | Path, *, wait: float = 0.0, what: str | None = None) -> Iterator[None]:
    """Hold the advisory lock of ``target`` (a ``flock`` on ``.<name>.lock`` that records the holder's PID).

    The lock file is removed on release; a process killed while holding it leaves the file but not
    the lock (the kernel drops it), so the next writer simply takes it over.

    Args:
        target: the artifact folder.
        wait: seconds to wait for another holder before giving up (0: fail at once).
        what: how the artifact is named in the message (default: its path).

    Raises:
        LockedError: another process holds it (the message names its PID).
        YollavaError: the lock file cannot be created (one line, see :func:`write_error`).
    """
    target = Path(target)
    path = lock_path(target)
    key = str(path.absolute())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    deadline = time.monotonic() + wait
    made = _missing_parents(path)
    with writing(target):
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # another process removed the empty folder it had made for its lock: make it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(LOCK_POLL_S)
                    continue
                raise LockedError(
                    f"{what or target} is being written by another yollava process (PID {holder}); "
                    "wait for it to finish, or stop that process"
                ) from None
            try:
                # The holder we waited for may have removed the file on release: lock the current one.
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            os.close(fd)
            raise
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.unlink(path)  # before unlocking: a waiter re-checks the inode and retries
        except OSError:
            pass
        os.close(fd)
        for folder in made:  # folders made only to hold the lock, if nothing else went into them
            try:
                os.rmdir(folder)
            except OSError:
                break


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def holds_lock(target: str | Path) -> bool:
    """Whether this process holds ``target``'s lock."""
    return str(lock_path(target).absolute()) in _HELD


# ----------------------------------------------------------------------------- recovery


def old_path(target: str | Path) -> Path:
    """``<parent>/.<name>.old``: where the previous version waits during a swap."""
    target = Path(target)
    return target.parent / f".{target.name}{OLD_SUFFIX}"


def _staging_folders(target: Path) -> list[Path]:
    if not target.parent.is_dir():
        return []
    return sorted(target.parent.glob(f".{target.name}{STAGING_INFIX}*"))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


def recover(target: str | Path) -> None:
    """Finish or undo an interrupted swap of ``target`` (the caller holds its lock).

    * only ``.<name>.old`` exists: the crash came between the two renames; it is moved back;
    * both exist: the swap finished but the old version was not deleted yet; it is deleted now;
    * ``.<name>.tmp-*`` folders: staging of a writer that died; deleted.
    """
    target = Path(target)
    old = old_path(target)
    if old.exists() or old.is_symlink():
        if target.exists() or target.is_symlink():
            _remove(old)
        else:
            log.warning("restoring %s from %s (an earlier write was interrupted)", target, old.name)
            os.rename(old, target)
    for stale in _staging_folders(target):
        _remove(stale)


def settle(target: str | Path, *, lock_target: str | Path | None = None) -> Path | None:
    """What a reader runs before reading ``target``: recovery, then where the complete version is.

    Recovery needs the artifact's lock; when another process holds it (a writer is working) the
    reader leaves the files alone and reads the old version while the new one is not in place.

    Args:
        target: the artifact folder.
        lock_target: whose lock guards ``target`` (a concept's sub-folders share the concept's lock).

    Returns:
        ``target`` when it exists, else the old version during a swap, else None.
    """
    target = Path(target)
    old = old_path(target)
    if (old.exists() or old.is_symlink() or _staging_folders(target)) and not holds_lock(lock_target or target):
        try:
            with artifact_lock(lock_target or target):
                recover(target)
        except YollavaError:
            pass  # a writer holds the lock (it recovers itself), or the store is read-only
        except OSError as exc:
            log.warning("could not tidy %s (%s); reading it as it is", target, describe_os_error(exc))
    elif holds_lock(lock_target or target):
        with writing(target):
            recover(target)
    if target.exists():
        return target
    if old.exists():
        return old
    return None


# ----------------------------------------------------------------------------- writing


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (and itself) to disk before it is renamed into place."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (so a rename in it survives a power cut)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap(staged: Path, target: Path) -> None:
    old = old_path(target)
    moved = False
    if target.exists() or target.is_symlink():
        os.rename(target, old)
        moved = True
    try:
        os.rename(staged, target)
    except BaseException:
        if moved and not target.exists():
            try:
                os.rename(old, target)
            except OSError:
                pass  # the next reader's recovery moves it back
        raise
    try:
        fsync_dir(target.parent)
        if moved:
            _remove(old)
    except OSError as exc:
        # the new version is in place; the next reader or writer deletes what is left of the old one
        log.warning("%s is saved; tidying up failed (%s) and is retried by the next run", target, describe_os_error(exc))


@contextmanager
def staged_folder(target: str | Path, *, lock_target: str | Path | None = None, wait: float = 0.0) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error it replaces ``target``.

    The lock of ``lock_target`` (default ``target``) is held throughout (re-entrant: callers that
    already hold it keep it). An exception inside the block, a failed write or a kill leaves
    ``target`` exactly as it was; the staging folder is deleted (or by the next run, after a kill).

    Raises:
        LockedError: another process is writing the artifact.
        YollavaError: any ``OSError`` while staging or swapping, as one line naming ``target``.
    """
    target = Path(target)
    with artifact_lock(lock_target or target, wait=wait), writing(target):
        if lock_target is not None and Path(lock_target) != target:
            # a sub-folder of an artifact (a concept's negatives): finish an interrupted swap of the
            # artifact first, or creating its folder below would make the old version look stale
            recover(lock_target)
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        staged = target.parent / f".{target.name}{STAGING_INFIX}{uuid.uuid4().hex[:8]}"
        os.mkdir(staged)
        try:
            yield staged
            fsync_tree(staged)
            _swap(staged, target)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)


def link_or_copy_tree(source: Path, destination: Path) -> None:
    """Copy a folder by hard links where the file system allows (O(files), no bytes copied), else by copies.

    Artifacts are never modified in place (they are replaced whole), so sharing inodes is safe.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_symlink():
            continue  # never follow links out of an artifact
        if entry.is_dir():
            link_or_copy_tree(entry, destination / entry.name)
            continue
        try:
            os.link(entry, destination / entry.name)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copyfile(entry, destination / entry.name)


def remove_artifact(target: str | Path, *, lock_target: str | Path | None = None) -> None:
    """Delete an artifact folder as one unit: renamed aside first, so a crash leaves it whole or gone.

    Raises:
        YollavaError: the folder is a symbolic link (never followed), or the removal failed.
    """
    target = Path(target)
    if target.is_symlink():
        raise YollavaError(f"{target} is a symbolic link (to {os.readlink(target)}); yollava does not delete through links, remove the link yourself")
    with artifact_lock(lock_target or target), writing(target):
        recover(target)
        trash = target.parent / f".{target.name}{STAGING_INFIX}{uuid.uuid4().hex[:8]}"
        os.rename(target, trash)
        fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- single files (run folders)


def _fresh_file(path: Path) -> Path:
    """A new empty file next to ``path`` (mode from the umask, unlike mkstemp's 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}{STAGING_INFIX}{uuid.uuid4().hex[:8]}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    For single files outside the stores (run folders, reports, cache shards). A crash or Ctrl-C
    inside the block leaves ``path`` exactly as it was (the temp file is removed); an ``OSError``
    becomes one line naming ``path``.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_file(path)
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dump_json(payload: Any) -> str:
    """Sorted, indented JSON with a final newline (every JSON artifact's format)."""
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as sorted, indented JSON atomically."""
    write_text_atomic(path, dump_json(payload))


def umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors at ``path`` (contiguous CPU copies; nothing is pickled).

    safetensors creates its files with mode 0600; they get the usual mode from the umask instead.
    """
    prepared = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    save_file(prepared, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~umask())


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (contiguous CPU copies; nothing is pickled)."""
    with atomic_path(path) as tmp:
        save_tensors(tmp, tensors, metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU (the only weight format yollava reads)."""
    return load_file(str(path), device="cpu")


def read_tensor_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (its header only; no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (metrics survive a crash up to the last line)."""
    with writing(path), open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
