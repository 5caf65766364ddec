"""What the dataset readers (`pneumonia`, `nih14`) share: walking a raw archive, its records, and
patient-level splitting.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy stays out of the converter's worker processes
    import numpy as np

SPLITS = ("train", "validation", "test")
# Folders and files that unzip tools, macOS and editors add next to the real data.
_IGNORED_DIRS = {"__MACOSX"}


class SourceError(ValueError):
    """The source folder is not what the reader expects; the message says what to do."""


@dataclass
class SourceImage:
    """One image found in a raw archive, with the labels the archive gives it.

    `group` is the archive's own split for that file (pneumonia folders, NIH list files), or None.
    `features` holds the per-dataset label fields, in the converter's feature names.
    """

    path: str
    image_id: str
    patient_id: str
    group: str | None
    features: dict


@dataclass
class Scan:
    """What a reader found: the images, the files it refused (with reasons) and notes to report."""

    images: list[SourceImage]
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def walk_files(root: Path) -> Iterator[Path]:
    """Yield visible files under `root`, shallowest first, skipping hidden and macOS metadata.

    Shallowest first lets the readers keep the top copy when an archive holds a nested duplicate
    of itself (the Kaggle pneumonia zip does).
    """
    level = [Path(root)]
    while level:
        nxt = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or entry.name in _IGNORED_DIRS:
                    continue
                if entry.is_dir(follow_symlinks=True):
                    nxt.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    yield Path(entry.path)
        level = nxt


def check_source(source) -> Path:
    """Return `source` as a Path, or raise SourceError if it is not an existing folder."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise SourceError(
            f"--source {str(source)!r} is not a folder. Give the folder the archive was unzipped "
            "into (or any folder above its contents)."
        )
    return path


def draw_patients(
    images: list[SourceImage],
    fraction: float,
    rng: np.random.Generator,
    stratum: Callable[[SourceImage], object] = lambda im: None,
) -> set[str]:
    """Pick whole patients holding about `fraction` of the images, per stratum, reproducibly.

    Patients are sorted before the seeded shuffle so the draw depends only on the data and seed,
    never on file-system order. A patient's stratum is that of their first image.
    """
    if fraction <= 0:
        return set()
    per_patient: dict[str, int] = defaultdict(int)
    strata: dict[object, list[str]] = defaultdict(list)
    for im in images:
        if im.patient_id not in per_patient:
            strata[stratum(im)].append(im.patient_id)
        per_patient[im.patient_id] += 1
    chosen: set[str] = set()
    for key in sorted(strata, key=str):
        patients = sorted(strata[key])
        target = fraction * sum(per_patient[p] for p in patients)
        taken = 0
        for i in rng.permutation(len(patients)):
            if taken >= target:
                break
            chosen.add(patients[i])
            taken += per_patient[patients[i]]
    return chosen


def drop_patients(images: list[SourceImage], patients: set[str]) -> list[SourceImage]:
    """`images` without those of `patients`."""
    return [im for im in images if im.patient_id not in patients]


def count_patients(n: int, one: str = "is", many: str = "are") -> str:
    """'1 patient is', '3 patients are': a count of patients with its verb, for the notes."""
    return f"{n} patient {one}" if n == 1 else f"{n} patients {many}"
