"""The compiled train step's memory against the chip's, before training (Keras' JAX backend).

On a TPU a batch that does not fit only fails after XLA has compiled the whole DenseNet (minutes),
with an allocation error that names neither `batch_size` nor `image_size`. `check_train_step`
compiles Keras' own train step first, as `fit` will run it (the jitted function inside
`model.train_function`, on the model's state and a batch of the shapes, dtypes and shardings `fit`
gives it), prints XLA's `memory_analysis()` of it next to the chip's memory, and stops with a
one-line error when the step cannot fit. `fit` then finds that executable in JAX's in-memory
compilation cache (the same jitted function, the same abstract arguments: one trace-and-lower,
no second XLA compile): the check compiles the step that `fit` then runs.

The chip's memory is, in this order: `jax.devices()[0].memory_stats()["bytes_limit"]` (what the
TPU or GPU runtime lets a program use); else `CHIP_MEMORY_GIB` by JAX's `device_kind`; else
`ACCELERATOR_MEMORY_GIB` by the TPU VM's `TPU_ACCELERATOR_TYPE` (how the TPU-VM simulation, whose
devices are CPUs, gets the v5e's 16 GiB). The tables are per JAX device: one TensorCore on
v2/v3 (two per chip), one chip from v4 on.

This module imports only the standard library at import time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

GIB = 1024**3
# HBM per JAX device, by `jax.devices()[0].device_kind` (Cloud TPU system architecture pages).
CHIP_MEMORY_GIB = {
    "TPU v2": 8,  # 16 GiB per chip, two TensorCores, each its own device
    "TPU v3": 16,  # 32 GiB per chip, two TensorCores
    "TPU v4": 32,
    "TPU v5 lite": 16,  # v5e
    "TPU v5e": 16,
    "TPU v5": 95,  # v5p
    "TPU v5p": 95,
    "TPU v6 lite": 32,  # v6e (Trillium)
    "TPU v6e": 32,
}
# The same by the prefix of TPU_ACCELERATOR_TYPE (v5litepod-8, v3-8, ...).
ACCELERATOR_MEMORY_GIB = {
    "v2": 8,
    "v3": 16,
    "v4": 32,
    "v5litepod": 16,
    "v5e": 16,
    "v5p": 95,
    "v6e": 32,
}


@dataclass
class StepMemory:
    """XLA's memory analysis of one compiled program, per device, in bytes."""

    argument: int
    output: int
    alias: int  # outputs that reuse (donated) argument buffers
    temp: int
    code: int
    xla_peak: int  # XLA's own peak figure where the backend reports one, else 0
    lower_s: float
    compile_s: float

    @property
    def total(self) -> int:
        """Arguments + outputs - aliased + temporaries + code: all that is live at once, at most."""
        return self.argument + self.output - self.alias + self.temp + self.code

    @classmethod
    def of(cls, compiled, lower_s: float = 0.0, compile_s: float = 0.0) -> StepMemory:
        m = compiled.memory_analysis()
        if isinstance(m, (list, tuple)):  # one per device on some older JAX versions
            m = m[0]
        return cls(
            argument=int(m.argument_size_in_bytes),
            output=int(m.output_size_in_bytes),
            alias=int(m.alias_size_in_bytes),
            temp=int(m.temp_size_in_bytes),
            code=int(m.generated_code_size_in_bytes),
            xla_peak=int(getattr(m, "peak_memory_in_bytes", 0) or 0),
            lower_s=lower_s,
            compile_s=compile_s,
        )

    def describe(self) -> str:
        g = size
        return (
            f"{g(self.total)} = arguments {g(self.argument)} + outputs {g(self.output)} "
            f"- aliased {g(self.alias)} + temporaries {g(self.temp)} + code {g(self.code)}"
            + (f" (XLA's peak figure {g(self.xla_peak)})" if self.xla_peak else "")
        )


