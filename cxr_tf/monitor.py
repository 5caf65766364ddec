"""The AUC that training monitors (`val_auc`): the mean per-class AUROC over the classes that the
validation split has both positives and negatives for, as evaluation's mean AUROC is.

`keras.metrics.AUC(multi_label=True)` already computes one AUC per label and averages them, but
over every label: a label without positives has recall 0 at every threshold (no negatives:
false-positive rate 0), so its AUC is 0, not undefined, and it drags the mean down. On the NIH
demo's small validation split several rare findings have no positives, which is how `val_auc`
read 0.55 beside a test mean AUROC of 0.871. `MeanAUC` leaves those labels out, as
`cxr_tf.metrics.summarize` does. The rest is Keras' AUC (its thresholds, variables, update and
distribution), so it stays one compiled metric under TensorFlow and JAX.
"""

from __future__ import annotations

import keras
from keras import ops
from keras.src.metrics import metrics_utils  # AUC's curve and summation enums


@keras.saving.register_keras_serializable(package="cxr_tf")
class MeanAUC(keras.metrics.AUC):
    """`keras.metrics.AUC(multi_label=True)` averaged over the labels with both classes seen.

    0 when no label has both (as Keras' AUC is without data). Single-label or PR-curve AUCs are
    Keras' own."""

    def result(self):
        if not self.multi_label or self.curve != metrics_utils.AUCCurve.ROC:
            return super().result()
        tp, fp = self.true_positives, self.false_positives
        fn, tn = self.false_negatives, self.true_negatives
        # (thresholds, labels); every threshold row sums to the same positives and negatives
        tpr = ops.divide_no_nan(tp, ops.add(tp, fn))
        fpr = ops.divide_no_nan(fp, ops.add(fp, tn))
        n = self.num_thresholds
        if self.summation_method == metrics_utils.AUCSummationMethod.MINORING:
            heights = ops.minimum(tpr[: n - 1], tpr[1:])
        elif self.summation_method == metrics_utils.AUCSummationMethod.MAJORING:
            heights = ops.maximum(tpr[: n - 1], tpr[1:])
        else:  # interpolation, Keras' default
            heights = ops.divide(ops.add(tpr[: n - 1], tpr[1:]), 2.0)
        by_label = ops.sum(ops.multiply(ops.subtract(fpr[: n - 1], fpr[1:]), heights), axis=0)
        positives = ops.add(tp[0], fn[0])
        negatives = ops.add(fp[0], tn[0])
        defined = ops.cast(
            ops.logical_and(ops.greater(positives, 0.0), ops.greater(negatives, 0.0)), "float32"
        )
        if self.label_weights is not None:
            defined = ops.multiply(defined, self.label_weights)
        return ops.divide_no_nan(ops.sum(ops.multiply(by_label, defined)), ops.sum(defined))
