"""tf.data input pipeline over the converter's TFRecords: read, decode, augment, balance, batch.

`make_dataset` is the one entry point. Images come out `(B, S, S, C)`, float32 in [0, 1] or,
with `image_dtype="uint8"` (what the trainer asks for: a quarter of the bytes across the host
link), uint8 0..255; the model scales and normalises them itself (it owns that contract), so
the pipeline, evaluation and the exported model cannot drift apart. Labels come out float32:
`(B, 1)` for pneumonia (or one-hot `(B, 2)` with `label_mode="categorical"`), `(B, 14)`
multi-hot for nih14.

Training batches are `(images, labels)`, plus per-sample weights with `balance="class_weight"`.
Evaluation batches are always `(images, labels, weights)` with weight 0 on padding, so that every
example of the split is seen exactly once even when its size is not a multiple of the batch or
the replicas (static shapes, as TPUs want).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_tf import augment
from cxr_tf.augment import Augment
from cxr_tf.config import BALANCE_MODES, single_label_balance_error
from cxr_tf.convert import find_dataset_dir
from cxr_tf.deps import require_tensorflow

tf = require_tensorflow()
tnp = tf.experimental.numpy

LABEL_MODES = ("binary", "categorical", "multilabel")
# Decoded splits up to this size are cached in memory (pneumonia at 256 px is ~0.6 GB).
CACHE_LIMIT_BYTES = 3 * 2**30
SHUFFLE_BUFFER = 2048


@dataclass
class DataInfo:
    """What the pipeline needs to know of a converted dataset, read from its metadata files."""

    dataset_dir: Path
    name: str
    task: str  # "binary" or "multilabel"
    label_key: str
    label_names: list[str]
    image_format: str
    stored_size: int
    splits: dict[str, dict] = field(default_factory=dict)  # num_examples, class_counts
    shard_lengths: dict[str, list[int]] = field(default_factory=dict)

    def num_examples(self, split: str) -> int:
        return self.splits[split]["num_examples"]

    def files(self, split: str) -> list[str]:
        """The shard files of `split`, in order; raises if one is missing."""
        n = len(self.shard_lengths[split])
        names = [f"{self.name}-{split}.tfrecord-{i:05d}-of-{n:05d}" for i in range(n)]
        missing = [m for m in names if not (self.dataset_dir / m).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.dataset_dir} lacks {len(missing)} shard files of split {split!r} "
                f"(e.g. {missing[0]}); convert again with --overwrite."
            )
        return [str(self.dataset_dir / m) for m in names]


def read_info(data_dir, dataset: str | None = None) -> DataInfo:
    """Read a converted dataset's metadata; `data_dir` is the converter's `--out` or below.

    Raises FileNotFoundError for a missing folder or an interrupted conversion.
    """
    dataset_dir = find_dataset_dir(data_dir, dataset)
    meta = json.loads((dataset_dir / "metadata.json").read_text())
    ds_info = json.loads((dataset_dir / "dataset_info.json").read_text())
    shard_lengths = {
        s["name"]: [int(x) for x in s.get("shardLengths", [])] for s in ds_info["splits"]
    }
    return DataInfo(
        dataset_dir=dataset_dir,
        name=meta["dataset"],
        task=meta["task"],
        label_key=meta["label_key"],
        label_names=list(meta["label_names"]),
        image_format=meta["image_format"],
        stored_size=int(meta["image_size"]),
        splits=meta["splits"],
        shard_lengths=shard_lengths,
    )


def class_weights(info: DataInfo, split: str = "train") -> dict[int, float]:
    """Per-class weights that make each class count equally, from the metadata counts.

    Single-label data only: Keras' `class_weight` weights a sample by the argmax of its label,
    which is wrong for multi-hot labels, so asking for it on nih14 is an error.
    """
    if info.task != "binary":
        raise ValueError(single_label_balance_error("class_weight", info.name))
    counts = [info.splits[split]["class_counts"][name] for name in info.label_names]
    total = sum(counts)
    return {i: total / (len(counts) * c) if c else 0.0 for i, c in enumerate(counts)}


def positive_weights(info: DataInfo, split: str = "train") -> np.ndarray:
    """Per-label negative/positive ratio for a weighted BCE loss, from the metadata counts.

    A label with no positive example gets weight 1 (nothing to up-weight).
    """
    n = info.num_examples(split)
    counts = info.splits[split]["class_counts"]
    if info.task == "binary":
        pos = np.array([counts[info.label_names[1]]], dtype=np.float64)
    else:
        pos = np.array([counts[name] for name in info.label_names], dtype=np.float64)
    return np.where(pos > 0, (n - pos) / np.maximum(pos, 1), 1.0).astype(np.float32)


def check_image_size(info: DataInfo, image_size: int) -> None:
    """Training with the augmentation in the model needs stored images at least `image_size` on
    their shorter side: the model's layer resamples within the square it is given, so a smaller
    square would show it only part of the image. (The tf.data augmentation resamples to any size.)
    """
    if image_size > info.stored_size:
        raise ValueError(
            f"image_size={image_size} is larger than the stored images ({info.stored_size} px on "
            f"the shorter side, in {info.dataset_dir}); convert again with --image-size "
            f"{image_size} or more (python -m cxr_tf.convert {info.name} --source RAW --out DIR "
            f"--image-size {image_size}), or train with --set image_size={info.stored_size}"
        )


def steps_per_epoch(
    info: DataInfo, split: str, global_batch_size: int, num_pipelines: int = 1
) -> int:
    """Training steps that read each example of `split` at most once (full batches only).

    With several input pipelines (hosts), each reads its own shards and supplies its share of
    every batch, so the pipeline with the fewest examples sets the length: no pipeline wraps
    around within an epoch, and the others' remainders open the next one.
    """
    share = global_batch_size // num_pipelines
    return max(1, min(_pipeline_counts(info, split, num_pipelines)) // share)


def eval_steps(info: DataInfo, split: str, global_batch_size: int, num_pipelines: int = 1) -> int:
    """Batches of an evaluation pass (see `make_dataset`): padded, identical on every pipeline."""
    step_examples = global_batch_size // num_pipelines
    counts = _pipeline_counts(info, split, num_pipelines)
    return max(1, math.ceil(max(counts) / step_examples))


def _pipeline_counts(info: DataInfo, split: str, num_pipelines: int) -> list[int]:
    lengths = info.shard_lengths[split]
    if len(lengths) >= num_pipelines:
        return [sum(lengths[p::num_pipelines]) for p in range(num_pipelines)]
    n = sum(lengths)
    return [len(range(p, n, num_pipelines)) for p in range(num_pipelines)]


# ------------------------------------------------------------------ transforms


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG bytes -> uint8 (H, W, 1); any number of channels becomes grayscale."""
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    image = tf.cond(
        tf.shape(image)[-1] >= 3,
        lambda: tf.image.rgb_to_grayscale(image[..., :3]),
        lambda: image[..., :1],
    )
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8)
    return image


