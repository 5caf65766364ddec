"""Choosing the Keras backend and the distribution: TPU, GPUs or CPU, under TensorFlow or JAX.

TensorFlow's TPU runtime stops at 2.19/2.20, and today's Colab and Kaggle TPU VMs ship JAX +
Keras 3 (Kaggle's with tensorflow-cpu for tf.data). So a TPU trains through `TPUStrategy` where
TensorFlow sees it, and otherwise through Keras' JAX backend with `keras.distribution
.DataParallel`. The backend must be fixed before Keras is imported: `choose_backend` runs first
and sets `KERAS_BACKEND`; `make_runtime` (which imports Keras) runs after.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field, fields

STRATEGIES = ("auto", "tpu", "mirrored", "multiworker", "cpu")
BACKENDS = ("auto", "tensorflow", "jax")


class RuntimeErrorWithHint(RuntimeError):
    """A distribution that cannot be set up here; the message says what to do."""


def tpu_present() -> bool:
    """A TPU is attached: a TPU VM's accelerator devices, or a TPU named in the environment."""
    if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
        return True
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def tf_has_tpu_runtime() -> bool:
    """TensorFlow can drive a TPU: its TPU ops exist and a libtpu it can load is installed."""
    if importlib.util.find_spec("tensorflow") is None:
        return False
    import tensorflow as tf

    major, minor = (int(p) for p in tf.__version__.split(".")[:2])
    has_libtpu = importlib.util.find_spec("libtpu") is not None or bool(
        glob.glob("/usr/local/lib/python3*/dist-packages/libtpu*")
    )
    return (major, minor) <= (2, 20) and has_libtpu


def choose_backend(strategy: str, backend: str = "auto") -> str:
    """Pick and set the Keras backend for `strategy`; call before importing keras.

    `auto`: an explicit KERAS_BACKEND wins; a TPU that TensorFlow cannot drive goes to JAX;
    everything else to TensorFlow (or JAX when TensorFlow is not installed).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r} is not one of {STRATEGIES}")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        if os.environ.get("KERAS_BACKEND") in ("tensorflow", "jax"):
            backend = os.environ["KERAS_BACKEND"]
        else:
            tpu = strategy in ("auto", "tpu") and tpu_present()
            tpu_needs_jax = tpu and not tf_has_tpu_runtime()
            no_tf = importlib.util.find_spec("tensorflow") is None
            backend = "jax" if tpu_needs_jax or no_tf else "tensorflow"
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        raise RuntimeErrorWithHint("--backend jax needs JAX: pip install 'cxr_tf[jax]'")
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", "tensorflow") != backend:
        import keras

        if keras.backend.backend() != backend:
            raise RuntimeErrorWithHint(
                f"Keras was already imported with the {keras.backend.backend()} backend; start a "
                f"fresh process (or restart the notebook kernel) to train with {backend}"
            )
    os.environ["KERAS_BACKEND"] = backend
    return backend


@dataclass
class Runtime:
    """The chosen distribution: backend, strategy, devices and batch sizes, as printed and saved."""

    backend: str
    strategy: str
    device_kind: str
    num_replicas: int
    per_replica_batch: int
    global_batch: int
    num_processes: int = 1
    devices: list = field(default_factory=list)
    tf_strategy: object = field(default=None, repr=False)  # a tf.distribute.Strategy (TF)
    distribution: object = field(default=None, repr=False)  # a keras.distribution (JAX)

    def describe(self) -> str:
        return (
            f"backend {self.backend}, strategy {self.strategy}, {self.num_replicas} x "
            f"{self.device_kind}, global batch {self.global_batch} = {self.per_replica_batch} "
            f"per replica x {self.num_replicas}"
            + (f", {self.num_processes} processes" if self.num_processes > 1 else "")
        )

    def to_json(self) -> str:
        keep = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("tf_strategy", "distribution")
        }
        return json.dumps(keep, indent=2, default=str)

    def scope(self):
        """The context the model must be built in (TF strategies), else a no-op."""
        import contextlib

        return (
            self.tf_strategy.scope() if self.tf_strategy is not None else contextlib.nullcontext()
        )


def make_runtime(strategy: str, per_replica_batch: int, *, tpu: str | None = None) -> Runtime:
    """Set up the distribution under the backend `choose_backend` set."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_runtime(strategy, per_replica_batch)
    return _tf_runtime(strategy, per_replica_batch, tpu)


