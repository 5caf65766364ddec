"""cxr_tf.export: a SavedModel that takes image bytes and agrees with the Keras model."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cxr_tf import input_pipeline, models
from cxr_tf.export import export_model, main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    out = export_model(trained_run / "best.keras", tmp_path_factory.mktemp("exp") / "sm")
    return tf.saved_model.load(str(out)).signatures["serving_default"], out


def _stored_examples(data, n=6):
    info = input_pipeline.read_info(data)
    raw = tf.data.TFRecordDataset(info.files("test")).take(n)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    return [tf.io.parse_single_example(r, spec)["image"].numpy() for r in raw]


def test_serving_equals_keras_on_the_pipeline_tensor(served, trained_run, pneumonia_data):
    """The SavedModel on the raw bytes = the Keras model on the pipeline's evaluation tensor,
    then the run's calibration (thresholds.json)."""
    from cxr_tf.export import calibration_for

    fn, _ = served
    model = models.load_model(trained_run / "best.keras")
    c = models.input_contract(model)
    calibrate = calibration_for(1, trained_run / "thresholds.json").apply
    for encoded in _stored_examples(pneumonia_data):
        pipeline_tensor = input_pipeline.as_model_input(
            input_pipeline.eval_transform(
                tf.io.decode_image(encoded, channels=1), c.image_size, c.crop_fraction
            ),
            c.input_dtype,
        )
        expected = calibrate(model(pipeline_tensor[None], training=False).numpy())
        got = fn(images=tf.constant([encoded]))["probabilities"].numpy()
        # uint8 input: in rare pixels (4 in 300 images seen) eager and graph code round to
        # neighbouring grey levels (see input_pipeline.as_model_input)
        np.testing.assert_allclose(got, expected, atol=1e-3)


def test_labels_and_thresholds_travel_with_the_model(served, trained_run, pneumonia_data):
    fn, out = served
    saved = json.loads((trained_run / "thresholds.json").read_text())
    res = fn(images=tf.constant(_stored_examples(pneumonia_data, 2)))
    assert [x.decode() for x in res["label_names"].numpy()] == saved["label_names"]
    np.testing.assert_allclose(res["thresholds"].numpy(), saved["thresholds"], rtol=1e-6)
    assert (out / "assets" / "model.keras").is_file()


def _encode(arr, fmt, mode=None):
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_serving_takes_any_common_encoding_and_size(served, pneumonia_data):
    fn, _ = served
    gray = np.asarray(Image.open(io.BytesIO(_stored_examples(pneumonia_data, 1)[0])))
    odd = np.asarray(Image.fromarray(gray).resize((97, 131)))
    variants = {
        "png-gray": _encode(gray, "PNG"),
        "png-rgb": _encode(gray, "PNG", "RGB"),
        "png-rgba": _encode(gray, "PNG", "RGBA"),
        "jpeg-gray": _encode(gray, "JPEG"),
        "jpeg-rgb": _encode(gray, "JPEG", "RGB"),
        "png-odd-size": _encode(odd, "PNG"),
    }
    out = {
        k: float(fn(images=tf.constant([v]))["probabilities"].numpy()[0, 0])
        for k, v in variants.items()
    }
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert out["png-rgb"] == pytest.approx(out["png-gray"], abs=2e-3)
    assert out["png-rgba"] == pytest.approx(out["png-gray"], abs=2e-3)
    assert out["jpeg-gray"] == pytest.approx(out["png-gray"], abs=0.05)
    batch = fn(images=tf.constant(list(variants.values())))["probabilities"].numpy()
    assert batch.shape == (len(variants), 1)


def test_bad_bytes_fail_that_call_only(served, pneumonia_data):
    fn, _ = served
    good = _stored_examples(pneumonia_data, 1)
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(images=tf.constant([b"definitely not an image"]))
    assert fn(images=tf.constant(good))["probabilities"].shape == (1, 1)


def test_training_exported_the_same_kind_of_model(trained_run):
    fn = tf.saved_model.load(str(trained_run / "saved_model")).signatures["serving_default"]
    assert set(fn.structured_outputs) == {"probabilities", "label_names", "thresholds"}


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "x.keras"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_mixed_precision_model_serves_in_float32_without_optimizer_state(tmp_path):
    """Trained in bfloat16 (as on a TPU), exported: no bfloat16 or float16 node in the graph,
    the float32 model's predictions (within bfloat16's tolerance of the bfloat16 model's), and
    the `.keras` asset without the optimizer's state that the checkpoint carries."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build_model(
            "densenet_tiny", num_classes=1, image_size=32, input_dtype="uint8"
        )
        model.compile(optimizer="adam", loss="binary_crossentropy")
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1)).astype(np.uint8)
        model.fit(x, np.ones((8, 1), np.float32), verbose=0)
        model.save(tmp_path / "best.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = export_model(tmp_path / "best.keras", tmp_path / "sm")
    from tests.test_runtime import _half_precision_nodes, _keras_archive_files

    assert _half_precision_nodes(out) == []
    assert "optimizer" in _keras_archive_files(tmp_path / "best.keras")
    assert "optimizer" not in _keras_archive_files(out / "assets" / "model.keras")
    images = [_png(image[..., 0]) for image in x[:4]]
    served = tf.saved_model.load(str(out)).signatures["serving_default"]
    got = served(images=tf.constant(images))["probabilities"].numpy()
    as_bf16 = np.asarray(model(x[:4], training=False))
    as_f32 = np.asarray(models.as_float32(model)(x[:4], training=False))
    np.testing.assert_allclose(got, as_f32, atol=1e-5)
    np.testing.assert_allclose(got, as_bf16, atol=2e-2)


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_model_outside_its_run_folder_exports_with_a_warning(tmp_path, capsys):
    """lonely.keras has no thresholds.json beside it: the export says, in one line, that it
    goes without label names, thresholds and calibration, and how to give them."""
    model = models.build_model("densenet_tiny", num_classes=1, image_size=32, channels=1)
    model.save(tmp_path / "lonely.keras")
    assert main(["--model", str(tmp_path / "lonely.keras"), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("warning:")]
    for what in ("label names", "thresholds", "calibration", "--thresholds"):
        assert what in line
    from cxr_tf import metrics
    from cxr_tf.calibration import Calibration

    metrics_file = tmp_path / "elsewhere" / "thresholds.json"
    metrics_file.parent.mkdir()
    metrics.save_thresholds(
        metrics_file, ["PNEUMONIA"], [0.8], "validation", calibration=Calibration.identity(1)
    )
    args = ["--model", str(tmp_path / "lonely.keras"), "--out", str(tmp_path / "b")]
    assert main([*args, "--thresholds", str(metrics_file)]) == 0
    assert "warning:" not in capsys.readouterr().err
    labels = json.loads((tmp_path / "b" / "assets" / "labels.json").read_text())
    assert labels["label_names"] == ["PNEUMONIA"] and labels["thresholds"] == [0.8]
