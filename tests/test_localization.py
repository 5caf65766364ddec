"""evaluate --boxes: Grad-CAM scored against NIH's radiologist boxes (cxr_tf.localization), on the
real box list, on a constructed model whose map is known, and on a trained tiny model."""

import gzip
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_tf import localization, synthetic
from cxr_tf.convert import convert

REAL_BOXES = pathlib.Path(__file__).parent / "data" / "nih" / "BBox_List_2017.csv.gz"


def test_the_real_box_list_parses_with_every_row_accounted_for():
    """NIH's BBox_List_2017.csv as it ships (header `Bbox [x,y,w,h]` split over four columns,
    three empty ones after): 984 boxes on 880 images, 8 findings, Infiltrate read as
    Infiltration, none rejected."""
    boxes, rejected = localization.read_boxes(REAL_BOXES)
    rows = gzip.decompress(REAL_BOXES.read_bytes()).decode().strip().splitlines()
    assert len(boxes) + len(rejected) == len(rows) - 1 == 984
    assert rejected == []
    assert len({b.image_id for b in boxes}) == 880
    counts = {f: sum(b.finding == f for b in boxes) for f in {b.finding for b in boxes}}
    assert counts == {
        "Atelectasis": 180,
        "Effusion": 153,
        "Cardiomegaly": 146,
        "Infiltration": 123,
        "Pneumonia": 120,
        "Pneumothorax": 98,
        "Mass": 85,
        "Nodule": 79,
    }
    first = boxes[0]
    assert (first.image_id, first.finding) == ("00013118_008.png", "Atelectasis")
    assert first.x == pytest.approx(225.084745762712) and first.h == pytest.approx(79.1864406779661)
    assert all(b.x >= 0 and b.x + b.w <= 1024 and b.y + b.h <= 1024 for b in boxes)


def test_bad_rows_are_rejected_with_reasons_and_a_wrong_file_fails_in_one_line(tmp_path):
    lines = [
        "Image Index,Finding Label,Bbox [x,y,w,h],,,",
        "a.png,Mass,1,2,3,4,,,",  # trailing empty fields, as some copies have
        "b.png,Mass,1,2",
        "c.png,Hernia,1,2,3,4",
        "d.png,Nodule,x,2,3,4",
        "e.png,Nodule,1,2,0,4",
        "",
        "f.png,Infiltrate,5,6,7,8",
    ]
    path = tmp_path / "boxes.csv.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    boxes, rejected = localization.read_boxes(path)
    assert [(b.image_id, b.finding) for b in boxes] == [
        ("a.png", "Mass"),
        ("f.png", "Infiltration"),
    ]
    reasons = [r["reason"] for r in rejected]
    assert len(reasons) == 4 and "too short" in reasons[0] and "'Hernia'" in reasons[1]
    assert "not numbers" in reasons[2] and "empty" in reasons[3]
    assert [r["row"] for r in rejected] == [f"boxes.csv.gz:{n}" for n in (3, 4, 5, 6)]
    other = tmp_path / "labels.csv"
    other.write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(ValueError, match="is not NIH's box list") as err:
        localization.read_boxes(other)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        localization.read_boxes(tmp_path / "missing.csv")


# --- a constructed model whose map is the image itself ---------------------------------------


def _pooling_model(size: int, cell: int):
    """uint8 image -> `preprocess` (to [0, 1]) -> average pooling over `cell` x `cell` blocks
    (the `relu` feature map, one channel) -> global average -> `logits` with weight 1 for
    every finding: each finding's Grad-CAM map is the pooled image, scaled to its peak."""
    import keras

    from cxr_tf import models
    from cxr_tf.nih14 import LABELS

    inputs = keras.Input((size, size, 1), dtype="uint8")
    x = models.Preprocess(size, 1, (0.0,), (1.0,), input_dtype="uint8", name="preprocess")(inputs)
    x = keras.layers.AveragePooling2D(cell)(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(len(LABELS), use_bias=False, name="logits")(x)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(x))
    model.get_layer("logits").set_weights([np.ones((1, len(LABELS)), np.float32)])
    return model


