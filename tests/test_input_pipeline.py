"""cxr_tf.input_pipeline on tiny converted synthetic datasets."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_tf import input_pipeline as ip
from cxr_tf import synthetic

NO_AUG = ip.Augment.none()


def _ctx(pipeline_id, n=2):
    return tf.distribute.InputContext(
        num_input_pipelines=n, input_pipeline_id=pipeline_id, num_replicas_in_sync=n
    )


def _to_uint8(image):
    return np.round(np.asarray(image)[..., 0] * 255).astype(np.uint8)


def test_transforms_agree_eagerly_and_in_tf_data():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (2, 70, 90, 1), dtype=np.uint8))
    sizes = tf.constant([[70, 90], [70, 90]])
    seed = tf.constant([1, 2], tf.int64)
    aug = ip.Augment(hflip=True)
    eager = ip.train_transform(images, sizes, seed, 48, aug)
    graph = next(
        iter(
            tf.data.Dataset.from_tensors((images, sizes, seed)).map(
                lambda i, z, s: ip.train_transform(i, z, s, 48, aug)
            )
        )
    )
    for out in (eager, graph):
        assert out.shape == (2, 48, 48, 1) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), atol=1e-5)
    assert not np.allclose(eager[0].numpy(), eager[1].numpy())  # each image its own draw
    ev = ip.eval_transform(images[0], 48)
    assert ev.shape == (48, 48, 1) and ev.dtype == tf.float32
    assert float(tf.reduce_max(ev)) <= 1.0
    other = ip.train_transform(images, sizes, tf.constant([3, 4], tf.int64), 48, aug)
    assert not np.allclose(eager.numpy(), other.numpy())


def test_train_transform_without_augmentation_is_the_identity_and_flip_mirrors():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1, 40, 40, 1), dtype=np.uint8)
    sizes = tf.constant([[40, 40]])
    out = ip.train_transform(tf.constant(image), sizes, tf.constant([5, 6], tf.int64), 40, NO_AUG)
    np.testing.assert_allclose(out.numpy(), image / 255.0, atol=1e-5)
    flip = ip.Augment(**{**NO_AUG.__dict__, "hflip": True})
    seen = set()
    for k in range(8):
        out = ip.train_transform(tf.constant(image), sizes, tf.constant([k, 0], tf.int64), 40, flip)
        mirrored = np.allclose(out.numpy(), image[:, :, ::-1] / 255.0, atol=1e-5)
        assert mirrored or np.allclose(out.numpy(), image / 255.0, atol=1e-5)
        seen.add(mirrored)
    assert seen == {True, False}


def test_train_transform_ignores_batch_padding():
    """An image zero-padded into a larger batch (as padded_batch does) gives what it gives alone:
    outside the image the transform reads the fill value 0, the padding's value."""
    rng = np.random.default_rng(2)
    image = rng.integers(1, 256, (1, 50, 80, 1), dtype=np.uint8)
    padded = np.zeros((1, 90, 120, 1), np.uint8)
    padded[:, :50, :80] = image
    seed = tf.constant([7, 8], tf.int64)
    aug = ip.Augment(rotation_deg=10.0, translate=0.1)  # corners sample outside the image
    alone = ip.train_transform(tf.constant(image), tf.constant([[50, 80]]), seed, 32, aug)
    inside = ip.train_transform(tf.constant(padded), tf.constant([[50, 80]]), seed, 32, aug)
    np.testing.assert_allclose(alone.numpy(), inside.numpy(), atol=1e-5)


