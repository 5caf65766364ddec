"""DenseNet-121/169/201/161 (and a tiny variant for tests and the CPU demo) for chest X-rays.

One builder over a table of variants. For 121/169/201 every layer has the name that
`keras.applications` gives it, so its ImageNet weights load by name; DenseNet-161 (growth 48,
96-filter stem, blocks 6-12-36-24) is the model of the pneumonia reference notebook, which Keras
does not ship. Only `keras.layers` / `keras.ops` are used, so the same model trains under the
TensorFlow and the JAX backend.

The model owns its input contract: its `preprocess` layer records the image size, channels,
input dtype (uint8 0..255 for the models the trainer builds, float [0, 1] otherwise),
normalisation and evaluation crop, and scales and normalises the images itself. The input
pipeline, evaluation and export read the contract from the model (`input_contract(model)`).

A 1-channel model with ImageNet weights computes exactly what the RGB model computes on the
gray image repeated (see `stem_kernel`): its `preprocess` appends a constant channel of ones
to the normalised image, on which the first convolution carries the per-filter offset.

Example:
    >>> model = build_model("densenet_tiny", num_classes=1, image_size=32, weights="none")
    >>> model.output_shape
    (None, 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from cxr_tf import augment as aug_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (sum(IMAGENET_MEAN) / 3,)  # a 1-channel model's normalisation
GRAY_STD = (sum(IMAGENET_STD) / 3,)
BN_EPSILON = 1.001e-5  # keras.applications' value: its ImageNet statistics assume it


@dataclass(frozen=True)
class Variant:
    """A DenseNet shape: layers per dense block, growth rate, stem filters."""

    blocks: tuple[int, ...]
    growth: int
    stem: int
    keras_app: str | None = None  # the keras.applications constructor with the same layers
    bn_momentum: float = 0.99  # Keras' default; the tiny variant trains too few steps for it


VARIANTS = {
    "densenet121": Variant((6, 12, 24, 16), 32, 64, "DenseNet121"),
    "densenet169": Variant((6, 12, 32, 32), 32, 64, "DenseNet169"),
    "densenet201": Variant((6, 12, 48, 32), 32, 64, "DenseNet201"),
    "densenet161": Variant((6, 12, 36, 24), 48, 96),
    "densenet_tiny": Variant((2, 2, 2), 8, 16, bn_momentum=0.9),
}


@dataclass(frozen=True)
class InputContract:
    """What a model expects: square images of `image_size`, `channels`, as `input_dtype`:
    "uint8" (0..255: what the trainer builds, so that batches cross to the accelerator as bytes
    and become floats inside the model) or "float32" (in [0, 1]; models saved before uint8).

    `mean`/`std` are applied inside the model; `crop_fraction` is the share of the whole image,
    squashed to a square, that the evaluation transform (`input_pipeline.eval_transform`, also
    in the exported model) keeps: 1.0, the whole image.
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float = 1.0
    input_dtype: str = "float32"


def _unit_scale(x) -> float:
    """What takes `x` to [0, 1]: 1/255 for integer (uint8) images, 1 for floats."""
    return 1.0 / 255.0 if "int" in str(x.dtype) else 1.0


@keras.saving.register_keras_serializable(package="cxr_tf")
class Preprocess(layers.Layer):
    """Normalises images with the contract's mean/std (uint8 ones scaled to [0, 1] first);
    carries the contract.

    With `ones_channel`, appends a channel of ones to the normalised image: the first
    convolution's kernel on it holds the offset that makes a 1-channel model equal to the RGB
    model it was made from (`stem_kernel`). Models saved before it existed load without it.
    """

    def __init__(
        self,
        image_size,
        channels,
        mean,
        std,
        crop_fraction=1.0,
        ones_channel=False,
        input_dtype="float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.contract = InputContract(
            int(image_size),
            int(channels),
            tuple(mean),
            tuple(std),
            float(crop_fraction),
            str(input_dtype),
        )
        self.ones_channel = bool(ones_channel)

    def call(self, x):
        scale = _unit_scale(x)  # 1/255 for the model's uint8 input (no augmentation before)
        if scale != 1.0:
            x = ops.cast(x, self.compute_dtype) * scale
        mean = ops.convert_to_tensor(self.contract.mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self.contract.std, dtype=x.dtype)
        x = (x - mean) / std
        if self.ones_channel:
            x = ops.concatenate([x, ops.ones_like(x[..., :1])], axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.ones_channel)

    def get_config(self):
        config = super().get_config()
        config.update(asdict(self.contract), ones_channel=self.ones_channel)
        return config


