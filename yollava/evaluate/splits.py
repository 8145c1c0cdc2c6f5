"""Which images are positives and negatives of a subject in a benchmark folder."""

from __future__ import annotations

from pathlib import Path

from yollava.errors import YollavaError
from yollava.images import scan_image_dir


def yollava_split(data_dir: str | Path, subject: str, split: str = "test") -> tuple[list[str], list[str]]:
    """Positives and negatives from a Yo'LLaVA-layout dataset (``DIR/<subject>/<split>/*``).

    The subject's own images are positives; every other subject's images of the split are negatives.

    Raises:
        YollavaError: missing folder or subject.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise YollavaError(f"--data {root}: no such directory; pass a dataset laid out as DIR/<subject>/{split}/")
    subjects = sorted(p.name for p in root.iterdir() if (p / split).is_dir())
    if subject not in subjects:
        raise YollavaError(
            f"--data {root}: no {subject}/{split}/ folder (subjects: {', '.join(subjects[:8]) or 'none'}); pass --subject NAME"
        )
    positives = [str(p) for p in scan_image_dir(root / subject / split, what="test image", option="--data").valid]
    negatives: list[str] = []
    for other in subjects:
        if other != subject:
            negatives.extend(str(p) for p in scan_image_dir(root / other / split, what="test image", option="--data").valid)
    if not negatives:
        raise YollavaError(f"--data {root}: only one subject, so there are no negatives; add other subjects' {split}/ folders")
    return positives, negatives
