"""cxr_tf.evaluate on a model trained with training/demo.yaml (the `trained_run` fixture)."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import metrics as skm

from cxr_tf import inference, metrics, models
from cxr_tf.evaluate import evaluate, main
from cxr_tf.export import calibration_for
from cxr_tf.input_pipeline import read_info

pytestmark = pytest.mark.slow
PLOTS = (
    "roc.png",
    "pr.png",
    "confusion.png",
    "gallery.png",
    "distributions.png",
    "reliability.png",
)


@pytest.fixture(scope="module")
def evaluated(trained_run, pneumonia_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate(trained_run, pneumonia_data, out_dir=out, bootstrap=200), out


def test_every_test_example_is_predicted_once(evaluated, trained_run, pneumonia_data):
    result, _ = evaluated
    info = read_info(pneumonia_data)
    builder = tfds.builder_from_directory(str(info.dataset_dir))
    expected = sorted(e["image_id"].decode() for e in tfds.as_numpy(builder.as_dataset("test")))
    preds = inference.predict_split(
        models.load_model(trained_run / "best.keras"), pneumonia_data, "test"
    )
    assert sorted(preds.image_ids) == expected
    assert result["n"] == len(expected)


def test_metrics_json_agrees_with_sklearn(evaluated, trained_run, pneumonia_data):
    result, out = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    preds = inference.predict_split(
        models.load_model(trained_run / "best.keras"), pneumonia_data, "test"
    )
    calibrate = calibration_for(1, trained_run / "thresholds.json").apply
    y, p = preds.labels[:, 0] > 0.5, calibrate(preds.probs)[:, 0]
    t = json.loads((trained_run / "thresholds.json").read_text())["thresholds"][0]
    c = saved["classes"]["PNEUMONIA"]
    assert c["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    assert c["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-6)
    assert c["f1"] == pytest.approx(skm.f1_score(y, p >= t))
    assert saved["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, p >= t).tolist()
    assert saved["confusion_matrix"]["labels"] == ["NORMAL", "PNEUMONIA"]
    lo, hi = c["auroc_ci95"]
    assert lo <= c["auroc"] <= hi
    assert saved["thresholds_source"].endswith("thresholds.json")
    assert saved["bootstrap"]["unit"] == "patient"
    assert c["auroc"] >= 0.9


def test_plots_are_written_and_not_blank(evaluated):
    _, out = evaluated
    for name in PLOTS:
        img = np.asarray(Image.open(out / name).convert("L"), np.float32)
        assert img.shape[0] > 200 and img.shape[1] > 200, name
        assert img.std() > 10, f"{name} looks blank"


def test_cli_prints_the_table_and_takes_thresholds(trained_run, pneumonia_data, tmp_path, capsys):
    metrics.save_thresholds(tmp_path / "t.json", ["PNEUMONIA"], [0.5], "manual")
    args = [
        "--model",
        str(trained_run / "best.keras"),
        "--data",
        str(pneumonia_data),
        "--out",
        str(tmp_path / "e"),
        "--bootstrap",
        "50",
        "--thresholds",
        str(tmp_path / "t.json"),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "PNEUMONIA" in text and "mean AUROC" in text and "95% CI" in text
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["classes"]["PNEUMONIA"]["threshold"] == 0.5
    # Kermany et al. beside the model's own figures, in metrics.json and in the table
    refs = saved["references"]["metrics"]
    assert refs["accuracy"] == {"model": saved["accuracy"], "kermany2018": 0.928}
    assert refs["auroc"]["model"] == saved["classes"]["PNEUMONIA"]["auroc"]
    assert "Kermany et al. 2018 on the same test folder: accuracy 0.928" in text
    assert main(["--model", str(tmp_path / "none.keras"), "--data", str(pneumonia_data)]) == 2
    assert "neither a .keras file nor a run folder" in capsys.readouterr().err
    # NIH's boxes and Google's labels are for NIH models: one line naming the dataset
    for flag, value in (("--boxes", "b.csv"), ("--labels", "google2019")):
        assert main(args[:6] + [flag, value]) == 2
        err = capsys.readouterr().err
        assert "scores NIH ChestX-ray14 models" in err and "pneumonia" in err, err


def test_operating_points_at_the_chosen_threshold_and_at_half(
    evaluated, trained_run, pneumonia_data
):
    result, out = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    op = saved["operating_point"]
    assert op["rule"] == "youden" and op["chosen_on"] == "validation"
    assert saved["at_threshold_0.5"]["classes"]["PNEUMONIA"]["threshold"] == 0.5
    assert 0 <= saved["classes"]["PNEUMONIA"]["ece"] <= 1 and saved["macro"]["ece"] is not None
    # another rule, chosen on the validation split (never on the split evaluated)
    other = evaluate(
        trained_run,
        pneumonia_data,
        out_dir=out / "f1",
        bootstrap=0,
        gallery=0,
        threshold_rule="sensitivity=0.99",
    )
    assert other["operating_point"]["rule"] == "sensitivity=0.99"
    model = models.load_model(trained_run / "best.keras")
    val = inference.predict_split(model, pneumonia_data, "validation")
    calibrate = calibration_for(1, trained_run / "thresholds.json").apply
    expected = metrics.choose_thresholds(calibrate(val.probs), val.labels, "sensitivity=0.99")
    assert other["operating_point"]["thresholds"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="threshold rule 'best' is not one of"):
        evaluate(trained_run, pneumonia_data, out_dir=out / "bad", threshold_rule="best")


def test_the_table_flags_stand_in_thresholds_and_classes_without_positives():
    """NIH-like: B had no validation positives (threshold 0.5 stands in), C has none in test."""
    from cxr_tf.evaluate import format_summary

    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.3).astype(np.float32)
    labels[:, 2] = 0
    probs = rng.random((60, 3)).astype(np.float32) * 0.4  # B's probabilities all below 0.5
    r = metrics.summarize(probs, labels, [0.2, 0.5, 0.3], ["A", "B", "C"])
    for c in r["classes"].values():
        c["auroc_ci95"] = [None, None]
    r["macro"]["ece"] = 0.01
    r["at_threshold_0.5"] = r
    r.update(dataset="nih14", split="test", out_dir="x")
    r["operating_point"] = {
        "rule": "youden",
        "chosen_on": "validation",
        "stand_ins": {"B": "no positives"},
    }
    text = format_summary(r)
    (row_b,) = [line for line in text.splitlines() if line.startswith("  B ")]
    assert row_b.split()[-3:] == ["n/a*", "n/a*", "n/a*"] and "0.000" not in row_b
    assert "* no threshold chosen for B: no positives in validation" in text
    assert "AUROC n/a for C: no positives in this test split, left out of the mean" in text
    (row_a,) = [line for line in text.splitlines() if line.startswith("  A ")]
    assert "n/a*" not in row_a
