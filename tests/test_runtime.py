"""cxr_tf.runtime and the train CLI's start: the backend is fixed before anything imports
TensorFlow or Keras, TPUs are told apart as the images users have show them, and a simulated
Colab/Kaggle TPU VM trains both TPU configs through JAX. Each case runs in a fresh process with
the environment a user has (no KERAS_BACKEND)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tpu_vm import tpu_vm_env, train_command

ROOT = Path(__file__).resolve().parents[1]


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
    """Train on the simulated TPU VM with JAX's compile log on and the HLO of every compiled
    module dumped (what a TPU would run); returns stdout+stderr and runtime.json."""
    hlo = Path(workdir).parent / "hlo"
    cmd = train_command(config, data, workdir, *overrides)
    env = tpu_vm_env(JAX_LOG_COMPILES="1")
    env["XLA_FLAGS"] += f" --xla_dump_to={hlo} --xla_dump_hlo_module_re=.*train_step.*"
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr, json.loads((Path(workdir) / "runtime.json").read_text())


# Compiles of single layers' ops: a forward pass run op by op (a direct model(x) under JAX).
LAYER_OPS = re.compile(
    r"Compiling jit\((conv_general_dilated|dot_general|einsum|matmul|reduce_window\w*|"
    r"_?avg_pool\w*|_?max_pool\w*|concatenate|pad|relu|batch_norm\w*|sigmoid)\)"
)


def _check_tpu_run(log, rt, workdir, stages):
    assert "Keras backend jax (a TPU is attached" in log
    assert "cxr_tf.train: backend jax, strategy tpu, 8 x TPU" in log
    assert rt["backend"] == "jax" and rt["strategy"] == "tpu" and rt["num_replicas"] == 8
    assert rt["device_kind"] == "TPU" and rt["precision"] == "mixed_bfloat16"
    # the TPU's 32 steps per execution, lowered to the epoch's length, never past it
    assert rt["steps_per_execution"] == min(32, rt["steps_per_epoch"]) > 1
    for name in ("done.json", "val_metrics.json", "thresholds.json", "best.keras"):
        assert (workdir / name).is_file(), name
    # The form of the program: no layer compiled on its own, one train step per stage ...
    assert not LAYER_OPS.findall(log), sorted(set(LAYER_OPS.findall(log)))
    assert log.count("Compiling jit(train_step)") == stages
    # ... which holds no gather and takes the images as uint8, split over the 8 chips
    steps = sorted((workdir.parent / "hlo").glob("*jit_train_step*after_optimizations.txt"))
    assert len(steps) == stages
    size = rt["per_replica_batch"]
    for path in steps:
        hlo = path.read_text()
        assert not re.search(r"\bgather\(", hlo), path.name
        assert re.search(rf"u8\[{size},\d+,\d+,1\]\S* parameter\(\d+\), sharding=", hlo)
    # the export serves in float32 whatever trained it, and carries no optimizer state
    assert _half_precision_nodes(workdir / "saved_model") == []
    assert "optimizer" not in _keras_archive_files(workdir / "saved_model/assets/model.keras")


def _half_precision_nodes(saved_model: Path) -> list[str]:
    """Names of the SavedModel graph's nodes (functions included) typed bfloat16 or float16."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    half = {types_pb2.DT_BFLOAT16, types_pb2.DT_HALF}
    found = []
    for node in nodes:
        for value in node.attr.values():
            if value.type in half or half & set(value.list.type):
                found.append(node.name)
                break
    return found


def _keras_archive_files(path: Path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        weights = [n for n in names if n.endswith(".h5")]
        import h5py

        with archive.open(weights[0]) as f, h5py.File(f) as h5:
            return " ".join(names) + " " + " ".join(h5.keys())


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
    _check_tpu_run(out, rt, tmp_path / "run", stages=1)
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
    _check_tpu_run(out, rt, tmp_path / "run", stages=2)
    assert rt["global_batch"] == 32 and rt["learning_rates"] == pytest.approx([1e-3, 1e-4])
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3  # both stages ran


def test_keras_jax_multi_step_loop_is_detected_by_feature(monkeypatch):
    import inspect

    from cxr_tf import runtime

    # Keras up to 3.16 (master of 2026-08): a Python loop of one jitted call per step
    assert runtime.keras_jax_loops_on_device() is False
    monkeypatch.setattr(inspect, "getsource", lambda obj: "x = jax.lax.scan(body, state, data)")
    assert runtime.keras_jax_loops_on_device() is True
    rt = runtime.Runtime("jax", "tpu", "TPU", 8, 4, 32)
    assert "one on-device loop, one dispatch per 32 steps" in (
        runtime.describe_steps_per_execution(rt, 32)
    )


def test_steps_per_execution_is_described_per_backend():
    from cxr_tf import runtime

    jax_rt = runtime.Runtime("jax", "tpu", "TPU", 8, 4, 32)
    tf_rt = runtime.Runtime("tensorflow", "tpu", "TPU", 8, 4, 32)
    assert runtime.default_steps_per_execution(jax_rt) == 32
    assert "dispatches each step from Python" in runtime.describe_steps_per_execution(jax_rt, 32)
    assert "one host round-trip per 32 steps" in runtime.describe_steps_per_execution(tf_rt, 32)
    assert "after every step" in runtime.describe_steps_per_execution(jax_rt, 1)


def test_dispatch_overhead_benchmark_runs_on_the_simulated_chips():
    # its own process: JAX with 8 host devices, set up before JAX is imported
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "dispatch_overhead.py"),
        "--steps",
        "16",
        "--repeats",
        "1",
        "--execution",
        "8",
        "--image-size",
        "8",
    ]
    env = {k: v for k, v in tpu_vm_env().items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "8 x cpu devices, global batch 32, 16 steps" in out
    assert out.count(" ms/step") == 6
    for ratio in ("train_function spe 8 / spe 1:", "fit spe 8 / spe 1:", "no-op call / step:"):
        assert ratio in out
    assert "lax.scan / spe 1:" in out
