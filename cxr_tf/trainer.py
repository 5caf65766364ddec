"""The training run, top to bottom: data, model, stages of fit with callbacks, thresholds, export.

Imported after `runtime.choose_backend` has fixed the Keras backend (the CLI, `cxr_tf.train`,
does that). The run folder (`workdir`) holds everything a run makes, and running the same
command again resumes an interrupted run at its last finished epoch:

    config.yaml        the resolved config        runtime.json     backend, strategy, batches
    history.csv        one row per epoch          tensorboard/     TensorBoard logs
    best.keras         best model by the monitor  backup/          resume state (while running)
    val_metrics.json   validation metrics         thresholds.json  per-class decision thresholds
    saved_model/       the exported model         done.json        written last
"""

from __future__ import annotations

import json
import time
import warnings

import keras
import numpy as np

from cxr_tf import (
    calibration,
    inference,
    input_pipeline,
    metrics,
    models,
    resume,
    schedules,
    storage,
)
from cxr_tf import config as config_lib
from cxr_tf.losses import make_loss
from cxr_tf.runtime import Runtime, default_precision, default_steps_per_execution


class _ValLossWithoutPadding(keras.callbacks.Callback):
    """Rescales `val_loss` to the real validation examples.

    Keras averages the loss over every row of the evaluation pass, and the pass ends in weight-0
    padding rows (so that every example is seen exactly once with static shapes): its figure is
    `sum(loss of real rows) / rows`. Every real row has weight 1, so `rows / examples` makes it
    exact. It must be the first callback: checkpointing, early stopping, LR reduction and the
    history then all see the exact value. The weighted metrics need nothing: padding weighs 0.
    """

    def __init__(self, rows: int, examples: int):
        super().__init__()
        self.scale = rows / examples

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_loss" in logs:
            logs["val_loss"] = float(logs["val_loss"]) * self.scale


def plan_epoch(auto_steps: int, configured: int | None, steps_per_execution: int):
    """(steps per epoch, steps per execution) such that an epoch is whole executions.

    Keras runs whole executions, so 18 steps at 32 per execution would run 32 and move the
    epoch's end (and what callbacks and resume see). A configured `steps_per_epoch` is kept and
    the steps per execution lowered to a divisor of it; the automatic one (about one pass over
    the data) is rounded down to a multiple of the steps per execution.
    """
    steps = configured or auto_steps
    per_execution = max(1, min(int(steps_per_execution), steps))
    if configured:
        while configured % per_execution:
            per_execution -= 1
        return configured, per_execution
    return steps - steps % per_execution, per_execution


def monitor_mode(monitor: str) -> str:
    """'max' for AUC/accuracy/precision/recall monitors, 'min' for losses."""
    return "max" if any(k in monitor for k in ("auc", "acc", "precision", "recall")) else "min"


def make_metrics(task: str, num_labels: int, activation: str) -> list:
    """AUC, accuracy, precision and recall. Multi-label: the AUC is the mean per-label AUROC over
    the labels the split has positives and negatives for (`cxr_tf.monitor.MeanAUC`), as
    evaluation's mean AUROC; Keras' own would count each label without positives as 0."""
    from cxr_tf.monitor import MeanAUC

    multi = task == "multilabel"
    acc = (
        keras.metrics.CategoricalAccuracy(name="accuracy")
        if activation == "softmax"
        else keras.metrics.BinaryAccuracy(name="accuracy")
    )
    return [
        MeanAUC(name="auc", multi_label=multi, num_labels=num_labels if multi else None),
        acc,
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]


def _dataset(runtime: Runtime, data_dir, cfg, split: str, training: bool, **kw):
    """A dataset for `fit`, distributed the way the runtime needs it."""

    def fn(ctx):
        return input_pipeline.make_dataset(
            data_dir,
            split,
            global_batch_size=runtime.global_batch,
            image_size=cfg.image_size,
            training=training,
            augment=cfg.augment,
            balance=cfg.balance if training else "none",
            seed=cfg.seed,
            input_context=ctx,
            channels=cfg.channels,
            label_mode="categorical" if cfg.activation == "softmax" else None,
            dataset=cfg.dataset,
            oversample_ratio=cfg.oversample_ratio,
            cache=cfg.cache,
            augment_in_model=training and cfg.augment_in_model,
            image_dtype="uint8",  # bytes to the device; the model makes floats (its contract)
            **kw,
        )

    if runtime.tf_strategy is not None and runtime.num_replicas > 1:
        return runtime.tf_strategy.distribute_datasets_from_function(fn)
    if runtime.backend == "jax" and runtime.num_processes > 1:
        import jax
        import tensorflow as tf

        ctx = tf.distribute.InputContext(
            num_input_pipelines=jax.process_count(),
            input_pipeline_id=jax.process_index(),
            num_replicas_in_sync=jax.process_count(),
        )
        return fn(ctx)
    return fn(None)


