"""Stand-in for the `libtpu` wheel that `jax[tpu]` installs on Colab's and Kaggle's TPU VMs.

Only its presence and `get_library_path` are used (by JAX, and formerly by cxr_tf's TPU check).
The path names no real library, so JAX's TPU client fails to start and JAX carries on with the
host devices, which the TPU-VM simulation then presents as chips (cxr_tf.runtime.SIMULATED_TPU_ENV).
"""

import os


def get_library_path():
    return os.path.join(os.path.dirname(__file__), "libtpu.so")
