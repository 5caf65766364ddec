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
