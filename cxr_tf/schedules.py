"""Each stage's learning rate and optimizer: the rate scaled to the global batch, a linear warm-up
where that raises it, then ReduceLROnPlateau or a cosine decay, and optionally a moving average
of the weights (EMA). All of it resumes exactly: where a schedule is comes from the optimizer's
step counter, which the backup (`resume.EpochCommit`) restores. Used by `trainer.train`.
"""

from __future__ import annotations

import math

import keras


def scale_learning_rate(lr: float, global_batch: int, reference_batch: int, optimizer: str):
    """The learning rate for `global_batch`, given `lr` for `reference_batch`.

    Adam: square-root rule, lr x sqrt(global / reference) (Malladi et al. 2022, "On the SDEs and
    scaling rules for adaptive gradient algorithms"): Adam's normalised step makes the linear rule
    overshoot. SGD: linear rule, lr x global / reference (Goyal et al. 2017). Either way a
    raised rate is reached by a linear warm-up from `lr` (`plan_schedules`, `warmup_epochs`),
    Goyal et al.'s gradual warm-up: even under the square root, 16x the batch (a TPU v3-8 over
    CheXNet's 16) is 4x the rate, applied to a fresh optimizer's first steps.
    """
    ratio = global_batch / reference_batch
    return float(lr) * (math.sqrt(ratio) if optimizer == "adam" else ratio)


def lr_rule(optimizer: str) -> str:
    """The name of `scale_learning_rate`'s rule for `optimizer`, as printed and saved."""
    return "sqrt" if optimizer == "adam" else "linear"


class StageSchedule:
    """One stage's learning rate: the config's `config_rate`, scaled to `rate`; a linear warm-up
    from the one to the other over the first `warmup_steps` of the stage's `steps` (0: none);
    then `kind`, plateau (ReduceLROnPlateau) or cosine (to 0 at the stage's last step)."""

    def __init__(self, config_rate, rate, steps, warmup_steps, kind, steps_per_execution=1):
        self.config_rate, self.rate = float(config_rate), float(rate)
        self.steps, self.warmup_steps, self.kind = int(steps), int(warmup_steps), kind
        self.steps_per_execution = int(steps_per_execution)

    def warmup_rate(self, step: int) -> float:
        """The warm-up's rate at optimizer step `step` (CosineDecay's warm-up formula)."""
        fraction = min(step, self.warmup_steps) / self.warmup_steps
        return self.config_rate + (self.rate - self.config_rate) * fraction

    def optimizer_rate(self):
        """The optimizer's `learning_rate`: a CosineDecay (its warm-up in the schedule), or for
        plateau a float (the warm-up's start, which `_LinearWarmup` then ramps)."""
        if self.kind == "cosine":
            schedules = keras.optimizers.schedules
            if self.warmup_steps:
                return schedules.CosineDecay(
                    initial_learning_rate=self.config_rate,
                    decay_steps=self.steps - self.warmup_steps,
                    warmup_target=self.rate,
                    warmup_steps=self.warmup_steps,
                )
            return schedules.CosineDecay(initial_learning_rate=self.rate, decay_steps=self.steps)
        return self.config_rate if self.warmup_steps else self.rate

    def describe(self) -> str:
        rest = (
            f"cosine to 0 over {self.steps - self.warmup_steps} steps"
            if self.kind == "cosine"
            else "reduce on plateau"
        )
        if not self.warmup_steps:
            return rest
        every = (
            f" (set every {self.steps_per_execution} steps)"
            if self.kind == "plateau" and self.steps_per_execution > 1
            else ""
        )
        return f"warm-up {self.warmup_steps} steps from {self.config_rate:.3g}{every}, then {rest}"

    def to_dict(self) -> dict:
        return {
            "schedule": self.kind,
            "learning_rate": self.rate,
            "warmup_steps": self.warmup_steps,
            "warmup_from": self.config_rate if self.warmup_steps else None,
            "steps": self.steps,
            "description": self.describe(),
        }


