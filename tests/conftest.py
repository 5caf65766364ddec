"""Shared fixtures: tiny converted datasets, and two logical CPU devices for tf.distribute tests.

The logical devices must be configured before TensorFlow initialises its runtime, so it happens
here, at import, once for the whole session.
"""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

from cxr_tf import synthetic  # noqa: E402
from cxr_tf.convert import convert  # noqa: E402


def _converted(tmp_path_factory, dataset: str, num_images: int, seed: int):
    root = tmp_path_factory.mktemp(dataset)
    writer = {"pneumonia": synthetic.write_pneumonia, "nih14": synthetic.write_nih14}[dataset]
    writer(
        root / "raw",
        num_images=num_images,
        image_size=80 if dataset == "pneumonia" else 64,
        seed=seed,
    )
    convert(
        dataset,
        root / "raw",
        root / "tfrecords",
        image_size=64,
        workers=1,
        shard_mb=0.05,
        progress=False,
    )
    return root / "tfrecords"


@pytest.fixture(scope="session")
def pneumonia_data(tmp_path_factory):
    """A converted synthetic pneumonia dataset (~300 images at 64 px, several train shards)."""
    return _converted(tmp_path_factory, "pneumonia", 300, 3)


@pytest.fixture(scope="session")
def nih14_data(tmp_path_factory):
    """A converted synthetic NIH dataset (~200 images at 64 px)."""
    return _converted(tmp_path_factory, "nih14", 200, 4)


@pytest.fixture(scope="session")
def trained_run(pneumonia_data, tmp_path_factory):
    """training/demo.yaml trained once on `pneumonia_data` (CPU): a run folder to evaluate,
    export and predict with."""
    from pathlib import Path

    from cxr_tf.train import run

    workdir = tmp_path_factory.mktemp("run") / "demo"
    demo = Path(__file__).resolve().parents[1] / "training" / "demo.yaml"
    run(demo, data=pneumonia_data, workdir=workdir, strategy="cpu", verbose=0)
    return workdir


@pytest.fixture
def load_benchmark():
    """Import a script of benchmarks/ by name: they are scripts, not a package."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def imagenet_like():
    """Make a 3-channel cxr_tf model with random weights that behave like trained ones: kernels
    at He scale, BatchNorm scales and shifts drawn, and each BatchNorm's moving statistics those
    of its input on a batch of gray images (one forward pass in training mode at momentum 0)."""
    import keras
    import numpy as np

    from cxr_tf import models

    def make(name: str, image_size: int = 64, num_classes: int = 3, seed: int = 0):
        model = models.build_model(name, num_classes=num_classes, image_size=image_size)
        rng = np.random.default_rng(seed)
        norms = [
            layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
                shape = layer.kernel.shape
                values = [rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)]
                values += [rng.normal(0, 0.1, w.shape) for w in layer.weights[1:]]  # a bias
                layer.set_weights(values)
        for layer in norms:
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), np.zeros(n), np.ones(n)]
            )
            layer.momentum = 0.0
        gray = rng.random((8, image_size, image_size, 1), dtype=np.float32)
        model(np.repeat(gray, 3, axis=-1), training=True)
        for layer in norms:
            layer.momentum = models.VARIANTS[name].bn_momentum
        return model

    return make


@pytest.fixture
def assert_gray_is_rgb():
    """Check a 1-channel model against the 3-channel one its weights came from: on gray images,
    the same outputs of `layer_names` as the RGB model fed them repeated, to 1e-4 of their
    largest value."""
    import keras
    import numpy as np

    def check(gray, rgb, layer_names=("avg_pool", "logits"), seed=1):
        size = rgb.input.shape[1]
        images = np.random.default_rng(seed).random((4, size, size, 1), dtype=np.float32)
        ours, theirs = (
            keras.Model(m.input, {n: m.get_layer(n).output for n in layer_names})(x)
            for m, x in ((gray, images), (rgb, np.repeat(images, 3, axis=-1)))
        )
        for name in layer_names:
            scale = np.abs(np.asarray(theirs[name])).max()
            assert scale > 0.01, f"{name}: outputs too small to compare ({scale})"
            np.testing.assert_allclose(
                ours[name], theirs[name], rtol=0, atol=1e-4 * scale, err_msg=name
            )

    return check
