"""Evaluation of a trained model on a split: metrics.json with confidence intervals, and plots.

    python -m cxr_tf.evaluate --model runs/demo --data demo_out/tfrecords [--split test]
        [--out DIR] [--thresholds FILE] [--bootstrap 1000]
        [--boxes BBox_List_2017.csv] [--labels google2019]

`--model` is a `.keras` file or a run folder (its `best.keras`). Every example of the split is
predicted exactly once. Probabilities are calibrated as the run's thresholds.json says (see
`cxr_tf.calibration`). The operating point: with `--threshold-rule R` (youden, max_f1,
sensitivity=S, fixed=T), thresholds chosen by R on the validation split; else `--thresholds`,
else the run folder's `thresholds.json` (chosen on validation during training), else 0.5.
Every metric is reported at those thresholds and at 0.5, and metrics.json says which rule and
split chose them. AUROC 95% intervals are bootstrapped over patients, not images, since one
patient's images are not independent. Plots: roc.png (operating points marked), pr.png,
reliability.png, distributions.png, gallery.png, confusion.png (pneumonia only).

Beside the model's figures, the published ones (`cxr_tf.references`: CheXNet per finding for
NIH, Kermany et al. for pneumonia). For NIH, `--boxes` scores Grad-CAM against the radiologists'
boxes (`cxr_tf.localization`, localization.png) and `--labels` gives AUROC on Google's
adjudicated labels beside the NLP labels of the same images (`cxr_tf.adjudicated`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from cxr_tf import adjudicated, localization, metrics, references, storage
from cxr_tf import config as config_lib
from cxr_tf.cli import add_verbose, fail, quiet_tensorflow


def resolve_model(path) -> Path:
    """A `.keras` file, or the `best.keras` of a run folder."""
    path = storage.path(path)
    if path.is_dir() and (path / "best.keras").is_file():
        return path / "best.keras"
    if path.is_file() and path.suffix == ".keras":
        return path
    raise FileNotFoundError(f"--model {str(path)!r} is neither a .keras file nor a run folder")


def default_out_dir(model_path, split: str) -> Path:
    """Where evaluation writes by default (the demo too): `<run folder>/eval_<split>`."""
    return storage.path(model_path).parent / f"eval_{split}"


def fast_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN with one class only."""
    y = y.astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), np.float64)
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auroc(labels, probs, patient_ids, *, n=1000, seed=0, level=0.95):
    """Per class (low, high) percentile intervals of AUROC, resampling whole patients.

    A resample with only one class present for a label is skipped for that label.
    """
    rng = np.random.default_rng(seed)
    patients, inverse = np.unique(np.asarray(patient_ids), return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(patients))]
    samples = [[] for _ in range(probs.shape[1])]
    for _ in range(n):
        picked = rng.integers(0, len(patients), len(patients))
        idx = np.concatenate([rows_of[i] for i in picked])
        for j in range(probs.shape[1]):
            a = fast_auroc(labels[idx, j] > 0.5, probs[idx, j])
            if not np.isnan(a):
                samples[j].append(a)
    tail = (1 - level) / 2 * 100
    return [
        (float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))) if s else (None, None)
        for s in samples
    ]


