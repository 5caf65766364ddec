"""Tests for cxr_tf.synthetic: layouts as in the real downloads, determinism, oracles, CLI."""

from __future__ import annotations

import collections
import csv
import gzip
import io
import re

import numpy as np
import pytest
from PIL import Image

from cxr_tf import synthetic
from cxr_tf.nih14 import LABELS

NORMAL_NAME = re.compile(r"^(?P<patient>(NORMAL2-)?IM-\d{4})-\d{4}\.jpeg$")
PNEUMONIA_NAME = re.compile(r"^(?P<patient>person\d+)_(?P<subtype>bacteria|virus)_\d+\.jpeg$")
NIH14_NAME = re.compile(r"^\d{8}_\d{3}\.png$")
SPLITS, CLASSES = ("train", "val", "test"), ("NORMAL", "PNEUMONIA")


@pytest.fixture(scope="module")
def pneumonia_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pneumonia")
    return synthetic.write_pneumonia(out, num_images=200, image_size=96, seed=0)


@pytest.fixture(scope="module")
def nih14_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("nih14")
    return synthetic.write_nih14(out, num_images=200, image_size=96, seed=0)


def _files(root):
    """{relative path: bytes} of every file below `root`."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _convert(image: Image.Image) -> np.ndarray:
    """What the converter may do: grayscale, short side 64 with LANCZOS, JPEG quality 95."""
    gray = image.convert("L")
    scale = 64 / min(gray.size)
    small = gray.resize(
        (round(gray.width * scale), round(gray.height * scale)), Image.Resampling.LANCZOS
    )
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=95)
    return np.asarray(Image.open(buffer))


def _as_written(image: Image.Image) -> np.ndarray:
    """The file as written, in grayscale."""
    return np.asarray(image.convert("L"))


CONVERSIONS = pytest.mark.parametrize(
    "convert", [_as_written, _convert], ids=["as-written", "gray-64px-jpeg95"]
)


def _read_data_entry(root):
    with open(root / "Data_Entry_2017.csv", newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


# --- pneumonia ---------------------------------------------------------------------------------


def _pneumonia_images(root):
    """(split, class, patient, subtype) of every JPEG, parsed with the real archive's patterns."""
    images = []
    for split in SPLITS:
        for name in CLASSES:
            for path in sorted((root / split / name).iterdir()):
                match = (NORMAL_NAME if name == "NORMAL" else PNEUMONIA_NAME).match(path.name)
                assert match, path
                images.append((split, name, match["patient"], match.groupdict().get("subtype")))
    return images


def test_pneumonia_layout_naming_and_ratios(pneumonia_root):
    assert pneumonia_root.name == "chest_xray"
    images = _pneumonia_images(pneumonia_root)
    n = collections.Counter((split, name) for split, name, _, _ in images)
    assert len(images) == 200 and len(n) == 6
    train = n["train", "NORMAL"] + n["train", "PNEUMONIA"]
    assert 0.2 <= n["train", "NORMAL"] / train <= 0.3  # about 1:3
    assert 1 <= n["val", "NORMAL"] == n["val", "PNEUMONIA"] <= 8
    test = n["test", "NORMAL"] + n["test", "PNEUMONIA"]
    assert 0.13 <= test / 200 <= 0.19
    assert 0.3 <= n["test", "NORMAL"] / test <= 0.45  # about 3:5
    subtypes = collections.Counter(subtype for *_, subtype in images if subtype)
    assert 0.5 <= subtypes["bacteria"] / subtypes.total() <= 0.85  # about 2:1

    per_folder = collections.Counter((split, patient) for split, _, patient, _ in images)
    assert 2 <= max(per_folder.values()) <= 4
    patients = {s: {patient for split, _, patient, _ in images if split == s} for s in SPLITS}
    shared = patients["train"] & patients["test"]  # as in the real archive
    assert 1 <= len(shared) <= 2 and all(p.startswith("person") for p in shared)
    assert not patients["val"] & (patients["train"] | patients["test"])


def test_pneumonia_images_vary_in_size_and_mode(pneumonia_root):
    modes = collections.Counter()
    for path in pneumonia_root.glob("*/*/*.jpeg"):
        with Image.open(path) as image:
            modes[image.mode] += 1
            width, height = image.size
        assert 0.8 * 96 - 1 <= min(width, height) <= 1.5 * 96 + 1
        assert 0.74 <= width / height <= 1.41
    assert set(modes) == {"L", "RGB"}
    assert 0.08 <= modes["RGB"] / sum(modes.values()) <= 0.35


