"""cxr_tf.augment's maths and models.RandomAugment, the augmentation that runs in the model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import augment as aug_lib
from cxr_tf import input_pipeline as ip
from cxr_tf import models

NO_AUG = aug_lib.Augment.none()


def _host(images, u, size, aug):
    """Today's tf.data transform: one gather-based bilinear resampling, on the host."""
    n, h, w = images.shape[:3]
    sizes = tf.constant(np.tile([[h, w]], (n, 1)), tf.float32)
    t = aug_lib.affine_transforms(sizes, tf.constant(u), size, aug, ip.tnp)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(images, tf.float32),
        transforms=t,
        output_shape=[size, size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    ).numpy()


def _warp(images, u, size, aug, ops=keras.ops):
    n, h, w = images.shape[:3]
    sizes = np.tile(np.float32([[h, w]]), (n, 1))
    args = (images.astype(np.float32), sizes, u)
    return np.asarray(aug_lib.warp(*map(keras.ops.convert_to_tensor, args), size, aug, ops))


def _smooth_images(n, size, seed):
    """Random images without fine detail (as radiographs at training size), 0..255."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.stack(
        [ndimage.gaussian_filter(rng.uniform(0, 255, (size, size)), 3) for _ in range(n)]
    )
    out = (out - out.min()) / (out.max() - out.min()) * 255
    return out[..., None]


def test_without_rotation_the_gather_free_warp_is_the_host_resampling():
    """Crop, scale, zoom, translation and flip as two matrix products: the same bilinear
    resampling as the tf.data path's gathers, to float32 rounding, even on noise."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (6, 40, 52, 1))
    u = rng.uniform(size=(6, aug_lib.NUM_UNIFORMS)).astype(np.float32)
    aug = aug_lib.Augment(hflip=True, rotation_deg=0.0, zoom=0.2, translate=0.1)
    np.testing.assert_allclose(_warp(images, u, 32, aug), _host(images, u, 32, aug), atol=0.01)


def test_with_rotation_the_warp_matches_the_host_resampling_within_interpolation_error():
    """The three shears of the rotation add three 1-D linear interpolations: on images without
    fine detail, a mean difference under 1 grey level (of 255) and under 6 anywhere more than
    2 px inside the image (at its edge the zero fill beyond makes a sharp edge either way)."""
    images = _smooth_images(8, 80, seed=1)
    rng = np.random.default_rng(2)
    u = rng.uniform(size=(8, aug_lib.NUM_UNIFORMS)).astype(np.float32)
    u[:, 4] = np.linspace(0.0, 1.0, 8)  # angles from -10 to +10 degrees, both ends included
    aug = aug_lib.Augment(hflip=True, rotation_deg=10.0)
    ours, host = _warp(images, u, 64, aug), _host(images, u, 64, aug)
    diff = np.abs(ours - host)[..., 0]
    assert diff.mean() < 1.0, diff.mean()
    t = aug_lib.affine_transforms(np.float32([[80, 80]] * 8), u, 64, aug, np)
    yy, xx = np.mgrid[0:64, 0:64]
    for k in range(8):
        a = t[k]
        xs, ys = a[0] * xx + a[1] * yy + a[2], a[3] * xx + a[4] * yy + a[5]
        inside = (xs > 2) & (xs < 77) & (ys > 2) & (ys < 77)
        assert diff[k][inside].max() < 6.0, (k, diff[k][inside].max())


class _BF16Matmuls:
    """keras.ops, but every einsum rounds its operands to bfloat16 first: what a TPU's default
    precision does to a float32 matrix product (one bfloat16 pass, float32 accumulation)."""

    def __getattr__(self, name):
        return getattr(keras.ops, name)

    @staticmethod
    def einsum(equation, *operands):
        ops = keras.ops
        return ops.einsum(
            equation, *(ops.cast(ops.cast(x, "bfloat16"), "float32") for x in operands)
        )


def _reference(image, u, size, aug, coords=lambda c: c):
    """The warp's decomposition in float64 numpy, line by line with np.interp: separable
    bilinear onto the canvas, three shears, flip. `coords` may perturb the sampling
    coordinates (to show what rounding them would do)."""
    (top, left, h, w), theta, zoom, (tx, ty), flip = aug_lib._geometry(
        np.float64([image.shape[:2]]), u[None].astype(np.float64), size, aug, np
    )
    m = aug_lib._margin(size, aug)
    c = (size - 1) / 2.0
    canvas = np.arange(size + 2 * m) - m

    def interp(line, at):  # bilinear along one line, zero outside it
        return np.interp(coords(at), np.arange(-1, len(line) + 1), np.pad(line, 1))

    xs = left + ((canvas - c) / zoom + c + tx + 0.5) * (w / size) - 0.5
    ys = top + ((canvas - c) / zoom + c + ty + 0.5) * (h / size) - 0.5
    img = np.asarray(image[..., 0], np.float64)
    out = np.stack([interp(row, xs) for row in img])
    out = np.stack([interp(col, ys) for col in out.T]).T
    t, s = -np.tan(theta / 2), np.sin(theta)
    idx = np.arange(len(canvas))
    d = canvas - c
    out = np.stack([interp(out[y], idx + t * d[y]) for y in idx])
    out = np.stack([interp(out[:, x], idx + s * d[x]) for x in idx]).T
    out = np.stack([interp(out[y], idx + t * d[y]) for y in idx])
    out = out[m : m + size, m : m + size]
    return out[:, ::-1] if flip is not None and flip[0] else out


