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
