"""Evaluation plots (matplotlib, written as PNG): ROC, precision-recall, confusion matrix,
probability distributions, and a gallery of images with their true and predicted labels."""

from __future__ import annotations

import io
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: works headless, in CI and on TPU VMs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cxr_tf import storage  # noqa: E402

VALUE_Z = 5  # the gallery's value labels: above its bars (1) and threshold marks (VALUE_Z - 1)


def _grid(n: int, size: float = 4.2):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _legend(ax, **kwargs):
    """A legend where there is something to name (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _layout(fig) -> None:
    """Tight layout below the figure title: matplotlib's tight_layout leaves no room for a
    suptitle, which then overlaps the top row's panel titles; so the panels are laid out in
    the figure minus the suptitle's height (measured on a draw); tight_layout's own padding
    keeps them apart."""
    title = fig._suptitle  # the Text of fig.suptitle, None without one
    if title is None or not title.get_text():
        fig.tight_layout()
        return
    fig.canvas.draw()  # measure the title as it renders
    height = title.get_window_extent().height / fig.bbox.height
    gap = 0.3 * title.get_fontsize() / 72 / fig.get_figheight()  # a third of a line
    title.set(y=1.0 - gap, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1.0 - gap - height))


def _save(fig, path):
    _layout(fig)
    buffer = io.BytesIO()  # through cxr_tf.storage: the folder may be a URL
    fig.savefig(buffer, dpi=130, format="png")  # a 4.2-inch panel: about 550 px
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())


def roc_curves(labels, probs, names, result, path):
    """One ROC panel per class with its AUROC (and 95% CI) in the legend, and the operating
    points marked: the chosen threshold, and 0.5 when evaluation reports it."""
    fig, axes = _grid(len(names))
    half = result.get("at_threshold_0.5", {}).get("classes", {})
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        y = labels[:, j] > 0.5
        c = result["classes"][name]
        if y.any() and not y.all():
            fpr, tpr, _ = skm.roc_curve(y, probs[:, j])
            ci = c.get("auroc_ci95") or (None, None)
            extra = f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci[0] is not None else ""
            ax.plot(fpr, tpr, lw=2, label=f"AUROC {c['auroc']:.3f}{extra}")
            points = [(c, "o", "C3", "chosen")]
            if name in half:
                points.append((half[name], "s", "C2", "0.5"))
            for point, marker, color, what in points:
                ax.plot(
                    1 - point["specificity"],
                    point["sensitivity"],
                    marker,
                    color=color,
                    ms=8,
                    label=f"{what} threshold {point['threshold']:.2f}: sens "
                    f"{point['sensitivity']:.2f}, spec {point['specificity']:.2f}",
                )
        else:
            ax.text(
                0.5,
                0.55,
                f"no {'negatives' if y.all() else 'positives'} in this split",
                ha="center",
                transform=ax.transAxes,
            )
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
        ax.set(
            title=name, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01)
        )
        _legend(ax, loc="lower right", fontsize=8)
    fig.suptitle("ROC curves")
    _save(fig, path)


def pr_curves(labels, probs, names, result, path):
    """One precision-recall panel per class, with average precision and prevalence."""
    fig, axes = _grid(len(names))
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        y = labels[:, j] > 0.5
        if y.any():
            precision, recall, _ = skm.precision_recall_curve(y, probs[:, j])
            ap = result["classes"][name]["average_precision"]
            ax.plot(recall, precision, lw=2, label=f"AP {ap:.3f}")
            ax.axhline(y.mean(), color="k", ls="--", lw=0.8, label=f"prevalence {y.mean():.2f}")
        else:
            ax.text(0.5, 0.5, "no positives in this split", ha="center", transform=ax.transAxes)
        ax.set(title=name, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
        _legend(ax, loc="lower left", fontsize=8)
    fig.suptitle("Precision-recall curves")
    _save(fig, path)


def reliability_diagrams(labels, probs, names, result, path):
    """Per class, the positive rate against the mean predicted probability in 10 bins (the
    diagonal is perfect calibration), with the expected calibration error and bin counts."""
    from cxr_tf.calibration import reliability

    fig, axes = _grid(len(names))
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        centres, mean_p, rate, count = reliability(labels[:, j], probs[:, j])
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
        if len(centres):
            ax.bar(centres, rate, width=0.09, alpha=0.35, color="C0", label="positive rate")
            ax.plot(mean_p, rate, "o-", color="C0", label="per bin")
            for x, r, n in zip(mean_p, rate, count, strict=True):
                ax.annotate(
                    str(n),
                    (x, r),
                    textcoords="offset points",
                    xytext=(0, 5),
                    ha="center",
                    fontsize=7,
                )
        ece = result["classes"][name].get("ece")
        ax.set(
            title=f"{name}" + (f"  (ECE {ece:.3f})" if ece is not None else ""),
            xlabel="mean predicted probability",
            ylabel="share positive",
            xlim=(0, 1),
            ylim=(0, 1.05),
        )
        _legend(ax, loc="upper left", fontsize=8)
    fig.suptitle("Reliability (numbers: images per bin)")
    _save(fig, path)


def distributions(labels, probs, names, thresholds, path):
    """Per class, histograms of the predicted probability split by ground truth."""
    fig, axes = _grid(len(names))
    bins = np.linspace(0, 1, 26)
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        y = labels[:, j] > 0.5
        ax.hist(probs[~y, j], bins=bins, alpha=0.6, label=f"negative (n={int((~y).sum())})")
        ax.hist(probs[y, j], bins=bins, alpha=0.6, label=f"positive (n={int(y.sum())})")
        ax.axvline(thresholds[j], color="k", ls="--", lw=1, label=f"threshold {thresholds[j]:.2f}")
        ax.set(title=name, xlabel="predicted probability", ylabel="images")
        _legend(ax, fontsize=7)
    fig.suptitle("Predicted probabilities by ground truth")
    _save(fig, path)


def confusion(cm: dict, path):
    """A 2x2 heatmap with counts and row percentages."""
    matrix = np.asarray(cm["matrix"])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        share = v / max(matrix[i].sum(), 1)
        color = "white" if v > matrix.max() / 2 else "black"
        ax.text(j, i, f"{v}\n{share:.0%}", ha="center", va="center", color=color)
    ax.set(
        xticks=range(len(cm["labels"])),
        yticks=range(len(cm["labels"])),
        xticklabels=cm["labels"],
        yticklabels=cm["labels"],
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix",
    )
    _save(fig, path)


def gallery(model, data_dir, split, info, preds, names, thresholds, path, count=16):
    """The first `count` images of the split with true and predicted labels and a probability
    bar per class (the 5 most probable for multi-label)."""
    from cxr_tf.input_pipeline import make_dataset
    from cxr_tf.models import input_contract

    c = input_contract(model)
    ds = make_dataset(
        data_dir,
        split,
        global_batch_size=count,
        image_size=c.image_size,
        training=False,
        channels=1,
        crop_fraction=c.crop_fraction,
        dataset=info.name,
        cache=False,  # one batch is read: a cache would be left half-filled (TF warns)
    )
    images, _, weights = next(ds.as_numpy_iterator())
    n = int(min(count, (weights > 0).sum(), len(preds.probs)))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        2 * cols,
        figsize=(4.6 * cols, 2.6 * rows),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.4, 1] * cols},
    )
    for k in range(rows * cols):
        ax_img, ax_bar = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        if k >= n:
            ax_img.axis("off")
            ax_bar.axis("off")
            continue
        p, y = preds.probs[k], preds.labels[k] > 0.5
        true = [nm for nm, v in zip(names, y, strict=True) if v] or ["none"]
        pred = [nm for nm, v, t in zip(names, p, thresholds, strict=True) if v >= t] or ["none"]
        if len(names) == 1:  # binary: name both classes
            true = [info.label_names[int(y[0])]]
            pred = [info.label_names[int(p[0] >= thresholds[0])]]
        ok = set(true) == set(pred)
        ax_img.imshow(images[k][..., 0], cmap="gray", vmin=0, vmax=1)
        ax_img.set_title(
            "\n".join(
                textwrap.wrap(f"true: {', '.join(true)}", 34)
                + textwrap.wrap(f"pred: {', '.join(pred)}", 34)
            ),
            fontsize=7,
            color="green" if ok else "red",
        )
        ax_img.axis("off")
        top = np.argsort(-p)[:5]
        ax_bar.barh(
            range(len(top)), p[top], color=["C3" if p[i] >= thresholds[i] else "C0" for i in top]
        )
        for row, i in enumerate(top):  # each class's decision threshold, and the probability
            ax_bar.plot(
                [thresholds[i]] * 2, [row - 0.4, row + 0.4], color="k", lw=1.2, zorder=VALUE_Z - 1
            )
            # over the threshold mark, on a white box, so that the mark never hides a digit
            ax_bar.text(
                min(p[i] + 0.03, 0.75),
                row,
                f"{p[i]:.2f}",
                va="center",
                fontsize=6,
                zorder=VALUE_Z,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
            )
        ax_bar.set_yticks(range(len(top)), [names[i] for i in top], fontsize=6)
        ax_bar.set_xlim(0, 1)
        ax_bar.invert_yaxis()
        ax_bar.tick_params(axis="x", labelsize=6)
    fig.suptitle(
        f"{split} images: true and predicted labels (red bars pass their threshold, the black mark)"
    )
    _save(fig, path)
