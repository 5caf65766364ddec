"""cxr_tf.convert on synthetic archives in the real layout, with the quirks of real archives."""

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from cxr_tf import convert as convert_mod
from cxr_tf import nih14, synthetic
from cxr_tf.convert import SOURCE_SIZES_NAME, convert, find_dataset_dir, main
from cxr_tf.sources import SourceError

SHARD = re.compile(r"^(pneumonia|nih14)-(train|validation|test)\.tfrecord-(\d{5})-of-(\d{5})$")
# A shard size small enough that the tiny test sets still get several shards per split.
SMALL_SHARDS = 0.02


def _tree_state(root: Path) -> str:
    """A digest of every path, size and mtime under root: proof nothing was written there."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        for name in sorted(dirnames + filenames):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _read_only(root: Path):
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o555)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)


def _load(dataset_dir, split):
    builder = tfds.builder_from_directory(str(dataset_dir))
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _save(img: Image.Image, path: Path, **kw):
    img.save(path, **kw)


# ---------------------------------------------------------------- pneumonia


@pytest.fixture(scope="module")
def pneumonia_src(tmp_path_factory):
    """A synthetic Kaggle archive plus broken files and unusual image modes."""
    out = tmp_path_factory.mktemp("pneumonia_src")
    root = synthetic.write_pneumonia(out, num_images=120, image_size=64, seed=0)
    normal = root / "train" / "NORMAL"
    pneu = root / "train" / "PNEUMONIA"
    (normal / "IM-9001-0001.jpeg").write_bytes(b"")  # zero bytes
    (normal / "IM-9002-0001.jpeg").write_bytes(b"<html>not an image</html>")
    good = (pneu / sorted(os.listdir(pneu))[0]).read_bytes()
    (pneu / "person9003_bacteria_1.jpeg").write_bytes(good[: len(good) // 3])  # truncated
    ramp = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (70, 1))
    rgb = np.stack([ramp] * 3, -1)
    _save(Image.fromarray(np.dstack([rgb, np.full_like(ramp, 9)])), normal / "IM-9101-0001.png")
    _save(Image.fromarray(rgb).quantize(64), normal / "IM-9102-0001.png")
    _save(Image.fromarray(rgb).convert("CMYK"), pneu / "person9104_virus_1.jpeg", quality=95)
    _save(Image.fromarray(ramp.astype(np.uint16) * 257), pneu / "person9105_virus_1.png")
    (root / "test" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _read_only(out)
    return {"out": out, "root": root, "ramp": ramp, "state": _tree_state(out)}


@pytest.fixture(scope="module")
def pneumonia_out(pneumonia_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("pneumonia_out")
    # --source one folder above chest_xray/, as a user unzipping into /kaggle/input would.
    result = convert(
        "pneumonia",
        pneumonia_src["out"],
        out,
        image_size=48,
        workers=2,
        shard_mb=SMALL_SHARDS,
        progress=False,
    )
    return result


def _source_files(root: Path):
    """split/CLASS/name of every visible file in the top copy of the tree."""
    files = set()
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for name in os.listdir(root / split / cls):
                if not name.startswith("."):
                    files.add(f"{split}/{cls}/{name}")
    return files


def test_pneumonia_loads_with_tfds_and_counts_match_metadata(pneumonia_out):
    d = pneumonia_out.dataset_dir
    builder = tfds.builder_from_directory(str(d))
    meta = builder.info.metadata
    assert meta["label_names"] == ["NORMAL", "PNEUMONIA"]
    assert builder.info.features["label"].names == ["NORMAL", "PNEUMONIA"]
    assert builder.info.features["subtype"].names == ["normal", "bacteria", "virus"]
    for split in ("train", "validation", "test"):
        exs = _load(d, split)
        assert len(exs) == meta["splits"][split]["num_examples"] > 0
        assert builder.info.splits[split].num_examples == len(exs)
        n_pneu = sum(int(e["label"]) for e in exs)
        assert meta["splits"][split]["class_counts"]["PNEUMONIA"] == n_pneu
        assert meta["splits"][split]["class_counts"]["NORMAL"] == len(exs) - n_pneu


def test_pneumonia_shards_are_named_and_several(pneumonia_out):
    names = [p.name for p in pneumonia_out.dataset_dir.iterdir() if ".tfrecord-" in p.name]
    assert names and all(SHARD.match(n) for n in names)
    train = [n for n in names if "-train." in n]
    assert len(train) > 1, "a tiny shard size must still give several train shards"
    assert not [p for p in pneumonia_out.dataset_dir.iterdir() if p.suffix == ".tmp"]


def test_pneumonia_splits_patients_and_official_test(pneumonia_src, pneumonia_out):
    d = pneumonia_out.dataset_dir
    ids, patients = {}, {}
    for split in ("train", "validation", "test"):
        exs = _load(d, split)
        ids[split] = [e["image_id"].decode() for e in exs]
        patients[split] = {e["patient_id"].decode() for e in exs}
    all_ids = sum(ids.values(), [])
    assert len(all_ids) == len(set(all_ids)), "an image appears twice"
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not patients[a] & patients[b], f"patients shared by {a} and {b}"
    # test == the official test folder exactly (every readable image of it)
    official_test = {f for f in _source_files(pneumonia_src["root"]) if f.startswith("test/")}
    assert set(ids["test"]) == official_test
    # train + validation come from the train and val folders only
    assert all(i.split("/")[0] in ("train", "val") for i in ids["train"] + ids["validation"])
    # the synthetic archive puts a patient in both train and test: reported and kept out of train
    assert any("both the official train/val and test" in n for n in pneumonia_out.notes)
    frac = len(ids["validation"]) / (len(ids["train"]) + len(ids["validation"]))
    assert 0.05 <= frac <= 0.25


def test_pneumonia_labels_follow_folders_names_and_pixels(pneumonia_out):
    agree = total = 0
    for split in ("train", "validation", "test"):
        for e in _load(pneumonia_out.dataset_dir, split):
            image_id = e["image_id"].decode()
            cls = image_id.split("/")[1]
            assert e["label"] == ["NORMAL", "PNEUMONIA"].index(cls)
            name = image_id.rsplit("/", 1)[1]
            subtype = "normal" if cls == "NORMAL" else ("virus" if "virus" in name else "bacteria")
            assert e["subtype"] == ["normal", "bacteria", "virus"].index(subtype)
            img = e["image"]
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 1
            assert min(img.shape[:2]) == 48
            if "-91" in name or "person91" in name:
                continue  # the added mode-test images carry no synthetic signal
            total += 1
            score = synthetic.pneumonia_signal(img)
            agree += (score > synthetic.PNEUMONIA_SIGNAL_THRESHOLD) == bool(e["label"])
    assert total > 100 and agree / total >= 0.98, f"{agree}/{total} images show their label"


def test_pneumonia_odd_modes_become_correct_gray(pneumonia_src, pneumonia_out):
    by_id = {
        e["image_id"].decode(): e["image"][..., 0]
        for split in ("train", "validation")
        for e in _load(pneumonia_out.dataset_dir, split)
    }
    expected = np.asarray(
        Image.fromarray(pneumonia_src["ramp"]).resize((55, 48), Image.Resampling.LANCZOS)
    ).astype(int)
    odd = [i for i in by_id if re.search(r"IM-910[12]|person910[45]", i)]
    assert len(odd) >= 3  # one patient may have gone to validation with the others
    for image_id in odd:
        got = by_id[image_id].astype(int)
        assert got.shape == (48, 55), image_id
        assert np.abs(got - expected).mean() < 6, image_id


def test_pneumonia_broken_files_skipped_and_reported(pneumonia_out):
    report = json.loads((pneumonia_out.dataset_dir / convert_mod.REPORT_NAME).read_text())
    reasons = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["IM-9001-0001.jpeg"].startswith("empty file")
    assert reasons["IM-9002-0001.jpeg"] == "not an image"
    assert reasons["person9003_bacteria_1.jpeg"].startswith("unreadable image")
    assert len(reasons) == 3
    summary = pneumonia_out.summary()
    assert "skipped: 3 files" in summary and "IM-9001-0001.jpeg" in summary


def test_pneumonia_clutter_ignored_and_source_untouched(pneumonia_src, pneumonia_out):
    ids = [
        e["image_id"].decode()
        for s in ("train", "validation", "test")
        for e in _load(pneumonia_out.dataset_dir, s)
    ]
    assert not [i for i in ids if "MACOSX" in i or "/._" in i or "DS_Store" in i]
    # the nested copy chest_xray/chest_xray/ is counted once
    assert any("nested duplicate" in n for n in pneumonia_out.notes)
    readable = _source_files(pneumonia_src["root"]) - {
        "train/NORMAL/IM-9001-0001.jpeg",
        "train/NORMAL/IM-9002-0001.jpeg",
        "train/PNEUMONIA/person9003_bacteria_1.jpeg",
    }
    dropped = int(re.search(r"their (\d+) train/val", " ".join(pneumonia_out.notes)).group(1))
    assert len(ids) == len(readable) - dropped
    assert _tree_state(pneumonia_src["out"]) == pneumonia_src["state"]


def test_pneumonia_deterministic_whatever_the_workers(pneumonia_src, pneumonia_out, tmp_path):
    again = convert(
        "pneumonia",
        pneumonia_src["root"],
        tmp_path,
        image_size=48,
        workers=1,
        shard_mb=SMALL_SHARDS,
        progress=False,
    )
    first = sorted(p for p in pneumonia_out.dataset_dir.iterdir() if ".tfrecord-" in p.name)
    second = sorted(p for p in again.dataset_dir.iterdir() if ".tfrecord-" in p.name)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_existing_output_is_not_overwritten_without_flag(pneumonia_src, tmp_path, capsys):
    kw = dict(image_size=32, shard_mb=SMALL_SHARDS, progress=False, workers=1)
    first = convert("pneumonia", pneumonia_src["root"], tmp_path, **kw)
    marker = first.dataset_dir / "dataset_info.json"
    before = marker.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert("pneumonia", pneumonia_src["root"], tmp_path, **kw)
    assert marker.stat().st_mtime_ns == before
    args = [
        "pneumonia",
        "--source",
        str(pneumonia_src["root"]),
        "--out",
        str(tmp_path),
        "--image-size",
        "32",
        "--workers",
        "1",
    ]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    again = convert("pneumonia", pneumonia_src["root"], tmp_path, overwrite=True, **kw)
    assert is_same_dataset(first.dataset_dir, again.dataset_dir)


def is_same_dataset(a: Path, b: Path) -> bool:
    return len(_load(a, "train")) == len(_load(b, "train"))


def test_interrupted_conversion_resumes_to_identical_output(pneumonia_src, tmp_path, monkeypatch):
    kw = dict(image_size=32, shard_mb=SMALL_SHARDS, progress=False, workers=1)
    reference = convert("pneumonia", pneumonia_src["root"], tmp_path / "ref", **kw)

    real_work, calls = convert_mod._work, {"n": 0}

    def dying_work(task):
        calls["n"] += 1
        if calls["n"] == 70:
            raise KeyboardInterrupt  # the user pressed Ctrl-C, or the VM was preempted
        return real_work(task)

    monkeypatch.setattr(convert_mod, "_work", dying_work)
    with pytest.raises(KeyboardInterrupt):
        convert("pneumonia", pneumonia_src["root"], tmp_path / "run", **kw)
    partial = tmp_path / "run" / "pneumonia" / convert_mod.VERSION
    assert not (partial / "dataset_info.json").exists()
    with pytest.raises(FileNotFoundError, match="interrupted conversion"):
        find_dataset_dir(tmp_path / "run")
    with pytest.raises(Exception):  # noqa: B017 - TFDS raises several types for a missing info
        tfds.builder_from_directory(str(partial))

    monkeypatch.setattr(convert_mod, "_work", real_work)
    resumed = convert("pneumonia", pneumonia_src["root"], tmp_path / "run", **kw)
    assert resumed.resumed_shards >= 1
    ref_files = sorted(p for p in reference.dataset_dir.iterdir() if ".tfrecord-" in p.name)
    for p in ref_files:
        assert (resumed.dataset_dir / p.name).read_bytes() == p.read_bytes(), p.name
    assert len(list(resumed.dataset_dir.glob("*.tfrecord-*"))) == len(ref_files)
    assert find_dataset_dir(tmp_path / "run") == resumed.dataset_dir


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="mnist"), "'mnist' is not one of"),
        (dict(image_size=8), "--image-size 8"),
        (dict(image_format="gif"), "--format 'gif'"),
        (dict(val_fraction=1.5), "--val-fraction 1.5"),
        (dict(limit=0), "--limit 0"),
    ],
)
def test_bad_arguments_name_the_value(pneumonia_src, tmp_path, kwargs, message):
    args = dict(dataset="pneumonia", source=pneumonia_src["root"], out=tmp_path) | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        convert(args.pop("dataset"), args.pop("source"), args.pop("out"), **args)


def test_out_naming_a_file_is_a_clear_error(pneumonia_src, tmp_path):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            convert("pneumonia", pneumonia_src["root"], out)


def test_source_without_the_archive_says_where_to_point(tmp_path, capsys):
    with pytest.raises(SourceError, match="not a folder"):
        convert("pneumonia", tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"NORMAL,PNEUMONIA"):
        convert("pneumonia", tmp_path / "empty", tmp_path / "out")
    assert main(["nih14", "--source", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "Data_Entry_2017.csv" in capsys.readouterr().err


def test_limit_converts_a_seeded_sample(pneumonia_src, tmp_path):
    r = convert(
        "pneumonia",
        pneumonia_src["root"],
        tmp_path,
        image_size=32,
        limit=30,
        workers=1,
        progress=False,
    )
    assert sum(r.examples_per_split.values()) <= 30


# ---------------------------------------------------------------- nih14


def _csv_rows(root: Path):
    import csv

    with open(root / "Data_Entry_2017.csv", newline="") as f:
        return {r[0]: r for r in list(csv.reader(f))[1:]}


@pytest.fixture(scope="module", params=["2017", "2020"])
def nih_case(request, tmp_path_factory):
    src = tmp_path_factory.mktemp(f"nih_src_{request.param}")
    root = synthetic.write_nih14(
        src, num_images=90, image_size=64, seed=1, csv_variant=request.param
    )
    rows = _csv_rows(root)
    victim = sorted(rows)[5]
    (next(root.glob(f"images_*/images/{victim}"))).unlink()  # CSV row without its image
    stray = root / "images_001" / "images" / "99999999_000.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(stray)  # image not in the CSV
    out = tmp_path_factory.mktemp(f"nih_out_{request.param}")
    result = convert(
        "nih14", src, out, image_size=48, workers=2, shard_mb=SMALL_SHARDS, progress=False
    )
    return {"root": root, "rows": rows, "victim": victim, "result": result}


def test_nih_header_variant_is_what_was_asked(nih_case):
    header = (nih_case["root"] / "Data_Entry_2017.csv").read_text().splitlines()[0]
    variant = "2017" if header.endswith(",") else "2020"
    assert nih_case["result"].examples_per_split["train"] > 0, variant


def test_nih_labels_match_the_csv_strings_and_pixels(nih_case):
    rows, d = nih_case["rows"], nih_case["result"].dataset_dir
    seen, agree, total = 0, 0, 0
    for split in ("train", "validation", "test"):
        for e in _load(d, split):
            row = rows[e["image_id"].decode()]
            names = set(row[1].split("|")) - {"No Finding"}
            hot = [int(v) for v in e["labels"]]
            assert {n for n, v in zip(nih14.LABELS, hot, strict=True) if v} == names
            assert e["patient_id"].decode() == row[3]
            assert ["PA", "AP"][e["view"]] == row[6] and ["M", "F"][e["sex"]] == row[5]
            assert e["age"] == int(row[4])
            scores = synthetic.nih14_signal(e["image"])
            agree += int(((scores > synthetic.NIH14_SIGNAL_THRESHOLD) == np.array(hot, bool)).all())
            total += 1
            seen += 1
    assert seen == len(rows) - 1
    assert agree / total >= 0.95, f"{agree}/{total} images show exactly their findings"


def test_nih_test_split_is_test_list_and_patients_disjoint(nih_case):
    d = nih_case["result"].dataset_dir
    test_list = set((nih_case["root"] / "test_list.txt").read_text().split())
    ids, patients = {}, {}
    for split in ("train", "validation", "test"):
        exs = _load(d, split)
        ids[split] = {e["image_id"].decode() for e in exs}
        patients[split] = {e["patient_id"].decode() for e in exs}
    assert ids["test"] == test_list - {nih_case["victim"]}
    assert not (ids["train"] | ids["validation"]) & test_list
    assert not patients["train"] & patients["validation"]
    assert not (patients["train"] | patients["validation"]) & patients["test"]


def test_nih_reports_missing_images_and_unlisted_files(nih_case):
    result = nih_case["result"]
    report = json.loads((result.dataset_dir / convert_mod.REPORT_NAME).read_text())
    reasons = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert reasons[nih_case["victim"]] == "in the CSV, but no image file"
    assert reasons["99999999_000.png"] == "image not in the CSV"
    meta = tfds.builder_from_directory(str(result.dataset_dir)).info.metadata
    assert meta["label_names"] == list(nih14.LABELS)
    counts = meta["splits"]["train"]["class_counts"]
    exs = _load(result.dataset_dir, "train")
    assert counts["Effusion"] == sum(int(e["labels"][2]) for e in exs)


def test_nih_without_lists_splits_by_patient_fraction(tmp_path):
    root = synthetic.write_nih14(tmp_path / "src", num_images=80, image_size=32, seed=2)
    (root / "test_list.txt").unlink()
    (root / "train_val_list.txt").unlink()
    shutil.rmtree(tmp_path / "src" / "images_002", ignore_errors=False)
    r = convert(
        "nih14",
        tmp_path / "src",
        tmp_path / "out",
        image_size=32,
        test_fraction=0.25,
        workers=1,
        progress=False,
    )
    n = r.examples_per_split
    assert 0.1 < n["test"] / sum(n.values()) < 0.45
    assert any("no test_list.txt" in note for note in r.notes)
    assert any("no image file" in s["reason"] for s in r.skipped)


def test_nih_bad_csv_header_names_the_columns(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SourceError, match="lacks the columns"):
        convert("nih14", tmp_path, tmp_path / "out")


def test_tf_reads_the_image_feature_as_encoded_bytes(pneumonia_out):
    """The input pipeline parses shards itself: the image must be a plain encoded string."""
    path = next(pneumonia_out.dataset_dir.glob("pneumonia-train.tfrecord-*"))
    raw = next(iter(tf.data.TFRecordDataset(str(path))))
    ex = tf.io.parse_single_example(
        raw,
        {
            "image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    img = Image.open(io.BytesIO(ex["image"].numpy()))
    assert img.format == "JPEG" and img.mode == "L"


def test_worker_chunks_cover_the_tasks_in_order_and_shrink_at_the_end():
    tasks = list(range(300))
    chunks = convert_mod._chunks(tasks, workers=2)
    assert [t for c in chunks for t in c] == tasks
    sizes = [len(c) for c in chunks]
    assert max(sizes) == 16 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert convert_mod._chunks([], workers=2) == []


def test_nih_source_sizes_are_kept_per_split_for_the_boxes(nih_case):
    """source_sizes.json: every converted image's size as its file holds it (what NIH's boxes
    are measured in), under the split it went to; the stray 64 x 64 PNG not in the CSV and the
    CSV row without an image are absent."""
    d = nih_case["result"].dataset_dir
    saved = json.loads((d / SOURCE_SIZES_NAME).read_text())
    assert saved["complete"] is True
    sizes = saved["sizes"]
    for split in ("train", "validation", "test"):
        ids = {e["image_id"].decode() for e in _load(d, split)}
        assert set(sizes[split]) == ids
    assert all(hw == [64, 64] for s in sizes.values() for hw in s.values())
    assert nih_case["victim"] not in {i for s in sizes.values() for i in s}


def test_source_sizes_are_the_files_not_the_draft_decode(tmp_path):
    """A 1316 x 1000 JPEG decoded with DCT scaling for a 64 px output: the size kept is the
    file's, not the reduced decode's."""
    from cxr_tf import images

    path = tmp_path / "big.jpeg"
    Image.fromarray(np.full((1000, 1316), 128, np.uint8)).save(path, quality=90)
    encoded = images.convert_file(str(path), 64, "jpeg")
    assert (encoded.source_height, encoded.source_width) == (1000, 1316)
    assert (encoded.height, encoded.width) == (64, 84)
