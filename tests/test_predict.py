"""cxr_tf.predict and cxr_tf.gradcam on the demo-trained model."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cxr_tf import gradcam, input_pipeline, models
from cxr_tf.predict import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_folder(pneumonia_data, tmp_path_factory):
    """Raw test images of the synthetic archive, one broken file, one text file, one DICOM."""
    raw = pneumonia_data.parent / "raw" / "chest_xray" / "test"
    folder = tmp_path_factory.mktemp("images")
    for cls in ("NORMAL", "PNEUMONIA"):
        for src in sorted((raw / cls).iterdir())[:3]:
            shutil.copy(src, folder / f"{cls}_{src.name}")
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "text.png").write_bytes(b"hello, not a picture")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    (folder / "scan.dcm").write_bytes(b"DICM")
    return folder


@pytest.mark.parametrize("which", ["saved_model", "best.keras", "."])
def test_folder_with_broken_files_reports_them_and_predicts_the_rest(
    trained_run, image_folder, capsys, which
):
    code = main(["--model", str(trained_run / which), str(image_folder), "--json", "--top-k", "1"])
    results = json.loads(capsys.readouterr().out)
    assert code == 1  # some files failed
    by_name = {r["file"].rsplit("/", 1)[1]: r for r in results}
    assert "notes.txt" not in by_name
    assert "not a readable image" in by_name["broken.jpeg"]["error"]
    assert "Graph execution" not in by_name["broken.jpeg"]["error"]
    assert "unknown image format (starts with b'hello, n')" in by_name["text.png"]["error"]
    assert "not a DICOM file" in by_name["scan.dcm"]["error"]
    good = [r for n, r in by_name.items() if n.startswith(("NORMAL_", "PNEUMONIA_"))]
    assert len(good) == 6 and all("error" not in r for r in good)
    for r in good:
        (f,) = r["findings"]
        assert f["name"] == "PNEUMONIA" and 0 <= f["probability"] <= 1
        assert f["positive"] == (f["probability"] >= f["threshold"])
    # the synthetic opacity is learnt: pneumonia files score above normal ones on average
    p = {
        n: r["findings"][0]["probability"]
        for n, r in by_name.items()
        if n in {x for x in by_name if x.startswith(("NORMAL_", "PNEUMONIA_"))}
    }
    assert np.mean([v for n, v in p.items() if n.startswith("PNEUMONIA_")]) > np.mean(
        [v for n, v in p.items() if n.startswith("NORMAL_")]
    )


def test_text_output_and_gradcam_files(trained_run, image_folder, tmp_path, capsys):
    one = next(image_folder.glob("PNEUMONIA_*"))
    code = main(["--model", str(trained_run / "saved_model"), str(one), "--gradcam", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "PNEUMONIA" in out and "threshold" in out
    (png,) = tmp_path.glob("*.png")
    img = np.asarray(Image.open(png))
    assert img.shape[1] >= 800 and img.shape[2] in (3, 4) and img.std() > 5  # readable size
    assert main(["--model", str(tmp_path / "nope"), str(one)]) == 2
    assert "is not a SavedModel folder" in capsys.readouterr().err


def test_gradcam_heat_sits_on_the_synthetic_opacity(trained_run, pneumonia_data):
    model = models.load_model(trained_run / "best.keras")
    c = models.input_contract(model)
    ds = input_pipeline.make_dataset(
        pneumonia_data,
        "test",
        global_batch_size=16,
        image_size=c.image_size,
        training=False,
        channels=1,
        with_ids=True,
        image_dtype=c.input_dtype,
    )
    shares = {}
    for images, labels, weights, ids, _ in ds.as_numpy_iterator():
        probs = np.asarray(model(images, training=False))[:, 0]
        for img, y, w, image_id, p in zip(images, labels, weights, ids, probs, strict=True):
            if not (w and y[0] and b"bacteria" in image_id and p > 0.8):
                continue
            # bacteria: one dense opacity in the lower half of one lung; find which side
            gray = img[..., 0] / 255.0  # the model's uint8 input
            s = gray.shape[0]
            lower = gray[s // 2 :, :]
            left, right = lower[:, : s // 2].mean(), lower[:, s // 2 :].mean()
            if abs(left - right) < 0.02:
                continue
            cam = gradcam.upsample(gradcam.heatmaps(model, img[None], 0)[0], s)
            side = cam[:, : s // 2] if left > right else cam[:, s // 2 :]
            peak_x = np.unravel_index(cam.argmax(), cam.shape)[1]
            shares[image_id] = (side.sum() / cam.sum(), (peak_x < s // 2) == (left > right))
    # Each map puts more heat on the opacity's side than on the other, and nearly every map
    # peaks there (18 of 19 here): a map blind to the opacity would do either half the time.
    assert len(shares) >= 5
    on_side = np.mean([on for _, on in shares.values()])
    assert on_side >= 0.8, f"peaks on the other side: {shares}"
    assert min(share for share, _ in shares.values()) > 0.5, f"heat not on its side: {shares}"


def test_gradcam_box_is_the_part_of_the_image_the_model_sees():
    """The overlay maps the model's square back onto the whole image as given: by default the
    whole image; with a crop fraction, the box of `eval_crop_box`, cut from the original and
    resized, is what `eval_transform` produces."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    h, w, size = 300, 420, 64  # a wide image, like a pediatric chest
    assert gradcam.eval_crop_box(h, w, size, 1.0) == (0, 0, h, w)
    smooth = np.cumsum(np.cumsum(rng.random((h, w)), 0), 1)
    original = (255 * smooth / smooth.max()).astype(np.uint8)
    top, left, box_h, box_w = gradcam.eval_crop_box(h, w, size, 0.8)
    assert (box_h, box_w) == pytest.approx((0.8 * h, 0.8 * w), rel=0.02)
    assert top == pytest.approx((h - box_h) / 2, abs=3) and left > top
    expected = input_pipeline.eval_transform(tf.constant(original[..., None]), size, 0.8)
    crop = original[round(top) : round(top + box_h), round(left) : round(left + box_w)]
    mine = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR)) / 255
    assert np.abs(mine - expected.numpy()[..., 0]).mean() < 0.01