@keras.saving.register_keras_serializable(package="cxr_tf")
class RandomAugment(layers.Layer):
    """Training augmentation on the accelerator (see `cxr_tf.augment`); identity otherwise.

    In training, takes images of any size T x T (the stored images squashed to squares, from
    `make_dataset(..., augment_in_model=True)`), uint8 or in [0, 1], and returns S x S floats in
    [0, 1]: one resampling without gathers (`augment.warp`: crop, scale, rotation, zoom,
    translation, flip) and one multiply-add (brightness, contrast) per image, with draws from a
    seeded generator whose state is saved with the model. In inference the input is already
    S x S (the evaluation transform) and is only scaled to [0, 1].
    """

    def __init__(self, image_size, augment=None, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # resample in float32, also under mixed precision
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.augment = (
            augment if isinstance(augment, aug_lib.Augment) else aug_lib.Augment.from_dict(augment)
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        # uint8 images (what the trainer feeds: bytes cross to the accelerator) are resampled
        # as the integers they are, exact in bfloat16 matrix passes, then scaled to [0, 1].
        scale = _unit_scale(x)
        x = ops.cast(x, "float32")
        if not training:
            return x * scale if scale != 1.0 else x
        shape = ops.shape(x)
        u = self._uniforms(shape[0])
        size = ops.cast(ops.stack([shape[1], shape[2]]), "float32")
        sizes = ops.ones((shape[0], 1), "float32") * size[None, :]
        out = aug_lib.warp(x, sizes, u, self.image_size, self.augment, ops)
        return aug_lib.photometric(out * scale, u[:, 9:], self.augment, ops)

    def _uniforms(self, n):
        """(n, NUM_UNIFORMS) draws for this replica's images. Under tf.distribute every replica
        holds the same generator state, so each draws for all replicas and keeps its own rows;
        otherwise replicas would give their images the same transforms, position by position.
        (JAX's DataParallel runs one program over the global batch: nothing to do there.)"""
        replicas, replica = 1, 0
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                replicas = context.num_replicas_in_sync
                replica = context.replica_id_in_sync_group
        u = keras.random.uniform((n * replicas, aug_lib.NUM_UNIFORMS), seed=self.seed_generator)
        return u if replicas == 1 else u[replica * n : (replica + 1) * n]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    # Keras saves a layer's weights, not its seed generators: without these two, a run resumed
    # by the backup (`resume.EpochCommit`) would draw other augmentations than an uninterrupted one.
    def save_own_variables(self, store):
        store["seed_state"] = self.seed_generator.state.numpy()

    def load_own_variables(self, store):
        if "seed_state" in store:
            self.seed_generator.state.assign(store["seed_state"])

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, augment=self.augment.to_dict(), seed=self.seed)
        return config


def input_contract(model: keras.Model) -> InputContract:
    """The input contract a cxr_tf model carries in its `preprocess` layer."""
    try:
        return model.get_layer("preprocess").contract
    except ValueError as err:
        raise ValueError(
            f"model {model.name!r} has no 'preprocess' layer: it was not built by cxr_tf.models"
        ) from err


def load_model(path) -> keras.Model:
    """Load a `.keras` file saved by cxr_tf (this module registers its custom layers)."""
    from cxr_tf import storage

    path = storage.path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    return keras.models.load_model(str(path), compile=False)


def as_float32(model: keras.Model) -> keras.Model:
    """`model` computing in float32 whatever precision trained it (the same layers rebuilt with
    float32 policies, the weights copied), for serving: CPUs without bfloat16 units and older
    GPUs run float32 fast, and a model trained in float16 would otherwise serve in float16."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def rebuild(layer):
        if isinstance(layer, layers.InputLayer):
            return layer
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


def _bn(name: str, momentum: float):
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=momentum, name=name)


def apply_conv_block(x, growth: int, name: str, momentum: float = 0.99):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concatenated to the input (one dense layer)."""
    y = _bn(f"{name}_0_bn", momentum)(x)
    y = layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = layers.Conv2D(4 * growth, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = _bn(f"{name}_1_bn", momentum)(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(growth, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([x, y])


def apply_dense_block(x, num_layers: int, growth: int, name: str, momentum: float = 0.99):
    """`num_layers` conv blocks, each adding `growth` channels."""
    for i in range(num_layers):
        x = apply_conv_block(x, growth, name=f"{name}_block{i + 1}", momentum=momentum)
    return x


def apply_transition_block(x, name: str, reduction: float = 0.5, momentum: float = 0.99):
    """BN-ReLU-Conv1x1 halving the channels, then 2x2 average pooling."""
    x = _bn(f"{name}_bn", momentum)(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(int(x.shape[-1] * reduction), 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def build_model(
    name: str,
    *,
    num_classes: int,
    image_size: int = 224,
    channels: int = 3,
    weights: str | None = "none",
    activation: str = "sigmoid",
    dropout: float = 0.0,
    crop_fraction: float = 1.0,
    augment: aug_lib.Augment | dict | None = None,
    seed: int | None = None,
    ones_channel: bool | None = None,
    input_dtype: str = "float32",
) -> keras.Model:
    """A DenseNet classifier whose probabilities come out as float32 (also under mixed precision).

    Args:
      name: a key of `VARIANTS`.
      num_classes: outputs; 1 for binary with sigmoid, 14 for nih14, 2 for softmax pneumonia.
      image_size, channels: the input contract. Channels 3 takes the gray image repeated;
        channels 1 takes it once and, with ImageNet weights, gives the same outputs (see
        `stem_kernel`) from a third of the input bytes.
      weights: "imagenet" (Keras', 121/169/201), "torchvision" (converted from torchvision's,
        all four; see `cxr_tf.torchvision_weights`), "none", or a path to a weights file.
      activation: "sigmoid" (binary and multi-label) or "softmax".
      dropout: rate before the classifier.
      augment: if given, a `RandomAugment` layer first (training only; its input is then any
        square size, see `make_dataset(..., augment_in_model=True)`), seeded by `seed`.
      ones_channel: give a 1-channel model the channel of ones that carries RGB weights exactly
        (`stem_kernel`); default: when it starts from weights. A model trained from scratch has
        no RGB model to equal and keeps a plain 1-channel stem.
      input_dtype: "uint8" (images 0..255, as the trainer feeds them: a quarter of the bytes
        across the host link) or "float32" (images in [0, 1]); see `InputContract`.
    """
    if name not in VARIANTS:
        raise ValueError(f"model {name!r} is not one of {sorted(VARIANTS)}")
    if activation not in ("sigmoid", "softmax"):
        raise ValueError(f"activation {activation!r} is not 'sigmoid' or 'softmax'")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: use 3 (ImageNet weights) or 1")
    if input_dtype not in ("uint8", "float32"):
        raise ValueError(f"input_dtype={input_dtype!r}: use 'uint8' or 'float32'")
    variant = VARIANTS[name]
    momentum = variant.bn_momentum
    mean = IMAGENET_MEAN if channels == 3 else GRAY_MEAN
    std = IMAGENET_STD if channels == 3 else GRAY_STD

    if augment is None:
        inputs = keras.Input((image_size, image_size, channels), dtype=input_dtype, name="image")
        x = inputs
    else:
        inputs = keras.Input((None, None, channels), dtype=input_dtype, name="image")
        x = RandomAugment(image_size, augment, seed, name="augment")(inputs)
    x = Preprocess(
        image_size,
        channels,
        mean,
        std,
        crop_fraction,
        ones_channel=channels == 1
        and (weights not in (None, "none") if ones_channel is None else ones_channel),
        input_dtype=input_dtype,
        name="preprocess",
    )(x)
    x = layers.ZeroPadding2D(((3, 3), (3, 3)), name="zero_padding2d")(x)
    x = layers.Conv2D(variant.stem, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _bn("conv1_bn", momentum)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(((1, 1), (1, 1)), name="zero_padding2d_1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for i, num_layers in enumerate(variant.blocks):
        x = apply_dense_block(x, num_layers, variant.growth, f"conv{i + 2}", momentum)
        if i < len(variant.blocks) - 1:
            x = apply_transition_block(x, name=f"pool{i + 2}", momentum=momentum)
    x = _bn("bn", momentum)(x)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation(activation, dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    load_weights(model, name, weights)
    return model


HEAD_LAYERS = ("head_dropout", "logits", "probabilities")


def backbone_layers(model: keras.Model) -> list:
    """The layers that stage 1 of fine-tuning freezes: all but input, augment, preprocess, head."""
    return [
        layer
        for layer in model.layers
        if layer.name not in HEAD_LAYERS + ("augment", "preprocess")
        and not isinstance(layer, layers.InputLayer)
    ]


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze the backbone. Frozen BatchNorm layers run in inference mode (Keras 3),
    so their ImageNet statistics are kept while the head trains."""
    for layer in backbone_layers(model):
        layer.trainable = trainable


def load_weights(model: keras.Model, name: str, weights: str | None) -> None:
    """Load `weights` ("imagenet", "torchvision", "none"/None, or a path) into a model built by
    `build_model`; "torchvision" converts torchvision's ImageNet weights once (needs PyTorch)."""
    if weights in (None, "none"):
        return
    if weights == "imagenet":
        reference = _keras_application(name, "imagenet", model)
        _copy_by_name(reference, model)
        return
    if weights == "torchvision":  # torchvision's ImageNet weights, converted once (161 too)
        from cxr_tf import torchvision_weights

        path = torchvision_weights.cached(name)
        _copy_by_name(keras.models.load_model(path, compile=False), model)
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(weights)!r} does not exist; give an existing path, 'imagenet' "
            "or 'none'"
        )
    if path.suffix == ".keras":
        _copy_by_name(keras.models.load_model(path, compile=False), model)
    elif path.name.endswith(".weights.h5"):
        model.load_weights(path)
    else:  # keras.applications' own .h5 files (e.g. DenseNet121 'notop' weights)
        _copy_by_name(_keras_application(name, str(path), model), model)


def _keras_application(name: str, weights: str, model: keras.Model) -> keras.Model:
    app = VARIANTS[name].keras_app
    if app is None:
        raise ValueError(
            f"Keras ships no ImageNet weights for {name}; use weights='torchvision' (converts "
            "torchvision's, needs PyTorch), a path to a weights file, or 'none'"
        )
    size = input_contract(model).image_size
    try:
        return getattr(keras.applications, app)(
            include_top=False, weights=weights, input_shape=(size, size, 3)
        )
    except Exception as err:  # get_file raises a bare Exception on network failure
        if weights != "imagenet":
            raise
        from cxr_tf.runtime import RuntimeErrorWithHint  # a one-line error in the CLIs

        reason = " ".join(str(err).split())  # "URL fetch failure on https://...: -- [Errno -2] ..."
        raise RuntimeErrorWithHint(
            f"the ImageNet weights of {name} could not be downloaded ({type(err).__name__}: "
            f"{reason}). Offline? Put Keras' file "
            f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5 into ~/.keras/models/, or give "
            "a local weights file with --set weights=PATH (a .h5, .weights.h5 or .keras file), "
            "or train from scratch with --set weights=none (weights='none')."
        ) from err


def _copy_by_name(source: keras.Model, target: keras.Model) -> None:
    """Copy weights layer by layer by name; a 1-channel model's first convolution gets the RGB
    kernel converted by `stem_kernel`."""
    copied = 0
    for layer in source.layers:
        if not layer.weights:
            continue
        try:
            mine = target.get_layer(layer.name)
        except ValueError:
            continue
        values = layer.get_weights()
        if layer.name == "conv1_conv":
            values = [stem_kernel(values[0], target)]
        mine.set_weights(values)
        copied += 1
    if not copied:
        raise ValueError(f"no layer of {source.name!r} matched a layer of {target.name!r} by name")


def stem_kernel(kernel, model: keras.Model) -> np.ndarray:
    """The first convolution's kernel of a source model, fitted to `model`'s input channels.

    An RGB kernel `k_c` (h, w, 3, f), applied to `(x - m_c) / s_c` (ImageNet's mean/std), becomes
    for a 1-channel model that normalises with one `m`, `s` and appends ones (`Preprocess`):
      - on the gray channel, `sum_c k_c * s / s_c`;
      - on the ones channel, `sum_c k_c * (m - m_c) / s_c`;
    so that on the gray image `x`, repeated or not, both convolutions compute the same outputs.
    Only a channel of ones makes this exact at the borders: the zero padding before the 7x7
    convolution pads it with 0, as it pads the RGB model's normalised channels, so the offset
    counts only the pixels inside the image. (Folding one offset per filter into the BatchNorm
    after it is exact only away from the borders; no single padding value of the gray channel
    can stand for the three different ImageNet means.) A 1-channel kernel without the ones
    channel (a model saved before it existed) gets a zero one: the same outputs as before.
    Other kernels are returned as they are.
    """
    kernel = np.asarray(kernel)
    layer = model.get_layer("conv1_conv")
    target = layer.kernel.shape[2]
    contract = input_contract(model)
    if target == 2 and kernel.shape[2] == 3:
        k = kernel.astype(np.float64)
        ratio = contract.std[0] / np.array(IMAGENET_STD)
        offset = (contract.mean[0] - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        gray = np.tensordot(k, ratio, axes=([2], [0]))
        ones = np.tensordot(k, offset, axes=([2], [0]))
        return np.stack([gray, ones], axis=2).astype(kernel.dtype)
    if target == 2 and kernel.shape[2] == 1:
        return np.concatenate([kernel, np.zeros_like(kernel)], axis=2)
    return kernel
