"""cxr_tf.plots: panels of a class with no positives say so, without matplotlib warnings;
figures are large enough to read."""

import warnings

import numpy as np
from PIL import Image

from cxr_tf import metrics, plots


def test_a_class_without_positives_says_so_and_warns_nothing(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 2), np.float32)
    labels[:20, 0] = 1  # class B has no positive in this split
    probs = rng.random((40, 2)).astype(np.float32)
    result = metrics.summarize(probs, labels, [0.5, 0.5], ["A", "B"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.roc_curves(labels, probs, ["A", "B"], result, tmp_path / "roc.png")
        plots.pr_curves(labels, probs, ["A", "B"], result, tmp_path / "pr.png")
        plots.reliability_diagrams(labels, probs, ["A", "B"], result, tmp_path / "rel.png")
    for name in ("roc.png", "pr.png", "rel.png"):
        width = Image.open(tmp_path / name).size[0]
        assert width >= 2 * 500, (name, width)  # two panels of about 550 px


def _nih_result(n=120, seed=0):
    from cxr_tf.nih14 import LABELS

    rng = np.random.default_rng(seed)
    names = list(LABELS)
    labels = (rng.random((n, len(names))) < 0.2).astype(np.float32)
    labels[:, 3] = 0  # one finding without positives, as in small splits
    probs = np.clip(labels * 0.3 + rng.random(labels.shape) * 0.7, 0, 1).astype(np.float32)
    result = metrics.summarize(probs, labels, [0.5] * len(names), names)
    for c in result["classes"].values():
        c["ece"] = 0.05
    return names, labels, probs, result


def _kept_figures(monkeypatch):
    """The figures the plot functions make, kept open (they close them after saving)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    return kept


def _title_clashes(fig) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    top = fig._suptitle.get_window_extent(renderer)
    return [
        ax.get_title()
        for ax in fig.axes
        if ax.get_title() and ax.title.get_window_extent(renderer).overlaps(top)
    ]


def test_the_figure_title_clears_the_panel_titles_on_nih_figures(tmp_path, monkeypatch):
    """14 panels in 4 rows: the suptitle's rendered box meets no panel title's box."""
    names, labels, probs, result = _nih_result()
    kept = _kept_figures(monkeypatch)
    plots.roc_curves(labels, probs, names, result, tmp_path / "roc.png")
    plots.pr_curves(labels, probs, names, result, tmp_path / "pr.png")
    plots.reliability_diagrams(labels, probs, names, result, tmp_path / "rel.png")
    plots.distributions(labels, probs, names, [0.5] * len(names), tmp_path / "dist.png")
    assert len(kept) == 4
    for fig in kept:
        assert _title_clashes(fig) == [], fig._suptitle.get_text()
        renderer = fig.canvas.get_renderer()
        assert fig._suptitle.get_window_extent(renderer).y1 <= fig.bbox.height  # on the page


def test_gallery_value_labels_sit_above_the_threshold_marks(nih14_data, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cxr_tf import input_pipeline, models

    info = input_pipeline.read_info(nih14_data)
    model = models.build_model("densenet_tiny", num_classes=14, image_size=64, channels=1)
    names, labels, probs, _ = _nih_result(n=8)
    kept = _kept_figures(monkeypatch)
    preds = SimpleNamespace(probs=probs, labels=labels)
    plots.gallery(
        model, nih14_data, "test", info, preds, names, [0.4] * 14, tmp_path / "g.png", count=8
    )
    (fig,) = kept
    assert _title_clashes(fig) == []
    bars = [ax for ax in fig.axes if ax.texts]
    assert bars
    for ax in bars:
        marks = [line.get_zorder() for line in ax.lines]
        for text in ax.texts:
            assert text.get_zorder() > max(marks) and text.get_bbox_patch() is not None
