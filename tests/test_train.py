"""cxr_tf.train: the demo config learns the synthetic data on one CPU, under MirroredStrategy
over two logical CPUs and under the JAX backend over two host devices; resuming; bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cxr_tf import input_pipeline, metrics, models, trainer
from cxr_tf.losses import make_loss
from cxr_tf.train import main, run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "demo.yaml"


def _test_auroc(workdir, data):
    model = models.load_model(Path(workdir) / "best.keras")
    preds = metrics.predict_split(model, data, "test")
    probs, labels = preds.probs, preds.labels
    return metrics.summarize(probs, labels, [0.5] * probs.shape[1], ["p"] * probs.shape[1])[
        "macro"
    ]["auroc"]


def _run_files_ok(workdir):
    for name in (
        "config.yaml",
        "runtime.json",
        "history.csv",
        "best.keras",
        "done.json",
        "val_metrics.json",
        "thresholds.json",
    ):
        assert (workdir / name).is_file(), name
    assert (workdir / "saved_model" / "saved_model.pb").is_file()
    assert list((workdir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (workdir / "backup").exists()
    thresholds = json.loads((workdir / "thresholds.json").read_text())
    assert thresholds["source"] == "validation" and len(thresholds["thresholds"]) == 1


@pytest.mark.slow
def test_demo_config_learns_on_one_cpu(pneumonia_data, tmp_path):
    summary = run(DEMO, data=pneumonia_data, workdir=tmp_path / "run", strategy="cpu", verbose=0)
    _run_files_ok(tmp_path / "run")
    assert summary["runtime"]["num_replicas"] == 1
    assert _test_auroc(tmp_path / "run", pneumonia_data) >= 0.9


@pytest.mark.slow
def test_demo_config_learns_under_mirrored_strategy(pneumonia_data, tmp_path):
    summary = run(
        DEMO, data=pneumonia_data, workdir=tmp_path / "run", strategy="mirrored", verbose=0
    )
    rt = json.loads((tmp_path / "run" / "runtime.json").read_text())
    assert rt["strategy"] == "mirrored" and rt["num_replicas"] == 2
    assert rt["global_batch"] == 2 * rt["per_replica_batch"]
    assert summary["val_auroc_mean"] >= 0.8
    assert _test_auroc(tmp_path / "run", pneumonia_data) >= 0.9


@pytest.mark.slow
def test_demo_config_learns_under_jax_with_two_devices(pneumonia_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    cmd = [
        sys.executable,
        "-m",
        "cxr_tf.train",
        "--config",
        str(DEMO),
        "--data",
        str(pneumonia_data),
        "--workdir",
        str(tmp_path / "run"),
        "--backend",
        "jax",
        "--strategy",
        "mirrored",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend jax, strategy mirrored, 2 x CPU" in proc.stdout
    rt = json.loads((tmp_path / "run" / "runtime.json").read_text())
    assert rt["backend"] == "jax" and rt["num_replicas"] == 2
    # a model trained under JAX loads and predicts under TensorFlow, and was exported
    assert _test_auroc(tmp_path / "run", pneumonia_data) >= 0.9
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()
    # Grad-CAM and prediction under the JAX backend
    image = next((pneumonia_data.parent / "raw" / "chest_xray" / "test" / "PNEUMONIA").iterdir())
    cmd = [
        sys.executable,
        "-m",
        "cxr_tf.predict",
        "--model",
        str(tmp_path / "run" / "best.keras"),
        str(image),
        "--gradcam",
        str(tmp_path / "cams"),
        "--json",
    ]
    # prediction under the JAX backend is what this part tests, and KERAS_BACKEND is how a user
    # picks it for the predict CLI
    jax_env = dict(env, KERAS_BACKEND="jax")
    proc = subprocess.run(cmd, env=jax_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)
    assert result["findings"][0]["name"] == "PNEUMONIA"
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1


# 3 epochs; 5 steps per execution: the ~12 steps of an epoch become 10, two executions
SHORT = [
    "stages=[{epochs: 3, learning_rate: 0.003}]",
    "early_stopping_patience=10",
    "steps_per_execution=5",
]

# Runs the demo config straight, then interrupted after its first epoch and resumed, in one fresh
# process with the backend given as argv[1] (chosen through choose_backend, as a notebook does,
# never through KERAS_BACKEND); prints what the test compares as JSON.
RESUME_SCRIPT = """
import json, sys
from cxr_tf.runtime import choose_backend
choose_backend("cpu", sys.argv[1])
import keras
from cxr_tf.train import run

