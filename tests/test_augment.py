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
    """Random squares of the stored images (64 px here), shrunk once when far above S."""
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
    # Uncached, the squares are cut in the decoding map: as repeatable for a seed.
    uncached = [
        next(iter(ip.make_dataset(pneumonia_data, "train", image_size=48, cache=False, **kw)))
        for _ in range(2)
    ]
    assert uncached[0][0].shape == (4, 64, 64, 1)
    np.testing.assert_array_equal(uncached[0][0].numpy(), uncached[1][0].numpy())


def test_squares_refuse_an_image_of_another_size():
    image, seed = tf.zeros([20, 30, 1], tf.uint8), tf.constant([1, 2], tf.int64)
    assert ip._random_square(image, seed, 20).shape == (20, 20, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="shorter side is not 25"):
        ip._random_square(image, seed, 25)
    graph = tf.data.Dataset.from_tensors((image, seed)).map(
        lambda i, s: ip._random_square(i, s, 25)
    )
    # In a graph the clear message used to lose a race to a shape check about 1 time in 20:
    # several tries, so that a regression shows.
    for _ in range(30):
        with pytest.raises(tf.errors.InvalidArgumentError, match="shorter side is not 25"):
            next(iter(graph))


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