def test_training_batches_have_static_shapes_and_labels(pneumonia_data, nih14_data):
    ds = ip.make_dataset(
        pneumonia_data, "train", global_batch_size=8, image_size=48, training=True, seed=0
    )
    assert ds.element_spec[0].shape.as_list() == [8, 48, 48, 3]
    assert ds.element_spec[1].shape.as_list() == [8, 1]
    images, labels = next(iter(ds))
    assert images.dtype == tf.float32 and labels.dtype == tf.float32
    assert set(np.unique(labels.numpy())) <= {0.0, 1.0}
    ds = ip.make_dataset(
        nih14_data, "train", global_batch_size=4, image_size=32, training=True, channels=1, seed=0
    )
    assert ds.element_spec[0].shape.as_list() == [4, 32, 32, 1]
    assert ds.element_spec[1].shape.as_list() == [4, 14]
    one_hot = ip.make_dataset(
        pneumonia_data,
        "train",
        global_batch_size=4,
        image_size=32,
        training=True,
        label_mode="categorical",
        seed=0,
    )
    assert one_hot.element_spec[1].shape.as_list() == [4, 2]


OVERSAMPLED_64 = dict(
    global_batch_size=16, image_size=64, training=True, channels=1, balance="oversample"
)


def _assert_pneumonia_labels_attached(ds, batches: int = 8):
    """The synthetic opacity is found where the label says, in >= 90% of training images."""
    agree = total = 0
    for images, labels in ds.take(batches):
        for img, lab in zip(images, labels, strict=True):
            score = synthetic.pneumonia_signal(_to_uint8(img))
            agree += (score > synthetic.PNEUMONIA_SIGNAL_THRESHOLD) == bool(lab[0])
            total += 1
    assert agree / total >= 0.9, f"{agree}/{total}"


def test_labels_stay_attached_in_training_and_evaluation(pneumonia_data, nih14_data):
    # evaluation transform: center crop keeps the lung fields
    agree = total = 0
    for images, labels, weights in ip.make_dataset(
        pneumonia_data, "test", global_batch_size=16, image_size=64, training=False, channels=1
    ):
        for img, lab, w in zip(images, labels, weights, strict=True):
            if w == 0:
                continue
            score = synthetic.pneumonia_signal(_to_uint8(img))
            agree += (score > synthetic.PNEUMONIA_SIGNAL_THRESHOLD) == bool(lab[0])
            total += 1
    assert total > 30 and agree / total >= 0.95, f"{agree}/{total}"
    # training path (interleave, shuffle, oversampling, seeds) with a no-op augmentation
    ds = ip.make_dataset(
        nih14_data,
        "train",
        global_batch_size=16,
        image_size=64,
        training=True,
        augment=NO_AUG,
        channels=1,
        seed=1,
    )
    agree = total = 0
    for images, labels in ds.take(8):
        for img, lab in zip(images, labels, strict=True):
            found = synthetic.nih14_signal(_to_uint8(img)) > synthetic.NIH14_SIGNAL_THRESHOLD
            agree += int((found == (lab.numpy() > 0.5)).all())
            total += 1
    assert agree / total >= 0.9, f"{agree}/{total}"
    ds = ip.make_dataset(pneumonia_data, "train", augment=NO_AUG, seed=1, **OVERSAMPLED_64)
    _assert_pneumonia_labels_attached(ds)


@pytest.mark.parametrize("cache", [True, False])
def test_labels_stay_attached_to_the_squares_for_the_model(pneumonia_data, cache):
    """augment_in_model: squares cut after the cache, or in the decoding map when uncached."""
    ds = ip.make_dataset(
        pneumonia_data, "train", seed=2, cache=cache, augment_in_model=True, **OVERSAMPLED_64
    )
    _assert_pneumonia_labels_attached(ds)


@pytest.mark.parametrize("ratio, expected", [(None, 0.5), ([1.0, 3.0], 0.75)])
def test_oversample_reaches_the_target_ratio(pneumonia_data, ratio, expected):
    info = ip.read_info(pneumonia_data)
    natural = info.splits["train"]["class_counts"]["PNEUMONIA"] / info.num_examples("train")
    ds = ip.make_dataset(
        pneumonia_data,
        "train",
        global_batch_size=32,
        image_size=16,
        training=True,
        balance="oversample",
        oversample_ratio=ratio,
        seed=5,
        channels=1,
    )
    labels = np.concatenate([lab.numpy()[:, 0] for _, lab in ds.take(40)])
    n = len(labels)
    bound = 4 * np.sqrt(expected * (1 - expected) / n)  # 4 sigma: seeded, so no flakiness
    assert abs(labels.mean() - expected) < bound, (labels.mean(), expected, natural)
    if ratio is None:
        assert abs(natural - 0.5) > bound, "the synthetic train split should be imbalanced"