def test_pneumonia_clutter(pneumonia_root):
    files = _files(pneumonia_root)
    images = {k: v for k, v in files.items() if k.split("/")[0] in SPLITS and k.endswith(".jpeg")}
    nested = {k: v for k, v in _files(pneumonia_root / "chest_xray").items() if k.endswith(".jpeg")}
    assert nested == images
    macosx = _files(pneumonia_root / "__MACOSX" / "chest_xray")
    assert set(macosx) == {re.sub(r"([^/]+)$", r"._\1", k) for k in images}
    assert all(data.startswith(bytes.fromhex("00051607")) for data in macosx.values())
    assert {".DS_Store", "train/.DS_Store", "chest_xray/.DS_Store"} <= set(files)


# --- nih14 -------------------------------------------------------------------------------------


def test_nih14_layout_csv_and_lists(nih14_root):
    header, rows = _read_data_entry(nih14_root)
    first_line = (nih14_root / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert first_line == synthetic.NIH14_CSV_HEADERS["2017"]
    assert first_line.endswith(",") and len(header) == 12 and header[-1] == ""
    assert len(rows) == 200 and all(len(row) == 11 for row in rows)

    with gzip.open(synthetic.NIH14_SAMPLE, "rt", newline="") as f:
        sample = {row["Image Index"]: row for row in csv.DictReader(f)}
    for row in rows:  # real rows, names kept
        assert sample[row[0]]["Finding Labels"] == row[1]
        assert sample[row[0]]["Patient ID"] == row[3]
    patients = collections.Counter(row[3] for row in rows)
    assert len(patients) < 200  # whole patients with their follow-ups

    pngs = {p.name: p for p in nih14_root.glob("images_*/images/*.png")}
    folders = sorted(p.name for p in nih14_root.glob("images_*"))
    assert folders == ["images_001", "images_002", "images_003", "images_004"]
    assert set(pngs) == {row[0] for row in rows} and all(NIH14_NAME.match(n) for n in pngs)

    lists = {
        name: (nih14_root / name).read_text().split()
        for name in ("train_val_list.txt", "test_list.txt")
    }
    assert sorted(lists["train_val_list.txt"] + lists["test_list.txt"]) == sorted(pngs)
    patient_of = {row[0]: row[3] for row in rows}
    test_patients = {patient_of[n] for n in lists["test_list.txt"]}
    assert not test_patients & {patient_of[n] for n in lists["train_val_list.txt"]}
    assert 0.18 <= len(lists["test_list.txt"]) / 200 <= 0.25


def test_nih14_images_are_square_gray_some_rgba(nih14_root):
    modes = collections.Counter()
    for path in nih14_root.glob("images_*/images/*.png"):
        with Image.open(path) as image:
            assert image.size == (96, 96)
            modes[image.mode] += 1
    assert modes["L"] > 180 and set(modes) <= {"L", "RGBA"}


def test_nih14_2020_variant(tmp_path):
    synthetic.write_nih14(tmp_path, num_images=20, image_size=32, csv_variant="2020")
    header, rows = _read_data_entry(tmp_path)
    assert ",".join(header) == synthetic.NIH14_CSV_HEADERS["2020"]
    assert len(header) == 11 and all(len(row) == 11 for row in rows) and len(rows) == 20


def test_nih14_rows_beyond_the_sample_get_new_patients():
    rows = synthetic._nih14_rows(np.random.default_rng(0), 5000)
    names = [row["Image Index"] for row in rows]
    assert len(set(names)) == 5000
    reused = [row for row in rows if int(row["Patient ID"]) >= 100000]
    assert len(reused) == 5000 - 4695
    assert all(row["Image Index"].startswith(f"{int(row['Patient ID']):08d}_") for row in reused)


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [synthetic.write_pneumonia, synthetic.write_nih14])
def test_same_seed_same_bytes(tmp_path, write):
    small = {"num_images": 24, "image_size": 40}
    first = _files(write(tmp_path / "a", seed=3, **small))
    assert _files(write(tmp_path / "b", seed=3, **small)) == first
    assert _files(write(tmp_path / "c", seed=4, **small)) != first


# --- oracles -----------------------------------------------------------------------------------


@CONVERSIONS
def test_pneumonia_oracle_matches_labels(pneumonia_root, convert):
    agree = []
    for path in pneumonia_root.glob("*/*/*.jpeg"):
        with Image.open(path) as image:
            score = synthetic.pneumonia_signal(convert(image))
        agree.append(
            (score > synthetic.PNEUMONIA_SIGNAL_THRESHOLD) == (path.parent.name == "PNEUMONIA")
        )
    assert np.mean(agree) >= 0.98


@CONVERSIONS
def test_nih14_oracle_matches_labels(nih14_root, convert):
    _, rows = _read_data_entry(nih14_root)
    labels = {row[0]: row[1].split("|") for row in rows}
    agree = []
    for path in nih14_root.glob("images_*/images/*.png"):
        with Image.open(path) as image:
            scores = synthetic.nih14_signal(convert(image)[:, :, None])
        truth = np.array([name in labels[path.name] for name in LABELS])
        agree.append((scores > synthetic.NIH14_SIGNAL_THRESHOLD) == truth)
    accuracy = np.mean(agree, axis=0)
    assert accuracy.min() >= 0.98, dict(zip(LABELS, accuracy.round(3), strict=True))


