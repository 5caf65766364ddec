"""Smoke test of benchmarks/train_throughput.py: a tiny model for a few steps, both feeds."""

import keras
import pytest


def test_model_flops_counts_convolutions_and_dense_layers(load_benchmark):
    bench = load_benchmark("train_throughput")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8x8 out
    x = keras.layers.BatchNormalization()(x)  # not counted
    x = keras.layers.Conv2D(6, 3, strides=2)(x)  # 3x3 out
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    expected = 2 * 8 * 8 * 3 * 3 * 3 * 4 + 2 * 3 * 3 * 3 * 3 * 4 * 6 + 2 * 6 * 5
    assert bench.model_flops(model) == expected


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("TPU v5 lite", 197.0),
        ("Tesla T4", 65.0),
        ("cpu", None),
    ],
)
def test_peak_table(kind, peak, load_benchmark):
    assert load_benchmark("train_throughput").peak_tflops_for(kind) == peak


def test_run_measures_both_feeds_on_a_tiny_model(load_benchmark):
    bench = load_benchmark("train_throughput")
    r = bench.run(
        backend="auto",  # the backend this test session's Keras already has
        model="densenet_tiny",
        image_size=32,
        batch_size=4,
        steps=2,
        warmup=1,
        repeats=1,
        num_images=40,
        stored_size=64,
        peak_tflops=1.0,
        pipeline_seconds=0.2,
    )
    assert set(r["images_per_s"]) == set(bench.VARIANTS)
    assert all(rate > 0 for rate in r["images_per_s"].values())
    assert r["ratio"] > 0 and isinstance(r["pass"], bool)
    assert r["forward_gflops_per_image"] > 0
    assert r["train_gflops_per_image"] == pytest.approx(3 * r["forward_gflops_per_image"])
    assert r["mfu"]["memory"] > 0 and r["peak_source"] == "--peak-tflops"
    assert r["precision"] == "float32" and r["train_images"] >= 4
    assert r["pipeline_alone_images_per_s"] > 0 and 0 < r["ratio_by_cpu_share"] <= 1
    assert len(r["runs"]["pipeline"][0]["step_seconds"]) == 2
    text = bench.report(r)
    assert "(a) / (b)" in text and "(c) the pipeline alone" in text and "MFU" in text