def test_a_real_dicom_gets_a_prediction(trained_run, tmp_path, capsys):
    """pydicom-data's computed radiograph, uncompressed, JPEG 2000, and under a PACS-style UID
    name with no `.dcm` (found in the folder by its header): predicted, and the same as
    predicting the PNG that `cxr_tf.dicom` makes of it. A text file in the folder is not taken."""
    from pydicom.data import get_testdata_file

    from cxr_tf import dicom

    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    uid = "1.2.840.113619.2.55.3.604688119"
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), tmp_path / uid)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "RG1.png").write_bytes(dicom.to_png(tmp_path / "RG1_UNCR.dcm"))
    code = main(["--model", str(trained_run), str(tmp_path), "--json"])
    results = {r["file"].rsplit("/", 1)[1]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 0 and set(results) == {"RG1_UNCR.dcm", "RG1_J2KR.dcm", uid, "RG1.png"}
    probs = []
    for r in results.values():
        assert "error" not in r
        (f,) = r["findings"]
        assert 0 <= f["probability"] <= 1 and f["positive"] == (f["probability"] >= f["threshold"])
        probs.append(f["probability"])
    assert max(probs) - min(probs) < 1e-6


def test_a_file_that_cannot_be_read_is_a_value_error(tmp_path, monkeypatch):
    """A permission or I/O error is that file's error line, not a crash of the whole run (as
    root, permissions cannot be denied here, so the read itself fails)."""
    from cxr_tf.predict import read_image_bytes

    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "read_bytes", denied)
    with pytest.raises(ValueError, match="^cannot read the file: Permission denied$"):
        read_image_bytes(path)


def _tf_chatter(stderr: str) -> list[str]:
    """TensorFlow's own lines: absl/C++ log lines (I0000, W0000, E0000 ...), oneDNN's and the
    CPU-feature notices, absl's pre-initialisation warning."""
    import re

    pattern = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|.*oneDNN|.*absl|To enable the)")
    return [line for line in stderr.splitlines() if pattern.match(line)]


def test_the_command_line_is_quiet_unless_verbose(tmp_path):
    """predict on a truncated JPEG in a fresh process: its own lines only (the missing
    thresholds.json warning and the file's error); with --verbose, TensorFlow's lines too."""
    import io
    import os
    import subprocess
    import sys

    from cxr_tf.cli import QUIET_ENV

    model = models.build_model("densenet_tiny", num_classes=1, image_size=32, channels=1)
    model.save(tmp_path / "lonely.keras")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(
        buffer, format="JPEG"
    )
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", QUIET_ENV)}
    env["KERAS_BACKEND"] = "tensorflow"
    cmd = [sys.executable, "-m", "cxr_tf.predict", "--model", str(tmp_path / "lonely.keras")]
    runs = {
        flag: subprocess.run(
            [*cmd, str(tmp_path / "cut.jpg"), *flag], env=env, capture_output=True, text=True
        )
        for flag in ((), ("--verbose",))
    }
    quiet, verbose = runs[()], runs[("--verbose",)]
    assert quiet.returncode == verbose.returncode == 1, quiet.stderr[-2000:]
    assert "a truncated or corrupt JPEG file" in quiet.stdout
    assert _tf_chatter(quiet.stderr) == [], quiet.stderr
    assert [line.split(":")[0] for line in quiet.stderr.splitlines()] == ["warning"]
    chatter = _tf_chatter(verbose.stderr)
    assert any("Premature end of JPEG data" in line for line in chatter), verbose.stderr


def test_a_stand_in_threshold_is_flagged(trained_run, image_folder, tmp_path, capsys):
    """A class whose validation split had no positives keeps 0.5, and predict says so, from a
    run folder and from the SavedModel exported with that thresholds.json."""
    from cxr_tf.export import export_model

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "best.keras", run / "best.keras")
    saved = json.loads((trained_run / "thresholds.json").read_text())
    saved |= {"thresholds": [0.5], "no_positives": saved["label_names"]}
    (run / "thresholds.json").write_text(json.dumps(saved))
    export_model(run / "best.keras", run / "saved_model", thresholds_file=run / "thresholds.json")
    one = next(image_folder.glob("PNEUMONIA_*"))
    for model in (run, run / "saved_model"):
        assert main(["--model", str(model), str(one)]) == 0
        assert "(threshold 0.500, " in (out := capsys.readouterr().out)
        assert "stand-in threshold: no positives in validation)" in out, out