def _check_workdir(workdir, cfg) -> bool:
    """True if `workdir` already holds this finished run; raises if it holds another run."""
    saved = workdir / "config.yaml"
    if saved.is_file():
        previous = config_lib.load(saved).to_dict()
        diff = sorted(k for k, v in cfg.to_dict().items() if previous.get(k) != v)
        if diff:
            raise ValueError(
                f"{workdir} holds a run with another config (differs in {diff}); resume it with "
                "the same config, or pick a new --workdir"
            )
    return (workdir / "done.json").is_file()


def _check_same_plan(workdir, global_batch: int, steps: int, per_execution: int) -> None:
    """An unfinished run resumes only on the plan it started with: its saved optimizer state,
    learning-rate schedule and the batches a resumed epoch skips all count in those steps."""
    saved = workdir / "runtime.json"
    if not (saved.is_file() and (workdir / "backup").is_dir()):
        return
    before = json.loads(saved.read_text())
    now = {
        "global_batch": global_batch,
        "steps_per_epoch": steps,
        "steps_per_execution": per_execution,
    }
    diff = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
    if diff:
        said = ", ".join(f"{k} {a} then, {b} here" for k, (a, b) in diff.items())
        raise ValueError(
            f"{workdir} holds an unfinished run planned for other hardware ({said}); resume it "
            "where it started (same devices and batch_size), or pick a new --workdir"
        )


