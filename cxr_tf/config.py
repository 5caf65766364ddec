"""Training configuration: one flat dataclass, read from `training/*.yaml`, overridable by
`--set key=value`, and written back resolved into the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from cxr_tf import storage
from cxr_tf.storage import write_text

BALANCE_MODES = ("none", "class_weight", "oversample", "pos_weight")
LOSSES = ("bce", "weighted_bce", "cce")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("plateau", "cosine")


# A stage's keys: (type, default, meaning), for `validate` and `reference`.
STAGE_KEYS = {
    "epochs": ("int", "required", "The stage's number of epochs."),
    "learning_rate": (
        "float",
        "required",
        "Its learning rate, for a global batch of `lr_reference_batch` (the trainer scales it "
        "to the batch it gets).",
    ),
    "train_backbone": (
        "bool",
        "true",
        "False: the stage trains the head only, with the backbone's BatchNorm layers in "
        "inference mode.",
    ),
}


def _default_stages():
    return [{"epochs": 10, "learning_rate": 1e-3, "train_backbone": True}]


def _key(default=dataclasses.MISSING, help: str = "", factory=dataclasses.MISSING):
    """A config field whose meaning, `help`, is what `reference()` prints for it."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class Config:
    """Everything a training run needs besides the data folder, run folder and strategy.

    Each field's meaning is its `help` (in `metadata`); `reference()` renders them all, as
    `python -m cxr_tf.train --list-config` prints and docs/config.md holds. One config serves
    1 CPU, 8 GPUs and a TPU slice alike: the batch is per replica, and the trainer scales the
    stages' learning rates to the global batch it gets.
    """

    dataset: str = _key(
        "pneumonia",
        "The converted dataset to train on, in the `--data` folder: `pneumonia` (binary) or "
        "`nih14` (14 findings, multi-label).",
    )
    model: str = _key(
        "densenet121",
        "The network: `densenet121`, `densenet169`, `densenet201`, `densenet161` or "
        "`densenet_tiny` (a few layers, for demos and tests).",
    )
    weights: str = _key(
        "imagenet",
        "The backbone's initial weights: `imagenet` (Keras', for densenet121/169/201, downloaded "
        "once into ~/.keras/models/), `torchvision` (torchvision's, converted once, all four "
        "DenseNets; needs PyTorch), `none` (from scratch), or the path of a `.keras`, "
        "`.weights.h5` or Keras applications `.h5` file.",
    )
    image_size: int = _key(
        224,
        "The side of the square the model sees, in pixels; at most the stored images' size "
        "(the converter's `--image-size`).",
    )
    channels: int = _key(
        1,
        "Input channels. 1: the gray image once, with the same outputs as 3 from ImageNet "
        "weights (see `models.stem_kernel`) from a third of the input bytes; 3: the gray image "
        "repeated.",
    )
    activation: str = _key(
        "sigmoid",
        "The output: `sigmoid` (binary and multi-label; loss `bce` or `weighted_bce`) or "
        "`softmax` (loss `cce`).",
    )
    dropout: float = _key(0.0, "Dropout rate before the classifier, in [0, 1).")
    batch_size: int = _key(
        32, "Per replica: the global batch is `batch_size` x replicas (chips, GPUs)."
    )
    balance: str = _key(
        "none",
        "Class balance in training: `none`; `class_weight` (per-sample weights) or `oversample` "
        "(per-class streams mixed to `oversample_ratio`), both single-label only (pneumonia); "
        "`pos_weight` (per-label positive weights in the loss; needs `loss: weighted_bce`), "
        "which also suits multi-label nih14.",
    )
    oversample_ratio: list | None = _key(
        None,
        "With `balance: oversample`, the mix of the per-class streams, one number per class "
        "(e.g. [1, 2]); null: equal.",
    )
    augment: dict = _key(
        help="The training augmentation's ranges, a mapping of the keys listed below; keys left "
        "out take their defaults, `{}` all of them (e.g. `--set augment.rotation_deg=3`).",
        factory=dict,
    )
    augment_in_model: bool = _key(
        True,
        "Where the augmentation runs: true: inside the model, on the accelerator (see "
        "`cxr_tf.augment`); false: in tf.data, on the CPU.",
    )
    cache: bool | None = _key(
        None,
        "Keep the decoded images in memory: true, false, or null: when the split fits in "
        "`input_pipeline.CACHE_LIMIT_BYTES` (3 GiB).",
    )
    seed: int = _key(0, "Seed of the initial weights, the shuffling and the augmentation.")
    optimizer: str = _key(
        "adam",
        "`adam` (learning rates scaled by the square-root rule) or `sgd` (momentum 0.9, linear "
        "rule).",
    )
    loss: str = _key(
        "bce",
        "`bce` (binary cross-entropy), `weighted_bce` (with per-label positive weights, for "
        "`balance: pos_weight`) or `cce` (categorical, with `activation: softmax`).",
    )
    stages: list = _key(
        help="The training stages, in order, each `{epochs, learning_rate, train_backbone}` "
        "(keys listed below), each with a fresh optimizer. The learning rates are those for a "
        "global batch of `lr_reference_batch`; the trainer scales them to the global batch it "
        "actually gets (`schedules.scale_learning_rate`). Change one entry with `--set "
        "stages.0.epochs=2`.",
        factory=_default_stages,
    )
    lr_reference_batch: int = _key(
        32, "The global batch the stages' learning rates are meant for (see `stages`)."
    )
    steps_per_epoch: int | None = _key(
        None, "Training steps per epoch; null: each training example once (full batches)."
    )
    monitor: str = _key(
        "val_loss",
        "The validation metric that picks `best.keras` and drives early stopping and "
        "`plateau` (e.g. `val_loss`, `val_auc`).",
    )
    early_stopping_patience: int = _key(
        5, "Epochs without improvement of `monitor` after which a stage stops."
    )
    reduce_lr_factor: float = _key(
        0.1, "`plateau`: the factor the learning rate is multiplied by on a plateau."
    )
    reduce_lr_patience: int = _key(
        2,
        "`plateau`: epochs without improvement of `monitor` before the rate drops (epochs "
        "ending inside the warm-up do not count).",
    )
    min_learning_rate: float = _key(1e-7, "`plateau`: the rate never drops below this.")
    lr_schedule: str = _key(
        "plateau",
        "The learning rate within a stage, after any warm-up: `plateau` multiplies it by "
        "`reduce_lr_factor` after `reduce_lr_patience` epochs without improvement of "
        "`monitor`, down to `min_learning_rate` (ReduceLROnPlateau); `cosine` decays it to 0 at "
        "the stage's last step (`keras.optimizers.schedules.CosineDecay`; early stopping may "
        "end the stage sooner).",
    )
    warmup_epochs: float = _key(
        1.0,
        "Where the scaling raises a stage's rate above the config's, the rate ramps linearly "
        "from the config's rate to the scaled one over the stage's first `warmup_epochs` "
        "epochs (0.5 is half an epoch; 0 turns it off; at most half the stage): under "
        "`plateau` set once per execution (`steps_per_execution` steps), under `cosine` at "
        "every step. Where it does not (global batch <= `lr_reference_batch`), there is no "
        "warm-up: the scaled rate from the first step.",
    )
    ema: float | None = _key(
        None,
        "Momentum of an exponential moving average of the trainable weights, per step (e.g. "
        "0.999; null: off), kept in the optimizer and restarted at each stage: validation, "
        "`best.keras`, the stage's end weights and the export are the averaged weights "
        "(BatchNorm's moving statistics stay the trained ones). Pick it so that 1 / (1 - ema) "
        "steps is well under a stage's steps.",
    )
    steps_per_execution: int | None = _key(
        None,
        "Training steps per compiled call (Keras' `steps_per_execution`), between two rounds "
        "of per-batch callbacks; null: 32 on TPU, else 1.",
    )
    mixed_precision: str = _key(
        "auto",
        "`auto` (mixed_bfloat16 on TPU, mixed_float16 on GPU, float32 on CPU), `float32`, "
        "`mixed_bfloat16` or `mixed_float16`.",
    )
    threshold_rule: str = _key(
        "youden",
        "How each class's decision threshold is picked on validation: `youden`, `max_f1`, "
        "`sensitivity=S` or `fixed=T`.",
    )

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
            if not isinstance(stage, dict):
                raise ValueError(
                    f"config stages[{i}]={stage!r} is not a mapping; give "
                    "{epochs: N, learning_rate: X}"
                )
            unknown = set(stage) - set(STAGE_KEYS)
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
        if self.balance in SINGLE_LABEL_BALANCE:
            from cxr_tf.convert import dataset_module

            if dataset_module(self.dataset).TASK != "binary":  # fail before reading the data
                raise ValueError(single_label_balance_error(self.balance, self.dataset))
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


