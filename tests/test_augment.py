"""cxr_tf.augment's maths and models.RandomAugment, the augmentation that runs in the model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import augment as aug_lib
from cxr_tf import input_pipeline as ip
from cxr_tf import models

NO_AUG = aug_lib.Augment.none()


def test_the_model_layer_and_the_pipeline_apply_the_same_transform():
    """Same uniforms in, same pixels out: keras.ops (model) and tf.raw_ops (tf.data) agree."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 40, 1)).astype(np.uint8)
    u = rng.uniform(size=(3, aug_lib.NUM_UNIFORMS)).astype(np.float32)
    aug = aug_lib.Augment(hflip=True, rotation_deg=15.0)
    sizes = np.full((3, 2), 40.0, np.float32)
    t_tf = aug_lib.affine_transforms(tf.constant(sizes), tf.constant(u), 32, aug, ip.tnp)
    host = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32) / 255.0,
        transforms=t_tf,
        output_shape=[32, 32],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    host = aug_lib.photometric(host, u[:, 9:], aug, ip.tnp)
    ops = keras.ops
    t_k = aug_lib.affine_transforms(
        ops.convert_to_tensor(sizes), ops.convert_to_tensor(u), 32, aug, ops
    )
    model_side = ops.image.affine_transform(
        ops.convert_to_tensor(images.astype(np.float32) / 255.0), t_k, fill_mode="constant"
    )[:, :32, :32, :]
    model_side = aug_lib.photometric(model_side, u[:, 9:], aug, ops)
    np.testing.assert_allclose(np.asarray(model_side), host.numpy(), atol=1e-5)


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
