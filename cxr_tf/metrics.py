"""Decision thresholds and per-class metrics over predictions (numpy + scikit-learn).

Shared by training (thresholds chosen on the validation split, validation metrics) and
evaluation, so both compute the same numbers the same way.
"""

from __future__ import annotations

import json

import numpy as np
from sklearn import metrics as skm

from cxr_tf import storage

THRESHOLD_RULES = ("youden", "max_f1", "sensitivity=S", "fixed=T")


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """`youden`, `max_f1`, `sensitivity=0.95` or `fixed=0.5` -> (name, value); ValueError else."""
    name, _, value = str(rule).partition("=")
    if name in ("youden", "max_f1") and not value:
        return name, None
    if name in ("sensitivity", "fixed") and value:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if 0.0 < number < 1.0:
            return name, number
    raise ValueError(
        f"threshold rule {rule!r} is not one of {THRESHOLD_RULES} (S and T between 0 and 1, "
        "e.g. sensitivity=0.95)"
    )


class Thresholds(list):
    """Per class thresholds (a list of floats) with `notes`: per class None, or why the
    threshold is a stand-in rather than chosen ("no positives", "no negatives")."""

    def __init__(self, values=(), notes=None):
        super().__init__(values)
        self.notes = list(notes) if notes is not None else [None] * len(self)


def one_sided(labels: np.ndarray) -> list[str | None]:
    """Per class "no positives" or "no negatives" where the labels hold one value only, else
    None: the classes whose AUROC, threshold and sensitivity (or specificity) are undefined."""
    y = np.asarray(labels) > 0.5
    return [
        "no positives" if not y[:, j].any() else "no negatives" if y[:, j].all() else None
        for j in range(y.shape[1])
    ]


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, rule: str = "youden") -> Thresholds:
    """Per class, the decision threshold that `rule` picks on these predictions.

    youden: the maximum of sensitivity + specificity - 1 (Youden's J), which does not depend on
    the prevalence of the split it is chosen on; max_f1: the maximum F1, which does (it trades
    specificity away where positives are common); sensitivity=S: the highest threshold that
    keeps sensitivity >= S; fixed=T: T. A class with one label value only gets 0.5 (or T), a
    stand-in that the returned `Thresholds.notes` flags ("no positives"/"no negatives"), and
    `save_thresholds` writes down.
    """
    name, value = parse_threshold_rule(rule)
    out = Thresholds()
    sides = one_sided(labels)
    for j in range(probs.shape[1]):
        y, p = labels[:, j] > 0.5, probs[:, j]
        if name == "fixed" or sides[j]:
            out.append(value if name == "fixed" else 0.5)
            out.notes.append(None if name == "fixed" else sides[j])
            continue
        out.notes.append(None)
        if name == "max_f1":
            precision, recall, cuts = skm.precision_recall_curve(y, p)
            f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
            out.append(float(cuts[int(np.argmax(f1[:-1]))]))
            continue
        fpr, tpr, cuts = skm.roc_curve(y, p, drop_intermediate=False)
        cuts = np.minimum(cuts, 1.0)  # scikit-learn's first cut is inf: nothing positive
        if name == "youden":
            out.append(float(cuts[int(np.argmax(tpr - fpr))]))
        else:  # the first (highest) cut whose sensitivity reaches S
            out.append(float(cuts[int(np.argmax(tpr >= value))]))
    return out


def save_thresholds(
    path, label_names, thresholds, source: str, rule: str = "youden", calibration=None, notes=None
) -> None:
    """Write thresholds.json: label names, thresholds, the rule and split that chose them, the
    calibration (see `cxr_tf.calibration`) the thresholds apply to, and the classes whose
    threshold is a stand-in (`no_positives`, `no_negatives`: the `source` split had none, so
    nothing was chosen). `notes` defaults to those of `choose_thresholds`' result."""
    notes = notes if notes is not None else getattr(thresholds, "notes", [None] * len(thresholds))
    storage.write_text(
        path,
        json.dumps(
            {
                "label_names": list(label_names),
                "thresholds": [float(t) for t in thresholds],
                "source": source,
                "rule": rule,
                "calibration": calibration.to_dict() if calibration is not None else None,
                **{
                    key: [n for n, note in zip(label_names, notes, strict=True) if note == what]
                    for key, what in (
                        ("no_positives", "no positives"),
                        ("no_negatives", "no negatives"),
                    )
                },
            },
            indent=2,
        ),
    )


def stand_in_notes(saved: dict) -> list[str | None]:
    """Per class of a loaded thresholds.json, "no positives"/"no negatives" where its threshold
    is a stand-in (files from before these fields: none flagged)."""
    flagged = {n: "no positives" for n in saved.get("no_positives", [])}
    flagged |= {n: "no negatives" for n in saved.get("no_negatives", [])}
    return [flagged.get(n) for n in saved["label_names"]]


def load_thresholds(path) -> dict:
    """Read a thresholds.json written by `save_thresholds`."""
    data = json.loads(storage.path(path).read_text())
    if "thresholds" not in data or "label_names" not in data:
        raise ValueError(f"{path} is not a cxr_tf thresholds file (no thresholds/label_names)")
    return data


def _safe(fn, *args):
    try:
        return float(fn(*args))
    except ValueError:  # one class only in y_true
        return None


def per_class(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """AUROC, average precision and the confusion-based metrics of one class."""
    y = y > 0.5
    pred = p >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    sens = tp / (tp + fn) if tp + fn else None
    prec = tp / (tp + fp) if tp + fp else None
    return {
        # Undefined with one class only (recent scikit-learn returns nan and warns, older ones
        # raise): None, so that macro means skip it.
        "auroc": _safe(skm.roc_auc_score, y, p) if y.any() and not y.all() else None,
        "average_precision": _safe(skm.average_precision_score, y, p) if y.any() else None,
        "sensitivity": sens,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "precision": prec,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "support": int(y.sum()),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def summarize(probs, labels, thresholds, label_names) -> dict:
    """Per-class metrics, their macro means (over classes where defined), and accuracy.

    Each class has a `note`: "no positives" or "no negatives" where this split holds one label
    value only (its AUROC is then None, and so its sensitivity or specificity), else None;
    `one_sided` lists those classes.

    For a softmax model (one-hot labels, two columns) accuracy is argmax accuracy; otherwise it
    is the share of label decisions that are right at the thresholds.
    """
    sides = one_sided(labels)
    classes = {
        name: {**per_class(labels[:, j], probs[:, j], thresholds[j]), "note": sides[j]}
        for j, name in enumerate(label_names)
    }
    macro = {}
    for key in ("auroc", "average_precision", "sensitivity", "specificity", "precision", "f1"):
        vals = [c[key] for c in classes.values() if c[key] is not None]
        macro[key] = float(np.mean(vals)) if vals else None
    if probs.shape[1] == 2 and np.allclose(labels.sum(1), 1):
        accuracy = float((probs.argmax(1) == labels.argmax(1)).mean())
    else:
        accuracy = float(((probs >= np.asarray(thresholds)) == (labels > 0.5)).mean())
    return {
        "n": int(len(labels)),
        "classes": classes,
        "macro": macro,
        "accuracy": accuracy,
        "one_sided": {name: c["note"] for name, c in classes.items() if c["note"]},
    }