def train(
    cfg: config_lib.Config,
    data_dir,
    workdir,
    runtime: Runtime,
    *,
    extra_callbacks=(),
    verbose: int | str = "auto",
) -> dict:
    """Train `cfg` on `data_dir` into `workdir`; returns the run's summary (also in done.json).

    Raises ValueError for a config that does not fit the data, FileNotFoundError for a missing
    or incomplete data folder.
    """
    workdir = storage.path(workdir)
    # Several hosts share one run folder (a bucket or a shared file system): process 0 writes
    # every file in it, and every host resumes from the one backup there.
    writes = runtime.process_index == 0
    _agree_on_resume(runtime, workdir, cfg)
    if _check_workdir(workdir, cfg):
        print(f"{workdir} holds a finished run; nothing to do (use a new --workdir to retrain)")
        return json.loads((workdir / "done.json").read_text())

    # ---- input
    info = input_pipeline.read_info(data_dir, cfg.dataset)
    if info.name != cfg.dataset:
        raise ValueError(f"--data holds {info.name}, but the config trains dataset={cfg.dataset}")
    if cfg.activation == "softmax" and info.task == "multilabel":
        raise ValueError("activation softmax does not fit multi-label nih14; use sigmoid + bce")
    num_outputs = (
        len(info.label_names) if (info.task == "multilabel" or cfg.activation == "softmax") else 1
    )
    if cfg.augment_in_model:
        input_pipeline.check_image_size(info, cfg.image_size)
    print(f"cxr_tf.train: {runtime.describe()}")
    steps, steps_per_execution = plan_epoch(
        input_pipeline.steps_per_epoch(info, "train", runtime.global_batch, runtime.num_processes),
        cfg.steps_per_epoch,
        cfg.steps_per_execution or default_steps_per_execution(runtime),
    )
    plans = schedules.plan_schedules(cfg, runtime.global_batch, steps, steps_per_execution)
    learning_rates = [s.rate for s in plans]
    described = [s.describe() for s in plans]
    print(
        f"cxr_tf.train: an epoch is {steps} steps of {runtime.global_batch} images, "
        f"{steps_per_execution} per execution; learning rate "
        + ", ".join(f"{lr:.3g}" for lr in learning_rates)
        + f" ({schedules.lr_rule(cfg.optimizer)} rule from the config's "
        f"rates at global batch {cfg.lr_reference_batch}); "
        + (
            described[0]
            if len(described) == 1
            else "; ".join(f"stage {k + 1}: {d}" for k, d in enumerate(described))
        )
        + (f"; weights averaged (EMA {cfg.ema})" if cfg.ema else "")
    )
    _print_steps_per_execution(runtime, steps_per_execution)
    _check_same_plan(workdir, runtime.global_batch, steps, steps_per_execution)

    # ---- model
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = default_precision(runtime)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(cfg.seed)
    with runtime.scope():
        model = models.build_model(
            cfg.model,
            num_classes=num_outputs,
            image_size=cfg.image_size,
            channels=cfg.channels,
            weights=cfg.weights,
            activation=cfg.activation,
            dropout=cfg.dropout,
            augment=cfg.augment if cfg.augment_in_model else None,
            seed=cfg.seed,
            input_dtype="uint8",
        )
    # Written once the data and the config have proved usable, so a typo never claims (or
    # leaves behind) the run folder.
    if writes:
        workdir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, workdir / "config.yaml")
        storage.write_text(
            workdir / "runtime.json",
            runtime.to_json(
                learning_rates=learning_rates,
                lr_rule=schedules.lr_rule(cfg.optimizer),
                lr_reference_batch=cfg.lr_reference_batch,
                lr_schedule=[s.to_dict() for s in plans],
                ema=cfg.ema,
                steps_per_epoch=steps,
                steps_per_execution=steps_per_execution,
                precision=precision,
            ),
        )
    # Each host's own local --workdir would train apart (and hang once they save differently):
    # every host must see the file process 0 has just written.
    _seen_on_every_host(runtime, workdir / "runtime.json")
    pos_weight = input_pipeline.positive_weights(info) if cfg.loss == "weighted_bce" else None

    # ---- stages of fit
    mode = monitor_mode(cfg.monitor)
    best_path = workdir / "best.keras"
    best_value = None
    history = []  # one row per finished epoch, over all stages (resume.EpochCommit)
    start_epoch = 0
    val_ds = _dataset(runtime, data_dir, cfg, "validation", training=False)
    val_rows = runtime.global_batch * input_pipeline.eval_steps(
        info, "validation", runtime.global_batch, runtime.num_processes
    )
    for k, stage in enumerate(cfg.stages):
        end_epoch = start_epoch + int(stage["epochs"])
        stage_end = workdir / f"stage{k + 1}_end.weights.h5"
        stage_done = workdir / "backup" / f"stage{k + 1}.json"
        stage_dir = workdir / "backup" / f"stage{k + 1}"
        if stage_done.is_file():  # finished before an interruption: skip to its end state
            state = json.loads(stage_done.read_text())
            best_value, history = state["best"], state["history"]
            model.load_weights(str(stage_end))
            start_epoch = end_epoch
            continue
        models.set_backbone_trainable(model, bool(stage.get("train_backbone", True)))
        with runtime.scope():
            model.compile(
                optimizer=schedules.make_optimizer(cfg, plans[k]),
                loss=make_loss(cfg.loss, pos_weight),
                # weighted: evaluation pads its last batch with weight-0 examples, which plain
                # `metrics` would count (Keras applies sample weights to weighted_metrics only).
                weighted_metrics=make_metrics(info.task, num_outputs, cfg.activation),
                steps_per_execution=steps_per_execution,
            )
        if runtime.backend == "jax":
            # Keras' JAX fit builds unbuilt metrics from a first batch of the training stream, on
            # an extra pass over it; how far that pass reads moves tf.data's reshuffle seeds and
            # fills its caches, so a resumed run (whose stream skips batches) would then see
            # other data than an uninterrupted one. One validation batch builds them instead.
            model.evaluate(val_ds.take(1), verbose=0)
        early = keras.callbacks.EarlyStopping(
            monitor=cfg.monitor,
            mode=mode,
            patience=cfg.early_stopping_patience,
            restore_best_weights=True,
        )
        rate_callbacks, reduce_lr = schedules.lr_callbacks(cfg, plans[k], mode)
        checkpoint = resume.BestCheckpoint(
            best_path, cfg.monitor, mode, best_value, stage_dir, writes=writes
        )
        commit = resume.EpochCommit(
            stage_dir, workdir / "history.csv", history, early, reduce_lr, checkpoint, writes
        )
        resume_at = commit.resume_epoch(start_epoch, end_epoch)
        if resume_at > start_epoch:
            print(
                f"cxr_tf.train: resuming at epoch {resume_at + 1} of {cfg.total_epochs} from "
                f"{stage_dir}"
                if resume_at < end_epoch
                else f"cxr_tf.train: stage {k + 1} had finished; finishing the run"
            )
        train_ds = _dataset(
            runtime,
            data_dir,
            cfg,
            "train",
            training=True,
            # a finished stage only runs fit's end: no need to read past its data
            skip_batches=(resume_at - start_epoch) * steps if resume_at < end_epoch else 0,
        )
        _check_step_memory(model, runtime, cfg, train_ds)
        callbacks = [
            _ValLossWithoutPadding(val_rows, info.num_examples("validation")),
            # before the checkpoint, early stopping and the backup: they see the averaged weights
            *([schedules.SwapEMAWeights(commit.resumes)] if cfg.ema else []),
            keras.callbacks.TerminateOnNaN(),
            checkpoint,
            early,
            *rate_callbacks,
            *([keras.callbacks.TensorBoard(str(workdir / "tensorboard"))] if writes else []),
            commit,  # after every callback whose state it keeps
            *extra_callbacks,
        ]
        try:
            with warnings.catch_warnings():
                # The finite evaluation pass ending is expected, not a data shortage.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(
                    train_ds,
                    shuffle=False,  # the pipeline shuffles
                    epochs=end_epoch,
                    initial_epoch=resume_at,
                    steps_per_epoch=steps,
                    validation_data=val_ds,
                    # No validation_steps: the padded evaluation pass is finite and exact, and
                    # without steps Keras starts a fresh iterator each epoch (with steps it keeps
                    # one, from which its distributed symbolic build has already taken a batch).
                    callbacks=callbacks,
                    verbose=verbose,
                )
        except KeyboardInterrupt as err:
            epoch = resume_at if commit.epoch is None else commit.epoch
            raise resume.Interrupted(
                f"interrupted in epoch {epoch + 1} of {cfg.total_epochs}; run the same command "
                "to resume"
            ) from err
        best_value, history = checkpoint.best, commit.history  # a float or None
        resume.save(model, stage_end, writes, weights=True)
        if writes:
            storage.write_text(stage_done, json.dumps({"best": best_value, "history": history}))
        start_epoch = end_epoch
    runtime.host_values(0)  # every host waits here until process 0 has written best.keras

    # ---- thresholds, validation metrics, export: every host computes (the forward pass may
    # span them), process 0 writes
    if _seen_on_every_host(runtime, best_path):  # and no host saves it before all have looked
        with warnings.catch_warnings():  # a best model of an earlier stage: its optimizer differs
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(best_path))
    elif writes:  # no epoch improved on the monitor's start value: keep the last weights
        storage.save_model(model, best_path)
    else:
        resume.save(model, best_path, writes=False)  # the collective process 0's save joins
    preds = inference.predict_split(
        model, data_dir, "validation", cfg.dataset, batch_size=runtime.global_batch
    )
    calibrator = fit_calibration(cfg, info, preds.probs, preds.labels)
    probs, labels = calibrator.apply(preds.probs), preds.labels
    thresholds = metrics.choose_thresholds(probs, labels, cfg.threshold_rule)
    label_names = info.label_names if num_outputs > 1 else [info.label_names[1]]
    val_metrics = metrics.summarize(probs, labels, thresholds, label_names)
    val_metrics["ece"] = [
        calibration.expected_calibration_error(labels[:, j], probs[:, j])
        for j in range(probs.shape[1])
    ]
    summary = {
        "workdir": str(workdir),
        "best_model": str(best_path),
        "monitor": cfg.monitor,
        "best": best_value,
        "val_auroc_mean": val_metrics["macro"]["auroc"],
        "saved_model": None,
        "runtime": json.loads(runtime.to_json()),
    }
    if writes:
        metrics.save_thresholds(
            workdir / "thresholds.json",
            label_names,
            thresholds,
            "validation",
            cfg.threshold_rule,
            calibrator,
        )
        storage.write_text(workdir / "val_metrics.json", json.dumps(val_metrics, indent=2))
        summary["saved_model"] = _export(best_path, workdir)
        storage.write_text(workdir / "done.json", json.dumps(summary, indent=2))
        # Resume state is only needed until done.json exists.
        storage.rmtree(workdir / "backup")
        for stage_end in workdir.glob("stage*_end.weights.h5"):
            stage_end.unlink()
    else:
        print(f"cxr_tf.train: process {runtime.process_index} done; process 0 writes {workdir}")
    # All hosts leave together, once process 0 has written done.json: a host that left first
    # would wait in JAX's shutdown barrier (300 s by default) while process 0 exports, or fail.
    runtime.host_values(0)
    return summary


