"""NIH ChestX-ray14 (Wang et al. 2017): find, label and split the images.

The Kaggle mirror unzips to `images_0NN/images/*.png`, `Data_Entry_2017.csv`,
`train_val_list.txt` and `test_list.txt`. Labels are the CSV's `Finding Labels` ('A|B' or
'No Finding') as a multi-hot vector in the fixed order of `LABELS`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from cxr_tf.sources import (
    Scan,
    SourceError,
    SourceImage,
    check_source,
    count_patients,
    draw_patients,
    drop_patients,
    walk_files,
)

NAME = "nih14"
TASK = "multilabel"
LABEL_KEY = "labels"
LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
CLASS_NAMES = LABELS
# The findings NIH boxed (`BBox_List_2017.csv`), as that file spells them: its `Infiltrate` is
# the labels' Infiltration. The boxes are in the pixels of the 1024 x 1024 PNGs NIH released.
BOX_FINDINGS = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
RELEASED_SIZE = 1024
NO_FINDING = "No Finding"
VIEWS = ("PA", "AP")
SEXES = ("M", "F")
# The columns read by name; both the 2017 header (trailing empty column) and the 2020 revision
# start with these.
_COLUMNS = {
    "image": "Image Index",
    "labels": "Finding Labels",
    "patient": "Patient ID",
    "age": "Patient Age",
    "sex": "Patient Gender",
    "view": "View Position",
}
_CSV_NAME = re.compile(r"^Data_Entry_2017.*\.csv$", re.IGNORECASE)


def features(image_format: str):
    """The TFDS feature spec of a converted NIH example."""
    from cxr_tf.deps import require_tfds

    tfds = require_tfds()
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 1), encoding_format=image_format),
            "labels": tfds.features.Tensor(shape=(len(LABELS),), dtype=np.int64),
            "view": tfds.features.ClassLabel(names=list(VIEWS)),
            "age": tfds.features.Scalar(dtype=np.int32),
            "sex": tfds.features.ClassLabel(names=list(SEXES)),
            "patient_id": tfds.features.Text(),
            "image_id": tfds.features.Text(),
        }
    )


def class_counts(examples: list[dict]) -> dict[str, int]:
    """Positive images per finding, plus the 'No Finding' images, of converted examples."""
    counts = {name: 0 for name in LABELS + (NO_FINDING,)}
    for ex in examples:
        hot = ex["labels"]
        for name, v in zip(LABELS, hot, strict=True):
            counts[name] += int(v)
        counts[NO_FINDING] += int(not any(hot))
    return counts


def multi_hot(finding_labels: str) -> list[int]:
    """'Effusion|Mass' -> multi-hot list in `LABELS` order; 'No Finding' -> all zeros.

    Raises ValueError naming an unknown finding.
    """
    names = [n.strip() for n in finding_labels.split("|") if n.strip()]
    hot = [0] * len(LABELS)
    for n in names:
        if n == NO_FINDING:
            continue
        if n not in LABELS:
            raise ValueError(f"unknown finding {n!r} (expected one of {', '.join(LABELS)})")
        hot[LABELS.index(n)] = 1
    return hot


def parse_age(text: str) -> int:
    """'58', '058Y' or '7M' -> years as an int; -1 when absent or unreadable."""
    m = re.match(r"^\s*(\d+)\s*([YMD]?)\s*$", text or "", re.IGNORECASE)
    if not m:
        return -1
    value, unit = int(m.group(1)), m.group(2).upper()
    return value if unit in ("", "Y") else 0


def read_data_entry(path: Path) -> tuple[list[dict], list[dict]]:
    """Read `Data_Entry_2017.csv` (either header variant) into rows and rejected rows.

    Returns (rows, rejected): rows are dicts with image, patient, labels (multi-hot), age, sex,
    view; rejected rows carry a reason for the report.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [col for col in _COLUMNS.values() if col not in header]
        if missing:
            raise SourceError(
                f"{path} lacks the columns {missing}; its header is {header}. Expected the NIH "
                "Data_Entry_2017.csv (2017 Kaggle copy or 2020 revision)."
            )
        index = {key: header.index(col) for key, col in _COLUMNS.items()}
        rows, rejected = [], []
        for line_no, fields in enumerate(reader, start=2):
            if not fields or not any(f.strip() for f in fields):
                continue
            try:
                rec = {key: fields[i].strip() for key, i in index.items()}
                row = {
                    "image": rec["image"],
                    "patient": rec["patient"],
                    "labels": multi_hot(rec["labels"]),
                    "age": parse_age(rec["age"]),
                    "sex": SEXES.index(rec["sex"].upper()),
                    "view": VIEWS.index(rec["view"].upper()),
                }
            except IndexError:
                rejected.append({"file": f"{path.name}:{line_no}", "reason": "row too short"})
                continue
            except ValueError as err:
                reason = str(err) if "finding" in str(err) else f"bad sex/view value: {fields}"
                rejected.append({"file": f"{path.name}:{line_no}", "reason": reason})
                continue
            rows.append(row)
    return rows, rejected


