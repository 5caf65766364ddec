"""The TPU-VM simulation: the environment of a Colab or Kaggle TPU VM notebook, on a CPU.

What a Kaggle TPU VM has: tensorflow-cpu + JAX (`jax[tpu]`, which installs `libtpu`) + Keras 3,
TPU_ACCELERATOR_TYPE set, 8 chips, no KERAS_BACKEND. Here: this venv's tensorflow-cpu and JAX,
the real `libtpu` where it is installed (the images' venvs of .ci/tpu_images) and otherwise the
stand-in `libtpu` of tests/data/tpu_vm on PYTHONPATH, TPU_ACCELERATOR_TYPE=v5litepod-8, and 8 JAX
host devices (XLA_FLAGS) that the one test hook, CXR_TF_SIMULATED_TPU, presents as TPU chips.
Everything else runs cxr_tf's production path.

The real libtpu needs no settings here: JAX (0.7.2) finds no TPU chips on the PCI bus, sets
TPU_SKIP_MDS_QUERY=1 itself, so libtpu does not ask the GCE metadata server, and its TPU client
fails at once ("No ba16c7433 device found"; or, while another process holds
/tmp/libtpu_lockfile, "ABORTED ... lockfile"); JAX then carries on with the host devices, in
about a second (tests/test_tpu_images.py times it).
"""

import importlib.metadata
import os
import sys
from pathlib import Path

STAND_INS = Path(__file__).resolve().parent / "data" / "tpu_vm"


def real_libtpu() -> bool:
    """The `libtpu` distribution is installed (read from its metadata, without importing jax)."""
    try:
        importlib.metadata.distribution("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def tpu_vm_env(**extra) -> dict:
    """os.environ as a TPU VM notebook sees it (no KERAS_BACKEND), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    path = [] if real_libtpu() else [str(STAND_INS)]
    path.append(env.get("PYTHONPATH", ""))
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        TPU_ACCELERATOR_TYPE="v5litepod-8",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        CXR_TF_SIMULATED_TPU="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


# A tiny model at 64 px: a TPU config trains in seconds on the simulated chips.
TINY = ["--set", "model=densenet_tiny", "--set", "weights=none", "--set", "image_size=64"]


def train_command(config, data, workdir, *overrides) -> list[str]:
    """`python -m cxr_tf.train --strategy tpu` on `training/<config>`, shrunk by TINY."""
    root = Path(__file__).resolve().parents[1]
    return [
        sys.executable,
        "-m",
        "cxr_tf.train",
        "--strategy",
        "tpu",
        "--config",
        str(root / "training" / config),
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        *TINY,
        *overrides,
    ]
