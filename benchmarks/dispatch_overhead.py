"""What `steps_per_execution` saves under Keras' JAX backend: the host's cost per train step.

    python benchmarks/dispatch_overhead.py [--devices 8] [--model mlp] [--image-size 16] \
        [--batch-size 4] [--steps 256] [--repeats 3] [--execution 32]

Keras 3's JAX trainer (`JAXTrainer._make_function`, up to 3.16 at least) runs `steps_per_execution`
> 1 as a Python loop that dispatches the jitted train step once per step; only callbacks and
logs run once per execution. (keras-team/keras#23527 proposes an on-device `lax.scan` loop.)
This measures, under `keras.distribution.DataParallel` over `--devices` JAX host devices (the
TPU-VM simulation's 8 CPU devices; XLA_FLAGS is set here before JAX is imported, unless it
already names a device count), per training step of a tiny model (`--model mlp`: a Dense layer
on `--image-size`^2 pixels, so that compute is small next to dispatch; or a cxr_tf model name),
every batch already on the devices:

  1. `model.train_function` (Keras' own loop) at steps_per_execution 1 and `--execution`;
  2. `model.fit` at both (one batch from memory through tf.data, verbose 0: Keras' per-step
     host work around the step, input included);
  3. a no-op jitted call with the step's arguments and shardings (the state, donated, and the
     batch; it returns the state): the floor of one dispatch;
  4. `--execution` steps in one jitted `lax.scan` over stacked batches: what an on-device loop
     would cost per step (the comparison for #23527; not what Keras does).

Each figure is the best of `--repeats` runs of `--steps` steps after one untimed warm-up run.
Every variant waits for the devices after each `--execution` steps (fit: epochs of that many
steps), as Keras' end of an execution does when a callback reads the logs: with hundreds of
8-device steps in flight on a 2-core machine, XLA:CPU's all-reduce rendezvous timed out (40 s)
and aborted the process here.
The ratios: (1) at `--execution` over (1) at 1 (near 1: no dispatch saved), the no-op over a
step (the share of a step that is dispatch), (4) over (1) at 1 (what an on-device loop would
save). On CPU the devices are host threads, so dispatch and compute share the cores: read
the figures as the host's cost, not a TPU's step time. It exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common.py
from _common import load_lines, machine_busy, set_up_jax, usable_cores  # noqa: E402


def _model(name: str, image_size: int, execution: int):
    import keras

    if name == "mlp":
        inputs = keras.Input((image_size, image_size, 1))
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(32, activation="relu")(x)
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    else:
        from cxr_tf import models

        model = models.build_model(
            name, num_classes=1, image_size=image_size, channels=1, weights="none"
        )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        steps_per_execution=execution,
    )
    return model


def _state(model, purge=False):
    """The model's variables as Keras' JAX `fit` passes them to the train step."""
    return model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
        purge_model_variables=purge,
    )


def _sync(model, state) -> None:
    """Give `state` (from the train function, which donated the old buffers) back to the model,
    as `fit` does at the end of an epoch."""
    keys = ("trainable", "non_trainable", "optimizer", "metrics")
    model._jax_state = {f"{k}_variables": v for k, v in zip(keys, state, strict=True)}
    model._jax_state_synced = False
    model.jax_state_sync()


def _best(run, repeats: int) -> float:
    run()  # warm-up: trace, compile, first transfers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def run(
    devices=8,
    model="mlp",
    image_size=16,
    batch_size=4,
    steps=256,
    repeats=3,
    execution=32,
) -> dict:
    """Seconds per step of each measurement and their ratios, printed and returned."""
    if steps % execution:
        raise SystemExit(f"error: --steps {steps} must be a multiple of --execution {execution}")
    set_up_jax(devices, "dispatch_overhead.py")
    import jax
    import keras
    import numpy as np
    import tensorflow as tf

    found = len(jax.devices())
    if found != devices:
        raise SystemExit(
            f"error: JAX has {found} devices, not --devices {devices} (XLA_FLAGS is "
            f"{os.environ.get('XLA_FLAGS')!r}; JAX was imported before the benchmark set it?)"
        )
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    keras.distribution.set_distribution(distribution)
    cores = usable_cores()
    global_batch = batch_size * devices
    rng = np.random.default_rng(0)
    x = rng.random((global_batch, image_size, image_size, 1), dtype=np.float32)
    y = rng.integers(0, 2, (global_batch, 1)).astype(np.float32)

    def put(a):
        return jax.device_put(a, distribution.get_data_layout(a.shape).backend_layout)

    batch = (put(x), put(y))
    busy0, cpu0 = machine_busy(), time.process_time()
    wall0 = time.perf_counter()
    seconds = {}
    models = {}
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    for spe in (1, execution):
        m = models[spe] = _model(model, image_size, spe)
        m.fit(dataset, epochs=1, steps_per_epoch=spe, verbose=0, shuffle=False)  # builds
        m.make_train_function()
        holder = {"state": _state(m, purge=True)}

        def loop(m=m, spe=spe, holder=holder):
            state = holder["state"]
            for k in range(steps // spe):
                logs, state = m.train_function(state, iter([batch] * spe))
                if (k + 1) * spe % execution == 0:
                    jax.block_until_ready(state)  # at most --execution steps in flight
            holder["state"] = jax.block_until_ready(state)

        seconds[f"train_function_spe{spe}"] = _best(loop, repeats) / steps
        _sync(m, holder["state"])

        def fit(m=m):
            # epochs of --execution steps: each epoch's end syncs, as in the loops above
            m.fit(
                dataset,
                epochs=steps // execution,
                steps_per_epoch=execution,
                verbose=0,
                shuffle=False,
            )

        seconds[f"fit_spe{spe}"] = _best(fit, repeats) / steps

    m = models[1]
    state = _state(m)
    shardings = jax.tree.map(lambda a: a.sharding, state)
    noop = jax.jit(
        lambda state, data: jax.tree.map(lambda a: a, state),
        donate_argnums=0,
        out_shardings=shardings,
    )
    holder = {"state": jax.tree.map(lambda a: a.copy(), state)}

    def dispatch(holder=holder):
        s = holder["state"]
        for k in range(steps):
            s = noop(s, batch)
            if (k + 1) % execution == 0:
                jax.block_until_ready(s)
        holder["state"] = jax.block_until_ready(s)

    seconds["noop_call"] = _best(dispatch, repeats) / steps

    stacked = jax.tree.map(
        lambda a: jax.device_put(
            np.stack([np.asarray(a)] * execution),
            jax.sharding.NamedSharding(
                a.sharding.mesh, jax.sharding.PartitionSpec(None, *a.sharding.spec)
            ),
        ),
        batch,
    )

    @jax.jit
    def scanned(state, data):
        def body(state, one):
            logs, state = m.train_step(state, one)
            return state, logs

        state, logs = jax.lax.scan(body, state, data)
        return jax.tree.map(lambda v: v[-1], logs), state

    holder = {"state": jax.tree.map(lambda a: a.copy(), state)}

    def scan_loop(holder=holder):
        s = holder["state"]
        for _ in range(steps // execution):
            logs, s = jax.block_until_ready(scanned(s, stacked))
        holder["state"] = s

    seconds[f"scan{execution}"] = _best(scan_loop, repeats) / steps
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    busy1 = machine_busy()
    others = None if busy0 is None else max(0.0, (busy1 - busy0 - cpu) / wall)

    one = seconds["train_function_spe1"]
    many = seconds[f"train_function_spe{execution}"]
    ratios = {
        f"train_function_spe{execution}_over_spe1": many / one,
        f"fit_spe{execution}_over_spe1": seconds[f"fit_spe{execution}"] / seconds["fit_spe1"],
        "noop_over_step": seconds["noop_call"] / one,
        f"scan{execution}_over_spe1": seconds[f"scan{execution}"] / one,
    }
    print(
        f"dispatch overhead, Keras {keras.__version__} JAX {jax.__version__}: {model} at "
        f"{image_size} px, {devices} x {jax.devices()[0].platform} devices, global batch "
        f"{global_batch}, {steps} steps, best of {repeats}"
    )
    labels = {
        "train_function_spe1": "model.train_function, steps_per_execution 1",
        f"train_function_spe{execution}": f"model.train_function, steps_per_execution {execution}",
        "fit_spe1": "model.fit, steps_per_execution 1",
        f"fit_spe{execution}": f"model.fit, steps_per_execution {execution}",
        "noop_call": "no-op jitted call, same sharded arguments",
        f"scan{execution}": f"{execution} steps in one jitted lax.scan",
    }
    for key, label in labels.items():
        print(f"  {label:<48} {seconds[key] * 1e3:8.3f} ms/step")
    print(
        f"  train_function spe {execution} / spe 1: "
        f"{ratios[f'train_function_spe{execution}_over_spe1']:.2f}   fit spe {execution} / "
        f"spe 1: {ratios[f'fit_spe{execution}_over_spe1']:.2f}   no-op call / step: "
        f"{ratios['noop_over_step']:.2f}   lax.scan / spe 1: "
        f"{ratios[f'scan{execution}_over_spe1']:.2f}"
    )
    for line in load_lines(others, cores, "the ratios may be off"):
        print(line)
    return {
        "seconds_per_step": seconds,
        "ratios": ratios,
        "devices": devices,
        "global_batch": global_batch,
        "steps": steps,
        "keras": keras.__version__,
        "jax": jax.__version__,
        "others_cores": others,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--model", default="mlp", help="mlp, or a cxr_tf model name")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4, help="per device")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--execution", type=int, default=32, help="steps per execution to compare")
    a = p.parse_args(argv)
    return run(a.devices, a.model, a.image_size, a.batch_size, a.steps, a.repeats, a.execution)


if __name__ == "__main__":
    main()
