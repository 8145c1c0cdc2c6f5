"""Photos sent by a browser: validated as on the command line, stored under the concept store by content hash.

Nothing a browser sends becomes a path: a photo's stored name is its sha256 and the format PIL
detects (``<store>/.uploads/photos/<sha256>.png``), a set of photos taught together is a folder named
by the hash of its members (``<store>/.uploads/sets/<sha256>/``, the ``--images`` folder of the run),
and the file name the browser gave is only ever shown back in messages.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from yollava.errors import YollavaError
from yollava.images import MAX_PIXELS, check_image, file_sha256
from yollava.storage import UPLOADS_DIR, atomic_path, staged_folder, writing

# A photo taken by a phone is 2-12 MB; LLaVA resizes everything to 336 px anyway.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MIN_PHOTOS = 3
MAX_PHOTOS = 10
# What PIL detects -> the stored suffix; other decodable formats (PSD, ICO, ...) are refused.
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "MPO": ".jpg"}
PHOTOS = "photos"
SETS = "sets"


@dataclass(frozen=True)
class Photo:
    """A validated, stored photo: ``path`` under the store, its ``sha256``, and ``label`` (the browser's name, for messages)."""

    path: Path
    sha256: str
    label: str


def display_name(name: str | None, index: int) -> str:
    """How a photo is named in messages: ``photo 2 (cat.jpg)``, the browser's name cut to its last part, printable, 40 characters."""
    raw = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    shown = "".join(c for c in raw if unicodedata.category(c)[0] not in "CZ" or c == " ").strip()
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"photo {index} ({shown})" if shown else f"photo {index}"


def check_upload(path: str | Path) -> str | None:
    """None when ``path`` is an acceptable photo, else why not (size, format, pixels, decoding)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return "could not be read"
    if size > MAX_UPLOAD_BYTES:
        return f"too large ({size / 1e6:.1f} MB, over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB)"
    if size == 0:
        return "empty file"
    reason = check_image(path)  # the command line's validation: full decode, pixel limit
    if reason is not None:
        return reason
    with Image.open(path) as image:
        if image.format not in FORMATS:
            return f"a {image.format} image; send a JPEG, PNG or WebP photo"
    return None


class UploadStore:
    """The store's uploaded photos and photo sets (``<store>/.uploads``), safe to use from several threads."""

    def __init__(self, store: str | Path):
        self.root = Path(store) / UPLOADS_DIR
        self._lock = threading.Lock()

    def add(self, source: str | Path, label: str) -> Photo:
        """Validate ``source`` (a file the web server received) and store it by content hash.

        Raises:
            YollavaError: ``<label>: <why>; ...`` when it is not an acceptable photo.
        """
        reason = check_upload(source)
        if reason is not None:
            raise YollavaError(f"{label}: {reason}; send a JPEG, PNG or WebP photo of at most "
                               f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB and {MAX_PIXELS // 1_000_000} megapixels")
        sha = file_sha256(source)
        with Image.open(source) as image:
            suffix = FORMATS[image.format]
        target = self.root / PHOTOS / f"{sha}{suffix}"
        with self._lock:
            if not target.is_file() or file_sha256(target) != sha:
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
        return Photo(target, sha, label)

    def make_set(self, photos: Sequence[Photo]) -> Path:
        """The folder holding exactly ``photos`` (named by their hashes), made once and reused.

        Raises:
            YollavaError: fewer than :data:`MIN_PHOTOS` or more than :data:`MAX_PHOTOS` distinct photos.
        """
        distinct = {p.sha256: p for p in photos}
        if len(distinct) < MIN_PHOTOS or len(distinct) > MAX_PHOTOS:
            repeated = f" ({len(photos) - len(distinct)} repeated)" if len(distinct) < len(photos) else ""
            raise YollavaError(f"{len(distinct)} different photo(s){repeated}: teach a concept from {MIN_PHOTOS} to {MAX_PHOTOS} photos of it")
        digest = hashlib.sha256("\n".join(sorted(distinct)).encode()).hexdigest()
        folder = self.root / SETS / digest
        with self._lock:
            if not (folder.is_dir() and sorted(p.stem for p in folder.iterdir()) == sorted(distinct)):
                with staged_folder(folder) as staged:
                    for photo in distinct.values():
                        _link_or_copy(photo.path, staged / photo.path.name)
        return folder

    def prune(self, keep: Iterable[str | Path]) -> int:
        """Delete every photo set and photo not under a path in ``keep`` (e.g. the paths stored concepts record).

        Returns:
            How many files and folders were removed.
        """
        kept = {Path(p).resolve() for p in keep}
        removed = 0
        with self._lock, writing(self.root):
            sets = self.root / SETS
            used: set[str] = set()
            for folder in sorted(sets.iterdir()) if sets.is_dir() else []:
                if folder.name.startswith("."):
                    continue
                members = {p.resolve() for p in folder.iterdir()} if folder.is_dir() else set()
                if folder.resolve() in kept or members & kept:
                    used.update(p.name for p in members)
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            photos = self.root / PHOTOS
            for photo in sorted(photos.iterdir()) if photos.is_dir() else []:
                if photo.name not in used and photo.resolve() not in kept and not photo.name.startswith("."):
                    photo.unlink(missing_ok=True)
                    removed += 1
        return removed


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the file system allows, else a copy (photos are never modified in place)."""
    try:
        destination.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, destination)