def test_class_weights_and_positive_weights_match_counts(pneumonia_data, nih14_data):
    info = ip.read_info(pneumonia_data)
    labels = [
        int(e["label"])
        for e in tfds.as_numpy(
            tfds.builder_from_directory(str(info.dataset_dir)).as_dataset(split="train")
        )
    ]
    n, pos = len(labels), sum(labels)
    cw = ip.class_weights(info)
    assert cw[0] == pytest.approx(n / (2 * (n - pos))) and cw[1] == pytest.approx(n / (2 * pos))
    ds = ip.make_dataset(
        pneumonia_data,
        "train",
        global_batch_size=8,
        image_size=16,
        training=True,
        balance="class_weight",
        seed=0,
        channels=1,
    )
    _, lab, w = next(iter(ds))
    np.testing.assert_allclose(w.numpy(), [cw[int(v)] for v in lab.numpy()[:, 0]], rtol=1e-6)

    info = ip.read_info(nih14_data)
    hot = np.array(
        [
            e["labels"]
            for e in tfds.as_numpy(
                tfds.builder_from_directory(str(info.dataset_dir)).as_dataset(split="train")
            )
        ]
    )
    pos = hot.sum(0)
    expected = np.where(pos > 0, (len(hot) - pos) / np.maximum(pos, 1), 1.0)
    np.testing.assert_allclose(ip.positive_weights(info), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="multi-label.*pos_weight"):
        ip.make_dataset(
            nih14_data, "train", global_batch_size=8, training=True, balance="class_weight"
        )
    with pytest.raises(ValueError, match="multi-label"):
        ip.class_weights(info)


def _reference_fingerprints(data, split, image_size):
    info = ip.read_info(data)
    builder = tfds.builder_from_directory(str(info.dataset_dir))
    out = []
    for e in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        out.append(float(ip.eval_transform(tf.constant(e["image"]), image_size).numpy().sum()))
    return sorted(np.round(out, 3))


def _eval_fingerprints(ds):
    out, batches = [], 0
    for images, _, weights in ds:
        batches += 1
        for img, w in zip(images.numpy(), weights.numpy(), strict=True):
            if w:
                out.append(float(img[..., 0].sum()))
    return out, batches


@pytest.mark.parametrize("split", ["train", "validation"])  # several shards, and a single one
def test_evaluation_sees_every_example_exactly_once_also_per_pipeline(pneumonia_data, split):
    info = ip.read_info(pneumonia_data)
    expected = _reference_fingerprints(pneumonia_data, split, 32)
    one, _ = _eval_fingerprints(
        ip.make_dataset(pneumonia_data, split, global_batch_size=6, image_size=32, training=False)
    )
    assert sorted(np.round(one, 3)) == expected
    parts, steps = [], []
    for pid in (0, 1):
        fp, batches = _eval_fingerprints(
            ip.make_dataset(
                pneumonia_data,
                split,
                global_batch_size=6,
                image_size=32,
                training=False,
                input_context=_ctx(pid),
            )
        )
        parts.append(fp)
        steps.append(batches)
    assert steps[0] == steps[1] == ip.eval_steps(info, split, 6, 2)
    assert sorted(np.round(parts[0] + parts[1], 3)) == expected  # disjoint and complete
    if split == "validation":
        assert len(info.shard_lengths[split]) == 1  # exercised the record-level fallback