def _read_list(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def scan(source) -> Scan:
    """Match the CSV rows to the image files below `source` and report what does not match."""
    root = check_source(source)
    csv_paths, list_paths, images = [], {}, {}
    duplicates = 0
    for path in walk_files(root):
        name = path.name
        if _CSV_NAME.match(name):
            csv_paths.append(path)
        elif name.lower() in ("test_list.txt", "train_val_list.txt"):
            list_paths.setdefault(name.lower(), path)
        elif path.suffix.lower() == ".png" or path.parent.name == "images":
            if name in images:
                duplicates += 1
            else:
                images[name] = path
    if not csv_paths:
        raise SourceError(
            f"no Data_Entry_2017.csv under {str(root)!r}. Point --source at the folder holding "
            "Data_Entry_2017.csv and the images_0NN/ folders (python -m cxr_tf.download nih14)."
        )
    rows, skipped = read_data_entry(csv_paths[0])
    notes = [f"labels from {csv_paths[0]}"]
    if duplicates:
        notes.append(f"{duplicates} image files of a duplicate copy were counted once")
    test_list = _read_list(list_paths.get("test_list.txt"))
    found, seen, missing = [], set(), []
    for row in rows:
        if row["image"] in seen:
            skipped.append({"file": row["image"], "reason": "listed twice in the CSV"})
            continue
        seen.add(row["image"])
        path = images.get(row["image"])
        if path is None:
            missing.append(row["image"])
            continue
        group = None if test_list is None else ("test" if row["image"] in test_list else "train")
        found.append(
            SourceImage(
                path=str(path),
                image_id=row["image"],
                patient_id=row["patient"],
                group=group,
                features={k: row[k] for k in ("labels", "age", "sex", "view")},
            )
        )
    skipped += [{"file": name, "reason": "in the CSV, but no image file"} for name in missing]
    unlisted = sorted(set(images) - seen)
    skipped += [{"file": str(images[n]), "reason": "image not in the CSV"} for n in unlisted]
    if missing:
        notes.append(f"{len(missing)} CSV rows have no image file (e.g. {missing[:3]})")
    if unlisted:
        notes.append(f"{len(unlisted)} image files are not in the CSV (e.g. {unlisted[:3]})")
    if not found:
        raise SourceError(
            f"none of the {len(rows)} images of {csv_paths[0]} was found under {str(root)!r}; "
            "unzip the images_0NN archives next to the CSV."
        )
    return Scan(sorted(found, key=lambda im: im.image_id), skipped, notes)


def assign_splits(
    images: list[SourceImage], *, val_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, list[SourceImage]], list[str]]:
    """Split by patient: `test` is test_list.txt when present, else a seeded `test_fraction`.

    Validation is then drawn by patient from the rest. A patient with images on both sides of
    the official lists keeps the test images; the others are left out and reported.
    """
    rng = np.random.default_rng(seed)
    notes = []
    if images and images[0].group is not None:
        test = [im for im in images if im.group == "test"]
        rest = [im for im in images if im.group != "test"]
        overlap = {im.patient_id for im in test} & {im.patient_id for im in rest}
        if overlap:
            notes.append(
                f"{count_patients(len(overlap), 'has', 'have')} images in test_list.txt and "
                "outside it; their non-test images are left out so no patient is in two splits"
            )
            rest = drop_patients(rest, overlap)
        notes.append("test split = test_list.txt")
    else:
        test_patients = draw_patients(images, test_fraction, rng)
        test = [im for im in images if im.patient_id in test_patients]
        rest = [im for im in images if im.patient_id not in test_patients]
        notes.append(f"no test_list.txt: test split = {test_fraction:.0%} of patients, seed {seed}")
    val_patients = draw_patients(rest, val_fraction, rng)
    splits = {
        "train": [im for im in rest if im.patient_id not in val_patients],
        "validation": [im for im in rest if im.patient_id in val_patients],
        "test": test,
    }
    return splits, notes
