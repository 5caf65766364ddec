"""cxr_tf.metrics and the evaluation statistics agree with scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_tf import metrics
from cxr_tf.evaluate import bootstrap_auroc, fast_auroc


def _data(n=400, c=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < [0.3, 0.1, 0.5][:c]).astype(np.float32)
    probs = np.clip(labels * 0.3 + rng.random((n, c)) * 0.7, 0, 1).astype(np.float32)
    probs[:10] = np.round(probs[:10], 1)  # some ties
    return probs, labels


def test_per_class_metrics_match_sklearn():
    probs, labels = _data()
    thresholds = [0.5, 0.4, 0.6]
    result = metrics.summarize(probs, labels, thresholds, ["a", "b", "c"])
    for j, name in enumerate("abc"):
        y, p = labels[:, j] > 0.5, probs[:, j]
        pred = p >= thresholds[j]
        c = result["classes"][name]
        assert c["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
        assert c["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
        assert c["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
        assert c["precision"] == pytest.approx(skm.precision_score(y, pred))
        assert c["f1"] == pytest.approx(skm.f1_score(y, pred))
        tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
        assert c["specificity"] == pytest.approx(tn / (tn + fp))
        assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (tp, fp, fn, tn)
        assert c["support"] == int(y.sum())
    assert result["macro"]["auroc"] == pytest.approx(
        np.mean([skm.roc_auc_score(labels[:, j], probs[:, j]) for j in range(3)])
    )
    assert result["accuracy"] == pytest.approx(
        ((probs >= np.array(thresholds)) == (labels > 0.5)).mean()
    )


def test_softmax_accuracy_is_argmax_accuracy():
    rng = np.random.default_rng(1)
    p = rng.random((50, 2)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 50)]
    r = metrics.summarize(p, y, [0.5, 0.5], ["N", "P"])
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y.argmax(1), p.argmax(1)))


def test_threshold_rules_pick_what_they_say():
    probs, labels = _data(seed=2)
    for rule, score in (
        ("max_f1", lambda y, pred: skm.f1_score(y, pred)),
        ("youden", lambda y, pred: skm.recall_score(y, pred) + skm.recall_score(~y, ~pred) - 1),
    ):
        for j, t in enumerate(metrics.choose_thresholds(probs, labels, rule)):
            y = labels[:, j] > 0.5
            best = max(score(y, probs[:, j] >= u) for u in np.unique(probs[:, j]))
            assert score(y, probs[:, j] >= t) == pytest.approx(best), rule
    for j, t in enumerate(metrics.choose_thresholds(probs, labels, "sensitivity=0.95")):
        y = labels[:, j] > 0.5
        assert skm.recall_score(y, probs[:, j] >= t) >= 0.95
        higher = probs[:, j][probs[:, j] > t].min()  # the next cut up misses the target
        assert skm.recall_score(y, probs[:, j] >= higher) < 0.95
    assert metrics.choose_thresholds(probs, labels, "fixed=0.3") == [0.3] * 3
    assert metrics.choose_thresholds(probs[:, :1], np.zeros((400, 1))) == [0.5]
    with pytest.raises(ValueError, match="threshold rule 'sensitivity=95' is not one of"):
        metrics.choose_thresholds(probs, labels, "sensitivity=95")


def test_youden_holds_when_prevalence_moves_and_max_f1_does_not():
    """The issue's situation: validation with 88% positives, a test set with 62.5%. Scores of
    one model (same class-conditional distributions) on both; Youden's J, chosen on validation,
    keeps accuracy on the test set where max-F1 gives specificity away."""
    rng = np.random.default_rng(7)

    def split(n, prevalence):
        y = rng.random(n) < prevalence
        score = np.where(y, rng.normal(1.5, 1.0, n), rng.normal(-1.5, 1.0, n))
        return 1 / (1 + np.exp(-score))[:, None], y.astype(np.float32)[:, None]

    (pv, yv), (pt, yt) = split(4000, 0.88), split(4000, 0.625)
    accuracy = {
        rule: float(
            ((pt[:, 0] >= metrics.choose_thresholds(pv, yv, rule)[0]) == (yt[:, 0] > 0.5)).mean()
        )
        for rule in ("youden", "max_f1")
    }
    assert accuracy["youden"] > accuracy["max_f1"] + 0.01, accuracy


def test_fast_auroc_matches_sklearn_with_ties():
    probs, labels = _data(seed=3)
    for j in range(3):
        assert fast_auroc(labels[:, j], probs[:, j]) == pytest.approx(
            skm.roc_auc_score(labels[:, j], probs[:, j])
        )
    assert np.isnan(fast_auroc(np.ones(5), np.arange(5.0)))


def test_bootstrap_over_patients_contains_estimate_and_shrinks():
    def interval(n_patients):
        rng = np.random.default_rng(4)
        patients = np.repeat(np.arange(n_patients), 3)  # 3 images per patient
        y = np.repeat(rng.random(n_patients) < 0.4, 3).astype(np.float32)[:, None]
        p = np.clip(y * 0.25 + rng.random(y.shape) * 0.75, 0, 1)
        ((lo, hi),) = bootstrap_auroc(y, p, patients.astype(str), n=300, seed=0)
        return fast_auroc(y[:, 0], p[:, 0]), lo, hi

    small, large = interval(60), interval(600)
    for point, lo, hi in (small, large):
        assert lo <= point <= hi
    assert (large[2] - large[1]) < 0.6 * (small[2] - small[1])


def test_thresholds_file_round_trip(tmp_path):
    from cxr_tf.calibration import Calibration

    cal = Calibration([0.0, -1.0], [1.5, 0.8])
    metrics.save_thresholds(
        tmp_path / "t.json", ["A", "B"], [0.2, 0.7], "validation", "youden", cal
    )
    data = metrics.load_thresholds(tmp_path / "t.json")
    assert data["label_names"] == ["A", "B"] and data["thresholds"] == [0.2, 0.7]
    assert data["rule"] == "youden" and data["calibration"] == cal.to_dict()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a cxr_tf thresholds file"):
        metrics.load_thresholds(tmp_path / "bad.json")


def test_a_class_without_positives_leaves_the_macro_auroc_defined():
    import warnings

    rng = np.random.default_rng(0)
    labels = np.zeros((20, 2), np.float32)
    labels[:10, 0] = 1  # class 0 has both; class 1 has no positive example
    probs = rng.uniform(size=(20, 2)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning either
        r = metrics.summarize(probs, labels, [0.5, 0.5], ["a", "b"])
    assert r["classes"]["b"]["auroc"] is None
    assert r["macro"]["auroc"] == pytest.approx(r["classes"]["a"]["auroc"])


def test_classes_without_positives_are_flagged_in_thresholds_json_and_metrics(tmp_path):
    probs, labels = _data(seed=5)
    labels[:, 1] = 0  # no positives for B
    labels[:, 2] = 1  # no negatives for C
    thresholds = metrics.choose_thresholds(probs, labels, "youden")
    assert thresholds.notes == [None, "no positives", "no negatives"]
    assert thresholds[1:] == [0.5, 0.5]  # stand-ins, flagged
    metrics.save_thresholds(tmp_path / "t.json", ["A", "B", "C"], thresholds, "validation")
    data = metrics.load_thresholds(tmp_path / "t.json")
    assert data["no_positives"] == ["B"] and data["no_negatives"] == ["C"]
    assert metrics.stand_in_notes(data) == [None, "no positives", "no negatives"]
    assert metrics.choose_thresholds(probs, labels, "fixed=0.3").notes == [None] * 3
    summary = metrics.summarize(probs, labels, thresholds, ["A", "B", "C"])
    assert summary["one_sided"] == {"B": "no positives", "C": "no negatives"}
    assert summary["classes"]["B"]["sensitivity"] is None
    assert summary["classes"]["A"]["note"] is None


def _monitor_data():
    """Labels of 4 classes, the last two without positives (as rare NIH findings in a small
    validation split), predictions with signal, and 6 weight-0 padding rows."""
    rng = np.random.default_rng(7)
    labels = np.zeros((120, 4), np.float32)
    labels[:, :2] = rng.random((120, 2)) < 0.4
    probs = np.clip(labels * 0.35 + rng.random(labels.shape) * 0.65, 0, 1).astype(np.float32)
    weights = np.ones(120, np.float32)
    weights[-6:] = 0
    labels[-6:] = 1  # padding: would make the last classes two-sided if it counted
    expected = np.mean([skm.roc_auc_score(labels[:-6, j], probs[:-6, j]) for j in range(2)])
    return probs, labels, weights, expected


_MONITOR_IN_A_COMPILED_STEP = """
import numpy as np, keras
from cxr_tf.monitor import MeanAUC
def check(probs, labels, weights, scope):
    with scope:
        inputs = keras.Input((probs.shape[1],))
        model = keras.Model(inputs, keras.layers.Identity()(inputs))
        model.compile(
            loss="binary_crossentropy",
            weighted_metrics=[
                MeanAUC(name="auc", multi_label=True, num_labels=probs.shape[1]),
                keras.metrics.AUC(name="keras_auc", multi_label=True, num_labels=probs.shape[1]),
            ],
        )
    logs = model.evaluate(probs, labels, sample_weight=weights, batch_size=16, verbose=0,
                          return_dict=True)
    return logs["auc"], logs["keras_auc"]