config, data, root, *overrides = sys.argv[2:]
kw = dict(data=data, strategy="cpu", overrides=overrides, verbose=0)
seen = {"straight": [], "resumed": []}

class Record(keras.callbacks.Callback):
    def __init__(self, name, stop_after=None):
        super().__init__()
        self.name, self.stop_after = name, stop_after

    def on_epoch_begin(self, epoch, logs=None):
        self.begin = int(self.model.optimizer.iterations)

    def on_epoch_end(self, epoch, logs=None):
        # the optimizer's step counter: what an epoch really ran
        seen[self.name].append([epoch, int(self.model.optimizer.iterations) - self.begin])
        if epoch == self.stop_after:
            raise KeyboardInterrupt  # as a preempted TPU VM would stop

run(config, workdir=root + "/straight", extra_callbacks=[Record("straight")], **kw)
try:
    run(config, workdir=root + "/resumed", extra_callbacks=[Record("resumed", 0)], **kw)
except KeyboardInterrupt:
    pass
run(config, workdir=root + "/resumed", extra_callbacks=[Record("resumed")], **kw)
print("RESULT", json.dumps(seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(
    backend, pneumonia_data, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    cmd = [sys.executable, "-c", RESUME_SCRIPT, backend, str(DEMO), str(pneumonia_data)]
    proc = subprocess.run(
        [*cmd, str(tmp_path), *SHORT], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert "resuming at epoch 2 of 3" in proc.stdout
    # every epoch is exactly the planned 10 steps, with 5 per execution
    rt = json.loads((tmp_path / "straight" / "runtime.json").read_text())
    assert (rt["steps_per_epoch"], rt["steps_per_execution"], rt["backend"]) == (10, 5, backend)
    assert seen["straight"] == [[0, 10], [1, 10], [2, 10]]
    assert seen["resumed"] == [[0, 10], [1, 10], [2, 10]], "resumed at epoch 2 (index 1)"
    rows = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows if not r.startswith("epoch")] == ["0", "1", "2"]
    a = models.load_model(tmp_path / "straight" / "best.keras")
    b = models.load_model(tmp_path / "resumed" / "best.keras")
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=1e-4, atol=1e-5)
    straight = (tmp_path / "straight" / "history.csv").read_text().splitlines()
    np.testing.assert_allclose(
        np.array([r.split(",")[:5] for r in straight[1:]], float),
        np.array([r.split(",")[:5] for r in rows[1:]], float),
        rtol=1e-4,
    )
    # a finished run is not trained again
    summary = run(DEMO, data=pneumonia_data, workdir=tmp_path / "resumed", overrides=SHORT)
    assert summary["workdir"] == str(tmp_path / "resumed")


@pytest.mark.slow
def test_stage_one_leaves_the_backbone_unchanged(pneumonia_data, tmp_path):
    snapshots = {}

    class Snap(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            snapshots["begin"] = [np.array(w) for w in self.model.weights]

        def on_train_end(self, logs=None):
            snapshots["end"] = [np.array(w) for w in self.model.weights]
            snapshots["names"] = [w.path for w in self.model.weights]

    overrides = ["stages=[{epochs: 1, learning_rate: 0.01, train_backbone: false}]"]
    run(
        DEMO,
        data=pneumonia_data,
        workdir=tmp_path / "run",
        strategy="cpu",
        overrides=overrides,
        extra_callbacks=[Snap()],
        verbose=0,
    )
    changed = {
        name.split("/")[0]
        for name, a, b in zip(snapshots["names"], snapshots["begin"], snapshots["end"], strict=True)
        if not np.array_equal(a, b) and not name.startswith(("adam", "optimizer"))
    }
    # only the head learns; BatchNorm moving statistics stay put (inference mode)
    assert changed == {"logits"}, changed


def test_bad_input_is_named(pneumonia_data, tmp_path, capsys):
    def err(*args):
        assert main(["--config", str(DEMO), "--workdir", str(tmp_path / "w"), *args]) == 2
        return capsys.readouterr().err

    assert "unknown config keys ['lerning_rate']" in err(
        "--data", str(pneumonia_data), "--set", "lerning_rate=0.1"
    )
    assert "model 'densenet100' is not one of" in err(
        "--data", str(pneumonia_data), "--set", "model=densenet100"
    )
    assert "no converted dataset" in err("--data", str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    assert "no converted dataset" in err("--data", str(tmp_path / "empty"))
    assert not (tmp_path / "w").exists()  # no empty run folder left behind
    assert "--strategy tpu, but no TPU is reachable" in err(
        "--data", str(pneumonia_data), "--strategy", "tpu"
    )
    assert "config balance='smote' is not one of" in err(
        "--data", str(pneumonia_data), "--set", "balance=smote"
    )
    assert "nih14" in err("--data", str(pneumonia_data), "--set", "dataset=nih14")
    assert "image_size=96 is larger than the stored images (64 px" in err(
        "--data", str(pneumonia_data), "--set", "image_size=96"
    )
    assert not (tmp_path / "w" / "config.yaml").exists()  # nothing claimed the run folder
    assert "lr_reference_batch=0" in err(
        "--data", str(pneumonia_data), "--set", "lr_reference_batch=0"
    )
    missing = tmp_path / "missing.yaml"
    assert "does not exist" in err("--config", str(missing), "--data", str(pneumonia_data))


def test_validation_loss_and_metrics_ignore_padding_rows(pneumonia_data):
    info = input_pipeline.read_info(pneumonia_data)
    n = info.num_examples("validation")
    model = models.build_model(
        "densenet_tiny", num_classes=1, image_size=64, channels=1, weights="none"
    )
    model.compile(
        loss=make_loss("bce"), weighted_metrics=trainer.make_metrics("binary", 1, "sigmoid")
    )

    def validate(batch):
        ds = input_pipeline.make_dataset(
            pneumonia_data,
            "validation",
            global_batch_size=batch,
            image_size=64,
            training=False,
            channels=1,
        )
        logs = {f"val_{k}": v for k, v in model.evaluate(ds, verbose=0, return_dict=True).items()}
        raw = logs["val_loss"]
        rows = batch * input_pipeline.eval_steps(info, "validation", batch)
        trainer._ValLossWithoutPadding(rows, n).on_epoch_end(0, logs)
        return logs, raw, rows - n

    exact, _, padding = validate(n)  # one batch: no padding
    assert padding == 0
    batch = n // 2 + 6  # two batches, the second with 12 padding rows
    padded, raw, padding = validate(batch)
    assert padding == 12
    assert raw < exact["val_loss"] * 0.9  # what Keras reports counts the padding rows
    for key, value in exact.items():
        assert padded[key] == pytest.approx(value, rel=1e-5), key


def test_learning_rate_rule_and_epoch_plan():
    # Adam: square root of the batch ratio (CheXNet's 1e-3 at 16 -> 4e-3 at 256); SGD: linear
    assert trainer.scale_learning_rate(1e-3, 256, 16, "adam") == pytest.approx(4e-3)
    assert trainer.scale_learning_rate(1e-3, 16, 16, "adam") == pytest.approx(1e-3)
    assert trainer.scale_learning_rate(0.1, 512, 256, "sgd") == pytest.approx(0.2)
    # (steps per epoch, steps per execution): whole executions, never past the epoch
    assert trainer.plan_epoch(18, None, 32) == (18, 18)
    assert trainer.plan_epoch(337, None, 32) == (320, 32)
    assert trainer.plan_epoch(12, None, 1) == (12, 1)
    assert trainer.plan_epoch(999, 18, 32) == (18, 18)  # a configured epoch is kept
    assert trainer.plan_epoch(999, 100, 32) == (100, 25)


def test_training_above_the_stored_size_is_an_error_below_it_works(pneumonia_data):
    kw = dict(global_batch_size=8, training=True, channels=1, seed=0)
    # the augmentation in the model cuts its squares from the stored 64 px images: 96 would crop
    with pytest.raises(ValueError) as err:
        input_pipeline.make_dataset(
            pneumonia_data, "train", image_size=96, augment_in_model=True, **kw
        )
    message = str(err.value)
    assert "image_size=96 is larger than the stored images (64 px" in message
    assert "--image-size 96" in message and "--set image_size=64" in message
    # at or below the stored size it works; the tf.data augmentation really resamples to any size
    for augment_in_model, size, side in ((True, 48, 64), (True, 64, 64), (False, 96, 96)):
        ds = input_pipeline.make_dataset(
            pneumonia_data, "train", image_size=size, augment_in_model=augment_in_model, **kw
        )
        images, _ = next(iter(ds))
        assert images.shape == (8, side, side, 1)  # in the model, its layer resamples to `size`
