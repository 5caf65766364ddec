"""Training configuration: one flat dataclass, read from `training/*.yaml`, overridable by
`--set key=value`, and written back resolved into the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BALANCE_MODES = ("none", "class_weight", "oversample", "pos_weight")
LOSSES = ("bce", "weighted_bce", "cce")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("plateau", "cosine")


def _default_stages():
    return [{"epochs": 10, "learning_rate": 1e-3, "train_backbone": True}]


@dataclass
class Config:
    """Everything a training run needs besides the data folder, run folder and strategy.

    `batch_size` is per replica: the global batch is `batch_size x replicas`. Each entry of
    `stages` is `{epochs, learning_rate, train_backbone}`; a stage with `train_backbone: false`
    trains the head only, with the backbone's BatchNorm layers in inference mode. The learning
    rates are those for a global batch of `lr_reference_batch`; the trainer scales them to the
    global batch it actually gets (`schedules.scale_learning_rate`), so one config serves 1 CPU,
    8 GPUs and a TPU slice alike. `image_size` must not exceed the stored images' size.

    Learning-rate schedule, per stage (each stage has a fresh optimizer). Where the scaling
    raises a stage's rate above the config's, the rate ramps linearly from the config's rate to
    the scaled one over the stage's first `warmup_epochs` epochs (a float: 0.5 is half an epoch;
    0 turns it off; at most half the stage): under `plateau` set once per execution
    (`steps_per_execution` steps), under `cosine` at every step. Where it does not (global batch
    <= `lr_reference_batch`), there is no warm-up: the scaled rate from the first step. Then
    `lr_schedule`: `plateau` (default) multiplies the rate by `reduce_lr_factor` after
    `reduce_lr_patience` epochs without improvement of `monitor` (epochs ending inside the
    warm-up do not count), down to `min_learning_rate`; `cosine` decays it to 0 at the stage's
    last step (`keras.optimizers.schedules.CosineDecay`; early stopping may end the stage
    sooner).

    `ema` (e.g. 0.999; default null: off) keeps an exponential moving average of the trainable
    weights in the optimizer, with that momentum per step, restarted at each stage: validation,
    `best.keras`, the stage's end weights and the export are the averaged weights (BatchNorm's
    moving statistics stay the trained ones). Pick it so that 1 / (1 - ema) steps is well under
    a stage's steps.
    """

    dataset: str = "pneumonia"
    model: str = "densenet121"
    weights: str = "imagenet"
    image_size: int = 224
    channels: int = 1  # 1: gray, same outputs as 3 (see models.stem_kernel); 3: gray repeated
    activation: str = "sigmoid"
    dropout: float = 0.0
    batch_size: int = 32
    balance: str = "none"
    oversample_ratio: list | None = None
    augment: dict = field(default_factory=dict)
    augment_in_model: bool = True  # on the accelerator (see cxr_tf.augment); false: in tf.data
    cache: bool | None = None
    seed: int = 0
    optimizer: str = "adam"
    loss: str = "bce"
    stages: list = field(default_factory=_default_stages)
    lr_reference_batch: int = 32  # the global batch the stages' learning rates are meant for
    steps_per_epoch: int | None = None
    monitor: str = "val_loss"
    early_stopping_patience: int = 5
    reduce_lr_factor: float = 0.1
    reduce_lr_patience: int = 2
    min_learning_rate: float = 1e-7
    lr_schedule: str = "plateau"  # plateau (ReduceLROnPlateau) or cosine (to 0 over a stage)
    warmup_epochs: float = 1.0  # linear warm-up where the scaling raises a rate; 0: none
    ema: float | None = None  # momentum of a moving average of the weights, e.g. 0.999
    steps_per_execution: int | None = None
    mixed_precision: str = "auto"
    threshold_rule: str = "youden"  # youden, max_f1, sensitivity=S or fixed=T (on validation)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad key, its value and what is allowed."""
        from cxr_tf.convert import DATASETS

        self._check_types()

        checks = [
            ("dataset", self.dataset in DATASETS, sorted(DATASETS)),
            ("balance", self.balance in BALANCE_MODES, BALANCE_MODES),
            ("loss", self.loss in LOSSES, LOSSES),
            ("mixed_precision", self.mixed_precision in PRECISIONS, PRECISIONS),
            ("activation", self.activation in ("sigmoid", "softmax"), ("sigmoid", "softmax")),
            ("optimizer", self.optimizer in ("adam", "sgd"), ("adam", "sgd")),
            ("channels", self.channels in (1, 3), (1, 3)),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, LR_SCHEDULES),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ValueError(f"config {key}={getattr(self, key)!r} is not one of {allowed}")
        if self.batch_size < 1 or self.image_size < 16:
            raise ValueError(
                f"config batch_size={self.batch_size} / image_size={self.image_size} too small"
            )
        if not isinstance(self.lr_reference_batch, int) or self.lr_reference_batch < 1:
            raise ValueError(
                f"config lr_reference_batch={self.lr_reference_batch!r}: give the global batch "
                "size the learning rates are meant for, a whole number >= 1 (e.g. 16)"
            )
        if self.warmup_epochs < 0:
            raise ValueError(
                f"config warmup_epochs={self.warmup_epochs} is negative; give the warm-up's "
                "length in epochs (e.g. 1 or 0.5), or 0 for none"
            )
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(
                f"config ema={self.ema} is not a momentum in (0, 1); use e.g. 0.999, or null "
                "for no weight averaging"
            )
        from cxr_tf.metrics import parse_threshold_rule

        parse_threshold_rule(self.threshold_rule)  # names the rule and the choices
        if not self.stages:
            raise ValueError("config stages is empty; give at least one {epochs, learning_rate}")
        for i, stage in enumerate(self.stages):
            unknown = set(stage) - {"epochs", "learning_rate", "train_backbone"}
            if unknown or "epochs" not in stage or "learning_rate" not in stage:
                raise ValueError(
                    f"config stages[{i}]={stage} needs epochs and learning_rate (and optionally "
                    f"train_backbone); unknown keys: {sorted(unknown)}"
                )
        from cxr_tf.augment import Augment

        Augment.from_dict(self.augment)  # unknown augment keys fail here, not mid-run
        if not isinstance(self.augment_in_model, bool):
            raise ValueError(
                f"config augment_in_model={self.augment_in_model!r}: use true or false"
            )
        if self.balance == "pos_weight" and self.loss != "weighted_bce":
            raise ValueError(
                f"balance='pos_weight' with loss={self.loss!r} does nothing: the positive "
                "weights go into the loss, so set loss: weighted_bce (or another balance)"
            )
        if (self.activation == "softmax") != (self.loss == "cce"):
            raise ValueError(
                f"activation={self.activation!r} with loss={self.loss!r}: softmax goes with "
                "loss cce, sigmoid with bce or weighted_bce"
            )

    def _check_types(self) -> None:
        """Each key's value has its declared type (YAML gives `abc` as a string, `16` as an int,
        `1e-3` as a float); whole numbers count as floats, nothing counts as an int but ints."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            names = [t.strip() for t in str(f.type).split("|")]
            if value is None and "None" in names:
                continue
            allowed = {
                "int": (int,),
                "float": (int, float),
                "str": (str,),
                "bool": (bool,),
                "list": (list,),
                "dict": (dict,),
            }
            types = tuple(t for n in names for t in allowed.get(n, ()))
            wrong_bool = isinstance(value, bool) and "bool" not in names
            if not isinstance(value, types) or wrong_bool:
                raise ValueError(
                    f"config {f.name}={value!r} ({type(value).__name__}) should be "
                    + " or ".join(n.replace("None", "null") for n in names)
                    + f", e.g. --set {f.name}={_example(f)}"
                )
        positive = (
            "image_size",
            "batch_size",
            "lr_reference_batch",
            "steps_per_epoch",
            "steps_per_execution",
        )
        for key in positive:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"config {key}={value} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config dropout={self.dropout} must be in [0, 1)")

    @property
    def total_epochs(self) -> int:
        return sum(int(s["epochs"]) for s in self.stages)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _example(f) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()


def _fields() -> dict:
    return {f.name: f for f in dataclasses.fields(Config)}


def from_dict(values: dict) -> Config:
    """A Config from a mapping; unknown keys raise ValueError naming the allowed keys."""
    unknown = sorted(set(values) - set(_fields()))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(_fields())}")
    return Config(**values)


def load(path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config and apply `key=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist (see training/*.yaml)")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not key=value (e.g. --set batch_size=16)")
        key = key.strip()
        if "." in key:  # augment.rotation_deg=5
            top, sub = key.split(".", 1)
            values.setdefault(top, {})
            values[top][sub] = yaml.safe_load(raw)
        else:
            values[key] = yaml.safe_load(raw)
    return from_dict(values)


def save(config: Config, path) -> None:
    """Write the resolved config as YAML (what `load` reads back)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