def test_training_pipelines_read_disjoint_shards(pneumonia_data):
    info = ip.read_info(pneumonia_data)
    files = info.files("train")
    assert len(files) >= 2
    assert files[0::2] and set(files[0::2]).isdisjoint(files[1::2])
    for pid in (0, 1):
        ds = ip.make_dataset(
            pneumonia_data,
            "train",
            global_batch_size=8,
            image_size=16,
            training=True,
            seed=0,
            input_context=_ctx(pid),
        )
        assert ds.element_spec[0].shape.as_list()[0] == 4  # per-replica share of the batch


def test_fixed_seed_gives_identical_batches(pneumonia_data):
    def batches(seed):
        ds = ip.make_dataset(
            pneumonia_data,
            "train",
            global_batch_size=8,
            image_size=32,
            training=True,
            seed=seed,
            balance="oversample",
        )
        return [b[0].numpy() for b in ds.take(3)]

    a, b, c = batches(7), batches(7), batches(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_works_with_distribute_datasets_from_function(pneumonia_data):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: ip.make_dataset(
            pneumonia_data,
            "train",
            global_batch_size=8,
            image_size=16,
            training=True,
            seed=0,
            input_context=ctx,
        )
    )
    images, _ = next(iter(dist))
    shapes = [t.shape.as_list() for t in strategy.experimental_local_results(images)]
    assert shapes == [[4, 16, 16, 3], [4, 16, 16, 3]]


def test_bad_arguments_give_clear_errors(pneumonia_data, tmp_path):
    kw = dict(global_batch_size=8, training=True)
    with pytest.raises(ValueError, match="split 'trian' is not one of"):
        ip.make_dataset(pneumonia_data, "trian", **kw)
    with pytest.raises(FileNotFoundError, match="no converted dataset"):
        ip.make_dataset(tmp_path / "nothing", "train", **kw)
    partial = tmp_path / "partial" / "pneumonia" / "1.0.0"
    shutil.copytree(ip.read_info(pneumonia_data).dataset_dir, partial)
    (partial / "dataset_info.json").unlink()
    (partial / ".progress").mkdir()
    with pytest.raises(FileNotFoundError, match="interrupted conversion"):
        ip.make_dataset(tmp_path / "partial", "train", **kw)
    with pytest.raises(ValueError, match="global batch size 7 is not divisible by the 2"):
        ip.make_dataset(
            pneumonia_data, "train", global_batch_size=7, training=True, input_context=_ctx(0)
        )
    with pytest.raises(ValueError, match="unknown augment keys \\['rotate'\\]"):
        ip.make_dataset(pneumonia_data, "train", augment={"rotate": 5}, **kw)
    with pytest.raises(ValueError, match="balance 'smote'"):
        ip.make_dataset(pneumonia_data, "train", balance="smote", **kw)
    missing = tmp_path / "missing"
    shutil.copytree(ip.read_info(pneumonia_data).dataset_dir, missing / "pneumonia" / "1.0.0")
    next((missing / "pneumonia" / "1.0.0").glob("pneumonia-train.tfrecord-*")).unlink()
    with pytest.raises(FileNotFoundError, match="lacks 1 shard files"):
        ip.make_dataset(missing, "train", **kw)


def test_one_pipeline_feeding_two_replicas_evaluates_everything_once(pneumonia_data):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: ip.make_dataset(
            pneumonia_data,
            "validation",
            global_batch_size=6,
            image_size=32,
            training=False,
            input_context=ctx,
        )
    )
    got = []
    for images, _, weights in dist:
        for im, w in zip(
            strategy.experimental_local_results(images),
            strategy.experimental_local_results(weights),
            strict=True,
        ):
            assert im.shape[0] == 3
            got += [
                float(x[..., 0].sum())
                for x, keep in zip(im.numpy(), w.numpy(), strict=True)
                if keep
            ]
    assert sorted(np.round(got, 3)) == _reference_fingerprints(pneumonia_data, "validation", 32)
