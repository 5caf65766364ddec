"""cxr_tf.memory: the chip's memory as JAX or the tables give it, and the train-step check on the
simulated TPU VM: it prints XLA's figures, `fit` reuses its compile, and a batch that cannot fit
stops the run with one line naming batch_size and image_size."""

import subprocess
from pathlib import Path

import pytest

from cxr_tf import memory
from tests.test_runtime import ROOT
from tests.tpu_vm import tpu_vm_env, train_command


class _Device:
    def __init__(self, platform, kind, stats=None):
        self.platform, self.device_kind, self._stats = platform, kind, stats

    def memory_stats(self):
        return self._stats


def test_device_memory_prefers_the_runtime_then_the_tables(monkeypatch):
    monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
    tpu = _Device("tpu", "TPU v5 lite", {"bytes_limit": 15_000_000_000})
    assert memory.device_memory(tpu) == (
        15_000_000_000,
        "jax.devices()[0].memory_stats()['bytes_limit']",
    )
    assert memory.device_memory(_Device("tpu", "TPU v5 lite")) == (
        16 * memory.GIB,
        "cxr_tf.memory table for device_kind 'TPU v5 lite'",
    )
    assert memory.device_memory(_Device("tpu", "TPU v3"))[0] == 16 * memory.GIB  # per core
    # CPU devices (the simulation's chips): the host's RAM is no chip's; the VM's type tells
    assert memory.device_memory(_Device("cpu", "cpu", {"bytes_limit": 1}))[0] is None
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    assert memory.device_memory(_Device("cpu", "cpu")) == (
        16 * memory.GIB,
        "cxr_tf.memory table for TPU_ACCELERATOR_TYPE=v5litepod-8",
    )


def _train(tmp_path, data, *overrides, pythonpath=None, timeout=600):
    env = tpu_vm_env(JAX_LOG_COMPILES="1")
    if pythonpath:
        env["PYTHONPATH"] = f"{pythonpath}:{env['PYTHONPATH']}"
    cmd = train_command(
        "pneumonia_densenet161_tpu.yaml",
        data,
        tmp_path / "run",
        "--set",
        "stages=[{epochs: 1, learning_rate: 0.001, train_backbone: false}]",
        *overrides,
    )
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # ~100 s here: a whole (tiny) TPU-config run
def test_tpu_vm_prints_the_train_steps_memory_and_fit_reuses_its_compile(pneumonia_data, tmp_path):
    proc = _train(tmp_path, pneumonia_data, "--set", "batch_size=4")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if "train step memory per device" in x)
    assert "model.train_function's jitted step (fit reuses it)" in line
    for part in ("arguments", "outputs", "aliased", "temporaries", "code"):
        assert part in line
    assert "of 16.00 GiB (cxr_tf.memory table for TPU_ACCELERATOR_TYPE=v5litepod-8)" in line
    assert "MiB = arguments" in line and "0.0 MiB = " not in line  # real figures, not zeros
    # One XLA compile of the train step: the check's; fit finds it in JAX's cache.
    log = proc.stdout + proc.stderr
    assert log.count("Finished XLA compilation of jit(train_step)") == 1, log[-3000:]
    assert "dispatches each step from Python" in proc.stdout  # what steps_per_execution does


def test_a_batch_that_cannot_fit_stops_with_one_line(pneumonia_data, tmp_path):
    # A chip of 1 MiB (the v5e table entry, shrunk before cxr_tf runs) and 16 images per chip.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from cxr_tf import memory\nmemory.ACCELERATOR_MEMORY_GIB['v5litepod'] = 1 / 1024\n"
    )
    over = ["--set", "batch_size=16", "--set", "warmup_epochs=0"]  # one step: no warm-up
    proc = _train(tmp_path, pneumonia_data, *over, pythonpath=site)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "batch_size=16 per chip and image_size=64" in errors[0]
    assert "more than the 1.0 MiB a TPU device has" in errors[0]
    assert "--config file (or --set batch_size=N)" in errors[0]
    assert not (Path(tmp_path) / "run" / "done.json").exists()
