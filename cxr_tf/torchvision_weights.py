"""ImageNet weights for DenseNet-161 (and 121/169/201) from torchvision, as a Keras file.

Keras ships no DenseNet-161 weights; torchvision does (`densenet161`, ImageNet top-1 77.1%).
This converts them once into a backbone-only `.keras` file that `--set weights=PATH` loads
(`weights: torchvision` in a config does it by itself, into Keras' cache folder):

    python -m cxr_tf.torchvision_weights densenet161 --out ~/.keras/models/densenet161_tv.keras
    python -m cxr_tf.torchvision_weights densenet161 --from densenet161-8d451a50.pth --out ...

It needs PyTorch and torchvision (both preinstalled on Colab and Kaggle; not a cxr_tf
dependency). Without `--from` it asks torchvision for the weights, which downloads them once.

The networks are the same: torchvision's `features.denseblock{b}.denselayer{l}.norm1/conv1/
norm2/conv2`, `transition{t}.norm/conv`, `conv0/norm0/norm5` are our `conv{b+1}_block{l}_0_bn/
1_conv/1_bn/2_conv`, `pool{t+1}_bn/_conv`, `conv1_conv/conv1_bn/bn`; kernels go from PyTorch's
(out, in, h, w) to Keras' (h, w, in, out). Max pooling pads with 0 here and with -inf there,
which is the same after a ReLU. A test checks the converted model's features against
torchvision's own forward pass.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from cxr_tf.cli import fail

_BN = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
_RULES = [  # torchvision name (without the parameter) -> our layer name
    (re.compile(r"features\.conv0$"), lambda m: "conv1_conv"),
    (re.compile(r"features\.norm0$"), lambda m: "conv1_bn"),
    (re.compile(r"features\.norm5$"), lambda m: "bn"),
    (
        re.compile(r"features\.denseblock(\d+)\.denselayer(\d+)\.(norm1|conv1|norm2|conv2)$"),
        lambda m: (
            f"conv{int(m[1]) + 1}_block{m[2]}_"
            + {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn", "conv2": "2_conv"}[m[3]]
        ),
    ),
    (
        re.compile(r"features\.transition(\d+)\.(norm|conv)$"),
        lambda m: f"pool{int(m[1]) + 1}_" + {"norm": "bn", "conv": "conv"}[m[2]],
    ),
]
# torchvision's oldest files name the parameters `norm.1` / `conv.2`; it renames them on load.
_OLD_NAME = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)


def keras_target(key: str) -> tuple[str, int] | None:
    """(layer name, index into that layer's `get_weights()`) for a torchvision state-dict key;
    None for what has no counterpart (the ImageNet classifier, BatchNorm's step counter)."""
    m = _OLD_NAME.match(key)
    if m:
        key = m[1] + m[2]  # "...norm" + "1.weight"
    module, _, param = key.rpartition(".")
    for pattern, name in _RULES:
        found = pattern.match(module)
        if found:
            layer = name(found)
            if layer.endswith("_conv"):
                return (layer, 0) if param == "weight" else None
            return (layer, _BN[param]) if param in _BN else None
    return None


def load_state_dict(state: dict, model) -> int:
    """Copy a torchvision DenseNet state dict (name -> array) into a `cxr_tf.models` model.

    A 1-channel model gets the RGB kernel of the first convolution converted so that it gives
    the RGB model's outputs (`cxr_tf.models.stem_kernel`). Raises ValueError naming a missing
    or misshapen layer; returns the number of layers filled.
    """
    from cxr_tf import models

    values: dict[str, list] = {}
    for key, tensor in state.items():
        target = keras_target(key)
        if target is None:
            continue
        array = np.asarray(tensor, dtype=np.float32)
        if array.ndim == 4:  # (out, in, h, w) -> (h, w, in, out)
            array = array.transpose(2, 3, 1, 0)
        layer, index = target
        values.setdefault(layer, [None] * 4)[index] = array
    for layer_name, arrays in values.items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError as err:
            raise ValueError(
                f"torchvision layer {layer_name!r} has no match in {model.name!r}: is it the same "
                "DenseNet variant?"
            ) from err
        arrays = [a for a in arrays if a is not None]
        if layer_name == "conv1_conv":
            arrays = [models.stem_kernel(arrays[0], model)]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise ValueError(
                f"{layer_name}: torchvision gives {[a.shape for a in arrays]}, the model has "
                f"{expected}: is it the same DenseNet variant?"
            )
        layer.set_weights(arrays)
    missing = [
        layer.name
        for layer in model.layers
        if layer.weights and layer.name not in values and layer.name not in ("logits",)
    ]
    if missing:
        raise ValueError(f"the state dict fills no weights for {missing[:5]} ({len(missing)})")
    return len(values)


def torchvision_state_dict(name: str, path: str | None = None) -> dict:
    """torchvision's ImageNet weights of `name` as numpy arrays: from `path` (a `.pth`), or
    downloaded by torchvision. Clear errors without PyTorch or without a network."""
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(
            "converting torchvision weights needs PyTorch: pip install torch torchvision "
            "(both come with Colab and Kaggle)"
        ) from err
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--from {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and torch errors, by format and version
            raise ValueError(
                f"--from {str(path)!r} is not a PyTorch state dict ({type(err).__name__}: {err}); "
                "give torchvision's .pth file, or leave --from out to download it"
            ) from err
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(
                f"--from {str(path)!r} holds a {type(state).__name__}, not a state dict"
            )
    else:
        try:
            import torchvision
        except ImportError as err:
            raise RuntimeError("downloading needs torchvision: pip install torchvision") from err
        try:
            net = getattr(torchvision.models, name)(weights="DEFAULT")
        except Exception as err:  # URLError and friends, wrapped differently by versions
            raise RuntimeError(
                f"could not download torchvision's {name} weights ({type(err).__name__}: "
                f"{err}). Offline? Fetch the .pth file elsewhere (torchvision lists its URL) and "
                "pass it with --from."
            ) from err
        state = net.state_dict()
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert(name: str, out, path: str | None = None, image_size: int = 224) -> Path:
    """Write `out` (a `.keras` file): the backbone of `cxr_tf.models.build_model(name)` with
    torchvision's ImageNet weights, no classifier; `--set weights=out` loads it by name."""
    import keras

    from cxr_tf import models

    out = Path(out).expanduser()
    if out.suffix != ".keras":
        raise ValueError(f"--out {str(out)!r} must end in .keras")
    state = torchvision_state_dict(name, path)
    model = models.build_model(name, num_classes=1, image_size=image_size, weights="none")
    load_state_dict(state, model)
    backbone = keras.Model(model.input, model.get_layer("avg_pool").output, name=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    backbone.save(out)
    return out


def cached(name: str) -> Path:
    """The converted file of `name` in Keras' cache folder, converted now if it is not there.

    What `weights: torchvision` in a config loads: `$KERAS_HOME/models/{name}_torchvision.keras`
    (KERAS_HOME defaults to ~/.keras), made once from torchvision's download.
    """
    path = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    path = path / "models" / f"{name}_torchvision.keras"
    if not path.is_file():
        print(f"converting torchvision's ImageNet {name} weights to {path} (once)", flush=True)
        tmp = path.with_name(path.stem + ".tmp.keras")
        convert(name, tmp)
        tmp.replace(path)  # complete or absent, never half-written
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tf.torchvision_weights", description=__doc__.split("\n")[0]
    )
    p.add_argument("model", choices=("densenet121", "densenet169", "densenet201", "densenet161"))
    p.add_argument("--out", required=True, help="the .keras file to write")
    p.add_argument("--from", dest="path", default=None, help="a torchvision .pth (else download)")
    args = p.parse_args(argv)
    try:
        out = convert(args.model, args.out, args.path)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        return fail(err)
    print(f"wrote {out}; train with --set weights={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
