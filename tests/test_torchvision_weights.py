"""cxr_tf.torchvision_weights against torchvision's own DenseNet (fixtures made with torchvision
0.28: the key list of densenet161, and a tiny DenseNet's weights, input and features)."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cxr_tf import models
from cxr_tf import torchvision_weights as tvw

DATA = Path(__file__).parent / "data"


def _tiny():
    """The tiny torchvision DenseNet fixture: its arrays, and its state dict (name -> array)."""
    npz = np.load(DATA / "torchvision_densenet_tiny.npz")
    return npz, {k[len("state/") :]: npz[k] for k in npz.files if k.startswith("state/")}


def _assert_torchvision_features(model, npz):
    """The model's pooled backbone features on the fixture's images are torchvision's."""
    backbone = keras.Model(model.input, model.get_layer("avg_pool").output)
    ours = np.asarray(backbone(npz["image"], training=False))
    np.testing.assert_allclose(ours, npz["features"], atol=1e-4)


def test_a_torchvision_densenet_gives_the_same_features_here():
    """Same architecture (growth 8, blocks 2-2-2, 16-filter stem = densenet_tiny), trained-like
    BatchNorm statistics: the converted Keras model reproduces torchvision's pooled features."""
    npz, state = _tiny()
    model = models.build_model("densenet_tiny", num_classes=1, image_size=40, channels=3)
    assert tvw.load_state_dict(state, model) == 1 + 1 + 1 + 3 * 2 * 4 + 2 * 2
    _assert_torchvision_features(model, npz)
    assert np.abs(npz["features"]).max() > 0.1  # not a trivially small output


def test_every_densenet161_weight_of_torchvision_has_its_place():
    rng = np.random.default_rng(0)
    state = {}
    for line in (DATA / "torchvision_densenet161_keys.txt").read_text().splitlines():
        key, *shape = line.split()
        state[key] = rng.standard_normal([int(s) for s in shape]).astype(np.float32)
    model = models.build_model("densenet161", num_classes=1, image_size=64)
    filled = tvw.load_state_dict(state, model)
    assert filled == 1 + 1 + 1 + (6 + 12 + 36 + 24) * 4 + 3 * 2
    np.testing.assert_array_equal(
        model.get_layer("conv1_conv").kernel, state["features.conv0.weight"].transpose(2, 3, 1, 0)
    )
    gamma, beta, mean, var = model.get_layer("conv4_block36_1_bn").get_weights()
    np.testing.assert_array_equal(var, state["features.denseblock3.denselayer36.norm2.running_var"])
    np.testing.assert_array_equal(beta, state["features.denseblock3.denselayer36.norm2.bias"])
    assert set(_state_dict_of(model)) == {k for k in state if tvw.keras_target(k)}


def _state_dict_of(model):
    """`model`'s weights as the torchvision state dict of its variant (what `load_state_dict`
    reads, built from torchvision's module names)."""
    blocks = models.VARIANTS[model.name].blocks
    modules = ["conv0", "norm0"]
    for b, num_layers in enumerate(blocks, 1):
        for i in range(1, num_layers + 1):
            modules += [
                f"denseblock{b}.denselayer{i}.{m}" for m in ("norm1", "conv1", "norm2", "conv2")
            ]
        if b < len(blocks):
            modules += [f"transition{b}.norm", f"transition{b}.conv"]
    modules.append("norm5")
    state = {}
    for module in modules:
        conv = module.rpartition(".")[2].startswith("conv")
        for param in ("weight",) if conv else ("weight", "bias", "running_mean", "running_var"):
            key = f"features.{module}.{param}"
            layer, index = tvw.keras_target(key)
            array = model.get_layer(layer).get_weights()[index]
            state[key] = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array
    return state


def test_one_channel_from_the_tiny_torchvision_densenet_is_its_rgb_model(assert_gray_is_rgb):
    """With torchvision's own trained-like weights: a 1-channel model on gray images gives the
    3-channel model's pooled features on them repeated (the kernels of the first convolution
    summed were 8% off)."""
    _, state = _tiny()
    rgb, gray = (
        models.build_model(
            "densenet_tiny", num_classes=1, image_size=40, channels=c, ones_channel=True
        )
        for c in (3, 1)
    )
    for model in (rgb, gray):
        tvw.load_state_dict(state, model)
    assert_gray_is_rgb(gray, rgb, layer_names=("avg_pool",))


