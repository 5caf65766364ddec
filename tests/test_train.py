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

from cxr_tf import config as config_lib
from cxr_tf import inference, input_pipeline, metrics, models, schedules, trainer
from cxr_tf.losses import make_loss
from cxr_tf.train import main, run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "demo.yaml"


def _test_auroc(workdir, data):
    model = models.load_model(Path(workdir) / "best.keras")
    preds = inference.predict_split(model, data, "test")
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
seen = {"straight": [], "resumed": [], "rates": {"straight": [], "resumed": []}}

class Record(keras.callbacks.Callback):
    def __init__(self, name, stop_after=None):
        super().__init__()
        self.name, self.stop_after = name, stop_after

    def on_epoch_begin(self, epoch, logs=None):
        self.begin = int(self.model.optimizer.iterations)

    def on_train_batch_begin(self, batch, logs=None):
        # the rate each execution runs at (JAX: mid-epoch, the values are in fit's state)
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()
        opt = self.model.optimizer
        rate = float(keras.ops.convert_to_numpy(opt.learning_rate))
        seen["rates"][self.name].append([int(opt.iterations), rate])

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


# the same with the rate raised (0.003 at 4 is 0.006 at 16), warmed up over 15 steps, which the
# interruption after epoch 1 (10 steps) cuts, and the weights averaged
WARM_EMA = [*SHORT, "lr_reference_batch=4", "warmup_epochs=1.5", "ema=0.9"]