SINGLE_LABEL_BALANCE = ("class_weight", "oversample")


def single_label_balance_error(balance: str, dataset: str) -> str:
    """Why `balance` (class_weight or oversample) cannot serve multi-label `dataset`, and which
    balance to set instead: one line, for the config check and the input pipeline's."""
    why = {
        "class_weight": "Keras would weight each sample by the argmax of its multi-hot label",
        "oversample": "it mixes one stream per class, and a multi-hot image is in several",
    }[balance]
    return (
        f"balance={balance!r} is for single-label data, and {dataset} is multi-label ({why}); "
        "use --set balance=none, or --set balance=pos_weight --set loss=weighted_bce "
        "(per-label positive weights in the loss)"
    )


def _example(f) -> str:
    return _yaml(_default(f))


def _fields() -> dict:
    return {f.name: f for f in dataclasses.fields(Config)}


def from_dict(values: dict) -> Config:
    """A Config from a mapping; unknown keys raise ValueError naming the allowed keys."""
    unknown = sorted(set(values) - set(_fields()))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(_fields())}")
    return Config(**values)


def load(path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config and apply `key=value` overrides (values parsed as YAML; dotted keys
    reach into mappings and lists, see `apply_override`).

    Every mistake is a one-line ValueError (FileNotFoundError for a missing file): a YAML
    syntax error gives the file, line and column.
    """
    path = storage.path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist (see training/*.yaml)")
    text = path.read_text()
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(_yaml_error(err, str(path), text)) from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {str(path)!r} holds a {type(values).__name__}, not `key: value` lines "
            "(see training/*.yaml)"
        )
    for item in overrides or []:
        apply_override(values, item)
    return from_dict(values)


def _yaml_error(err: yaml.YAMLError, where: str, text: str) -> str:
    """One line: `where:LINE:COLUMN: problem`, plus the context PyYAML gives and its line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).replace("\n", " ")
    if mark is None:
        return f"{where}: YAML syntax error: {problem}"
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context == "while scanning a simple key" and cmark is not None:  # `channels 1`
        line = text.splitlines()[cmark.line].strip()
        return (
            f"{where}:{cmark.line + 1}:{cmark.column + 1}: YAML syntax error: {line!r} is not "
            f"`key: value` ({problem})"
        )
    message = f"{where}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {problem}"
    if context and cmark is not None:
        lines = text.splitlines()
        line = lines[cmark.line].strip() if cmark.line < len(lines) else ""
        message += f" ({context} at line {cmark.line + 1}, column {cmark.column + 1}: {line!r})"
    elif mark.line < len(text.splitlines()):
        message += f" in {text.splitlines()[mark.line].strip()!r}"
    return message + "; each line is `key: value`, nested lines indented by the same spaces"


