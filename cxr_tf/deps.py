"""Imports of optional heavy dependencies, with install instructions when they are missing.

TensorFlow is not a hard requirement of the package (installing it would replace the build that
Colab's GPU runtime and Kaggle's images ship; Colab's TPU runtime has none), so the modules that
need it import it through here.
"""

INSTALL_HINT = (
    "cxr_tf needs TensorFlow for this step, and it is not installed in this environment.\n"
    "  - on a GPU or local machine:     pip install 'cxr_tf[tf]'\n"
    "  - Colab TPU runtime, CPU only:   pip install 'cxr_tf[tf-cpu]' (tf.data runs on the host)\n"
    "Colab's GPU runtime and Kaggle's images ship TensorFlow: there, install cxr_tf without an "
    "extra."
)


def require_tensorflow():
    """Return the `tensorflow` module, or raise ImportError naming the install command."""
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT}\n(import error: {err})") from err
    return tf


def require_tfds():
    """Return `tensorflow_datasets`, or raise ImportError naming the install command."""
    require_tensorflow()
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"cxr_tf needs tensorflow-datasets: pip install 'tensorflow-datasets>=4.9' ({err})"
        ) from err
    return tfds
