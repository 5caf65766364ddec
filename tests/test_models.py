"""cxr_tf.models: variants, keras.applications compatibility, weights, the input contract."""

import keras
import numpy as np
import pytest

from cxr_tf import models

# keras.applications counts (BatchNorm moving statistics included); DenseNet-161's trainable
# parameters equal torchvision's densenet161 (28,681,000).
PARAMS = {"densenet121": 8_062_504, "densenet169": 14_307_880, "densenet201": 20_242_984}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "densenet169", "densenet201", "densenet161"])
def test_parameter_counts_and_keras_layer_names(name):
    model = models.build_model(name, num_classes=1000, activation="softmax")
    if name == "densenet161":
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert trainable == 28_681_000
        return
    assert model.count_params() == PARAMS[name]
    ref = getattr(keras.applications, models.VARIANTS[name].keras_app)(
        include_top=False, weights=None, input_shape=(224, 224, 3)
    )
    theirs = {
        (layer.name, tuple(w.shape for w in layer.weights)) for layer in ref.layers if layer.weights
    }
    mine = {
        (layer.name, tuple(w.shape for w in layer.weights))
        for layer in model.layers
        if layer.weights
    }
    assert theirs <= mine
    assert mine - theirs == {
        (
            "logits",
            (
                (
                    1024
                    if name == "densenet121"
                    else {"densenet169": 1664, "densenet201": 1920}[name],
                    1000,
                ),
                (1000,),
            ),
        )
    }


def test_tiny_model_runs_and_outputs_float32_probabilities():
    model = models.build_model("densenet_tiny", num_classes=3, image_size=32, channels=1)
    out = model(np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32))
    assert out.shape == (2, 3)
    assert np.all((np.asarray(out) > 0) & (np.asarray(out) < 1))
    assert all(layer.name for layer in model.layers)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = models.build_model(
            "densenet_tiny", num_classes=2, image_size=32, activation="softmax"
        )
        assert mixed.get_layer("conv1_conv").compute_dtype == "bfloat16"
        assert mixed.output.dtype == "float32"
        np.testing.assert_allclose(
            np.asarray(mixed(np.zeros((1, 32, 32, 3)))).sum(), 1.0, rtol=1e-3
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_contract_survives_saving(tmp_path):
    model = models.build_model(
        "densenet_tiny", num_classes=1, image_size=48, channels=1, crop_fraction=0.9
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = models.load_model(path)
    c = models.input_contract(loaded)
    assert (c.image_size, c.channels, c.crop_fraction) == (48, 1, 0.9)
    assert c.mean == pytest.approx((0.449,)) and c.std == pytest.approx((0.226,))
    x = np.random.default_rng(1).random((2, 48, 48, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5)


def test_weights_from_files(tmp_path):
    src = models.build_model("densenet_tiny", num_classes=1, image_size=32)
    src.save_weights(tmp_path / "w.weights.h5")
    src.save(tmp_path / "m.keras")
    for path in ("w.weights.h5", "m.keras"):
        dst = models.build_model(
            "densenet_tiny", num_classes=1, image_size=32, weights=str(tmp_path / path)
        )
        for a, b in zip(src.weights, dst.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="'nope.h5' does not exist"):
        models.build_model("densenet_tiny", num_classes=1, image_size=32, weights="nope.h5")


@pytest.mark.slow
def test_keras_application_h5_loads_by_name_and_into_one_channel(tmp_path, assert_gray_is_rgb):
    ref = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "densenet121_notop.h5"
    ref.save(path)  # a legacy full-model .h5 file, the format keras.applications reads
    rgb = models.build_model("densenet121", num_classes=1, image_size=64, weights=str(path))
    np.testing.assert_array_equal(
        np.asarray(rgb.get_layer("conv5_block16_2_conv").kernel),
        np.asarray(ref.get_layer("conv5_block16_2_conv").kernel),
    )
    gray = models.build_model(
        "densenet121", num_classes=1, image_size=64, channels=1, weights=str(path)
    )
    assert_gray_is_rgb(gray, rgb, layer_names=("relu",))


VARIANT_PARAMS = [
    "densenet_tiny",
    *(pytest.param(n, marks=pytest.mark.slow) for n in models.VARIANTS if n != "densenet_tiny"),
]


@pytest.mark.parametrize("name", VARIANT_PARAMS)
def test_one_channel_from_rgb_weights_is_the_rgb_model(
    name, tmp_path, imagenet_like, assert_gray_is_rgb
):
    """A 1-channel model given an RGB model's weights (a `.keras` file here; `imagenet` and the
    keras.applications `.h5` files go the same way) computes what the RGB model computes on the
    gray image repeated, borders included: pooled features and logits."""
    rgb = imagenet_like(name)
    rgb.save(tmp_path / "rgb.keras")
    gray = models.build_model(
        name, num_classes=3, image_size=64, channels=1, weights=str(tmp_path / "rgb.keras")
    )
    assert gray.get_layer("conv1_conv").kernel.shape[2] == 2  # gray and ones
    assert_gray_is_rgb(gray, rgb)


def test_a_one_channel_model_without_the_ones_channel_still_loads(tmp_path, monkeypatch):
    """A 1-channel model saved before the ones channel (a 1-channel stem kernel) loads as it
    was, and as weights gives a new model the same outputs."""
    preprocess = models.Preprocess
    with monkeypatch.context() as m:
        m.setattr(models, "Preprocess", lambda *a, ones_channel, **kw: preprocess(*a, **kw))
        old = models.build_model("densenet_tiny", num_classes=1, image_size=32, channels=1)
    assert old.get_layer("conv1_conv").kernel.shape[2] == 1
    old.save(tmp_path / "old.keras")
    config = old.get_layer("preprocess").get_config()
    del config["ones_channel"]  # what older files hold
    assert not models.Preprocess.from_config(config).ones_channel
    new = models.build_model(
        "densenet_tiny",
        num_classes=1,
        image_size=32,
        channels=1,
        weights=str(tmp_path / "old.keras"),
    )
    x = np.random.default_rng(2).random((2, 32, 32, 1), dtype=np.float32)
    for model in (models.load_model(tmp_path / "old.keras"), new):
        np.testing.assert_allclose(model.predict_on_batch(x), old.predict_on_batch(x), atol=1e-6)


def test_imagenet_offline_is_a_clear_message():
    try:
        models.build_model("densenet121", num_classes=1, image_size=32, weights="imagenet")
    except RuntimeError as err:
        msg = str(err)
        assert "ImageNet weights of densenet121" in msg and "weights='none'" in msg
        assert "~/.keras/models/" in msg
    else:
        pytest.skip("the ImageNet weights were reachable (cached or online)")
    with pytest.raises(ValueError, match="no ImageNet weights for densenet161"):
        models.build_model("densenet161", num_classes=1, image_size=32, weights="imagenet")


def test_bad_names_are_named():
    with pytest.raises(ValueError, match="model 'densenet100' is not one of"):
        models.build_model("densenet100", num_classes=1)
    with pytest.raises(ValueError, match="activation 'relu'"):
        models.build_model("densenet_tiny", num_classes=1, activation="relu")


def test_freezing_the_backbone_leaves_the_head_trainable():
    model = models.build_model("densenet_tiny", num_classes=1, image_size=32)
    models.set_backbone_trainable(model, False)
    trainable = {v.path.split("/")[0] for v in model.trainable_variables}
    assert trainable == {"logits"}
    models.set_backbone_trainable(model, True)
    assert len(model.trainable_variables) > 10