"""


def test_the_monitor_is_the_mean_auroc_over_classes_with_positives():
    """val_auc under TensorFlow, in Keras' compiled evaluation step under MirroredStrategy on
    two CPUs: evaluation's mean AUROC over the classes with positives (to Keras' 200
    thresholds), where Keras' own AUC counts the two classes without positives as 0."""
    import contextlib

    import tensorflow as tf

    probs, labels, weights, expected = _monitor_data()
    namespace = {}
    exec(_MONITOR_IN_A_COMPILED_STEP, namespace)
    for scope in (
        contextlib.nullcontext(),
        tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]).scope(),
    ):
        ours, keras_own = namespace["check"](probs, labels, weights, scope)
        assert ours == pytest.approx(expected, abs=0.01)
        assert keras_own == pytest.approx(expected / 2, abs=0.01)  # two labels at 0


def test_the_monitor_agrees_under_jax(tmp_path):
    import os
    import subprocess
    import sys

    probs, labels, weights, expected = _monitor_data()
    np.savez(tmp_path / "d.npz", probs=probs, labels=labels, weights=weights)
    code = _MONITOR_IN_A_COMPILED_STEP + (
        "import contextlib\n"
        f"d = np.load({str(tmp_path / 'd.npz')!r})\n"
        "print(*check(d['probs'], d['labels'], d['weights'], contextlib.nullcontext()))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, keras_own = map(float, proc.stdout.split()[-2:])
    assert ours == pytest.approx(expected, abs=0.01)
    assert keras_own == pytest.approx(expected / 2, abs=0.01)