STAGE_SHORTHANDS = tuple(STAGE_KEYS)  # --set epochs=N is stages.0.epochs=N (one stage only)


def apply_override(values: dict, item: str) -> None:
    """Apply one `--set KEY=VALUE` to the config mapping `values`, in place.

    VALUE is read as YAML. KEY is a config key, or a dotted path into a mapping or list:
    `augment.rotation_deg`, `stages.0.epochs`. `epochs`, `learning_rate` and `train_backbone`
    alone mean those of the only stage, and are an error with several stages. A bad path
    raises a one-line ValueError naming the key and what is valid there.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {item!r} is not key=value (e.g. --set batch_size=16)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ValueError(
            f"--set {item!r}: the value {raw!r} is not valid YAML ({problem}{at}); quote it in "
            "the shell, e.g. --set 'augment={rotation_deg: 3}'"
        ) from None
    fields = _fields()
    parts = key.split(".")
    if len(parts) == 1 and key in STAGE_SHORTHANDS and key not in fields:
        stages = values.get("stages", _default_stages())
        if not isinstance(stages, list) or len(stages) != 1:
            n = len(stages) if isinstance(stages, list) else 0
            raise ValueError(
                f"--set {key}=...: {key} is per stage and this config has {n} stages; use "
                f"--set stages.K.{key}={raw.strip()} with K in 0..{max(n - 1, 0)}"
            )
        parts = ["stages", "0", key]
    top = parts[0]
    if len(parts) == 1:
        values[top] = value  # an unknown key is named by from_dict
        return
    if top not in fields:
        raise ValueError(f"unknown config keys [{top!r}] in --set {key}; allowed: {sorted(fields)}")
    if top not in values:
        values[top] = _default(fields[top])
    container, at, path = values, top, top
    for part in parts[1:]:
        node = container[at]
        if isinstance(node, list):
            valid = {0: "none, the list is empty", 1: "0"}.get(len(node), f"0..{len(node) - 1}")
            entries = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}"
            if not part.isdigit() or int(part) >= len(node):
                extra = (
                    "; to add a stage, set the whole list: --set 'stages=[...]'"
                    if top == "stages"
                    else ""
                )
                raise ValueError(
                    f"--set {key}: no index {part!r} in {path}, which has {entries} (valid "
                    f"indices: {valid}){extra}"
                )
            container, at = node, int(part)
        elif isinstance(node, dict):
            allowed = _keys_at(path, node)
            if part not in allowed:
                raise ValueError(
                    f"--set {key}: unknown key {part!r} in {path}; valid keys: "
                    + ", ".join(allowed)
                )
            if part not in node and part != parts[-1]:
                raise ValueError(
                    f"--set {key}: {path} has no {part} yet to reach into; set it whole, e.g. "
                    f"--set {path}.{part}=VALUE"
                )
            container, at = node, part
        else:
            hint = f"; did you mean --set {part}={raw.strip()}?" if part in fields else ""
            raise ValueError(
                f"--set {key}: {path} is {_yaml(node)}, not a mapping or a list, so it has no key "
                f"{part!r}{hint}"
            )
        path += f".{part}"
    container[at] = value


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _keys_at(path: str, node: dict) -> list[str]:
    """The keys a dotted `--set` may name inside the mapping at `path`."""
    top = path.split(".")[0]
    if top == "augment" and path == "augment":
        from cxr_tf.augment import Augment

        return [f.name for f in dataclasses.fields(Augment)]
    if top == "stages" and path.count(".") == 1:
        return list(STAGE_KEYS)
    return list(node)


REFERENCE_INTRO = """\
A config is a YAML file of `key: value` lines (see training/*.yaml); a key left out takes the
default below. `--set KEY=VALUE` overrides one on the command line (repeatable, applied in
order); VALUE is read as YAML: `16`, `0.003`, `true`, `null`, `[0.8, 1.0]`, `{hflip: true}`. A
dotted KEY reaches into a mapping or a list: `--set augment.rotation_deg=3`, `--set
stages.0.epochs=2`, `--set stages.0.learning_rate=0.003`. With exactly one stage, `--set
epochs=N` (and `learning_rate`, `train_backbone`) mean that stage's; with several they are an
error that names `stages.K.epochs`, since which stage would be a guess.
"""


def reference() -> str:
    """Every config key with its type, default and meaning, as Markdown: what
    `python -m cxr_tf.train --list-config` prints and docs/config.md holds."""
    from cxr_tf.augment import Augment

    out = [
        "# Config keys",
        "",
        "<!-- Generated from cxr_tf/config.py by `python -m cxr_tf.train --list-config > "
        "docs/config.md`; edit the field's help there, not here. -->",
        "",
        REFERENCE_INTRO,
        "## Keys",
        "",
    ]
    for f in dataclasses.fields(Config):
        out.append(_item(f.name, _type_name(f.type), _example(f), f.metadata["help"]))
    out += ["", "## Keys of each `stages` entry", ""]
    for name, (type_, default, help_) in STAGE_KEYS.items():
        out.append(_item(name, type_, default, help_))
    out += ["", "## Keys of `augment`", ""]
    comments = _source_comments(Augment)
    for f in dataclasses.fields(Augment):
        help_ = f.metadata.get("help") or comments.get(f.name) or "see `cxr_tf.augment.Augment`."
        default = Augment().to_dict()[f.name]
        out.append(_item(f.name, _type_name(f.type), _yaml(default), help_))
    return "\n".join(out) + "\n"


def _item(name: str, type_: str, default: str, help_: str) -> str:
    import textwrap

    default = default if default == "required" else f"default `{default}`"
    text = f"- `{name}` ({type_}, {default}): {help_}"
    return textwrap.fill(
        text, width=100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )


def _type_name(annotation) -> str:
    text = str(annotation).replace("tuple[", "[").replace(" | None", " or null")
    return text


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _source_comments(cls) -> dict[str, str]:
    """The comments on a dataclass's field lines (trailing, or whole lines just above), by field:
    the meanings `cxr_tf.augment.Augment` gives its fields, so that they stay written once."""
    import inspect
    import io
    import tokenize

    comments, pending = {}, []
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
    line_comment, name_on_line = {}, {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            line_comment[tok.start[0]] = (tok.string.lstrip("# ").strip(), tok.start[1])
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.start[0] not in name_on_line:
            name_on_line[tok.start[0]] = tok.string
    fields = {f.name for f in dataclasses.fields(cls)}
    for line in sorted(set(line_comment) | set(name_on_line)):
        name = name_on_line.get(line)
        if name in fields:
            text = pending + ([line_comment[line][0]] if line in line_comment else [])
            if text:
                comments[name] = " ".join(text)
            pending = []
        elif line in line_comment and name is None:
            pending.append(line_comment[line][0])
        else:
            pending = []
    return {k: v.rstrip(".") + "." for k, v in comments.items()}


def save(config: Config, path) -> None:
    """Write the resolved config as YAML (what `load` reads back), atomically."""
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