def _rectangle_archive(root: pathlib.Path, size: int) -> None:
    """NIH's layout with black `size` x `size` PNGs, each with one white rectangle at the same
    place (x 16..48, y 48..80 at size 128): 4 test images, 10 for train and validation."""
    header = synthetic.NIH14_CSV_HEADERS["2020"]
    rows, test = [header], []
    for i in range(14):
        name = f"{i + 1:08d}_000.png"
        rows.append(f"{name},Mass|Nodule|Atelectasis|Effusion,0,{i + 1},50,M,PA,2500,2048,0.1,0.1")
        (test if i < 4 else []).append(name)
        image = np.zeros((size, size), np.uint8)
        image[48 * size // 128 : 80 * size // 128, 16 * size // 128 : 48 * size // 128] = 255
        (root / "images_001" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images_001" / "images" / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    others = [r.split(",")[0] for r in rows[1:] if r.split(",")[0] not in test]
    (root / "train_val_list.txt").write_text("\n".join(others) + "\n")


def test_a_model_whose_map_is_known_gives_exact_iobb_figures(tmp_path):
    """The map is the pooled image: 1 on the rectangle's cells, 0 elsewhere; its half-peak
    region, upsampled, is the rectangle exactly (x 8..24, y 24..40 in the 64 px input). Boxes
    given in the 128 px source: the rectangle (IoBB 1, a hit), its left half (0.5), its
    top-left quarter (0.25), and one on the input's centre (0, a miss, a centre-baseline hit);
    one more box's image is in the train split and one is in no conversion: counted, not
    scored. Mass's mean-box baseline leaves its own image out: with it the mean box's centre
    (16, 39) would hit; without, the other image's box centre (16, 46) misses."""
    source = tmp_path / "raw"
    _rectangle_archive(source, 128)
    data = tmp_path / "tf"
    convert("nih14", source, data, image_size=64, image_format="png", workers=1, progress=False)
    model = _pooling_model(64, 8)
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Mass,16,48,32,32\n"
        "00000002_000.png,Nodule,16,48,16,32\n"
        "00000003_000.png,Atelectasis,16,48,16,16\n"
        "00000004_000.png,Effusion,56,56,16,16\n"
        "00000009_000.png,Mass,22,82,20,20\n"
        "99999999_000.png,Nodule,16,48,16,32\n"
    )
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "cxr_tf.evaluate", "--model", str(model_path), "--data",
           str(data), "--boxes", str(boxes), "--out", str(out), "--bootstrap", "20"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loc = json.loads((out / "metrics.json").read_text())["localization"]
    f = loc["findings"]
    iobb = {name: f[name]["mean_iobb"] for name in ("Mass", "Nodule", "Atelectasis", "Effusion")}
    assert iobb == pytest.approx({"Mass": 1.0, "Nodule": 0.5, "Atelectasis": 0.25, "Effusion": 0})
    assert f["Mass"]["pointing_game"] == 1.0 and f["Effusion"]["pointing_game"] == 0.0
    assert f["Mass"]["iobb_accuracy"] == {f"{t:g}": 1.0 for t in localization.IOBB_THRESHOLDS}
    assert f["Nodule"]["iobb_accuracy"]["0.4"] == 1.0 and f["Nodule"]["iobb_accuracy"]["0.5"] == 0
    assert f["Atelectasis"]["iobb_accuracy"]["0.2"] == 1.0
    assert f["Atelectasis"]["iobb_accuracy"]["0.3"] == 0.0
    overall = loc["overall"]
    assert overall["iobb_accuracy"] == {
        "0.1": 0.75, "0.2": 0.75, "0.3": 0.5, "0.4": 0.5, "0.5": 0.25, "0.6": 0.25, "0.7": 0.25
    }  # fmt: skip
    assert (overall["boxes"], overall["scored"], overall["skipped"]) == (6, 4, 2)
    assert overall["skipped_reasons"] == {
        "image in the train split, not test": 1,
        "image not in the conversion": 1,
    } or overall["skipped_reasons"] == {
        "image in the validation split, not test": 1,
        "image not in the conversion": 1,
    }
    assert f["Mass"]["boxes"] == 2 and f["Mass"]["scored"] == 1 and f["Mass"]["skipped"] == 1
    assert f["Nodule"]["boxes"] == 2 and f["Nodule"]["skipped_reasons"] == {
        "image not in the conversion": 1
    }
    centre = {name: f[name]["pointing_game_centre"] for name in iobb}
    assert centre == {"Mass": 0.0, "Nodule": 0.0, "Atelectasis": 0.0, "Effusion": 1.0}
    mean_box = {name: f[name]["pointing_game_mean_box"] for name in iobb}
    # Nodule's other box is in no conversion: its size is taken as NIH's 1024, so its centre
    # (24, 64) / 1024 lands at (1.5, 4) in the input, outside; a finding with one box has none
    assert mean_box == {"Mass": 0.0, "Nodule": 0.0, "Atelectasis": None, "Effusion": None}
    assert overall["pointing_game_centre"] == 0.25 and overall["pointing_game"] == 0.75
    assert (out / "localization.png").stat().st_size > 10_000
    assert "acc IoBB>0.5" in run.stdout and "pointing game" in run.stdout
    assert "of 6 boxes, 2 not scored" in run.stdout

    # A conversion resumed from shards written before sizes were kept: source_sizes.json
    # lacks image 1 and says it is incomplete. Its boxes are still scored (at NIH's 1024, as
    # counted and said), and an image it does not list is "not in the test split", not "not in
    # the conversion", which it cannot know.
    from cxr_tf.convert import SOURCE_SIZES_NAME, find_dataset_dir
    from cxr_tf.evaluate import main

    sizes_path = find_dataset_dir(data, "nih14") / SOURCE_SIZES_NAME
    sizes = json.loads(sizes_path.read_text())
    del sizes["sizes"]["test"]["00000001_000.png"]
    sizes_path.write_text(json.dumps({"complete": False, "sizes": sizes["sizes"]}))
    args = ["--model", str(model_path), "--data", str(data), "--boxes", str(boxes), "--out",
            str(tmp_path / "eval2"), "--bootstrap", "20"]  # fmt: skip
    assert main(args) == 0
    loc = json.loads((tmp_path / "eval2" / "metrics.json").read_text())["localization"]
    assert loc["overall"]["scored"] == 4 and loc["overall"]["assumed_size"] == 1
    assert "1 images assumed 1024x1024" in loc["source_sizes"]
    assert loc["findings"]["Nodule"]["skipped_reasons"] == {"image not in the test split": 1}


# --- a trained tiny model on synthetic chests ------------------------------------------------


def test_a_trained_model_points_at_the_boxes_better_than_both_baselines(tmp_path):
    """Synthetic NIH chests whose spots sit at a random permutation of the 14 places in each
    image (so where a finding is cannot be known from the finding alone), with the box list
    written for them; the demo's tiny DenseNet trained on them through the CLI. Its maps hit
    more boxes than a map pointing at the centre or at the finding's mean box, by the margin
    below. Measured (600 images, 96 px, 20 epochs): pointing game 0.217 over 60 test boxes,
    centre baseline 0.000, mean-box baseline 0.017."""
    raw, data, run_dir = tmp_path / "raw", tmp_path / "tf", tmp_path / "run"
    synthetic.write_nih14(raw, num_images=600, image_size=160, seed=0, spot_layout="shuffled")
    convert("nih14", raw, data, image_size=128, workers=1, progress=False)
    train = [sys.executable, "-m", "cxr_tf.train", "--config", "training/demo.yaml", "--data",
             str(data), "--workdir", str(run_dir), "--set", "dataset=nih14", "--set",
             "balance=none", "--set", "image_size=96", "--set",
             "stages=[{epochs: 20, learning_rate: 0.003, train_backbone: true}]",
             "--set", "early_stopping_patience=100"]  # fmt: skip
    root = pathlib.Path(__file__).parents[1]
    done = subprocess.run(train, capture_output=True, text=True, timeout=900, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "eval"
    evaluate = [sys.executable, "-m", "cxr_tf.evaluate", "--model", str(run_dir), "--data",
                str(data), "--boxes", str(raw / "BBox_List_2017.csv"), "--out", str(out),
                "--bootstrap", "20"]  # fmt: skip
    done = subprocess.run(evaluate, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    overall = json.loads((out / "metrics.json").read_text())["localization"]["overall"]
    assert overall["scored"] >= 40, overall
    margin = 0.1
    baseline = max(overall["pointing_game_centre"], overall["pointing_game_mean_box"])
    assert overall["pointing_game"] >= baseline + margin, overall


def test_boxes_map_through_the_centre_crop_of_the_evaluation_transform():
    """crop_fraction 0.875 at S = 224: the 1024 px image is squashed to 256 and its centre 224
    kept (16 px off each side), so x = 512 maps to 512 / 1024 * 256 - 16 = 112; a box in the
    cut-off margin maps to nothing, and one across the edge is clipped."""
    box = localization.Box("a.png", "Mass", 512, 256, 128, 64, 2)
    assert localization.input_box(box, (1024, 1024), 224, 0.875) == (112, 48, 144, 64)
    assert localization.input_box(box, (1024, 1024), 224, 1.0) == (112, 56, 140, 70)
    margin = localization.Box("a.png", "Mass", 0, 0, 40, 40, 3)  # inside the 16 px cut
    assert localization.input_box(margin, (1024, 1024), 224, 0.875) is None
    edge = localization.Box("a.png", "Mass", 0, 0, 128, 128, 4)
    assert localization.input_box(edge, (1024, 1024), 224, 0.875) == (0, 0, 16, 16)
    wide = localization.Box("a.png", "Mass", 1000, 500, 100, 100, 5)  # a 2048 x 1024 source
    assert localization.input_box(wide, (1024, 2048), 224, 1.0) == (
        109.375,
        109.375,
        120.3125,
        131.25,
    )
