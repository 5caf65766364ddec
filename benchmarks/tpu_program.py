"""What the accelerator runs per training step: the in-model augmentation's share of a DenseNet
train step, gathers (before) against matrix products and shears (now), and the host-to-device
transfer of a batch as uint8 (now) against float32 (before).

    python benchmarks/tpu_program.py [--model densenet121] [--image-size 224] [--stored 256] \
        [--batch-size 8] [--steps 3] [--devices 8] [--transfer-batch 32]

Under Keras' JAX backend, everything XLA-compiled (`jax.jit`), on this machine's CPU, one run:
  1. train steps (`model.train_on_batch`, jitted) of the model without the augmentation layer
     on S x S batches, and with it on T x T ones, the layer being `models.RandomAugment` (now:
     `augment.warp`) or the gather-based `keras.ops.image.affine_transform` it replaced; the
     share is (with - without) / with, per formulation; and the layer alone, jitted, on the same
     batch, over the step without it (steadier: steps of seconds vary by 10% between runs);
  2. the host's part of one batch of `--transfer-batch` x `--devices` stored T x T images:
     placed on `--devices` host devices as uint8 (now) against made float32 on the host and
     placed (before; `jax.device_put` with the batch sharding): bytes and ms.
Read the shares as the augmentation's cost relative to the network on a CPU, where a gather is
cheap; a TPU runs gathers slowly and matrix products fast, so there the balance is another (not
measured here). It exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common.py
from _common import set_up_jax  # noqa: E402


def _old_call(layer, x, training=None):
    """RandomAugment.call as it was: one gather-based bilinear resampling."""
    from keras import ops

    from cxr_tf import augment as aug_lib

    x = ops.cast(x, "float32") / 255.0
    if not training:
        return x
    shape = ops.shape(x)
    u = layer._uniforms(shape[0])
    sizes = ops.ones((shape[0], 2), "float32") * ops.cast(shape[1], "float32")
    t = aug_lib.affine_transforms(sizes, u, layer.image_size, layer.augment, ops)
    out = ops.image.affine_transform(x, t, interpolation="bilinear", fill_mode="constant")
    s = layer.image_size
    return aug_lib.photometric(out[:, :s, :s, :], u[:, 9:], layer.augment, ops)


def _step_seconds(model, x, y, steps: int) -> float:
    model.train_on_batch(x, y)  # trace and compile
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--stored", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--transfer-batch", type=int, default=32, help="per device, for the transfer")
    args = p.parse_args(argv)
    set_up_jax(args.devices, "tpu_program.py")
    import jax
    import keras
    import numpy as np

    from cxr_tf import models

    s, t, b = args.image_size, args.stored, args.batch_size
    rng = np.random.default_rng(0)
    y = np.ones((b, 1), np.float32)
    result = {}

    def step_with(augment: str | None) -> float:
        keras.utils.set_random_seed(0)
        build = dict(num_classes=1, image_size=s, channels=1, input_dtype="uint8")
        model = models.build_model(args.model, **build, augment={} if augment else None)
        if augment == "gather":
            layer = model.get_layer("augment")
            layer.call = lambda x, training=None: _old_call(layer, x, training)
        model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True)
        side = t if augment else s
        x = rng.integers(0, 256, (b, side, side, 1)).astype(np.uint8)
        return _step_seconds(model, x, y, args.steps)

    def augmentation_alone(augment: str) -> float:
        """The layer alone, jitted, on the same batch: steadier than a difference of steps."""
        layer = models.RandomAugment(s, {}, seed=0)
        if augment == "gather":
            layer.call = lambda x, training=None: _old_call(layer, x, training)
        x = rng.integers(0, 256, (b, t, t, 1)).astype(np.uint8)
        layer(x, training=True)
        state = [v.value for v in layer.non_trainable_variables]
        fn = jax.jit(lambda st, x: layer.stateless_call([], st, x, training=True)[0])
        fn(state, x).block_until_ready()
        best = float("inf")
        for _ in range(10):
            start = time.perf_counter()
            fn(state, x).block_until_ready()
            best = min(best, time.perf_counter() - start)
        return best

    result["step_s"] = step_with(None)
    for name in ("matrix", "gather"):
        with_aug = step_with(name)
        result[f"{name}_step_s"] = with_aug
        result[f"{name}_share"] = (with_aug - result["step_s"]) / with_aug
        result[f"{name}_alone_s"] = augmentation_alone(name)
        result[f"{name}_alone_share"] = result[f"{name}_alone_s"] / result["step_s"]

    devices = jax.devices()[: args.devices]
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    batch = rng.integers(0, 256, (args.transfer_batch * len(devices), t, t, 1)).astype(np.uint8)
    # The host's part per batch: before, floats made on the host (what finish_batch did) and
    # placed; now the bytes placed as they are. On CPU devices placing may not even copy, so the
    # bytes are the figure that carries over to a TPU's host link.
    prepare = {"uint8": lambda x: x, "float32": lambda x: x.astype(np.float32) * (1 / 255)}
    for dtype, make in prepare.items():
        jax.device_put(make(batch), sharding).block_until_ready()
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            jax.device_put(make(batch), sharding).block_until_ready()
            best = min(best, time.perf_counter() - start)
        result[f"{dtype}_transfer_ms"] = best * 1e3
        result[f"{dtype}_transfer_mb"] = make(batch).nbytes / 2**20

    print(f"{args.model}, {s} px from {t} px, batch {b}, XLA on {len(jax.devices())} CPU devices")
    print(f"  train step without augmentation: {result['step_s'] * 1e3:.0f} ms")
    for name, what in (
        ("matrix", "matrix products + shears (now)"),
        ("gather", "gathers (before)"),
    ):
        print(
            f"  with {what}: {result[f'{name}_step_s'] * 1e3:.0f} ms, "
            f"augmentation share {result[f'{name}_share']:.1%}; the layer alone "
            f"{result[f'{name}_alone_s'] * 1e3:.1f} ms, "
            f"{result[f'{name}_alone_share']:.1%} of the step without it"
        )
    print(
        f"  one batch of {len(batch)} images to {len(devices)} devices: uint8 "
        f"{result['uint8_transfer_mb']:.1f} MB in {result['uint8_transfer_ms']:.2f} ms, float32 "
        f"{result['float32_transfer_mb']:.1f} MB in {result['float32_transfer_ms']:.2f} ms "
        f"(float32 / uint8: {result['float32_transfer_ms'] / result['uint8_transfer_ms']:.1f}x)"
    )
    return result


if __name__ == "__main__":
    main()
