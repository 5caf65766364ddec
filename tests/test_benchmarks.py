"""benchmarks/convert_throughput.py runs end to end on a tiny source and reports every figure."""


def test_convert_throughput_smoke(tmp_path, capsys, load_benchmark):
    bench = load_benchmark("convert_throughput")
    argv = ["--num-images", "20", "--source-size", "128", "--image-size", "64"]
    r = bench.main([*argv, "--repeats", "1", "--workers", "2", "--workdir", str(tmp_path)])
    assert r["num_images"] == 20 and r["workers"] == 2
    for key in ("decode", "floor", "one_worker", "n_workers"):
        assert r[f"{key}_images_per_s"] > 0 and r[f"{key}_cpu_ms_per_image"] >= 0
    assert r["nih_full_seconds"] > 0 and isinstance(r["n_over_one_pass"], bool)
    assert {run["images"] for runs in r["runs"].values() for run in runs} == {20}
    out = capsys.readouterr().out
    assert "2 workers / 1 worker" in out and "1 worker / floor" in out and "112,120" in out
    assert "2 workers / 2x decode" in out and isinstance(r["n_over_decode_pass"], bool)
    assert r["n_over_decode"] > 0 and r["source_kb_per_image"] > 0
    # Without --keep only the source stays in a given workdir; the outputs are removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source-20x128px"]