@pytest.mark.slow
@pytest.mark.parametrize("backend, schedule", [("tensorflow", "cosine"), ("jax", "plateau")])
def test_interrupted_run_with_warmup_and_ema_resumes_as_an_uninterrupted_one(
    backend, schedule, pneumonia_data, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    cmd = [sys.executable, "-c", RESUME_SCRIPT, backend, str(DEMO), str(pneumonia_data)]
    overrides = [*WARM_EMA, f"lr_schedule={schedule}"]
    proc = subprocess.run(
        [*cmd, str(tmp_path), *overrides], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert "resuming at epoch 2 of 3" in proc.stdout
    assert "warm-up 15 steps from 0.003" in proc.stdout
    assert seen["resumed"] == seen["straight"] == [[0, 10], [1, 10], [2, 10]]
    # one rate per execution of 5 steps: the ramp 0.003 -> 0.006 over 15 steps, then the
    # schedule; the resumed run's the same, across its interruption at step 10
    straight, resumed = (np.array(seen["rates"][k]) for k in ("straight", "resumed"))
    np.testing.assert_array_equal(straight[:, 0], np.arange(0, 30, 5))
    np.testing.assert_allclose(straight[:4, 1], [0.003, 0.004, 0.005, 0.006], rtol=1e-5)
    if schedule == "plateau":
        np.testing.assert_allclose(straight[3:, 1], 0.006, rtol=1e-6)
    else:  # cosine over the other 15 steps
        np.testing.assert_allclose(
            straight[3:, 1], 0.003 * (1 + np.cos(np.pi * np.arange(0, 15, 5) / 15)), rtol=1e-5
        )
    np.testing.assert_allclose(resumed, straight, rtol=1e-6)
    rows = {}
    for name in ("straight", "resumed"):
        lines = (tmp_path / name / "history.csv").read_text().splitlines()
        rows[name] = np.array([r.split(",") for r in lines[1:]], float)
        assert "learning_rate" in lines[0]
    np.testing.assert_allclose(rows["resumed"], rows["straight"], rtol=1e-4)
    a = models.load_model(tmp_path / "straight" / "best.keras")
    b = models.load_model(tmp_path / "resumed" / "best.keras")
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=1e-4, atol=1e-5)


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
    assert schedules.scale_learning_rate(1e-3, 256, 16, "adam") == pytest.approx(4e-3)
    assert schedules.scale_learning_rate(1e-3, 16, 16, "adam") == pytest.approx(1e-3)
    assert schedules.scale_learning_rate(0.1, 512, 256, "sgd") == pytest.approx(0.2)
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


def test_warmup_is_planned_iff_the_rate_is_raised():
    cfg = config_lib.load(DEMO)  # Adam 0.003 at global batch 16, 6 epochs
    (same,) = schedules.plan_schedules(cfg, 16, 12)
    assert (same.rate, same.warmup_steps, same.optimizer_rate()) == (0.003, 0, 0.003)
    assert same.describe() == "reduce on plateau"
    (lower,) = schedules.plan_schedules(cfg, 8, 12)  # a smaller batch: a lower rate, no warm-up
    assert lower.rate < 0.003 and lower.warmup_steps == 0
    (raised,) = schedules.plan_schedules(cfg, 64, 12, 4)  # 4x the batch: 2x the rate (sqrt)
    assert raised.rate == pytest.approx(0.006) and raised.warmup_steps == 12  # 1 epoch
    assert raised.optimizer_rate() == 0.003  # the warm-up's start; _LinearWarmup ramps it
    assert raised.warmup_rate(6) == pytest.approx(0.0045)
    assert (
        raised.describe()
        == "warm-up 12 steps from 0.003 (set every 4 steps), then reduce on plateau"
    )
    cosine = config_lib.load(DEMO, ["lr_schedule=cosine", "warmup_epochs=0.5"])
    (c,) = schedules.plan_schedules(cosine, 64, 12, 4)
    assert c.describe() == "warm-up 6 steps from 0.003, then cosine to 0 over 66 steps"
    assert c.to_dict()["warmup_from"] == 0.003 and c.to_dict()["steps"] == 72
    # every raised stage warms up (each starts a fresh optimizer)
    tpu = config_lib.load(ROOT / "training" / "pneumonia_densenet161_tpu.yaml")
    s1, s2 = schedules.plan_schedules(tpu, 256, 20, 20)
    assert (s1.warmup_steps, s2.warmup_steps) == (20, 20)
    assert s1.rate == pytest.approx(0.001 * 8**0.5) and s2.config_rate == 0.0001
    # a warm-up longer than the stage takes half of it (one-epoch stages on many chips)
    (long,) = schedules.plan_schedules(config_lib.load(DEMO, ["warmup_epochs=6"]), 64, 12)
    assert long.warmup_steps == long.steps // 2 > 0
    # not raised: any warm-up length is fine, there is none
    assert schedules.plan_schedules(config_lib.load(DEMO, ["warmup_epochs=6"]), 16, 12)


class _RateLog(keras.callbacks.Callback):
    """The optimizer's rate at each execution's first step, and at the end."""

    def __init__(self):
        super().__init__()
        self.rates, self.steps = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append(int(self.model.optimizer.iterations))
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_end(self, logs=None):
        self.end = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


@pytest.mark.parametrize(
    "kind, global_batch, per_execution",
    [
        ("plateau", 16, 1),
        ("plateau", 64, 1),
        ("plateau", 64, 2),
        ("cosine", 16, 1),
        ("cosine", 64, 1),
    ],
)
def test_the_optimizer_rate_follows_the_schedule(kind, global_batch, per_execution):
    cfg = config_lib.load(
        DEMO, [f"lr_schedule={kind}", "stages=[{epochs: 2, learning_rate: 0.003}]", "monitor=loss"]
    )
    (schedule,) = schedules.plan_schedules(cfg, global_batch, 6, per_execution)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=schedules.make_optimizer(cfg, schedule),
        loss="mse",
        steps_per_execution=per_execution,
    )
    callbacks, reduce_lr = schedules.lr_callbacks(cfg, schedule, "min")
    log = _RateLog()
    x = np.random.default_rng(0).normal(size=(24, 3)).astype("float32")
    history = model.fit(
        x, x[:, :1], batch_size=4, epochs=2, callbacks=[*callbacks, log], verbose=0, shuffle=False
    )
    assert log.steps == list(range(0, 12, per_execution))
    assert history.history["learning_rate"]  # logged as ReduceLROnPlateau does, either way
    assert (reduce_lr is None) == (kind == "cosine")
    rate = schedule.rate
    if global_batch == 16:  # not raised: no warm-up
        assert schedule.warmup_steps == 0
        if kind == "plateau":
            assert log.rates == [pytest.approx(0.003)] * 12
    else:  # raised: a linear ramp 0.003 -> 0.006 over the first epoch's 6 steps
        expected = [0.003 + 0.003 * s / 6 for s in log.steps if s < 6]
        np.testing.assert_allclose(log.rates[: len(expected)], expected, rtol=1e-5)
        if kind == "plateau":  # then the scaled rate, for ReduceLROnPlateau
            np.testing.assert_allclose(log.rates[len(expected) :], rate, rtol=1e-6)
    if kind == "cosine":
        warmup = schedule.warmup_steps
        assert log.rates[warmup] == pytest.approx(rate)  # the top, then down to 0
        assert np.all(np.diff(log.rates[warmup:]) < 0)
        # the last step (11) is at (11 - warm-up) of the cosine's steps; after it, 0
        at = (11 - warmup) / (schedule.steps - warmup)
        assert log.rates[-1] == pytest.approx(rate * (1 + np.cos(np.pi * at)) / 2, rel=1e-4)
        assert log.end < 1e-9