def size(n: int) -> str:
    """Bytes as GiB, or as MiB below a tenth of a GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def device_memory(device=None) -> tuple[int | None, str]:
    """(bytes a program may use on `device`, where that figure comes from); (None, why) if
    unknown. CPU devices (the host's RAM) have no figure of their own."""
    import jax

    device = device or jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # not implemented by some plugins
            stats = {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]), "jax.devices()[0].memory_stats()['bytes_limit']"
    kind = getattr(device, "device_kind", "")
    if kind in CHIP_MEMORY_GIB:
        return CHIP_MEMORY_GIB[kind] * GIB, f"cxr_tf.memory table for device_kind {kind!r}"
    accel = os.environ.get("TPU_ACCELERATOR_TYPE", "")
    prefix = accel.rsplit("-", 1)[0]
    if prefix in ACCELERATOR_MEMORY_GIB:
        return (
            ACCELERATOR_MEMORY_GIB[prefix] * GIB,
            f"cxr_tf.memory table for TPU_ACCELERATOR_TYPE={accel}",
        )
    return None, f"unknown for device_kind {kind!r}"


def _inner_jit(train_function):
    """The jitted train step inside Keras' JAX `model.train_function` (a closure around it), or
    None where this Keras builds it otherwise."""
    for cell in getattr(train_function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if hasattr(value, "lower") and callable(value):
            return value
    return None


def batch_specs(model, element_spec, global_batch: int):
    """Abstract arguments for one batch as Keras' JAX `fit` passes it: the dataset element's
    structure and dtypes, the global batch as first dimension, the distribution's data sharding."""
    import jax
    import keras
    from keras.src import tree

    distribution = keras.distribution.distribution()

    def spec(s):
        if s is None:
            return None
        shape = (global_batch, *s.shape[1:])
        dtype = s.dtype.as_numpy_dtype if hasattr(s.dtype, "as_numpy_dtype") else s.dtype
        sharding = (
            distribution.get_data_layout(shape).backend_layout if distribution is not None else None
        )
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    return tree.map_structure(spec, element_spec)


def compile_train_step(model, element_spec, global_batch: int):
    """Compile Keras' own train step for one batch of `element_spec`; (StepMemory, how).

    `model` must be compiled with its metrics built (the trainer's one evaluation batch does
    that); the optimizer is built here as `fit` would build it. `fit` then reuses the executable.
    """
    import jax

    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # what fit's _symbolic_build does
    model.make_train_function()
    step = _inner_jit(model.train_function)
    how = "model.train_function's jitted step (fit reuses it)"
    if step is None:  # not Keras 3's closure: compile the same step, at the cost of a compile
        step = jax.jit(model.train_step, donate_argnums=0)
        how = "jax.jit(model.train_step) (a separate compile)"
    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    data = batch_specs(model, element_spec, global_batch)
    start = time.perf_counter()
    lowered = step.lower(state, data)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return StepMemory.of(compiled, lowered_at - start, done - lowered_at), how


def check_train_step(model, runtime, cfg, element_spec, *, limit=None, print_fn=print):
    """Print the train step's memory per device next to the device's; raise a one-line
    ValueError when it cannot fit on a TPU (elsewhere print a warning and go on).

    `limit`: (bytes, source) instead of `device_memory()`. Returns the StepMemory.
    """
    used, how = compile_train_step(model, element_spec, runtime.global_batch)
    limit_bytes, source = limit if limit is not None else device_memory()
    share = f" of {size(limit_bytes)} ({source})" if limit_bytes else f" (limit {source})"
    print_fn(
        f"cxr_tf.train: train step memory per device, XLA memory_analysis() of {how}: "
        f"{used.describe()}{share}; lowered in {used.lower_s:.1f} s, compiled in "
        f"{used.compile_s:.1f} s"
    )
    if limit_bytes and used.total > limit_bytes:
        message = (
            f"the train step needs {size(used.total)} per device at batch_size="
            f"{cfg.batch_size} per chip and image_size={cfg.image_size}, more than the "
            f"{size(limit_bytes)} a {runtime.device_kind} device has ({source}); lower "
            f"batch_size or image_size in the --config file (or --set batch_size=N)"
        )
        if runtime.device_kind == "TPU":
            raise ValueError(message)
        print_fn(f"cxr_tf.train: warning: {message}")
    return used
