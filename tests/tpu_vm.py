"""The TPU-VM simulation: the environment of a Colab or Kaggle TPU VM notebook, on a CPU.

What a Kaggle TPU VM has: tensorflow-cpu + JAX (`jax[tpu]`, which installs `libtpu`) + Keras 3,
TPU_ACCELERATOR_TYPE set, 8 chips, no KERAS_BACKEND. Here: this venv's tensorflow-cpu and JAX,
the stand-in `libtpu` of tests/data/tpu_vm on PYTHONPATH, TPU_ACCELERATOR_TYPE=v5litepod-8, and
8 JAX host devices (XLA_FLAGS) that the one test hook, CXR_TF_SIMULATED_TPU, presents as TPU
chips. Everything else runs cxr_tf's production path.
"""

import os
from pathlib import Path

STAND_INS = Path(__file__).resolve().parent / "data" / "tpu_vm"


def tpu_vm_env(**extra) -> dict:
    """os.environ as a TPU VM notebook sees it (no KERAS_BACKEND), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    path = [str(STAND_INS), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        TPU_ACCELERATOR_TYPE="v5litepod-8",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        CXR_TF_SIMULATED_TPU="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env
