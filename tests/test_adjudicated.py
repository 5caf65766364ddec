"""evaluate --labels: AUROC on Google's adjudicated labels beside the NLP labels
(cxr_tf.adjudicated), and the published figures evaluate prints beside a model's (references)."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from cxr_tf import adjudicated, references
from cxr_tf.evaluate import fast_auroc
from cxr_tf.inference import Predictions
from cxr_tf.nih14 import LABELS


def test_the_bundled_google_file_parses_with_every_row_accounted_for():
    """Google's release (as in torchxrayvision 1.5.7): 4,376 images of 1,695 patients, each
    with YES/NO for the four findings; the positives as the release counts them."""
    rows, rejected = adjudicated.read_labels("google2019")
    lines = gzip.decompress(adjudicated.GOOGLE2019.read_bytes()).decode().strip().splitlines()
    assert len(rows) + len(rejected) == len(lines) - 1 == 4376 and rejected == []
    assert len({r["patient"] for r in rows.values()}) == 1695
    positives = {f: sum(r[f] == 1 for r in rows.values()) for f in adjudicated.FINDINGS}
    assert positives == {
        "Pneumothorax": 238,
        "Nodule or mass": 605,
        "Airspace opacity": 2166,
        "Fracture": 186,
    }
    assert all(r[f] in (0, 1) for r in rows.values() for f in adjudicated.FINDINGS)


def _preds(image_ids, probs, labels):
    patients = [i.split("_")[0] for i in image_ids]
    return Predictions(np.asarray(probs, np.float32), np.asarray(labels, np.float32),
                       list(image_ids), patients)  # fmt: skip


def _labels_file(tmp_path, rows):
    header = "Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass"
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_findings_combine_the_stated_outputs_and_the_nlp_labels_of_the_same_images(tmp_path):
    """Nodule or mass is scored by max(Nodule, Mass); airspace opacity by the largest of
    Consolidation, Infiltration and Pneumonia; the NLP AUROC uses the same images and the same
    combination of NIH's labels; Fracture is not scorable."""
    n = 40
    rng = np.random.default_rng(0)
    ids = [f"{i:08d}_000.png" for i in range(n)]
    truth = rng.integers(0, 2, (n, 3))  # pneumothorax, nodule-or-mass, airspace
    probs = np.zeros((n, len(LABELS)))
    nlp = np.zeros((n, len(LABELS)))
    col = LABELS.index
    probs[:, col("Pneumothorax")] = 0.2 + 0.6 * truth[:, 0] + rng.uniform(0, 0.1, n)
    # positives: one of the outputs at 0.9, the others 0; negatives: all at 0.6. The maximum
    # ranks them perfectly, a mean or a sum the wrong way round.
    for k, outs in ((1, ("Nodule", "Mass")), (2, ("Consolidation", "Infiltration", "Pneumonia"))):
        cols = [col(o) for o in outs]
        probs[:, cols] = np.where(truth[:, k, None] == 1, 0.0, 0.6)
        picked = np.array(cols)[np.arange(n) % len(cols)]
        probs[np.arange(n), picked] = np.where(truth[:, k] == 1, 0.9, 0.6)
    nlp[:, col("Pneumothorax")] = truth[:, 0]
    nlp[:, col("Mass")] = truth[:, 1]
    nlp[:20, col("Consolidation")] = 1 - truth[:20, 2]  # the NLP labels half wrong here
    nlp[20:, col("Consolidation")] = truth[20:, 2]
    rows = [f"{ids[i]},{i},NO,{'YES' if truth[i, 0] else 'NO'},{'YES' if truth[i, 2] else 'NO'},"
            f"{'YES' if truth[i, 1] else 'NO'}" for i in range(n)]  # fmt: skip
    rows.append("99999999_000.png,99999999,NO,NO,NO,NO")  # not in the split
    # one image not in the file, and one listed twice in the split (counted once)
    preds = _preds(ids + ["00000100_000.png", ids[0]], np.vstack([probs, probs[:1], probs[:1]]),
                   np.vstack([nlp, nlp[:1], nlp[:1]]))  # fmt: skip
    result = adjudicated.score(preds, list(LABELS), str(_labels_file(tmp_path, rows)),
                               split="test", bootstrap=50)  # fmt: skip
    f = result["findings"]
    assert result["images_matched"] == n and result["images_labelled"] == n + 1
    assert f["Pneumothorax"]["auroc"] == 1.0 and f["Nodule or mass"]["auroc"] == 1.0
    assert f["Airspace opacity"]["auroc"] == 1.0
    assert f["Airspace opacity"]["from_outputs"] == ["Consolidation", "Infiltration", "Pneumonia"]
    mean_score = probs[:, [col("Nodule"), col("Mass")]].mean(axis=1)
    assert fast_auroc(truth[:, 1] == 1, mean_score) == 0.0  # what a mean would have given
    assert f["Pneumothorax"]["auroc_nlp_labels"] == 1.0  # the same labels both ways
    assert f["Airspace opacity"]["auroc_nlp_labels"] < 0.8  # the noisy half shows
    assert f["Airspace opacity"]["labels_agree"] < 0.8
    assert f["Fracture"] == {"scorable": False, "reason": "not an NIH finding"}
    lo, hi = f["Pneumothorax"]["auroc_ci95"]
    assert lo <= 1.0 <= hi + 1e-9
    assert f["Nodule or mass"]["n"] == n and f["Nodule or mass"]["positives"] == truth[:, 1].sum()
    table = adjudicated.format_table(result)
    assert "Fracture" in table and "not scorable" in table and "NLP lab." in table


