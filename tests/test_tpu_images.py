"""The venvs of .ci/tpu_images are the images they stand for: Kaggle's TPU VM image and Colab's
TPU runtime, with cxr_tf installed as the README says for each. Runs where CXR_TF_IMAGE names
the image (set by .ci/tpu_images); skipped everywhere else."""

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tpu_vm import STAND_INS, tpu_vm_env

IMAGE = os.environ.get("CXR_TF_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE, reason="CXR_TF_IMAGE unset: not an image venv")

# The images as they are (the pins of .ci/tpu_images): Python, and packages before cxr_tf's
# install (None: absent) and after it, which must keep TensorFlow, JAX and Keras as they were.
IMAGES = {
    "kaggle": {
        "python": (3, 12),
        "image": {"tensorflow-cpu": "2.20.0", "tensorflow": None, "jax": "0.7.2"},
        "installed": {"tensorflow-cpu": "2.20.0", "jax": "0.7.2", "jaxlib": "0.7.2"},
        "libtpu": "0.0.17",
    },
    "colab": {
        "python": (3, 13),
        "image": {"tensorflow": None, "tensorflow-cpu": None, "keras": "3.13.2"},
        "installed": {"jax": "0.7.2", "jaxlib": "0.7.2", "keras": "3.13.2"},
        "libtpu": None,  # whichever jax[tpu] 0.7.2 installs
    },
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture
def image():
    assert IMAGE in IMAGES, f"CXR_TF_IMAGE={IMAGE!r} is none of {sorted(IMAGES)}"
    return IMAGES[IMAGE]


def test_python_and_packages_are_the_images(image):
    assert sys.version_info[:2] == image["python"]
    before = {}  # the image's packages, as .ci/tpu_images listed them before installing cxr_tf
    for line in (Path(sys.prefix) / "cxr_tf-image.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        before[name.lower().replace("_", "-")] = version
    for dist, want in image["image"].items():
        assert before.get(dist) == want, (dist, "before cxr_tf's install")
    for dist, want in image["installed"].items():
        assert _version(dist) == want, dist
    assert _version("keras").startswith("3.")
    assert _version("tensorflow-cpu")  # Kaggle's own; on Colab cxr_tf[tf-cpu]'s


def test_the_real_libtpu_replaces_the_stand_in(image):
    libtpu = importlib.metadata.distribution("libtpu")
    assert image["libtpu"] in (None, libtpu.version)
    assert any(f.name == "libtpu.so" for f in libtpu.files), "no libtpu.so: not the real wheel"
    assert str(STAND_INS) not in tpu_vm_env()["PYTHONPATH"].split(os.pathsep)


def test_jax_on_the_simulated_tpu_vm_falls_back_to_the_host_devices_quickly():
    """The real libtpu on a machine without TPU chips or a GCE metadata server: JAX gives up on
    the TPU and has the 8 host devices, without waiting on the metadata server."""
    code = "import jax; print(len(jax.devices()), jax.devices()[0].platform)"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=tpu_vm_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["8", "cpu"]
    assert time.monotonic() - start < 60


def test_the_notebooks_kernel_is_this_venvs_python():
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    code = "import sys; print(sys.prefix)"
    out = subprocess.run([argv[0], "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == sys.prefix, argv
