"""Finding, validating, hashing and loading user images (never trusted, never unpickled)."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from yollava.errors import YollavaError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Decompression-bomb guard: LLaVA resizes to 336 px anyway; 40 MP is far beyond any photo we need.
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageScan:
    """Result of scanning a folder: the usable images and what was skipped, with reasons."""

    valid: list[Path]
    skipped: list[tuple[Path, str]]


def file_sha256(path: str | Path) -> str:
    """Content hash of a file (hex sha256), used for dedup, caches and provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_image(path: str | Path) -> str | None:
    """Return None when ``path`` decodes fully as an image, else a short reason why not."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"broken link to {os.readlink(path)}"
    too_large = f"too large (over {MAX_PIXELS // 1_000_000} megapixels, refused as a possible decompression bomb)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    return f"too large ({image.width}x{image.height} pixels, over {MAX_PIXELS // 1_000_000} megapixels)"
                image.load()  # verify() misses truncated pixel data; a full decode does not
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL refuses to even open images past its own limit (2x 89 MP): the header said so
        return too_large
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt ({exc.__class__.__name__}: {str(exc)[:60]})"
    return None


def scan_image_dir(directory: str | Path, *, what: str = "image", option: str = "--images") -> ImageScan:
    """List the decodable images directly inside ``directory`` (sorted by name).

    Args:
        directory: folder to scan (not recursive).
        what: noun used in messages, e.g. "positive image".
        option: the CLI option that supplied the folder, named in error messages.

    Returns:
        An :class:`ImageScan`; skipped files are logged as one warning listing them.

    Raises:
        YollavaError: the folder is missing, or holds no valid image.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise YollavaError(f"{option} {directory}: no such directory; pass a folder of {what}s")
    valid: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    # broken links are listed (and reported) rather than silently missing from the folder
    for path in sorted(p for p in directory.iterdir() if (p.is_file() or p.is_symlink() and not p.exists()) and not p.name.startswith(".")):
        reason = check_image(path)
        if reason is None:
            valid.append(path)
        else:
            skipped.append((path, reason))
    if skipped:
        listing = ", ".join(f"{p.name} ({why})" for p, why in skipped)
        log.warning("skipped %d file(s) in %s: %s", len(skipped), directory, listing)
    if not valid:
        raise YollavaError(
            f"{option} {directory}: no valid {what} found"
            + (f" ({len(skipped)} file(s) skipped: {_reasons(skipped)})" if skipped
               else " (folder is empty)" if not any(True for p in directory.iterdir() if not p.name.startswith("."))
               else " (it holds only folders or hidden files)")
            + f"; add .jpg/.png {what}s to the folder"
        )
    return ImageScan(valid=valid, skipped=skipped)


def _reasons(skipped: list[tuple[Path, str]]) -> str:
    """``a.png: not an image, b.png: broken link to x`` for the first few skipped files."""
    shown = ", ".join(f"{p.name}: {why}" for p, why in skipped[:3])
    return shown + (f", and {len(skipped) - 3} more" if len(skipped) > 3 else "")


def load_rgb(path: str | Path, *, option: str = "--image") -> Image.Image:
    """Open an image as RGB, raising a one-line :class:`YollavaError` when it is not one."""
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        raise YollavaError(f"{option} {path}: no such file; pass the path of a .jpg/.png image")
    reason = check_image(path)
    if reason is not None:
        raise YollavaError(f"{option} {path}: {reason}; pass a readable .jpg/.png image")
    with Image.open(path) as image:
        return image.convert("RGB")
