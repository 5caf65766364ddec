"""Kaggle "Chest X-Ray Images (Pneumonia)" (Kermany et al. 2018): find, label and split the files.

The archive is `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`; the file name carries the
patient and, for pneumonia, the subtype: `IM-0115-0001.jpeg`, `NORMAL2-IM-1427-0001.jpeg`,
`person1000_bacteria_2931.jpeg`, `person1000_virus_1681.jpeg`.
"""

from __future__ import annotations

import re

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

NAME = "pneumonia"
TASK = "binary"
LABEL_KEY = "label"
CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SUBTYPE_NAMES = ("normal", "bacteria", "virus")
_FOLDER_SPLITS = ("train", "val", "test")

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


def parse_file_name(name: str, class_name: str) -> tuple[str, str]:
    """(patient_id, subtype) from a file name of the archive.

    Names outside the archive's patterns count as a patient of their own; a PNEUMONIA file must
    still say bacteria or virus, else ValueError (the subtype is a label, not guessed).
    """
    stem = name.rsplit(".", 1)[0]
    if class_name == "NORMAL":
        m = _NORMAL.match(stem)
        return (m.group(1) if m else stem), "normal"
    m = _PERSON.match(stem)
    if m:
        return m.group(1), m.group(2).lower()
    for subtype in ("bacteria", "virus"):
        if subtype in stem.lower():
            return stem, subtype
    raise ValueError("PNEUMONIA file name says neither 'bacteria' nor 'virus'")


def features(image_format: str):
    """The TFDS feature spec of a converted pneumonia example."""
    from cxr_tf.deps import require_tfds

    tfds = require_tfds()
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 1), encoding_format=image_format),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "subtype": tfds.features.ClassLabel(names=list(SUBTYPE_NAMES)),
            "patient_id": tfds.features.Text(),
            "image_id": tfds.features.Text(),
        }
    )


def class_counts(examples: list[dict]) -> dict[str, int]:
    """Images per class (and per subtype) of converted examples."""
    counts = {name: 0 for name in CLASS_NAMES + SUBTYPE_NAMES}
    for ex in examples:
        counts[CLASS_NAMES[ex["label"]]] += 1
        counts[SUBTYPE_NAMES[ex["subtype"]]] += 1
    return counts


def scan(source) -> Scan:
    """Find every image under `<split>/<CLASS>/` anywhere below `source`.

    A file is identified by `split/CLASS/name`, so a nested duplicate of the tree is counted once
    (the shallowest copy wins) and `--source` may be any folder above the split folders.
    """
    root = check_source(source)
    found: dict[str, SourceImage] = {}
    skipped, duplicates = [], 0
    for path in walk_files(root):
        parts = path.relative_to(root).parts
        if len(parts) < 3:
            continue
        split, class_name = parts[-3].lower(), parts[-2].upper()
        if split not in _FOLDER_SPLITS or class_name not in CLASS_NAMES:
            continue
        image_id = f"{split}/{class_name}/{parts[-1]}"
        if image_id in found:
            duplicates += 1
            continue
        try:
            patient, subtype = parse_file_name(parts[-1], class_name)
        except ValueError as err:
            skipped.append({"file": str(path), "reason": str(err)})
            continue
        found[image_id] = SourceImage(
            path=str(path),
            image_id=image_id,
            patient_id=patient,
            group=split,
            features={
                "label": CLASS_NAMES.index(class_name),
                "subtype": SUBTYPE_NAMES.index(subtype),
            },
        )
    if not found:
        raise SourceError(
            f"no images found under {str(root)!r} in chest_xray/{{train,val,test}}/"
            "{NORMAL,PNEUMONIA}/. Point --source at the folder the Kaggle archive "
            "'chest-xray-pneumonia' was unzipped into (python -m cxr_tf.download pneumonia)."
        )
    notes = []
    if duplicates:
        notes.append(f"{duplicates} files of a nested duplicate copy of the tree were counted once")
    return Scan(sorted(found.values(), key=lambda im: im.image_id), skipped, notes)


def assign_splits(
    images: list[SourceImage], *, val_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, list[SourceImage]], list[str]]:
    """Split into train/validation/test; `test` is the official test folder, unchanged.

    The official val folder holds 16 images, so validation is drawn by patient (stratified by
    class) from the official train and val folders together. A patient who is in the official
    test folder too keeps their test images, and their other images are left out of training, so
    that no patient is in two splits. `test_fraction` is unused: the archive fixes the test set.
    """
    del test_fraction
    test = [im for im in images if im.group == "test"]
    pool = [im for im in images if im.group != "test"]
    notes = []
    overlap = {im.patient_id for im in test} & {im.patient_id for im in pool}
    if overlap:
        dropped = sum(im.patient_id in overlap for im in pool)
        notes.append(
            f"{count_patients(len(overlap))} in both the official train/val and test folders "
            f"(e.g. {sorted(overlap)[:3]}); the official test set is kept as is and their "
            f"{dropped} train/val images are left out so no patient is in two splits"
        )
        pool = drop_patients(pool, overlap)
    rng = np.random.default_rng(seed)
    val_patients = draw_patients(pool, val_fraction, rng, stratum=lambda im: im.features["label"])
    splits = {
        "train": [im for im in pool if im.patient_id not in val_patients],
        "validation": [im for im in pool if im.patient_id in val_patients],
        "test": test,
    }
    return splits, notes