def eval_transform(image: tf.Tensor, image_size: int, crop_fraction: float = 1.0) -> tf.Tensor:
    """Deterministic: the whole image resized to a square, then its centre S x S.

    The square's side is ceil(S / crop_fraction): with the default 1.0 the model sees the whole
    image, squashed to S x S as CheXNet and the Keras notebooks do, so both lung fields of a wide
    (about 1.4:1) pediatric image stay in view, where cropping the shorter side's square would
    cut about 30% of the width. Input uint8 (H, W, 1); output float32 (S, S, 1) in [0, 1]. The
    exported model applies this same function to the bytes it is sent; training matches it
    (`augment.crop_boxes` draws boxes relative to the image's own shape).
    """
    side = math.ceil(image_size / crop_fraction - 1e-9)
    image = _square(tf.cast(image, tf.float32) / 255.0, side)
    top = (side - image_size) // 2
    image = image[top : top + image_size, top : top + image_size, :]
    return tf.clip_by_value(tf.ensure_shape(image, [image_size, image_size, 1]), 0.0, 1.0)


def eval_input(image, image_size: int, crop_fraction: float, channels: int, dtype: str):
    """What evaluation, export and `predict` feed a model for one decoded uint8 (H, W, 1) image:
    `eval_transform`, then the contract's dtype (`as_model_input`) and channels."""
    image = as_model_input(eval_transform(image, image_size, crop_fraction), dtype)
    return tf.tile(image, [1, 1, 3]) if channels == 3 else image