def plan_schedules(cfg, global_batch: int, steps_per_epoch: int, steps_per_execution: int = 1):
    """Each stage's `StageSchedule`. A stage warms up iff the scaling rule raises its rate above
    the config's; every such stage does, not only the first, since each starts a fresh optimizer
    (Adam's moments at zero) and often on newly unfrozen layers."""
    plans = []
    for stage in cfg.stages:
        config_rate = float(stage["learning_rate"])
        rate = scale_learning_rate(config_rate, global_batch, cfg.lr_reference_batch, cfg.optimizer)
        steps = int(stage["epochs"]) * steps_per_epoch
        warmup = 0
        if rate > config_rate and cfg.warmup_epochs > 0:
            # at most half the stage, so that a short stage (one epoch on many chips) still
            # trains at its rate for a while; the printed schedule says how many steps it got
            warmup = max(1, min(round(cfg.warmup_epochs * steps_per_epoch), steps // 2))
        plans.append(
            StageSchedule(config_rate, rate, steps, warmup, cfg.lr_schedule, steps_per_execution)
        )
    return plans


def make_optimizer(cfg, schedule: StageSchedule):
    """The stage's optimizer (create it in the runtime's scope), with the weights' moving
    average when `cfg.ema` is set."""
    ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema else {}
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(schedule.optimizer_rate(), **ema)
    return keras.optimizers.SGD(schedule.optimizer_rate(), momentum=0.9, **ema)


def lr_callbacks(cfg, schedule: StageSchedule, mode: str):
    """(the callbacks that drive the stage's rate, its ReduceLROnPlateau or None). Each logs the
    rate as `learning_rate`, so history.csv has the same columns whatever the schedule."""
    if schedule.kind == "cosine":
        return [_LogLearningRate()], None
    plateau = dict(
        monitor=cfg.monitor,
        mode=mode,
        factor=cfg.reduce_lr_factor,
        patience=cfg.reduce_lr_patience,
        min_lr=cfg.min_learning_rate,
    )
    if not schedule.warmup_steps:
        reduce_lr = keras.callbacks.ReduceLROnPlateau(**plateau)
        return [reduce_lr], reduce_lr
    reduce_lr = _ReduceLROnPlateauAfterWarmup(schedule.warmup_steps, **plateau)
    return [_LinearWarmup(schedule), reduce_lr], reduce_lr


def _current_rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _step(optimizer) -> int:
    """The optimizer's step counter as a number (a MirroredVariable under tf.distribute, which
    `int()` does not take)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _optimizer_step(model) -> int:
    """The optimizer's step counter, mid-epoch too: under JAX, `fit` keeps the variables' values
    in its own state during an epoch, so sync them back first (`fit` then reads them again)."""
    if keras.backend.backend() == "jax":
        model.jax_state_sync()
    return _step(model.optimizer)


class _LinearWarmup(keras.callbacks.Callback):
    """The plateau schedule's warm-up: sets the optimizer's rate from its step counter, the
    config's rate to the scaled one over `warmup_steps`, then leaves the scaled rate (a variable,
    not a LearningRateSchedule) to ReduceLROnPlateau. Batch callbacks run once per execution, so
    the rate changes every `steps_per_execution` steps: an execution's first step's rate holds
    for all of it. Stateless: the step counter, which the backup (`resume.EpochCommit`)
    restores, says where the warm-up is, so a resumed run ramps as an uninterrupted one."""

    def __init__(self, schedule: StageSchedule):
        super().__init__()
        self.schedule = schedule
        self.done = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.done:
            return
        step = _optimizer_step(self.model)
        self.done = step >= self.schedule.warmup_steps  # resumed past it: the rate is restored
        if not self.done:
            self.model.optimizer.learning_rate = self.schedule.warmup_rate(step)

    def on_train_batch_end(self, batch, logs=None):
        if not self.done and _optimizer_step(self.model) >= self.schedule.warmup_steps:
            # the scaled rate before any epoch's end, where ReduceLROnPlateau and the backup
            # read it
            self.model.optimizer.learning_rate = self.schedule.rate
            self.done = True


class _ReduceLROnPlateauAfterWarmup(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that starts judging after the warm-up (ending inside an epoch counts):
    during it the rate is the warm-up's, which a reduction would not change."""

    def __init__(self, warmup_steps: int, **kwargs):
        super().__init__(**kwargs)
        self.warmup_steps = warmup_steps

    def on_epoch_end(self, epoch, logs=None):
        if _step(self.model.optimizer) >= self.warmup_steps:
            return super().on_epoch_end(epoch, logs)
        if logs is not None:
            logs["learning_rate"] = _current_rate(self.model.optimizer)


class _LogLearningRate(keras.callbacks.Callback):
    """Logs the rate as `learning_rate` at each epoch's end, as ReduceLROnPlateau does."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_rate(self.model.optimizer)


class SwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """`SwapEMAWeights(swap_on_epoch=True)`, resumable. At each epoch's end it puts the averaged
    weights in the model (and the raw ones in the optimizer's average slots) for the callbacks
    after it: checkpoint, early stopping's best weights, the backup. So a backup holds them that
    way round, and a run resumed from one must swap back at its first epoch's start, as the
    uninterrupted run does; Keras' callback, new in each run, would not know to."""

    def __init__(self, resumes: bool):
        super().__init__(swap_on_epoch=True)
        self.resumes = resumes  # whether the backup (`resume.EpochCommit`) will load a state

    def on_train_begin(self, logs=None):
        self._ema_weights_in_model = self.resumes
