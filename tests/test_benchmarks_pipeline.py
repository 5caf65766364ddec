"""Smoke test of benchmarks/pipeline_throughput.py: every variant runs on a tiny data set."""

TINY = dict(num_images=20, source_size=64, stored_size=64, image_size=48, batch_size=4)


def test_run_reports_every_variant(tmp_path, load_benchmark):
    bench = load_benchmark("pipeline_throughput")
    r = bench.run(
        **TINY,
        images=8,
        min_seconds=0.0,
        max_seconds=2.0,
        repeats=1,
        seed=0,
        workdir=tmp_path,
        warmup_seconds=0.0,
    )
    assert set(r["images_per_s"]) == set(bench.VARIANTS)
    assert all(rate > 0 for rate in r["images_per_s"].values())
    assert all(ms >= 0 for ms in r["cpu_ms_per_image"].values())
    for key in bench.GOALS:
        assert r[key] > 0 and isinstance(r[f"{key}_pass"], bool)
    text = bench.report(r)
    assert "(a) / (d)" in text and "cores: " in text and "(a+): " in text
    assert r["shapes"]["a"] == "4x64x64x1" and r["shapes"]["a_plus"] == "4x48x48x1"
    assert r["shapes"]["a_host"] == "4x48x48x3" and r["shapes"]["d"] == "4x48x48x1"
    # A second run reuses the data written into the work dir.
    again = bench.run(
        **TINY,
        images=4,
        min_seconds=0.0,
        max_seconds=1.0,
        repeats=1,
        variants=("d",),
        workdir=tmp_path,
        warmup_seconds=0.0,
    )
    assert again["setup_seconds"] < r["setup_seconds"]