def test_a_file_labelling_no_image_of_the_split_fails_in_one_line_naming_the_count(tmp_path):
    preds = _preds(["00000001_000.png", "00000002_000.png"], np.zeros((2, 14)), np.zeros((2, 14)))
    path = _labels_file(
        tmp_path, ["00000007_000.png,7,NO,YES,NO,NO", "00000008_000.png,8,NO,NO,NO,NO"]
    )
    with pytest.raises(ValueError) as err:
        adjudicated.score(preds, list(LABELS), str(path), split="test", bootstrap=10)
    message = str(err.value)
    assert "\n" not in message and "0 of its 2 images are in the test split (2 images)" in message
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        adjudicated.read_labels(str(bad))
    binary = tmp_path / "labels.zip"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="is not a CSV file") as err:
        adjudicated.read_labels(str(binary))
    assert "\n" not in str(err.value) and "--labels" in str(err.value)


def test_references_give_chexnet_per_finding_and_kermany_for_pneumonia():
    classes = {n: {"auroc": 0.8, "auroc_ci95": [0.7, 0.9]} for n in LABELS}
    nih = references.nih14({"classes": classes, "macro": {"auroc": 0.8}})
    assert nih["findings"]["Pneumothorax"]["chexnet_random_split"] == 0.8887
    assert nih["findings"]["Pleural_Thickening"]["chexnet_random_split"] == 0.8062
    assert nih["mean"] == {"auroc": 0.8, "chexnet_random_split": 0.841, "official_split": 0.81}
    assert set(references.CHEXNET_RANDOM_SPLIT) == set(LABELS)
    assert "random" in nih["sources"]["chexnet_random_split"]
    pneu = references.pneumonia(
        {
            "accuracy": 0.9,
            "classes": {
                "PNEUMONIA": {"auroc": 0.95, "auroc_ci95": [0.9, 1.0], "sensitivity": 0.9,
                              "specificity": 0.8}
            },
        }
    )  # fmt: skip
    assert pneu["metrics"]["accuracy"] == {"model": 0.9, "kermany2018": 0.928}
    assert pneu["metrics"]["auroc"] == {"model": 0.95, "kermany2018": 0.968}


def test_evaluate_on_the_nih_demo_writes_boxes_labels_and_references(tmp_path):
    """The issue's 'done when': the NIH demo's run evaluated with its box list and
    --labels google2019 writes the localisation table, the adjudicated AUROCs and the
    reference columns, printed and in metrics.json."""
    from cxr_tf import demo

    demo.run_demo(tmp_path / "d", dataset="nih14")
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "cxr_tf.evaluate", "--model", str(tmp_path / "d/runs/nih14"),
           "--data", str(tmp_path / "d/tfrecords"), "--boxes",
           str(tmp_path / "d/raw/nih14/BBox_List_2017.csv"), "--labels", "google2019",
           "--out", str(out), "--bootstrap", "50"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["localization"]["overall"]) >= {
        "pointing_game", "pointing_game_centre", "pointing_game_mean_box", "iobb_accuracy",
        "boxes", "scored", "skipped", "skipped_reasons"
    }  # fmt: skip
    assert m["localization"]["overall"]["scored"] > 0
    assert m["adjudicated"]["images_matched"] > 0
    assert m["adjudicated"]["findings"]["Fracture"]["scorable"] is False
    scored = [f for f in m["adjudicated"]["findings"].values() if f.get("auroc") is not None]
    assert scored and all({"auroc_ci95", "auroc_nlp_labels", "n", "positives"} <= set(f)
                          for f in scored)  # fmt: skip
    assert m["references"]["findings"]["Effusion"]["chexnet_random_split"] == 0.8638
    for text in ("CheXNet+", "adjudicated labels", "Airspace opacity", "acc IoBB>0.1",
                 "mean-box base.", "official split"):  # fmt: skip
        assert text in run.stdout, text