def test_sampling_coordinates_survive_a_bfloat16_matrix_pass():
    """At 512 px (from 640), on noise (where a coordinate off by a fraction of a pixel shows),
    the warp with bfloat16 matrix products equals the float64 reference within 2 grey levels:
    the products only weigh pixel values. Sampling coordinates rounded as a bfloat16 pass would
    round them (keras' affine_transform computes them with a float32 einsum) miss by far more."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 640, 640, 1)).astype(np.float32)
    u = rng.uniform(size=(2, aug_lib.NUM_UNIFORMS)).astype(np.float32)
    u[:, 4] = [0.02, 0.97]  # near the largest angles, both ways
    aug = aug_lib.Augment(hflip=True)
    ours = _warp(images, u, 512, aug, _BF16Matmuls())[..., 0]
    for k in range(2):
        reference = _reference(images[k], u[k], 512, aug)
        assert np.abs(ours[k] - reference).max() < 2.0
    bf16 = _reference(
        images[0],
        u[0],
        512,
        aug,
        coords=lambda c: np.float32(
            keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(c, "bfloat16"), "float32"))
        ),
    )
    assert np.abs(bf16 - _reference(images[0], u[0], 512, aug)).mean() > 20.0


def test_the_augmentation_compiles_with_xla_on_both_backends_without_gathers():
    """TensorFlow: `jit_compile=True`, as TPUStrategy compiles every step (the old
    ImageProjectiveTransformV3 had no XLA kernel). JAX: the compiled HLO has matrix products
    and no gather."""
    layer = models.RandomAugment(48, aug_lib.Augment(hflip=True), seed=0)
    x = tf.constant(np.random.default_rng(4).integers(0, 256, (4, 64, 64, 1)), tf.uint8)
    compiled = tf.function(lambda v: layer(v, training=True), jit_compile=True)
    out = compiled(x)
    assert out.shape == (4, 48, 48, 1) and float(tf.reduce_min(out)) >= 0.0
    assert "gather(" not in compiled.experimental_get_compiler_ir(x)(stage="hlo")
    code = """