@pytest.mark.parametrize("raised", [False, True], ids=["same_rate", "raised_rate"])
def test_a_run_warms_up_iff_its_rate_is_raised_and_keeps_the_averaged_weights(
    raised, pneumonia_data, tmp_path
):
    seen = {"rates": [], "epochs": []}

    class Record(keras.callbacks.Callback):  # after the trainer's callbacks
        def on_train_batch_begin(self, batch, logs=None):
            rate = self.model.optimizer.learning_rate
            seen["rates"].append(float(keras.ops.convert_to_numpy(rate)))

        def on_epoch_end(self, epoch, logs=None):
            averages = self.model.optimizer._model_variables_moving_average
            seen["epochs"].append(
                {
                    "val_auc": logs["val_auc"],
                    "model": [np.array(w) for w in self.model.trainable_weights],
                    "slots": [np.array(w) for w in averages],
                }
            )

        def on_train_end(self, logs=None):
            seen["end"] = [np.array(w) for w in self.model.trainable_weights]

    # 2 epochs of 6 steps; raised: 0.003 for a global batch of 4 is 0.006 at 16
    overrides = ["stages=[{epochs: 2, learning_rate: 0.003}]", "steps_per_epoch=6", "ema=0.9"]
    overrides += ["lr_reference_batch=4", "lr_schedule=cosine"] if raised else []
    workdir = tmp_path / "run"
    run(
        DEMO,
        data=pneumonia_data,
        workdir=workdir,
        strategy="cpu",
        overrides=overrides,
        extra_callbacks=[Record()],
        verbose=0,
    )
    rates = np.array(seen["rates"])
    (schedule,) = json.loads((workdir / "runtime.json").read_text())["lr_schedule"]
    assert json.loads((workdir / "runtime.json").read_text())["ema"] == 0.9
    if raised:
        assert schedule["warmup_steps"] == 6 and schedule["schedule"] == "cosine"
        assert (
            schedule["description"] == "warm-up 6 steps from 0.003, then cosine to 0 over 6 steps"
        )
        np.testing.assert_allclose(rates[:7], 0.003 + 0.0005 * np.arange(7), rtol=1e-5)
        assert np.all(np.diff(rates[6:]) < 0) and rates[-1] < 0.1 * rates[6]
    else:
        assert schedule["warmup_steps"] == 0 and schedule["description"] == "reduce on plateau"
        np.testing.assert_allclose(rates, 0.003, rtol=1e-6)
    assert len(rates) == 12
    assert "learning_rate" in (workdir / "history.csv").read_text().splitlines()[0]
    # at an epoch's end the model holds the averages, the optimizer's slots the raw weights (at
    # the last epoch's, Keras sets the slots to the averages too, for fit's final copy)
    first = seen["epochs"][0]
    assert (
        max(np.abs(a - b).max() for a, b in zip(first["model"], first["slots"], strict=True)) > 1e-4
    )
    # best.keras and the stage's end weights are the best epoch's averages
    best = 0 if seen["epochs"][0]["val_auc"] >= seen["epochs"][1]["val_auc"] else 1
    saved = models.load_model(workdir / "best.keras").trainable_weights
    for w, avg, end in zip(saved, seen["epochs"][best]["model"], seen["end"], strict=True):
        np.testing.assert_array_equal(np.asarray(w), avg)
        np.testing.assert_array_equal(end, avg)