def train_transform(images, sizes, seed, image_size: int, aug: Augment) -> tf.Tensor:
    """Random crop/scale to a square, rotation, translation, zoom, brightness, contrast.

    Works on a whole batch at once (one op each, not one per image): `images` uint8
    (B, H, W, 1), zero-padded where the images differ in size, `sizes` int (B, 2) their true
    (height, width), `seed` a stateless seed (2,). Output float32 (B, S, S, 1) in [0, 1]. The
    geometry is one bilinear resampling (`augment.affine_transforms`); points outside an image
    read 0, which is what the zero padding holds, so an image comes out as it would alone.
    Brightness and contrast are one multiply-add (`augment.photometric`).
    """
    n = tf.shape(images)[0]
    u = tf.random.stateless_uniform(tf.stack([n, augment.NUM_UNIFORMS]), seed=seed)
    transforms = augment.affine_transforms(tf.cast(sizes, tf.float32), u, image_size, aug, tnp)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=[image_size, image_size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    out = augment.photometric(out * (1.0 / 255.0), u[:, 9:], aug, tnp)
    return tf.ensure_shape(out, [None, image_size, image_size, 1])


# ------------------------------------------------------------------ the pipeline


def make_dataset(
    data_dir,
    split: str,
    *,
    global_batch_size: int,
    image_size: int = 224,
    training: bool,
    augment: Augment | dict | None = None,
    balance: str = "none",
    seed: int | None = None,
    input_context=None,
    channels: int = 3,
    label_mode: str | None = None,
    dataset: str | None = None,
    oversample_ratio: list[float] | None = None,
    cache: bool | None = None,
    crop_fraction: float = 1.0,
    skip_batches: int = 0,
    with_ids: bool = False,
    augment_in_model: bool = False,
    image_dtype: str = "float32",
) -> tf.data.Dataset:
    """Batches of `(images, labels[, weights])` from a converted dataset; see the module doc.

    Args:
      data_dir: the converter's `--out` folder, or the dataset folder inside it.
      split: "train", "validation" or "test".
      global_batch_size: batch over all replicas; each pipeline yields its share.
      image_size: side S of the square output.
      training: random transform, shuffling and endless repetition; else one padded pass.
      augment: an `Augment` (or its dict) for training; None uses the defaults.
      balance: "none", "class_weight" (per-sample weights, single-label only), "oversample"
        (per-class streams mixed to `oversample_ratio`, default equal; single-label only) or
        "pos_weight" (nothing changes here: `positive_weights` goes to the loss).
      seed: fixes file order, shuffling and augmentation; None is faster but not repeatable.
      input_context: a `tf.distribute.InputContext` (from `distribute_datasets_from_function`).
      channels: 3 (grayscale repeated, for ImageNet weights) or 1.
      label_mode: "binary" (B, 1), "categorical" (one-hot) or "multilabel"; default by task.
      dataset: picks "pneumonia" or "nih14" when `data_dir` holds both.
      cache: keep decoded images in memory; default when the split fits in CACHE_LIMIT_BYTES.
      crop_fraction: evaluation: the share of the squashed image kept by the centre crop (1.0,
        the default: the whole image; see `eval_transform`).
      skip_batches: training only: start the stream this many steps in (a resumed run then sees
        the batches an uninterrupted one would, without augmenting the skipped ones).
      with_ids: evaluation only: batches gain `image_id` and `patient_id` strings ("" on padding),
        for per-image reports and patient-level bootstrap.
      augment_in_model: training only: leave the augmentation to `models.RandomAugment` (on the
        accelerator). Images then come out as the whole stored images squashed to squares:
        (B, T, T, C) with T the stored shorter side (see `cxr_tf.augment`).
      image_dtype: "float32" ([0, 1]) or "uint8" (0..255, rounded), the model's
        `InputContract.input_dtype`.
    """
    info = read_info(data_dir, dataset)
    if split not in info.splits:
        raise ValueError(
            f"split {split!r} is not one of {sorted(info.splits)} in {info.dataset_dir}"
        )
    if with_ids and training:
        raise ValueError("with_ids is for evaluation passes (training=False) only")
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance {balance!r} is not one of {BALANCE_MODES}")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: use 3 (ImageNet weights) or 1")
    if image_dtype not in ("float32", "uint8"):
        raise ValueError(f"image_dtype={image_dtype!r}: use 'float32' or 'uint8'")
    label_mode = label_mode or ("multilabel" if info.task == "multilabel" else "binary")
    if label_mode not in LABEL_MODES or (label_mode == "multilabel") != (info.task == "multilabel"):
        raise ValueError(f"label_mode {label_mode!r} does not fit the {info.task} task {info.name}")
    if balance in ("class_weight", "oversample") and info.task != "binary":
        raise ValueError(single_label_balance_error(balance, info.name))
    if training and augment_in_model:
        check_image_size(info, image_size)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    replicas = input_context.num_replicas_in_sync if input_context else 1
    if global_batch_size < 1 or global_batch_size % max(replicas, num_pipelines):
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the "
            f"{max(replicas, num_pipelines)} replicas; use a multiple, e.g. "
            f"{max(replicas, num_pipelines) * max(1, global_batch_size // max(replicas, 1))}"
        )
    # distribute_datasets_from_function wants per-replica batches; one pipeline may feed several.
    batch = global_batch_size // max(replicas, 1)
    step_examples = global_batch_size // num_pipelines  # what one pipeline supplies per step
    aug = augment if isinstance(augment, Augment) else Augment.from_dict(augment)
    files = info.files(split)
    num_classes = len(info.label_names)

    # 1. Files, sharded per input pipeline so each host reads only its own; fall back to records.
    file_level = len(files) >= num_pipelines
    if file_level and num_pipelines > 1:
        files = files[pipeline_id::num_pipelines]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # 2. Parallel interleave: several files in flight hide per-file read latency (GCS on TPUs).
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None or not training,
    )
    if not file_level and num_pipelines > 1:
        ds = ds.shard(num_pipelines, pipeline_id)

    # 3. Parse only the image and the label; 4. decode once, before the cache.
    label_key = info.label_key
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    if with_ids:
        spec["image_id"] = tf.io.FixedLenFeature([], tf.string)
        spec["patient_id"] = tf.io.FixedLenFeature([], tf.string)
    if info.task == "multilabel":
        spec[label_key] = tf.io.FixedLenFeature([num_classes], tf.int64)
    else:
        spec[label_key] = tf.io.FixedLenFeature([], tf.int64)

    # Training resamples with plain bilinear weights, which alias when shrinking by much: images
    # stored far larger than the training size are shrunk (antialiased) once, before the cache.
    shrink_to = round(1.25 * image_size) if training and info.stored_size > 1.5 * image_size else 0

    if cache is None:
        n = info.num_examples(split)
        cache = n * info.stored_size**2 * 1.4 / num_pipelines <= CACHE_LIMIT_BYTES
    # With the augmentation in the model, the pipeline squashes each whole image to a square of
    # the stored size (shrunk as above), once, before the cache; the model's layer does the rest.
    square = (shrink_to or info.stored_size) if training and augment_in_model else 0

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        # Stored images are 1-channel uint8 (the converter wrote them): no conversion needed.
        image = tf.io.decode_image(ex["image"], channels=1, expand_animations=False)
        if with_ids:
            return image, ex[label_key], ex["image_id"], ex["patient_id"]
        if square:
            image = _square(image, square)
        elif shrink_to:
            image = _shrink(image, shrink_to)
        return image, ex[label_key]

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    # 5. Cache decoded uint8 so later epochs skip reading and decoding (per class stream when
    # oversampling: two iterators must not fill one cache).
    if cache and not (training and balance == "oversample"):
        ds = ds.cache()

    def to_label(label):
        if label_mode == "multilabel":
            return tf.cast(label, tf.float32)
        if label_mode == "categorical":
            return tf.one_hot(label, num_classes, dtype=tf.float32)
        return tf.cast(label, tf.float32)[..., None]  # (1,) per example, (B, 1) per batch

    if not training:

        def eval_map(image, label, *ids):
            image = eval_input(image, image_size, crop_fraction, channels, image_dtype)
            return (image, to_label(label), tf.constant(1.0), *ids)

        # Weight-0 padding up to a number of full batches that is the same on every pipeline.
        steps = eval_steps(info, split, global_batch_size, num_pipelines)
        pad = steps * step_examples - _pipeline_counts(info, split, num_pipelines)[pipeline_id]
        ds = _padded(ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE), pad)
        ds = ds.batch(batch, drop_remainder=True)
        # A known length: without it Keras' first pass over the data counts one batch more in
        # its loss average (a weightless step past the end), and the first val_loss is too low.
        steps_here = steps * step_examples // batch
        ds = ds.apply(tf.data.experimental.assert_cardinality(steps_here))
        return _finish(ds, deterministic=True)

    # 6. Shuffle and repeat (or per-class streams) before augmenting, so every repeat of an
    # image gets a fresh random transform.
    if balance == "oversample":
        weights = oversample_ratio or [1.0] * num_classes
        if len(weights) != num_classes:
            raise ValueError(f"oversample_ratio {weights} needs {num_classes} numbers")
        streams = [
            _maybe_cache(ds.filter(lambda img, lab, c=c: tf.equal(lab, c)), cache)
            .shuffle(SHUFFLE_BUFFER, seed=None if seed is None else seed + 1 + c)
            .repeat()
            for c in range(num_classes)
        ]
        total = float(sum(weights))
        ds = tf.data.Dataset.sample_from_datasets(
            streams, weights=[w / total for w in weights], seed=seed
        )
    else:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()

    weight_table = None
    if balance == "class_weight":
        cw = class_weights(info, split)
        weight_table = tf.constant([cw[i] for i in range(num_classes)], tf.float32)

    def finish_batch(images, label):
        images = as_model_input(images, image_dtype)  # per batch: one op, not B
        if channels == 3:  # per batch, tile: one op; tf.repeat is twice as slow here
            images = tf.tile(images, [1, 1, 1, 3])
        if weight_table is not None:
            return images, to_label(label), tf.gather(weight_table, label)
        return images, to_label(label)

    if augment_in_model:
        if skip_batches:
            ds = ds.skip(skip_batches * step_examples)
        # uint8 is batched (a quarter of the bytes); floats, if asked for, per batch.
        ds = ds.batch(batch, drop_remainder=True)
        ds = ds.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
        return _finish(ds, deterministic=seed is not None)

    # 7. Batch first, then augment whole batches: one op per batch instead of one per image.
    # Images of different sizes (pneumonia) are zero-padded; each keeps its true size.
    ds = ds.map(lambda image, label: (image, tf.shape(image)[:2], label))
    label_shape = [num_classes] if info.task == "multilabel" else []
    ds = ds.padded_batch(
        batch, padded_shapes=([None, None, 1], [2], label_shape), drop_remainder=True
    )
    # 8. One stateless seed per batch: deterministic augmentation even with parallel maps.
    ds = tf.data.Dataset.zip((ds, _seeds(seed)))
    if skip_batches:
        ds = ds.skip(skip_batches * (step_examples // batch))

    def train_map(example, seed_pair):
        images, sizes, label = example
        return finish_batch(train_transform(images, sizes, seed_pair, image_size, aug), label)

    ds = ds.map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, deterministic=seed is not None)


def as_model_input(images: tf.Tensor, dtype: str) -> tf.Tensor:
    """Images (uint8 0..255, or float in [0, 1]) as a model's `InputContract.input_dtype`
    wants them: "uint8" (float rounded) or "float32" in [0, 1]."""
    if dtype == "uint8":
        if images.dtype == tf.uint8:
            return images
        # Rounded up from 0.001 grey levels below the half: resizing integers often lands
        # exactly halfway between two grey levels, and there float rounding (which differs
        # between eager code, tf.data and the SavedModel's graph) would decide the level.
        return tf.cast(tf.floor(tf.clip_by_value(images, 0.0, 1.0) * 255.0 + 0.501), tf.uint8)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (1.0 / 255.0)
    return images


def _seeds(seed):
    """A stream of stateless seeds (2,), one per element it is zipped with."""
    return tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)