def evaluate(
    model_path,
    data_dir,
    *,
    split: str = "test",
    out_dir=None,
    thresholds_file=None,
    dataset: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    gallery: int = 16,
    threshold_rule: str | None = None,
    boxes=None,
    labels: str | None = None,
) -> dict:
    """Predict `split` once, write metrics.json and the plots into `out_dir`; returns metrics.

    `boxes` (NIH's BBox_List_2017.csv) adds the `localization` section and localization.png,
    `labels` (google2019 or a CSV of Google's adjudicated labels) the `adjudicated` section."""
    from cxr_tf import inference  # imports Keras: only once the command line has set up
    from cxr_tf.calibration import expected_calibration_error
    from cxr_tf.export import calibration_for, find_thresholds, label_info
    from cxr_tf.input_pipeline import read_info
    from cxr_tf.models import load_model

    if threshold_rule is not None:
        metrics.parse_threshold_rule(threshold_rule)  # a bad rule fails before any work
    model_path = resolve_model(model_path)
    out_dir = storage.path(out_dir) if out_dir else default_out_dir(model_path, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_config = model_path.parent / "config.yaml"
    if dataset is None and saved_config.is_file():  # the dataset the run was trained on
        dataset = config_lib.load(saved_config).dataset
    info = read_info(data_dir, dataset)
    if (boxes or labels) and info.name != "nih14":
        flag = "--boxes" if boxes else "--labels"
        raise ValueError(
            f"{flag} scores NIH ChestX-ray14 models; {str(data_dir)!r} holds {info.name} (give "
            "--data with an nih14 conversion, or leave out --boxes and --labels)"
        )
    box_list = localization.read_boxes(boxes) if boxes else None  # bad files fail before work
    if labels:
        adjudicated.read_labels(labels)
    model = load_model(model_path)
    thresholds_file = thresholds_file or find_thresholds(model_path)
    calibrator = calibration_for(model.output_shape[-1], thresholds_file)
    preds = inference.predict_split(model, data_dir, split, info.name)
    preds.probs = calibrator.apply(preds.probs)
    names, thresholds, source = label_info(preds.probs.shape[1], thresholds_file)
    saved = metrics.load_thresholds(thresholds_file) if thresholds_file else {}
    rule, chosen_on = saved.get("rule"), saved.get("source", "default")
    stand_ins = metrics.stand_in_notes(saved) if saved else [None] * len(names)
    if threshold_rule is not None:
        val = inference.predict_split(model, data_dir, "validation", info.name)
        thresholds = metrics.choose_thresholds(
            calibrator.apply(val.probs), val.labels, threshold_rule
        )
        stand_ins = thresholds.notes
        rule, chosen_on, source = threshold_rule, "validation", f"{threshold_rule} on validation"
    if names[0].startswith("class_"):  # no thresholds file: name the outputs from the data
        names = info.label_names if preds.probs.shape[1] > 1 else [info.label_names[1]]
    result = metrics.summarize(preds.probs, preds.labels, thresholds, names)
    at_half = metrics.summarize(preds.probs, preds.labels, [0.5] * len(names), names)
    for j, name in enumerate(names):
        result["classes"][name]["ece"] = expected_calibration_error(
            preds.labels[:, j], preds.probs[:, j]
        )
        # a threshold that the split it was chosen on could not choose (no positives there)
        result["classes"][name]["threshold_note"] = (
            f"{stand_ins[j]} in {chosen_on}: {thresholds[j]:g} stands in, not chosen"
            if stand_ins[j]
            else None
        )
    eces = [c["ece"] for c in result["classes"].values() if c["ece"] is not None]
    result["macro"]["ece"] = float(np.mean(eces)) if eces else None
    result["at_threshold_0.5"] = at_half
    result["operating_point"] = {
        "rule": rule or ("fixed=0.5" if not saved else "max_f1"),  # files before rules: max F1
        "chosen_on": chosen_on,
        "thresholds_file": str(thresholds_file) if thresholds_file else None,
        "thresholds": [float(t) for t in thresholds],
        "stand_ins": {n: note for n, note in zip(names, stand_ins, strict=True) if note},
        "calibration": calibrator.to_dict(),
    }
    intervals = bootstrap_auroc(
        preds.labels, preds.probs, preds.patient_ids, n=bootstrap, seed=seed
    )
    for name, ci in zip(names, intervals, strict=True):
        result["classes"][name]["auroc_ci95"] = list(ci)
    result.update(
        split=split,
        dataset=info.name,
        model=str(model_path),
        thresholds_source=source,
        bootstrap={
            "resamples": bootstrap,
            "unit": "patient",
            "patients": len(set(preds.patient_ids)),
        },
    )
    if info.task == "binary":
        result["confusion_matrix"] = _confusion(preds, thresholds, info.label_names)
    result["references"] = (
        references.nih14(result) if info.name == "nih14" else references.pneumonia(result)
    )
    if labels:
        result["adjudicated"] = adjudicated.score(
            preds, names, labels, split=split, bootstrap=bootstrap, seed=seed
        )
    storage.write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    if box_list is not None:  # after metrics.json is written: a failure here loses nothing
        result["localization"], cases = localization.localize(
            model, data_dir, split, info, *box_list, class_names=list(names)
        )
        storage.write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
        localization.gallery(cases, out_dir / "localization.png")
    plot_names = info.label_names if info.task == "binary" else names
    _plots(
        preds, names, thresholds, result, out_dir, model, data_dir, split, info, gallery, plot_names
    )
    result["out_dir"] = str(out_dir)
    return result


def _confusion(preds, thresholds, class_names) -> dict:
    """Rows: true class, columns: predicted class (single-label tasks)."""
    if preds.probs.shape[1] == 2:
        truth, guess = preds.labels.argmax(1), preds.probs.argmax(1)
    else:
        truth = (preds.labels[:, 0] > 0.5).astype(int)
        guess = (preds.probs[:, 0] >= thresholds[0]).astype(int)
    matrix = np.zeros((2, 2), int)
    np.add.at(matrix, (truth, guess), 1)
    return {"labels": list(class_names), "matrix": matrix.tolist()}


def _plots(
    preds, names, thresholds, result, out_dir, model, data_dir, split, info, gallery, class_names
):
    from cxr_tf import plots

    plots.roc_curves(preds.labels, preds.probs, names, result, out_dir / "roc.png")
    plots.pr_curves(preds.labels, preds.probs, names, result, out_dir / "pr.png")
    plots.reliability_diagrams(
        preds.labels, preds.probs, names, result, out_dir / "reliability.png"
    )
    plots.distributions(preds.labels, preds.probs, names, thresholds, out_dir / "distributions.png")
    if "confusion_matrix" in result:
        plots.confusion(result["confusion_matrix"], out_dir / "confusion.png")
    if gallery:
        plots.gallery(
            model,
            data_dir,
            split,
            info,
            preds,
            names,
            thresholds,
            out_dir / "gallery.png",
            count=gallery,
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tf.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help=".keras file or run folder")
    p.add_argument("--data", required=True, help="the converter's --out folder")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--out", default=None, help="default: <run folder>/eval_<split>")
    p.add_argument("--thresholds", default=None, help="default: the run folder's thresholds.json")
    p.add_argument("--dataset", default=None, help="pneumonia or nih14 when --data holds both")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the CIs")
    p.add_argument(
        "--threshold-rule",
        default=None,
        help="choose thresholds on the validation split: youden, max_f1, sensitivity=S or "
        "fixed=T (default: the run's thresholds.json)",
    )
    p.add_argument(
        "--boxes",
        default=None,
        help="NIH's BBox_List_2017.csv (.gz too): score Grad-CAM against the radiologists' boxes",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="google2019 (bundled) or a CSV of Google's adjudicated NIH labels: AUROC on them",
    )
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        r = evaluate(
            args.model,
            args.data,
            split=args.split,
            out_dir=args.out,
            thresholds_file=args.thresholds,
            dataset=args.dataset,
            bootstrap=args.bootstrap,
            threshold_rule=args.threshold_rule,
            boxes=args.boxes,
            labels=args.labels,
        )
    except (FileNotFoundError, ValueError, storage.StorageError) as err:
        return fail(err)
    print(format_summary(r))
    return 0


def format_summary(r: dict) -> str:
    """A short table of the headline numbers."""
    op = r["operating_point"]
    lines = [
        f"{r['dataset']} {r['split']}: {r['n']} images, thresholds by {op['rule']} on "
        f"{op['chosen_on']}"
    ]
    chexnet = r.get("references", {}).get("findings")
    lines.append(
        f"  {'class':<20} {'AUROC':>6}  {'95% CI':>13}  {'sens':>5} {'spec':>5} {'F1':>5}"
        + (f"  {'CheXNet+':>8}" if chexnet else "")
    )
    stand_ins = op.get("stand_ins", {})
    for name, c in r["classes"].items():
        lo, hi = c["auroc_ci95"]
        ci = f"{lo:.3f}-{hi:.3f}" if lo is not None else "n/a"
        # at a stand-in threshold the decisions mean nothing: n/a*, not a sensitivity of 0.000
        decided = [
            "n/a*" if name in stand_ins else _f(c[k]) for k in ("sensitivity", "specificity", "f1")
        ]
        lines.append(
            f"  {name:<20} {_f(c['auroc']):>6}  {ci:>13}  {decided[0]:>5} {decided[1]:>5} "
            f"{decided[2]:>5}"
            + (f"  {_f(chexnet[name]['chexnet_random_split']):>8}" if chexnet else "")
        )
    if stand_ins:
        lines.append(
            f"  * no threshold chosen for {', '.join(stand_ins)}: {_notes(stand_ins)} in "
            f"{op['chosen_on']}, so a stand-in threshold (metrics.json has its numbers)"
        )
    one_sided = r.get("one_sided", {})
    if one_sided:
        lines.append(
            f"  AUROC n/a for {', '.join(one_sided)}: {_notes(one_sided)} in this {r['split']} "
            "split, left out of the mean"
        )
    half = r["at_threshold_0.5"]
    lines.append(
        f"  mean AUROC {_f(r['macro']['auroc'])}, accuracy {r['accuracy']:.3f} at the chosen "
        f"thresholds, {half['accuracy']:.3f} at 0.5 (sens {_f(half['macro']['sensitivity'])}, "
        f"spec {_f(half['macro']['specificity'])}); mean ECE {_f(r['macro']['ece'])}"
    )
    refs = r.get("references", {})
    if chexnet:
        mean = refs["mean"]
        lines.append(
            f"  + CheXNet (Rajpurkar et al. 2017) on a random patient split, mean "
            f"{mean['chexnet_random_split']:.3f}; on NIH's official split (test_list.txt) the "
            f"reference mean is about {mean['official_split']:.2f}: compare with the mean "
            f"above, {_f(mean['auroc'])}"
        )
    elif "metrics" in refs:
        m = refs["metrics"]
        lines.append(
            "  Kermany et al. 2018 on the same test folder: accuracy "
            f"{m['accuracy']['kermany2018']:.3f}, sens {m['sensitivity']['kermany2018']:.3f}, "
            f"spec {m['specificity']['kermany2018']:.3f}, AUROC {m['auroc']['kermany2018']:.3f}"
        )
    if "adjudicated" in r:
        lines.append(adjudicated.format_table(r["adjudicated"]))
    if "localization" in r:
        lines.append(localization.format_table(r["localization"]))
    lines.append(f"  metrics and plots in {r['out_dir']}")
    return "\n".join(lines)


def _notes(by_class: dict) -> str:
    """ "no positives" (or "no positives or negatives") for the classes a note dict names."""
    kinds = sorted({note.removeprefix("no ") for note in by_class.values()}, reverse=True)
    return "no " + " or ".join(kinds)


def _f(x):
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