import re, numpy as np, jax
from cxr_tf import augment, models
layer = models.RandomAugment(48, augment.Augment(hflip=True), seed=0)
x = np.zeros((4, 64, 64, 1), np.uint8)
layer(x, training=True)
step = jax.jit(lambda s, x: layer.stateless_call([], s, x, training=True)[0])
hlo = step.lower([v.value for v in layer.non_trainable_variables], x).compile().as_text()
gathers = len(re.findall(r"= \\S+ gather\\(", hlo))
print("GATHERS", gathers, "DOTS", len(re.findall(r" dot\\(", hlo)))
"""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GATHERS 0 DOTS 2" in proc.stdout, proc.stdout


def test_random_augment_layer_in_training_and_inference():
    layer = models.RandomAugment(24, aug_lib.Augment(hflip=True), seed=3)
    x = np.random.default_rng(1).uniform(size=(4, 32, 32, 1)).astype(np.float32)
    a = np.asarray(layer(x, training=True))
    b = np.asarray(layer(x, training=True))
    assert a.shape == (4, 24, 24, 1) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.allclose(a, b)  # the generator moves on
    assert not np.allclose(a[0], a[1])  # each image its own draw
    small = x[:, :24, :24]
    np.testing.assert_array_equal(np.asarray(layer(small, training=False)), small)
    identity = models.RandomAugment(32, NO_AUG, seed=0)
    np.testing.assert_allclose(np.asarray(identity(x, training=True)), x, atol=1e-5)


def test_a_model_with_augmentation_trains_on_squares_and_saves(tmp_path):
    model = models.build_model(
        "densenet_tiny", num_classes=1, image_size=32, channels=1, augment={}, seed=0
    )
    assert models.input_contract(model).image_size == 32
    assert "augment" not in [layer.name for layer in models.backbone_layers(model)]
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(2).uniform(size=(8, 36, 36, 1)).astype(np.float32)
    y = np.ones((8, 1), np.float32)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    eval_x = x[:, :32, :32]
    before = np.asarray(model(eval_x, training=False))
    model.save(tmp_path / "m.keras")
    loaded = models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(eval_x, training=False)), before, atol=1e-6)
    assert loaded.get_layer("augment").augment == aug_lib.Augment()


def test_unknown_augment_keys_are_refused():
    with pytest.raises(ValueError, match="unknown augment keys"):
        aug_lib.Augment.from_dict({"rotation": 5})


def test_pipeline_squares_for_the_model(pneumonia_data):
    """The stored images (64 px on the shorter side) squashed to squares, shrunk once when far
    above S; repeatable for a seed, cached or not."""
    kw = dict(global_batch_size=4, training=True, channels=1, seed=0, augment_in_model=True)
    ds = ip.make_dataset(pneumonia_data, "train", image_size=48, **kw)
    assert ip.read_info(pneumonia_data).stored_size == 64
    assert ds.element_spec[0].shape.as_list() == [4, 64, 64, 1]
    images, labels = next(iter(ds))
    assert images.dtype == tf.float32 and float(tf.reduce_max(images)) <= 1.0
    again = next(iter(ip.make_dataset(pneumonia_data, "train", image_size=48, **kw)))
    np.testing.assert_array_equal(images.numpy(), again[0].numpy())
    small = ip.make_dataset(pneumonia_data, "train", image_size=24, **kw)
    assert small.element_spec[0].shape.as_list() == [4, 30, 30, 1]  # round(1.25 * 24)
    uncached = [
        next(iter(ip.make_dataset(pneumonia_data, "train", image_size=48, cache=False, **kw)))
        for _ in range(2)
    ]
    assert uncached[0][0].shape == (4, 64, 64, 1)
    np.testing.assert_array_equal(uncached[0][0].numpy(), uncached[1][0].numpy())


def test_every_path_shows_the_model_the_whole_image():
    """Evaluation, the tf.data augmentation and the model's augmentation, with nothing random,
    all squash the whole image to S x S: on a wide (1.43:1) chest both lung fields stay in view,
    where a centre square (x 60..340 here) would cut both markers off."""
    h, w, s = 280, 400, 56
    yy, xx = np.mgrid[0:h, 0:w]
    image = 40 + 60 * np.exp(-(((xx - 200) / 150) ** 2 + ((yy - 140) / 120) ** 2))
    image[100:180, 8:48] = 230  # "left lung" marker
    image[100:180, 352:392] = 230  # "right lung" marker
    image = tf.constant(image.astype(np.uint8)[..., None])
    ev = ip.eval_transform(image, s).numpy()[..., 0]
    edge = round(0.15 * s)
    assert ev[:, :edge].max() > 0.8 and ev[:, -edge:].max() > 0.8
    assert ev[:, edge:-edge].max() < 0.6  # the markers sit at the edges, as in the original
    tfdata = ip.train_transform(
        image[None], tf.constant([[h, w]]), tf.constant([1, 2], tf.int64), s, NO_AUG
    )
    stored = ip._square(image, h)  # what make_dataset(..., augment_in_model=True) yields
    assert stored.shape == (h, h, 1) and stored.dtype == tf.uint8
    layer = models.RandomAugment(s, augment=NO_AUG, seed=0)
    in_model = layer(tf.cast(stored, tf.float32)[None] / 255.0, training=True)
    for out in (tfdata, in_model):
        # plain bilinear against antialiased resampling: close, not equal, at the marker edges
        assert np.abs(out.numpy()[0, ..., 0] - ev).mean() < 0.03
    # any size goes to the square; an image already that size is passed through untouched
    assert ip._square(tf.zeros([20, 30, 1], tf.uint8), 25).shape == (25, 25, 1)
    np.testing.assert_array_equal(ip._square(stored, h).numpy(), stored.numpy())


def test_replicas_draw_different_augmentations():
    """Under MirroredStrategy (two logical CPUs, see conftest) the same images on two replicas
    get different transforms."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = models.RandomAugment(24, seed=5)
    x = np.random.default_rng(3).uniform(size=(2, 32, 32, 1)).astype(np.float32)

    @tf.function
    def step():
        return strategy.run(lambda: layer(tf.constant(x), training=True))

    a, b = (np.asarray(t) for t in strategy.experimental_local_results(step()))
    assert a.shape == (2, 24, 24, 1) and not np.allclose(a, b)


def test_a_tensorflow_train_step_with_the_augmentation_compiles_with_xla():
    """What a TPUStrategy step runs, compiled whole by XLA on the CPU (`jit_compile=True`):
    uint8 squares in, the augmentation, the DenseNet, the loss and the optimizer update; and the
    evaluation step, where the layer only scales."""
    model = models.build_model(
        "densenet_tiny", num_classes=1, image_size=32, augment={}, seed=0, input_dtype="uint8"
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (8, 40, 40, 3)).astype(np.uint8)
    history = model.fit(x, np.ones((8, 1), np.float32), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    evaluation = x[:, :32, :32]
    loss = model.evaluate(evaluation, np.ones((8, 1), np.float32), verbose=0)
    assert np.isfinite(loss)