@pytest.mark.parametrize(
    "name",
    [
        "densenet_tiny",
        *(pytest.param(n, marks=pytest.mark.slow) for n in models.VARIANTS if n != "densenet_tiny"),
    ],
)
def test_one_channel_from_a_torchvision_state_dict_is_the_rgb_model(
    name, imagenet_like, assert_gray_is_rgb
):
    """Every variant: a 1-channel model filled from a torchvision state dict computes what the
    RGB model with those weights computes on the gray image repeated (pooled features)."""
    rgb = imagenet_like(name)
    gray = models.build_model(name, num_classes=3, image_size=64, channels=1, ones_channel=True)
    tvw.load_state_dict(_state_dict_of(rgb), gray)
    assert_gray_is_rgb(gray, rgb, layer_names=("avg_pool",))


def test_old_torchvision_names_and_what_has_no_counterpart():
    assert tvw.keras_target("features.denseblock1.denselayer1.norm.1.weight") == (
        "conv2_block1_0_bn",
        0,
    )
    assert tvw.keras_target("features.denseblock4.denselayer2.conv.2.weight") == (
        "conv5_block2_2_conv",
        0,
    )
    assert tvw.keras_target("features.transition3.norm.running_var") == ("pool4_bn", 3)
    assert tvw.keras_target("classifier.weight") is None
    assert tvw.keras_target("features.norm5.num_batches_tracked") is None


def test_a_wrong_variant_and_missing_torch_are_clear(monkeypatch, tmp_path, capsys):
    _, state = _tiny()
    with pytest.raises(ValueError, match="same DenseNet variant"):
        tvw.load_state_dict(state, models.build_model("densenet121", num_classes=1, image_size=32))
    with pytest.raises(ValueError, match="must end in .keras"):
        tvw.convert("densenet161", tmp_path / "w.h5")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert tvw.main(["densenet161", "--out", str(tmp_path / "w.keras")]) == 2
    assert "needs PyTorch: pip install torch torchvision" in capsys.readouterr().err


def test_the_converted_file_loads_as_training_weights(monkeypatch, tmp_path):
    """convert() writes a backbone .keras that `weights=PATH` (what --set weights= does) loads."""
    npz, state = _tiny()
    monkeypatch.setattr(tvw, "torchvision_state_dict", lambda name, path=None: state)
    out = tvw.convert("densenet_tiny", tmp_path / "tv.keras", image_size=40)
    model = models.build_model(
        "densenet_tiny", num_classes=2, image_size=40, channels=3, weights=str(out)
    )
    _assert_torchvision_features(model, npz)


def test_weights_torchvision_converts_once_into_the_keras_cache(monkeypatch, tmp_path):
    npz, state = _tiny()
    calls = []
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(
        tvw, "torchvision_state_dict", lambda name, path=None: calls.append(name) or state
    )
    for _ in range(2):
        model = models.build_model(
            "densenet_tiny", num_classes=1, image_size=40, channels=3, weights="torchvision"
        )
        _assert_torchvision_features(model, npz)
    assert calls == ["densenet_tiny"]  # the second build read the cached file
    assert (tmp_path / "models" / "densenet_tiny_torchvision.keras").is_file()
    assert not list((tmp_path / "models").glob("*.tmp.keras"))


def test_a_missing_or_broken_pth_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import pickle
    import types

    def load(path, **kw):
        raise pickle.UnpicklingError("invalid load key, 'x'")

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    out = str(tmp_path / "w.keras")
    assert tvw.main(["densenet161", "--out", out, "--from", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth' does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"xyz")
    assert tvw.main(["densenet161", "--out", out, "--from", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "is not a PyTorch state dict (UnpicklingError" in err
    assert not (tmp_path / "w.keras").exists()
