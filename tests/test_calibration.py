"""cxr_tf.calibration: temperatures fitted on validation make an over-confident model's
probabilities honest without changing its ranking; the oversampling prior is undone; the
exported model and prediction apply what training fitted."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_tf import calibration, input_pipeline, models


def _overconfident(n=4000, seed=0, sharpen=4.0):
    """Labels drawn from true probabilities, and a model that reports them 4x too sharp."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 2))
    y = (rng.random((n, 2)) < calibration.sigmoid(z)).astype(np.float32)
    return calibration.sigmoid(sharpen * z).astype(np.float32), y


def test_temperature_lowers_ece_and_keeps_auroc():
    probs, labels = _overconfident()
    fitted = calibration.fit(probs, labels)
    assert fitted.temperature == pytest.approx([4.0, 4.0], rel=0.15)
    calibrated = fitted.apply(probs)
    # judged on a fresh sample of the same model, not on the one it was fitted on
    test_probs, test_labels = _overconfident(seed=1)
    test_calibrated = fitted.apply(test_probs)
    for j in range(2):
        before = calibration.expected_calibration_error(test_labels[:, j], test_probs[:, j])
        after = calibration.expected_calibration_error(test_labels[:, j], test_calibrated[:, j])
        assert before > 0.1 and after < 0.03, (before, after)
        # monotonic: the same ranking, up to ties among probabilities float32 rounds to 1
        assert skm.roc_auc_score(labels[:, j], calibrated[:, j]) == pytest.approx(
            skm.roc_auc_score(labels[:, j], probs[:, j]), abs=1e-4
        )


def test_prior_offset_undoes_oversampling():
    """A model trained on a 50/50 stream reports probabilities for that prior; with 25%
    positives in the data, the offset brings the mean probability back to 25%."""
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1.0, 20000)
    balanced = calibration.sigmoid(z)  # calibrated at prior 0.5 (a symmetric score)
    offset = calibration.prior_offset(np.array([0.5]), np.array([0.25]))
    shifted = calibration.Calibration(list(offset), [1.0]).apply(balanced[:, None])
    assert balanced.mean() == pytest.approx(0.5, abs=0.01)
    # Bayes on the odds: odds x (0.25/0.75) / (0.5/0.5)
    odds = balanced / (1 - balanced) / 3
    np.testing.assert_allclose(shifted[:, 0], odds / (1 + odds), rtol=1e-4)


def test_fit_corrects_shift_and_scale_together():
    """An under-trained network after oversampling: its scores are too soft and shifted away
    from where the prior correction alone would put them. Offset and temperature fitted
    together bring a fresh sample's ECE under 0.03; the prior offset alone leaves it high."""

    def sample(seed, n=4000):
        rng = np.random.default_rng(seed)
        z = rng.normal(-1.0, 2.0, (n, 1))  # about 30% positive
        y = (rng.random((n, 1)) < calibration.sigmoid(z)).astype(np.float32)
        return calibration.sigmoid(0.4 * z + 1.2).astype(np.float32), y

    probs, labels = sample(3)
    prior = calibration.prior_offset(np.array([0.5]), labels.mean(0))
    fitted = calibration.fit(probs, labels, prior)
    assert fitted.temperature[0] == pytest.approx(0.4, rel=0.15)
    assert fitted.offset[0] == pytest.approx(-1.2, abs=0.25)
    test_probs, test_labels = sample(4)
    before = calibration.expected_calibration_error(test_labels[:, 0], test_probs[:, 0])
    prior_only = calibration.Calibration(list(prior), [1.0]).apply(test_probs)[:, 0]
    after = fitted.apply(test_probs)[:, 0]
    assert (
        before > 0.1 and calibration.expected_calibration_error(test_labels[:, 0], prior_only) > 0.1
    )
    assert calibration.expected_calibration_error(test_labels[:, 0], after) < 0.03


def test_ece_and_reliability_bins():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.95, 0.95, 0.85])
    # bins: [0,.1): p .05 rate 0; [.1,.2): .15 vs 0; [.8,.9): .85 vs 1; [.9,1]: .95 vs 1
    expected = (0.05 + 0.15 + 0.15 + 2 * 0.05) / 5
    assert calibration.expected_calibration_error(y, p) == pytest.approx(expected)
    centres, mean_p, rate, count = calibration.reliability(y, p)
    assert count.tolist() == [1, 1, 1, 2] and rate.tolist() == [0, 0, 1, 1]


def test_training_fits_it_and_export_and_prediction_apply_it(trained_run, pneumonia_data):
    from cxr_tf import predict

    saved = json.loads((trained_run / "thresholds.json").read_text())
    assert saved["rule"] == "youden" and saved["source"] == "validation"
    cal = calibration.Calibration.from_dict(saved["calibration"], 1)
    # fitted on validation: its log-loss there is below the raw network's
    model = models.load_model(trained_run / "best.keras")
    c = models.input_contract(model)
    ds = input_pipeline.make_dataset(
        pneumonia_data,
        "validation",
        global_batch_size=16,
        image_size=c.image_size,
        training=False,
        channels=c.channels,
        image_dtype=c.input_dtype,
    )
    batches = [(np.asarray(model(x, training=False)), y, w) for x, y, w in ds.as_numpy_iterator()]
    p, y, w = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    p, y = p[w > 0], y[w > 0]
    assert skm.log_loss(y[:, 0], cal.apply(p)[:, 0]) < skm.log_loss(y[:, 0], p[:, 0])
    assert cal.temperature[0] > 0
    image = next((pneumonia_data.parent / "raw" / "chest_xray" / "test" / "NORMAL").iterdir())
    data = image.read_bytes()
    keras_path = predict.Predictor(trained_run / "best.keras")
    served = predict.Predictor(trained_run / "saved_model")
    raw = keras_path.keras_model()(keras_path.preprocess(data), training=False)
    expected = cal.apply(np.asarray(raw, np.float32))[0]
    np.testing.assert_allclose(keras_path.probabilities(data), expected, atol=1e-5)
    np.testing.assert_allclose(served.probabilities(data), expected, atol=1e-4)