def _tf_runtime(strategy: str, per_replica_batch: int, tpu: str | None) -> Runtime:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if strategy == "auto":
        strategy = (
            "tpu" if tpu_present() and tf_has_tpu_runtime() else ("mirrored" if gpus else "cpu")
        )
    if strategy == "tpu":
        if not (tpu or tpu_present()):
            raise RuntimeErrorWithHint(
                "--strategy tpu, but no TPU is reachable (no /dev/accel*, TPU_NAME or "
                "COLAB_TPU_ADDR). In Colab pick Runtime > Change runtime type > TPU; on Kaggle "
                "pick the TPU VM accelerator; or use --strategy auto."
            )
        if not tf_has_tpu_runtime():
            raise RuntimeErrorWithHint(
                f"a TPU is attached but TensorFlow {tf.__version__} has no TPU runtime (it "
                "stops at 2.19/2.20). Use --backend jax (Keras 3 on JAX drives the TPU)."
            )
        name = tpu or os.environ.get("TPU_NAME") or "local"
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            dist = tf.distribute.TPUStrategy(resolver)
        except Exception as err:
            raise RuntimeErrorWithHint(
                f"could not connect to TPU {name!r} ({type(err).__name__}: {err}); give its "
                "name or address with --tpu, or use --backend jax"
            ) from err
        kind = "TPU"
    elif strategy == "mirrored":
        # All GPUs; without GPUs, all logical CPUs (how the tests run two replicas on a CPU).
        devices = [d.name for d in (gpus or cpus)]
        dist = tf.distribute.MirroredStrategy(devices)
        kind = "GPU" if gpus else "CPU"
    elif strategy == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise RuntimeErrorWithHint(
                "--strategy multiworker needs TF_CONFIG describing the cluster and this "
                "worker's task (https://www.tensorflow.org/guide/distributed_training)"
            )
        dist = tf.distribute.MultiWorkerMirroredStrategy()
        kind = "GPU" if gpus else "CPU"
    else:
        dist = tf.distribute.get_strategy()
        kind = "CPU" if strategy == "cpu" or not gpus else "GPU"
    replicas = dist.num_replicas_in_sync
    return Runtime(
        backend="tensorflow",
        strategy=strategy,
        device_kind=kind,
        num_replicas=replicas,
        per_replica_batch=per_replica_batch,
        global_batch=per_replica_batch * replicas,
        num_processes=getattr(dist.extended, "_num_workers", 1) or 1,
        tf_strategy=dist,
    )


def _jax_runtime(strategy: str, per_replica_batch: int) -> Runtime:
    import jax
    import keras

    if strategy == "multiworker":
        jax.distributed.initialize()  # reads the coordinator from the TPU / cluster environment
    platform = jax.devices()[0].platform  # "tpu", "gpu" or "cpu"
    if strategy == "auto":
        strategy = "tpu" if platform == "tpu" else ("mirrored" if platform == "gpu" else "cpu")
    if strategy == "tpu" and platform != "tpu":
        raise RuntimeErrorWithHint(
            f"--strategy tpu, but JAX sees no TPU (its devices are {platform}). In Colab pick "
            "a TPU runtime; on Kaggle the TPU VM accelerator; or use --strategy auto."
        )
    devices = jax.devices()
    distribution = None
    if strategy != "cpu" and len(devices) > 1:
        # The input pipeline shards per process itself, so Keras must not shard again.
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(distribution)
    replicas = len(devices) if distribution is not None else 1
    return Runtime(
        backend="jax",
        strategy=strategy,
        device_kind=platform.upper(),
        num_replicas=replicas,
        per_replica_batch=per_replica_batch,
        global_batch=per_replica_batch * replicas,
        num_processes=jax.process_count(),
        devices=[str(d) for d in devices],
        distribution=distribution,
    )


def default_precision(runtime: Runtime) -> str:
    """bfloat16 on TPU, float16 on GPU, float32 on CPU."""
    return {"TPU": "mixed_bfloat16", "GPU": "mixed_float16"}.get(runtime.device_kind, "float32")


def default_steps_per_execution(runtime: Runtime) -> int:
    """Several steps per host round-trip on TPU, where each dispatch is expensive."""
    return 32 if runtime.device_kind == "TPU" else 1
