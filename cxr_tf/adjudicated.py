"""AUROC on Google's radiologist-adjudicated labels of NIH images (Majkowska et al., Radiology
2020), beside the AUROC on NIH's NLP labels of the same images.

NIH's labels were mined from reports and are noisy; Google had 4,376 NIH images (its own `val`
and `test` sets, not NIH's split lists) read by three radiologists, with disagreements
adjudicated, for four findings. `--labels google2019` uses the copy bundled with cxr_tf (the
public release, 45 kB); a path or URL reads another copy. The findings are scored from the
model's outputs as follows:

- **Pneumothorax**: the model's Pneumothorax output.
- **Nodule or mass**: the larger of the Nodule and Mass outputs (a noisy-or would assume the
  two are independent; the maximum keeps the ranking of the more confident one).
- **Airspace opacity**: the largest of Consolidation, Infiltration and Pneumonia: the NIH
  findings whose report terms describe air spaces filled with fluid or cells, what Google's
  readers labelled airspace opacity. Edema and Atelectasis are left out: their opacities are
  often interstitial or loss of volume, and adding them would rank every heart failure film.
- **Fracture**: no NIH finding: reported as not scorable.

The NLP reference for the same images uses the same combination of NIH's labels (any of them
present), so the two AUROCs differ only by the labels.
"""

from __future__ import annotations

import csv
import io
import pathlib

import numpy as np

from cxr_tf import storage
from cxr_tf.localization import read_text

GOOGLE2019 = pathlib.Path(__file__).with_name("data") / "google2019_nih-chest-xray-labels.csv.gz"
# adjudicated finding -> the model's outputs whose maximum scores it (None: not scorable)
FINDINGS = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Infiltration", "Pneumonia"),
    "Fracture": None,
}
_VALUES = {"YES": 1, "NO": 0}


def resolve(labels: str):
    """`google2019` (the bundled copy) or a path or URL."""
    return GOOGLE2019 if labels == "google2019" else storage.path(labels)


def read_labels(labels: str) -> tuple[dict[str, dict], list[dict]]:
    """{image_id: {"patient": id, finding: 0/1 or None}} and the rejected rows with reasons."""
    path = resolve(labels)
    if not path.is_file():
        raise FileNotFoundError(
            f"--labels {labels!r} does not exist; give google2019 (bundled) or the path of "
            "Google's nih-chest-xray-labels CSV"
        )
    text = read_text(path, "--labels", "google2019 or Google's nih-chest-xray-labels CSV")
    reader = csv.DictReader(io.StringIO(text))
    needed = ["Image Index", "Patient ID", *FINDINGS]
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(
            f"--labels {labels!r} lacks the columns {missing}; expected Google's adjudicated "
            "NIH labels (Image Index, Patient ID, Fracture, Pneumothorax, Airspace opacity, "
            "Nodule or mass)"
        )
    rows, rejected = {}, []
    for line, row in enumerate(reader, start=2):
        values = {}
        for finding in FINDINGS:
            text = (row[finding] or "").strip().upper()
            values[finding] = _VALUES.get(text)
        if all(v is None for v in values.values()):
            rejected.append({"row": f"{path.name}:{line}", "reason": "no YES/NO label"})
            continue
        rows[row["Image Index"].strip()] = {"patient": row["Patient ID"].strip(), **values}
    return rows, rejected


def score(preds, class_names, labels: str, *, split: str, bootstrap: int, seed: int = 0) -> dict:
    """The `adjudicated` section of metrics.json: per finding `auroc` with its patient-bootstrap
    CI, `auroc_nlp_labels` on the same images, `n`, `positives`, `nlp_positives`.

    Raises ValueError (one line, naming how many matched) when the file labels no image of the
    split; with too few to score any finding, the AUROCs are None and a note says why."""
    from cxr_tf.evaluate import bootstrap_auroc, fast_auroc

    table, rejected = read_labels(labels)
    rows, seen = [], set()
    for i, iid in enumerate(preds.image_ids):
        if iid in table and iid not in seen:  # an image twice in the split counts once
            rows.append(i)
            seen.add(iid)
    scorable = {f: outs for f, outs in FINDINGS.items() if outs and set(outs) <= set(class_names)}
    result = {
        "labels": str(resolve(labels)),
        "images_labelled": len(table),
        "images_matched": len(rows),
        "rejected_rows": len(rejected),
        "findings": {},
    }
    usable = []
    for finding, outs in FINDINGS.items():
        if finding not in scorable:
            why = "not an NIH finding" if outs is None else f"the model lacks {outs}"
            result["findings"][finding] = {"scorable": False, "reason": why}
            continue
        have = [i for i in rows if table[preds.image_ids[i]][finding] is not None]
        y = np.array([table[preds.image_ids[i]][finding] for i in have], np.float32)
        cols = [class_names.index(o) for o in outs]
        p = preds.probs[have][:, cols].max(axis=1) if have else np.zeros(0, np.float32)
        nlp = preds.labels[have][:, cols].max(axis=1) if have else np.zeros(0, np.float32)
        entry = {
            "scorable": True,
            "from_outputs": list(outs),
            "n": len(have),
            "positives": int(y.sum()),
            "nlp_positives": int((nlp > 0.5).sum()),
            "auroc": None,
            "auroc_ci95": [None, None],
            "auroc_nlp_labels": None,
            "auroc_nlp_labels_ci95": [None, None],
            "labels_agree": float(np.mean((nlp > 0.5) == (y > 0.5))) if have else None,
        }
        if have:
            patients = [preds.patient_ids[i] for i in have]
            stacked_y = np.stack([y, nlp], axis=1)
            stacked_p = np.stack([p, p], axis=1)
            auc = [fast_auroc(stacked_y[:, k] > 0.5, p) for k in range(2)]
            cis = bootstrap_auroc(stacked_y, stacked_p, patients, n=bootstrap, seed=seed)
            for k, key in enumerate(("auroc", "auroc_nlp_labels")):
                if not np.isnan(auc[k]):
                    entry[key] = auc[k]
                    entry[f"{key}_ci95"] = list(cis[k])
            if entry["auroc"] is not None:
                usable.append(finding)
        result["findings"][finding] = entry
    if not rows:
        raise ValueError(
            f"--labels {labels}: 0 of its {len(table)} images are in the {split} split "
            f"({len(preds.image_ids)} images); evaluate a split holding images Google labelled "
            "(--split), or give another --labels file"
        )
    if not usable:
        result["note"] = (
            f"{len(rows)} images matched, too few to score any finding (each needs positives "
            "and negatives among them)"
        )
    return result


def format_table(adj: dict) -> str:
    """Per finding: AUROC on the adjudicated labels and on the NLP labels of the same images."""
    lines = [
        f"  adjudicated labels ({adj['images_matched']} of the {adj['images_labelled']} images "
        "Google's radiologists labelled are in this split):",
        f"  {'finding':<18} {'AUROC':>6}  {'95% CI':>13}  {'NLP lab.':>8}  {'n':>5} {'pos':>5}",
    ]
    for name, f in adj["findings"].items():
        if not f["scorable"]:
            lines.append(f"  {name:<18} not scorable: {f['reason']}")
            continue
        lo, hi = f["auroc_ci95"]
        ci = f"{lo:.3f}-{hi:.3f}" if lo is not None else "n/a"
        lines.append(
            f"  {name:<18} {_f(f['auroc']):>6}  {ci:>13}  {_f(f['auroc_nlp_labels']):>8}  "
            f"{f['n']:>5} {f['positives']:>5}"
        )
    if adj.get("note"):
        lines.append(f"  {adj['note']}")
    return "\n".join(lines)


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
