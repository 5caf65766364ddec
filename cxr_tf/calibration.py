"""Calibrated probabilities: a prior correction and a temperature per class, fitted on validation.

A sigmoid output p is mapped to `sigmoid((logit(p) + offset) / temperature)`:
- `offset` moves the decision scale. A model trained on a stream whose class shares differ from
  the data's (balance: oversample, 50/50 by default) outputs probabilities for that stream's
  prior; `logit(data prior) - logit(training prior)` (Bayes' rule on the odds) is where the fit
  starts.
- `temperature` sharpens or softens. Both are fitted together on the validation split (Platt
  scaling: minimum log-loss), so that among images given 0.8, about 80% are positive there. One
  pair per class (per finding for NIH).

Both are monotonic per class: AUROC and the ranking never change. Training writes the result into
`thresholds.json`; evaluation, prediction and the exported model apply it. Softmax models are left
as they are (identity). numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Calibration:
    """Per-class `offset` (prior correction, in logits) and `temperature`."""

    offset: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)

    @classmethod
    def identity(cls, num_classes: int) -> Calibration:
        return cls([0.0] * num_classes, [1.0] * num_classes)

    @classmethod
    def from_dict(cls, data: dict | None, num_classes: int) -> Calibration:
        if not data:
            return cls.identity(num_classes)
        return cls([float(x) for x in data["offset"]], [float(x) for x in data["temperature"]])

    def to_dict(self) -> dict:
        return {"offset": self.offset, "temperature": self.temperature}

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, (N, C) float32."""
        z = logit(probs)
        return sigmoid((z + np.asarray(self.offset)) / np.asarray(self.temperature)).astype(
            np.float32
        )


def prior_offset(train_prior: np.ndarray, data_prior: np.ndarray) -> np.ndarray:
    """Logit shift from probabilities at `train_prior` to probabilities at `data_prior`."""
    return logit(data_prior) - logit(train_prior)


def fit(probs: np.ndarray, labels: np.ndarray, offset=None) -> Calibration:
    """Per class, the offset and temperature minimising the log-loss of `probs` on `labels`.

    Platt scaling, `sigmoid(a z + b)` with a = 1 / temperature and b = offset / temperature,
    fitted against Platt's smoothed targets ((n+ + 1) / (n+ + 2) for positives, 1 / (n- + 2)
    for negatives), so that a perfectly separated validation split gives a finite, sharp fit
    instead of an infinite one. `offset` (the prior correction, default 0) is where the search
    starts: the fitted offset replaces it, since an under-trained network is not calibrated at
    its training stream's prior either (on the demo, keeping the prior offset fixed left test
    ECE at 0.29; fitting it gave 0.07). A class with one label value only keeps the starting
    offset and temperature 1 (nothing to fit).
    """
    from scipy.optimize import minimize

    num_classes = probs.shape[1]
    start = np.zeros(num_classes) if offset is None else np.asarray(offset, np.float64)
    offsets, temperatures = [], []
    for j in range(num_classes):
        y = labels[:, j] > 0.5
        z = logit(probs[:, j])
        if y.all() or not y.any():
            offsets.append(float(start[j]))
            temperatures.append(1.0)
            continue
        target = np.where(y, (y.sum() + 1) / (y.sum() + 2), 1 / ((~y).sum() + 2))

        def nll(ab, z=z, target=target):
            q = np.clip(sigmoid(ab[0] * z + ab[1]), 1e-12, 1 - 1e-12)
            return -np.mean(target * np.log(q) + (1 - target) * np.log1p(-q))

        best = minimize(
            nll, [1.0, start[j]], bounds=[(0.05, 20.0), (-50.0, 50.0)], method="L-BFGS-B"
        )
        a, b = best.x
        offsets.append(float(b / a))
        temperatures.append(float(1 / a))
    return Calibration(offsets, temperatures)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float | None:
    """ECE of one class: the support-weighted gap between mean probability and positive rate
    over `bins` equal-width probability bins. None for an empty split."""
    y, p = np.asarray(y) > 0.5, np.asarray(p, np.float64)
    if len(y) == 0:
        return None
    which = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum() * abs(p[inside].mean() - y[inside].mean())
    return float(gap / len(y))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10):
    """(bin centres, mean probability, positive rate, count) per non-empty bin, for the plot."""
    y, p = np.asarray(y) > 0.5, np.asarray(p, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = [
        ((b + 0.5) / bins, p[which == b].mean(), y[which == b].mean(), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]
    return [np.array(col) for col in zip(*rows, strict=True)] if rows else [np.array([])] * 4
