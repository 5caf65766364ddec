"""Running a model over images or a whole split, compiled, as an accelerator wants it.

Shared by training (validation predictions for thresholds and calibration), evaluation,
`predict` and Grad-CAM. A direct `model(images)` call runs op by op: under JAX, every layer
compiles on its own (691 compiles for DenseNet-121's first batch) and every chip computes the
whole batch. Here the forward pass is one compiled function, fed fixed-size batches (one
compile), under JAX split over the distribution's devices (each chip computes its share, the
result is gathered onto every host) and under TensorFlow a `tf.function` in cross-replica
context (the whole batch once, never one copy per replica as `predict_on_batch` gives under
MirroredStrategy). Padding rows never reach the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np


@dataclass
class Predictions:
    """A model's outputs over a split, row-aligned with the labels and ids."""

    probs: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N, C) float32
    image_ids: list[str]
    patient_ids: list[str]


class ForwardPass:
    """`forward(images)` -> the model's outputs as numpy (a list for several outputs), one
    compiled forward pass in inference mode over batches of `batch_size` rows (rounded up to
    the devices), the last one padded."""

    def __init__(self, model: keras.Model, batch_size: int = 32):
        self.model = model
        self.uint8 = any(str(x.dtype) == "uint8" for x in model.inputs)
        self.devices = 1
        if keras.backend.backend() == "jax":
            self._fn, self._place, self.devices = _jax_forward(model)
        else:
            self._fn, self._place = _tf_forward(model), lambda x: x
        self.batch_size = -(-max(1, int(batch_size)) // self.devices) * self.devices

    def __call__(self, images):
        images = np.asarray(images)
        if self.uint8 and images.dtype != np.uint8:  # Keras would cast [0, 1] floats to 0 and 1
            raise ValueError(
                f"the model takes uint8 images (0..255), not {images.dtype}; convert with "
                "input_pipeline.as_model_input(images, 'uint8')"
            )
        n, b = len(images), self.batch_size
        chunks = []
        for start in range(0, n, b):
            x = images[start : start + b]
            if len(x) < b:  # one shape, one compile
                x = np.concatenate([x, np.zeros((b - len(x), *x.shape[1:]), x.dtype)])
            out = self._fn(self._place(x))
            chunks.append([np.asarray(o, np.float32) for o in _as_list(out)])
        outputs = [np.concatenate(parts)[:n] for parts in zip(*chunks, strict=True)]
        return outputs if isinstance(self.model.output, list | tuple) else outputs[0]


def _as_list(out):
    return list(out) if isinstance(out, list | tuple) else [out]


def _jax_forward(model):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    distribution = keras.distribution.distribution()
    if distribution is None:
        jitted, place, devices = jax.jit(forward), (lambda x: x), 1
    else:
        mesh = distribution.device_mesh.backend_mesh
        jitted = jax.jit(forward, out_shardings=NamedSharding(mesh, PartitionSpec()))
        devices = mesh.devices.size

        def place(x):  # every host holds the whole batch; each device takes its rows
            sharding = distribution.get_data_layout(x.shape).backend_layout
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def run(x):
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return jitted(trainable, non_trainable, x)

    return run, place, devices


def _tf_forward(model):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False))


def predict_split(model, data_dir, split: str, dataset: str | None = None, *, batch_size=32):
    """Predictions for every example of `split`, in pipeline order, padding removed.

    The evaluation transform, image size and input dtype come from the model's contract.
    """
    from cxr_tf import input_pipeline
    from cxr_tf.models import input_contract

    contract = input_contract(model)
    forward = ForwardPass(model, batch_size)
    ds = input_pipeline.make_dataset(
        data_dir,
        split,
        global_batch_size=forward.batch_size,
        image_size=contract.image_size,
        training=False,
        channels=contract.channels,
        crop_fraction=contract.crop_fraction,
        label_mode="categorical" if model.output_shape[-1] == 2 else None,
        dataset=dataset,
        with_ids=True,
        image_dtype=contract.input_dtype,
    )
    probs, labels, image_ids, patient_ids = [], [], [], []
    for images, y, w, iid, pid in ds.as_numpy_iterator():
        keep = w > 0
        if not keep.any():
            continue
        probs.append(forward(images)[keep])
        labels.append(y[keep])
        image_ids += [x.decode() for x in iid[keep]]
        patient_ids += [x.decode() for x in pid[keep]]
    return Predictions(np.concatenate(probs), np.concatenate(labels), image_ids, patient_ids)
