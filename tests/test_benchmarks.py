"""The benchmarks run end to end in a tiny mode and report every figure."""

import subprocess
import sys
from pathlib import Path


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


def test_tpu_program_smoke():
    """Under JAX (its own process: this one runs Keras on TensorFlow), a tiny model: both
    augmentation formulations and both transfer dtypes are measured and printed."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "tpu_program.py"
    argv = ["--model", "densenet_tiny", "--image-size", "32", "--stored", "40", "--steps", "1"]
    proc = subprocess.run(
        [sys.executable, str(script), *argv, "--devices", "2"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "with matrix products + shears (now):" in out and "with gathers (before):" in out
    assert "augmentation share" in out and "float32 / uint8:" in out