def _square(image, side: int):
    """(H, W, C) resized, antialiased, to `side` x `side` (the whole image, squashed); returned
    as it is when it already has that size. uint8 stays uint8 (rounded)."""
    hw = tf.shape(image)[:2]

    def resize():
        out = tf.image.resize(tf.cast(image, tf.float32), [side, side], antialias=True)
        if image.dtype == tf.uint8:
            out = tf.cast(tf.clip_by_value(tf.math.round(out), 0.0, 255.0), tf.uint8)
        return out

    out = tf.cond(tf.reduce_all(tf.equal(hw, side)), lambda: image, resize)
    return tf.ensure_shape(out, [side, side, image.shape[-1]])


def _shrink(image, short_side: int):
    """Antialiased resize of uint8 (H, W, 1) so that its shorter side is `short_side`."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.math.round(hw * short_side / tf.reduce_min(hw)), tf.int32)
    out = tf.image.resize(tf.cast(image, tf.float32), new_hw, antialias=True)
    return tf.cast(tf.clip_by_value(tf.math.round(out), 0.0, 255.0), tf.uint8)


def _maybe_cache(ds, cache: bool):
    return ds.cache() if cache else ds


def _padded(ds, count: int):
    """`ds`, then `count` all-zero elements (weight 0, empty ids): padding that counts nothing."""
    filler = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
    return ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(count))


def _finish(ds, *, deterministic: bool):
    """Options set deliberately, then prefetch last so the accelerator never waits on Python."""
    options = tf.data.Options()
    options.autotune.enabled = True
    options.deterministic = deterministic
    # One thread per op inside the pipeline: the parallel maps already fill the cores.
    options.threading.max_intra_op_parallelism = 1
    options.experimental_optimization.map_parallelization = True
    # Sharding is done above, per input pipeline; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