def resume_point(workdir, cfg) -> int:
    """How far the run in `workdir` has come, as this host sees it: the epochs committed to
    its backup (0 for none), or -1 for a finished run."""
    if (workdir / "done.json").is_file():
        return -1
    start = 0
    for k, stage in enumerate(cfg.stages):
        end = start + int(stage["epochs"])
        if not (workdir / "backup" / f"stage{k + 1}.json").is_file():
            state = resume.read_state(workdir / "backup" / f"stage{k + 1}")
            return state["epoch"] if state else start
        start = end
    return start


def _agree_on_resume(runtime: Runtime, workdir, cfg) -> None:
    """Several hosts: stop, on every host, unless all see the run folder at the same point
    (a folder on each host's own disk instead of a shared one, a host recreated without its
    disk); resuming from different epochs would run different steps and hang the collectives."""
    if runtime.num_processes == 1:
        return
    seen = runtime.host_values(resume_point(workdir, cfg))
    if len(set(seen)) > 1:
        said = ", ".join(
            f"process {k}: " + ("finished" if v < 0 else f"{v} epochs done" if v else "no backup")
            for k, v in enumerate(seen)
        )
        raise ValueError(f"the hosts see {workdir} at different points ({said}); {_SHARED}")


_SHARED = (
    "--workdir must be one folder every host shares (gs://BUCKET/run or a shared file system), "
    "not a local disk"
)
# How long a host looks again for a file process 0 has written before taking the run folder for
# an unshared one: NFS may answer from its cache of a missing name for up to a minute (acdirmax).
_SHARED_WAIT_S = 60


