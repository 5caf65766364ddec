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
# The one test hook: JAX's host (CPU) devices stand for TPU chips. The TPU-VM simulation test sets
# it (with XLA_FLAGS=--xla_force_host_platform_device_count=8); nothing else reads it, and every
# other step (TPU detection, backend choice, distribution) runs the production path.
SIMULATED_TPU_ENV = "CXR_TF_SIMULATED_TPU"
# The last TensorFlow release with a TPU runtime (the `tensorflow-tpu` distribution).
LAST_TF_WITH_TPU = (2, 20)


class RuntimeErrorWithHint(RuntimeError):
    """Something this machine or its network cannot do as asked (a distribution to set up, weights
    to download); the message says what to do instead."""


def tpu_present() -> bool:
    """A TPU is attached, as a TPU VM shows it: TPU_ACCELERATOR_TYPE (set on Cloud, Colab and
    Kaggle TPU VMs), a TPU named in TPU_NAME / COLAB_TPU_ADDR (TPU nodes), or the chips' device
    files (/dev/accel* on v2-v4, /dev/vfio/N on v5e and later)."""
    if any(os.environ.get(k) for k in ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_ADDR")):
        return True
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def tpu_hosts() -> int:
    """Hosts of the TPU slice this VM belongs to (TPU_WORKER_HOSTNAMES lists them); 1 if unknown."""
    names = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return max(1, len(names))


def _version(dist: str) -> tuple[int, int] | None:
    """(major, minor) of an installed distribution, read from its metadata (no import)."""
    import importlib.metadata

    try:
        parts = importlib.metadata.version(dist).split(".")
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (importlib.metadata.PackageNotFoundError, IndexError, ValueError):
        return None


def tf_has_tpu_runtime() -> bool:
    """TensorFlow can drive a TPU: the `tensorflow-tpu` build (TF <= 2.20) is installed.

    Read from package metadata, without importing TensorFlow (which would import Keras before the
    backend is chosen). `libtpu` alone proves nothing: `jax[tpu]` installs it too, next to
    `tensorflow-cpu` on Kaggle's TPU VM image.
    """
    version = _version("tensorflow-tpu")
    return version is not None and version <= LAST_TF_WITH_TPU


def _tensorflow_dists() -> str:
    found = [
        f"{d} {'.'.join(map(str, v))}"
        for d in ("tensorflow", "tensorflow-cpu", "tensorflow-tpu")
        if (v := _version(d))
    ]
    return ", ".join(found) or "no TensorFlow"


def choose_backend(strategy: str, backend: str = "auto", *, verbose: bool = True) -> str:
    """Pick and set the Keras backend for `strategy`; call before anything imports TensorFlow.

    `auto`: an explicit KERAS_BACKEND wins; a TPU that TensorFlow cannot drive goes to JAX;
    everything else to TensorFlow (or JAX when TensorFlow is not installed). Prints why.
    Imports neither TensorFlow nor Keras (it reads package metadata).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r} is not one of {STRATEGIES}")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r} is not one of {BACKENDS}")
    reason = "asked for with --backend"
    if backend == "auto":
        tpu = strategy in ("auto", "tpu") and tpu_present()
        if os.environ.get("KERAS_BACKEND") in ("tensorflow", "jax"):
            backend = os.environ["KERAS_BACKEND"]
            reason = f"KERAS_BACKEND={backend} in the environment"
        elif tpu and tf_has_tpu_runtime():
            backend, reason = "tensorflow", "a TPU is attached and tensorflow-tpu can drive it"
        elif tpu:
            backend = "jax"
            reason = (
                f"a TPU is attached and TensorFlow here ({_tensorflow_dists()}) has no TPU "
                "runtime, so Keras drives it through JAX"
            )
        elif strategy == "tpu":
            backend, reason = "jax", "--strategy tpu without tensorflow-tpu installed"
        elif importlib.util.find_spec("tensorflow") is None:
            backend, reason = "jax", "TensorFlow is not installed"
        else:
            backend, reason = "tensorflow", "no TPU attached"
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        raise RuntimeErrorWithHint(
            f"the Keras backend is jax ({reason}), but JAX is not installed: "
            "pip install 'cxr_tf[jax]' (on a TPU VM: pip install 'jax[tpu]')"
        )
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise RuntimeErrorWithHint(
                f"Keras was already imported with the {keras.backend.backend()} backend (importing "
                f"TensorFlow imports Keras); start a fresh process (or restart the notebook "
                f"kernel) and call cxr_tf.runtime.choose_backend before importing tensorflow or "
                f"keras, to train with {backend}"
            )
    os.environ["KERAS_BACKEND"] = backend
    if verbose:
        print(f"cxr_tf: Keras backend {backend} ({reason})", flush=True)
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
    process_index: int = 0  # this host's place among num_processes; 0 writes the run folder
    devices: list = field(default_factory=list)
    tf_strategy: object = field(default=None, repr=False)  # a tf.distribute.Strategy (TF)
    distribution: object = field(default=None, repr=False)  # a keras.distribution (JAX)

    def describe(self) -> str:
        return (
            f"backend {self.backend}, strategy {self.strategy}, {self.num_replicas} x "
            f"{self.device_kind}, global batch {self.global_batch} = {self.per_replica_batch} "
            f"per replica x {self.num_replicas}"
            + (
                f", process {self.process_index} of {self.num_processes}"
                if self.num_processes > 1
                else ""
            )
        )

    def to_json(self, **extra) -> str:
        """The runtime as JSON (`runtime.json`), with `extra` entries such as the learning rates."""
        keep = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("tf_strategy", "distribution")
        }
        return json.dumps({**keep, **extra}, indent=2, default=str)

    def host_values(self, value: int) -> list[int]:
        """`value` as every host has it, in process order (a collective: every host calls it,
        and none returns before all have; one host: `[value]`)."""
        if self.num_processes == 1:
            return [int(value)]
        import numpy as np

        if self.backend == "jax":
            from jax.experimental import multihost_utils

            return [int(v) for v in multihost_utils.process_allgather(np.int32(value))]
        import tensorflow as tf

        dist = self.tf_strategy
        per_replica = dist.experimental_distribute_values_from_function(
            lambda ctx: tf.constant([float(value)])
        )
        values = dist.gather(per_replica, axis=0).numpy()
        # one row per replica, the replicas of each worker in a row
        per_host = len(values) // self.num_processes
        return [int(v) for v in values[::per_host]]

    def scope(self):
        """The context the model must be built in (TF strategies), else a no-op."""
        import contextlib

        return (
            self.tf_strategy.scope() if self.tf_strategy is not None else contextlib.nullcontext()
        )


def make_runtime(
    strategy: str,
    per_replica_batch: int,
    *,
    tpu: str | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Runtime:
    """Set up the distribution under the backend `choose_backend` set.

    `coordinator`, `num_processes`, `process_id`: JAX on several hosts (`--strategy
    multiworker`) where no cluster manager (SLURM, Open MPI, a TPU slice) tells JAX itself.
    """
    if strategy == "tpu" and not (tpu or tpu_present()):
        raise RuntimeErrorWithHint(
            "--strategy tpu, but no TPU is reachable (no TPU_ACCELERATOR_TYPE, /dev/accel*, "
            "/dev/vfio, TPU_NAME or COLAB_TPU_ADDR). In Colab pick Runtime > Change runtime "
            "type > TPU; on Kaggle the TPU VM accelerator; or use --strategy auto."
        )
    import keras

    if keras.backend.backend() == "jax":
        return _jax_runtime(strategy, per_replica_batch, coordinator, num_processes, process_id)
    return _tf_runtime(strategy, per_replica_batch, tpu)


def _tf_runtime(strategy: str, per_replica_batch: int, tpu: str | None) -> Runtime:
    import tensorflow as tf

    if strategy == "multiworker":
        # Before anything else touches TensorFlow's devices: collective ops must be configured at
        # program start-up, which creating the strategy does.
        if not os.environ.get("TF_CONFIG"):
            raise RuntimeErrorWithHint(
                "--strategy multiworker needs TF_CONFIG describing the cluster and this "
                "worker's task (https://www.tensorflow.org/guide/distributed_training), or "
                "--backend jax with --coordinator/--num-processes/--process-id"
            )
        dist = _multi_worker_strategy(tf)
        gpus = tf.config.list_logical_devices("GPU")
        return _tf_result(dist, strategy, "GPU" if gpus else "CPU", per_replica_batch)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if strategy == "auto":
        strategy = (
            "tpu" if tpu_present() and tf_has_tpu_runtime() else ("mirrored" if gpus else "cpu")
        )
    if strategy == "tpu":
        if not tf_has_tpu_runtime():
            raise RuntimeErrorWithHint(
                f"a TPU is attached but TensorFlow here ({_tensorflow_dists()}) has no TPU "
                "runtime (only tensorflow-tpu <= 2.20 has one). Use --backend jax (Keras 3 on "
                "JAX drives the TPU), or leave --backend auto."
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
        return _tf_result(dist, strategy, "TPU", per_replica_batch)
    if strategy == "mirrored":
        # All GPUs; without GPUs, all logical CPUs (how the tests run two replicas on a CPU).
        devices = [d.name for d in (gpus or cpus)]
        dist = tf.distribute.MirroredStrategy(devices)
        return _tf_result(dist, strategy, "GPU" if gpus else "CPU", per_replica_batch)
    dist = tf.distribute.get_strategy()
    kind = "CPU" if strategy == "cpu" or not gpus else "GPU"
    return _tf_result(dist, strategy, kind, per_replica_batch)


def _multi_worker_strategy(tf):
    """MultiWorkerMirroredStrategy with a `reduce` that Keras 3's TensorFlow trainer can call:
    `_maybe_symbolic_build` passes it a whole (images, labels) nest, and `reduce_per_replica`
    asks for the mean over axis 0 of scalar logs (keras/src/backend/tensorflow/trainer.py);
    the strategy takes one value at a time, with an axis only where there is one. The nest's
    uint8 images, which collectives cannot reduce, give the build this worker's first replica's
    batch: it only needs their shapes and dtypes."""

    def first(value):
        values = getattr(value, "values", None)
        return values[0] if values else value

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            def one(v):
                if first(v).dtype == tf.uint8:
                    return first(v)
                along = None if axis is not None and first(v).shape.rank == 0 else axis
                return super(Strategy, self).reduce(reduce_op, v, along)

            return tf.nest.map_structure(one, value)

    return Strategy()


def _tf_result(dist, strategy: str, kind: str, per_replica_batch: int) -> Runtime:
    replicas = dist.num_replicas_in_sync
    resolver = getattr(dist, "cluster_resolver", None)
    workers = 1
    index = 0
    if strategy == "multiworker" and resolver is not None:
        spec = resolver.cluster_spec().as_dict()
        workers = sum(len(spec.get(job, [])) for job in ("chief", "worker"))
        # the chief (or worker 0 without one) is process 0
        index = 0 if resolver.task_type == "chief" else resolver.task_id + ("chief" in spec)
    return Runtime(
        backend="tensorflow",
        strategy=strategy,
        device_kind=kind,
        num_replicas=replicas,
        per_replica_batch=per_replica_batch,
        global_batch=per_replica_batch * replicas,
        num_processes=workers,
        process_index=index,
        tf_strategy=dist,
    )


def _jax_runtime(
    strategy: str,
    per_replica_batch: int,
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
) -> Runtime:
    import jax
    import keras

    if strategy == "multiworker" or (strategy in ("auto", "tpu") and tpu_hosts() > 1):
        # Several hosts: on a TPU slice, SLURM or Open MPI JAX finds the coordinator itself;
        # elsewhere it comes from the arguments (or JAX_COORDINATOR_ADDRESS).
        try:
            jax.distributed.initialize(
                coordinator_address=coordinator,
                num_processes=num_processes,
                process_id=process_id,
            )
        except (ValueError, RuntimeError) as err:
            raise RuntimeErrorWithHint(
                f"could not start JAX on several hosts ({err}); outside a TPU slice, SLURM or "
                "Open MPI give --coordinator HOST:PORT --num-processes N --process-id K"
            ) from err
    platform = jax.devices()[0].platform  # "tpu", "gpu" or "cpu"
    if platform == "cpu" and os.environ.get(SIMULATED_TPU_ENV):
        platform = "tpu"  # the TPU-VM simulation's host devices stand for TPU chips
    if strategy == "auto":
        strategy = "tpu" if platform == "tpu" else ("mirrored" if platform == "gpu" else "cpu")
    if strategy == "tpu" and platform != "tpu":
        raise RuntimeErrorWithHint(
            f"--strategy tpu, but JAX sees no TPU (its devices are {platform}): is `jax[tpu]` "
            "installed (pip install 'jax[tpu]')? In Colab pick a TPU runtime; on Kaggle the TPU "
            "VM accelerator; or use --strategy auto."
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
        process_index=jax.process_index(),
        devices=[str(d) for d in devices],
        distribution=distribution,
    )


def default_precision(runtime: Runtime) -> str:
    """bfloat16 on TPU, float16 on GPU, float32 on CPU."""
    return {"TPU": "mixed_bfloat16", "GPU": "mixed_float16"}.get(runtime.device_kind, "float32")


def default_steps_per_execution(runtime: Runtime) -> int:
    """32 on TPU, else 1: the steps `fit` runs per call of `model.train_function`, between two
    rounds of per-batch callbacks and logs.

    What one execution is depends on the backend (`describe_steps_per_execution`). TensorFlow
    (TPUStrategy): one `tf.function` holding a `tf.while_loop` over the steps, so one host
    round-trip per execution. JAX (Keras 3.13.2, 3.15.1 and master of 2026-08): a Python loop
    that dispatches the jitted train step once per step; JAX dispatches asynchronously, so the
    host runs ahead of the chips, but each step still costs one dispatch, and only callbacks,
    logs and the host syncs they bring run once per execution (benchmarks/dispatch_overhead.py
    measures it). A Keras whose JAX trainer loops on the device (keras-team/keras#23527 proposes
    `lax.scan`) uses the same setting; `keras_jax_loops_on_device` tells which. Either way an
    epoch is whole executions (`trainer.plan_epoch`), so epoch lengths and resume stay exact.
    """
    return 32 if runtime.device_kind == "TPU" else 1


def keras_jax_loops_on_device() -> bool:
    """The installed Keras' JAX trainer runs `steps_per_execution` steps in one compiled
    program (a `lax.scan`, `fori_loop` or `while_loop` in `JAXTrainer._make_function`), not a
    Python loop of one jitted call per step. Read from its source, by feature, not version."""
    import inspect
    import re

    try:
        from keras.src.backend.jax import trainer

        source = inspect.getsource(trainer.JAXTrainer._make_function)
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    return re.search(r"\b(scan|fori_loop|while_loop)\(", source) is not None


def describe_steps_per_execution(runtime: Runtime, steps_per_execution: int) -> str:
    """What `steps_per_execution` does here, in one line (printed by the trainer)."""
    n = steps_per_execution
    if n <= 1:
        return "1 step per execution: callbacks and logs after every step"
    if runtime.backend == "tensorflow":
        return f"{n} steps per execution: one tf.function loop, one host round-trip per {n} steps"
    if keras_jax_loops_on_device():
        return f"{n} steps per execution: one on-device loop, one dispatch per {n} steps"
    return (
        f"{n} steps per execution: Keras' JAX trainer still dispatches each step from Python "
        f"(asynchronously); callbacks and logs run once per {n} steps"
    )
