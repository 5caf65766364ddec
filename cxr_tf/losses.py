"""Losses for the training step, written with `keras.ops` so they run under TensorFlow and JAX."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxr_tf")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a weight on the positive term of each label.

    `pos_weight[j]` (negatives/positives of label j, see `input_pipeline.positive_weights`)
    makes a rare finding's positives count as much as its negatives, the multi-label
    counterpart of class weights (which Keras would apply by argmax, wrongly, to multi-hot labels).
    """

    def __init__(self, pos_weight, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        eps = keras.backend.epsilon()
        y_pred = ops.clip(ops.cast(y_pred, "float32"), eps, 1.0 - eps)
        y_true = ops.cast(y_true, "float32")
        w = ops.convert_to_tensor(self.pos_weight, dtype="float32")
        per_label = -(w * y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
        return ops.mean(per_label, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


def make_loss(name: str, pos_weight=None) -> keras.losses.Loss:
    """`bce`, `weighted_bce` (needs `pos_weight`) or `cce`."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy(name="bce")
    if name == "cce":
        return keras.losses.CategoricalCrossentropy(name="cce")
    if name == "weighted_bce":
        if pos_weight is None:
            raise ValueError("loss 'weighted_bce' needs pos_weight (one weight per label)")
        return WeightedBinaryCrossentropy(pos_weight)
    raise ValueError(f"loss {name!r} is not one of ('bce', 'weighted_bce', 'cce')")