def _seen_on_every_host(runtime: Runtime, p) -> bool:
    """Whether the file `p` is there, as every host sees it, once process 0 has written it (a
    collective). Stops every host with one line if they see it differently (each host's own
    local --workdir, not one shared folder); a host that does not see what process 0 sees looks
    again for up to `_SHARED_WAIT_S` first."""
    seen = runtime.host_values(int(p.is_file()))
    if seen[0] and not all(seen):  # every host takes this branch alike: the same collectives
        there, deadline = bool(seen[runtime.process_index]), time.monotonic() + _SHARED_WAIT_S
        while not there and time.monotonic() < deadline:
            time.sleep(1)
            there = p.is_file()
        seen = runtime.host_values(int(there))
    if len(set(seen)) > 1:
        said = ", ".join(
            f"process {k}: {'has' if v else 'no'} {p.name}" for k, v in enumerate(seen)
        )
        raise ValueError(f"the hosts see {p.parent} differently ({said}); {_SHARED}")
    return bool(seen[0])


def fit_calibration(cfg, info, probs, labels) -> calibration.Calibration:
    """The prior correction for oversampling and the validation-fitted temperatures (sigmoid
    outputs; softmax ones stay as they are). See `cxr_tf.calibration`."""
    if cfg.activation == "softmax":
        return calibration.Calibration.identity(probs.shape[1])
    offset = np.zeros(probs.shape[1])
    if cfg.balance == "oversample":  # single-label: one output, the second class's probability
        weights = cfg.oversample_ratio or [1.0] * len(info.label_names)
        train_prior = weights[1] / sum(weights)
        counts = info.splits["train"]["class_counts"]
        data_prior = counts[info.label_names[1]] / info.num_examples("train")
        offset[0] = calibration.prior_offset(train_prior, data_prior)
    return calibration.fit(probs, labels, offset)


def _export(best_path, workdir) -> str | None:
    """The evaluation/export stage's SavedModel (image bytes in), from the best model."""
    from cxr_tf.export import export_model

    try:
        return str(
            export_model(
                best_path, workdir / "saved_model", thresholds_file=workdir / "thresholds.json"
            )
        )
    except Exception as err:  # training results stay usable; export can be re-run by hand
        print(
            f"warning: SavedModel export failed ({type(err).__name__}: {err}); run "
            f"`python -m cxr_tf.export --model {best_path} --out {workdir / 'saved_model'}`"
        )
        return None


def _check_step_memory(model, runtime: Runtime, cfg, train_ds) -> None:
    """JAX: the compiled train step's memory against the device's, before `fit` (which reuses
    that compile); stops a TPU run that cannot fit with a one-line error (`cxr_tf.memory`)."""
    if runtime.backend == "jax":
        from cxr_tf import memory

        memory.check_train_step(model, runtime, cfg, train_ds.element_spec)


def _print_steps_per_execution(runtime: Runtime, steps_per_execution: int) -> None:
    """What steps_per_execution does on this backend (`runtime.describe_steps_per_execution`)."""
    from cxr_tf.runtime import describe_steps_per_execution

    print(f"cxr_tf.train: {describe_steps_per_execution(runtime, steps_per_execution)}")
