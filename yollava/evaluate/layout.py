"""The published Yo'LLaVA dataset layout, ``DIR/{train,test}/<subject>/<n>.png``, and what it says about each subject.

This is the folder the Yo'LLaVA repository and its Hugging Face copy ship (40 subjects, 327 train /
333 test images) and the one ``yollava toy generate`` writes. Every command that takes ``--data``
reads it through :func:`open_benchmark`; anything else is refused with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from yollava.errors import YollavaError
from yollava.images import IMAGE_SUFFIXES, scan_image_dir
from yollava.storage import settle

TRAIN = "train"
TEST = "test"
SPLITS = (TRAIN, TEST)
# the QA files' default names inside DIR (the published visual QA file ships as yollava-data/yollava-visual-qa.json)
VISUAL_QA_FILE = "yollava-visual-qa.json"
TEXT_QA_FILE = "yollava-text-only-qa.json"
DESCRIPTIONS_FILE = "descriptions.json"


@dataclass
class Benchmark:
    """A dataset in the published layout.

    Attributes:
        root: the ``--data`` folder.
        subjects: subject folder names per split (sorted).
    """

    root: Path
    subjects: dict[str, list[str]]
    _images: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)

    def images(self, split: str, subject: str) -> list[str]:
        """The decodable images of ``DIR/<split>/<subject>/`` (sorted by name; subfolders such as
        the published ``negative_example/`` are not part of the split).

        Raises:
            YollavaError: no such subject in that split, or the folder holds no image.
        """
        if subject not in self.subjects.get(split, []):
            known = self.subjects.get(split, [])
            raise YollavaError(
                f"--data {self.root}: no {split}/{subject}/ folder (subjects in {split}/: {_listing(known)})"
            )
        key = (split, subject)
        if key not in self._images:
            folder = self.root / split / subject
            self._images[key] = [str(p) for p in scan_image_dir(folder, what=f"{split} image", option="--data").valid]
        return self._images[key]

    def test_split(self, subject: str) -> tuple[list[str], list[str]]:
        """Recognition's positives (the subject's test photos) and negatives (every other subject's test photos).

        Raises:
            YollavaError: unknown subject, or no other subject to take negatives from.
        """
        positives = self.images(TEST, subject)
        others = [s for s in self.subjects[TEST] if s != subject]
        if not others:
            raise YollavaError(f"--data {self.root}: only one subject in {TEST}/, so there are no negatives; add other subjects' {TEST}/ folders")
        negatives = [path for other in others for path in self.images(TEST, other)]
        return positives, negatives

    def resolve(self, path: str, *, where: str) -> str:
        """The file a QA entry's image path names, found by its ``<split>/<subject>/<file>`` tail under ``root``.

        Published files write ``./yollava-data/test/bo/3.png``; only the last three parts count, so the
        dataset can live anywhere.

        Args:
            path: the path as written in the QA file.
            where: the file and entry, for the error message.

        Raises:
            YollavaError: the path has no such tail or the file does not exist under ``root``.
        """
        parts = PurePosixPath(path.replace("\\", "/")).parts
        if len(parts) < 3 or parts[-3] not in SPLITS:
            raise YollavaError(f"{where}: image path {path!r} does not end in <split>/<subject>/<file> with split {TRAIN} or {TEST}")
        resolved = self.root.joinpath(*parts[-3:])
        if not resolved.is_file():
            raise YollavaError(f"{where}: image {path!r} resolves to {resolved}, which does not exist; check --data")
        return str(resolved)


def _listing(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def open_benchmark(data_dir: str | Path) -> Benchmark:
    """Read a dataset laid out as ``DIR/{train,test}/<subject>/``.

    A folder ``yollava toy generate`` is rewriting, or that a killed run left mid-swap, is read like
    every artifact of the storage protocol: recovery first, then the complete version (the old one
    while a writer holds the lock).

    Raises:
        YollavaError: ``DIR`` is missing, uses another layout (``DIR/<subject>/test/``, images directly
            in ``DIR/test/``), or has neither split.
    """
    root = settle(Path(data_dir)) or Path(data_dir)
    if not root.is_dir():
        raise YollavaError(f"--data {root}: no such directory; pass a dataset laid out as DIR/{{train,test}}/<subject>/")
    subjects: dict[str, list[str]] = {}
    for split in SPLITS:
        folder = root / split
        if folder.is_dir():
            if _has_images(folder):
                raise YollavaError(f"--data {root}: images directly in {split}/; put each subject's photos in {split}/<subject>/")
            subjects[split] = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subjects:
        old = sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in SPLITS))
        if old:
            raise YollavaError(
                f"--data {root}: found {old[0]}/{TRAIN if (root / old[0] / TRAIN).is_dir() else TEST}/, the subject-first layout; "
                f"move the photos to {TEST}/{old[0]}/ and {TRAIN}/{old[0]}/ (split first, like the published yollava-data)"
            )
        raise YollavaError(f"--data {root}: no {TRAIN}/ or {TEST}/ folder; pass a dataset laid out as DIR/{{train,test}}/<subject>/")
    return Benchmark(root=root, subjects=subjects)


def yollava_split(data_dir: str | Path, subject: str) -> tuple[list[str], list[str]]:
    """Recognition positives and negatives of ``subject`` from a dataset folder (see :meth:`Benchmark.test_split`)."""
    return open_benchmark(data_dir).test_split(subject)