def test_every_finding_leaves_its_own_signal():
    rng = np.random.default_rng(0)
    for k, name in enumerate(LABELS):
        image = Image.fromarray(synthetic._chest_image(rng, 256, 256, findings=[k]))
        found = synthetic.nih14_signal(_convert(image)) > synthetic.NIH14_SIGNAL_THRESHOLD
        assert found.tolist() == [i == k for i in range(len(LABELS))], name


def test_oracle_rejects_color_images():
    with pytest.raises(ValueError, match=r"\(64, 64, 3\)"):
        synthetic.nih14_signal(np.zeros((64, 64, 3), np.uint8))


# --- command line and errors -------------------------------------------------------------------


def test_cli_writes_and_summarizes(tmp_path, capsys):
    assert synthetic.main(["nih14", "--out", str(tmp_path / "nih"), "--num-images", "20"]) == 0
    assert "wrote 20 PNGs" in capsys.readouterr().out
    argv = ["pneumonia", "--out", str(tmp_path), "--num-images", "30", "--image-size", "48"]
    assert synthetic.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 30 JPEGs to {tmp_path / 'chest_xray'}") and "val 1 NORMAL" in out


def test_cli_rejects_bad_values(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synthetic.main(["pneumonia", "--out", str(tmp_path), "--num-images", "5"])
    assert "num_images=5" in capsys.readouterr().err


def test_refuses_to_write_over_files(tmp_path):
    (tmp_path / "old.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="already holds files"):
        synthetic.write_nih14(tmp_path, num_images=20)
    with pytest.raises(ValueError, match="csv_variant='2019'"):
        synthetic.write_nih14(tmp_path / "new", num_images=20, csv_variant="2019")


def test_nih14_box_list_is_in_nihs_format_and_boxes_its_spots(nih14_root):
    """BBox_List_2017.csv as NIH ships it (header split at its commas; `Infiltrate`), a box per
    boxed finding of every image, each a little larger than its spot's disc and holding its
    centre; it parses with cxr_tf.localization, no row rejected."""
    from cxr_tf import localization
    from cxr_tf.nih14 import BOX_FINDINGS

    lines = (nih14_root / "BBox_List_2017.csv").read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    boxes, rejected = localization.read_boxes(nih14_root / "BBox_List_2017.csv")
    assert rejected == [] and len(boxes) == len(lines) - 1 > 20
    _, rows = _read_data_entry(nih14_root)
    expected = sorted(
        (row[0], name)
        for row in rows
        for name in BOX_FINDINGS.values()
        if name in row[1].split("|")
    )
    assert sorted((b.image_id, b.finding) for b in boxes) == expected
    assert any(line.split(",")[1] == "Infiltrate" for line in lines[1:])
    r = synthetic.NIH14_SPOT_RADIUS * 96
    for b in boxes:
        cx, cy = synthetic.NIH14_SPOT_CENTERS[LABELS.index(b.finding)]
        assert b.x <= cx * 96 <= b.x + b.w and b.y <= cy * 96 <= b.y + b.h
        assert 2 * r <= b.w <= 2.6 * r + 1e-9 and b.w == b.h


def test_nih14_shuffled_layout_moves_spots_and_their_boxes(tmp_path):
    """spot_layout="shuffled": each image's spots sit at a permutation of the 14 places; the
    boxes follow them, so a finding's boxes are spread over several places."""
    from cxr_tf import localization

    root = synthetic.write_nih14(tmp_path, num_images=200, image_size=64, spot_layout="shuffled")
    boxes, _ = localization.read_boxes(root / "BBox_List_2017.csv")
    places = collections.defaultdict(set)
    for b in boxes:
        centre = ((b.x + b.w / 2) / 64, (b.y + b.h / 2) / 64)
        nearest = min(
            range(len(LABELS)),
            key=lambda k: np.hypot(*np.subtract(synthetic.NIH14_SPOT_CENTERS[k], centre)),
        )
        places[b.finding].add(nearest)
    common = [f for f in places if sum(b.finding == f for b in boxes) >= 10]
    assert common and all(len(places[f]) >= 4 for f in common), places
    with pytest.raises(ValueError, match="spot_layout"):
        synthetic.write_nih14(tmp_path / "x", num_images=20, spot_layout="random")


def test_nih14_draws_patients_with_adjudicated_labels_first(nih14_root):
    """So that evaluate --labels google2019 finds images in the test split."""
    with gzip.open(synthetic.GOOGLE2019_LABELS, "rt", newline="") as f:
        google = {row["Image Index"] for row in csv.DictReader(f)}
    test = (nih14_root / "test_list.txt").read_text().split()
    assert sum(name in google for name in test) >= 5
