"""cxr_tf.runtime and the train CLI's start: the backend is fixed before anything imports
TensorFlow or Keras, TPUs are told apart as the images users have show them, and a simulated
Colab/Kaggle TPU VM trains both TPU configs through JAX. Each case runs in a fresh process with
the environment a user has (no KERAS_BACKEND)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tpu_vm import tpu_vm_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model=densenet_tiny", "--set", "weights=none", "--set", "image_size=64"]


def _python(code: str, env: dict, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_config_runtime_and_cli_parsing_import_neither_tensorflow_nor_keras():
    code = """
import sys
from cxr_tf import config, runtime, train
config.load("training/nih14_densenet121_tpu.yaml", ["batch_size=8"])
try:
    train.main(["--help"])
except SystemExit:
    pass
runtime.choose_backend("auto")  # a notebook's first cell
print("IMPORTED", sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules))
"""
    out = _python(code, tpu_vm_env()).stdout
    assert "IMPORTED []" in out
    assert "usage: python -m cxr_tf.train" in out


def _chosen(env: dict, strategy="auto") -> str:
    code = f"from cxr_tf import runtime; runtime.choose_backend({strategy!r})"
    return _python(code, env).stdout.strip()


def test_kaggle_tpu_vm_tensorflow_cpu_with_libtpu_goes_to_jax():
    line = _chosen(tpu_vm_env())
    assert line.startswith("cxr_tf: Keras backend jax (a TPU is attached"), line
    assert "tensorflow-cpu" in line and "no TPU runtime" in line


def test_tensorflow_tpu_build_goes_to_tpu_strategy(tmp_path):
    # a TF 2.20 `tensorflow-tpu` install, as package metadata shows it
    dist = tmp_path / "tensorflow_tpu-2.20.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow-tpu\nVersion: 2.20.0\n")
    env = tpu_vm_env(PYTHONPATH=f"{tmp_path}:{tpu_vm_env()['PYTHONPATH']}")
    assert "Keras backend tensorflow (a TPU is attached and tensorflow-tpu" in _chosen(env)
    # a newer tensorflow-tpu has no TPU runtime: JAX
    dist.rename(tmp_path / "tensorflow_tpu-2.21.0.dist-info")
    (tmp_path / "tensorflow_tpu-2.21.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tensorflow-tpu\nVersion: 2.21.0\n"
    )
    assert "Keras backend jax" in _chosen(env)


def test_no_tpu_goes_to_tensorflow_and_an_explicit_keras_backend_wins():
    env = tpu_vm_env()
    for key in ("TPU_ACCELERATOR_TYPE", "CXR_TF_SIMULATED_TPU"):
        env.pop(key)
    assert "Keras backend tensorflow (no TPU attached)" in _chosen(env)
    assert "Keras backend jax (KERAS_BACKEND=jax in the environment)" in _chosen(
        dict(env, KERAS_BACKEND="jax")
    )


def test_colab_tpu_without_tensorflow_says_what_to_install(tmp_path, pneumonia_data):
    # Colab's TPU image may lack TensorFlow: hide it, as if not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None\n")
    env = tpu_vm_env(PYTHONPATH=f"{tmp_path}:{tpu_vm_env()['PYTHONPATH']}")
    cmd = [
        sys.executable,
        "-m",
        "cxr_tf.train",
        "--config",
        "training/demo.yaml",
        "--data",
        str(pneumonia_data),
        "--workdir",
        str(tmp_path / "run"),
        "--strategy",
        "tpu",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Keras backend jax" in proc.stdout
    assert "pip install 'cxr_tf[tf-cpu]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_keras_imported_first_is_a_clear_error():
    code = """
import keras
from cxr_tf import runtime
try:
    runtime.choose_backend("cpu", "jax")
except runtime.RuntimeErrorWithHint as err:
    print("ERR", err)
"""
    env = tpu_vm_env()
    out = _python(code, env).stdout
    assert "ERR Keras was already imported with the tensorflow backend" in out
    assert "restart the notebook kernel" in out


def _train_on_tpu_vm(config, data, workdir, *overrides, timeout=900):
    cmd = [
        sys.executable,
        "-m",
        "cxr_tf.train",
        "--strategy",
        "tpu",
        "--config",
        str(ROOT / "training" / config),
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        *TINY,
        *overrides,
    ]
    proc = subprocess.run(
        cmd, env=tpu_vm_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads((Path(workdir) / "runtime.json").read_text())


def _check_tpu_run(out, rt, workdir):
    assert "Keras backend jax (a TPU is attached" in out
    assert "cxr_tf.train: backend jax, strategy tpu, 8 x TPU" in out
    assert rt["backend"] == "jax" and rt["strategy"] == "tpu" and rt["num_replicas"] == 8
    assert rt["device_kind"] == "TPU" and rt["precision"] == "mixed_bfloat16"
    # the TPU's 32 steps per execution, lowered to the epoch's length, never past it
    assert rt["steps_per_execution"] == min(32, rt["steps_per_epoch"]) > 1
    for name in ("done.json", "val_metrics.json", "thresholds.json", "best.keras"):
        assert (workdir / name).is_file(), name
    assert (workdir / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_tpu_vm_trains_the_nih_tpu_config(nih14_data, tmp_path):
    # a tiny model, small images and a per-chip batch that the tiny dataset fills
    out, rt = _train_on_tpu_vm(
        "nih14_densenet121_tpu.yaml",
        nih14_data,
        tmp_path / "run",
        "--set",
        "batch_size=2",
        "--set",
        "stages=[{epochs: 2, learning_rate: 0.001}]",
    )
    _check_tpu_run(out, rt, tmp_path / "run")
    # CheXNet's 1e-3 at batch 16, square-root rule to the global batch 2 x 8 chips = 16
    assert rt["global_batch"] == 16 and rt["learning_rates"] == pytest.approx([1e-3])
    metrics = json.loads((tmp_path / "run" / "val_metrics.json").read_text())
    assert len(metrics["classes"]) == 14


@pytest.mark.slow
def test_tpu_vm_trains_the_pneumonia_tpu_config(pneumonia_data, tmp_path):
    out, rt = _train_on_tpu_vm(
        "pneumonia_densenet161_tpu.yaml",
        pneumonia_data,
        tmp_path / "run",
        "--set",
        "batch_size=4",
        "--set",
        "stages=[{epochs: 1, learning_rate: 0.001, train_backbone: false}, "
        "{epochs: 2, learning_rate: 0.0001}]",
    )
    _check_tpu_run(out, rt, tmp_path / "run")
    assert rt["global_batch"] == 32 and rt["learning_rates"] == pytest.approx([1e-3, 1e-4])
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3  # both stages ran
