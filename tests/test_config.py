"""cxr_tf.config: every shipped config loads and documents itself; overrides; clear errors."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_tf import config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "training").glob("*.yaml"))
DEMO = ROOT / "training" / "demo.yaml"
TWO_STAGES = "stages=[{epochs: 1, learning_rate: 0.01}, {epochs: 2, learning_rate: 0.001}]"


def test_all_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {
        "demo",
        "pneumonia_densenet161",
        "pneumonia_densenet161_tpu",
        "nih14_densenet121",
        "nih14_densenet121_tpu",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_its_header_gives_command_runtime_and_metric(path):
    cfg = config.load(path)
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert f"--config training/{path.name}" in header
    assert "Expected" in header
    assert "AUROC" in header or "accuracy" in header
    if "tpu" in path.stem:
        assert cfg.mixed_precision == "mixed_bfloat16" and cfg.steps_per_execution > 1


def test_overrides_and_round_trip(tmp_path):
    cfg = config.load(CONFIGS[0], ["batch_size=8", "augment.rotation_deg=3", "cache=false"])
    assert cfg.batch_size == 8 and cfg.augment["rotation_deg"] == 3 and cfg.cache is False
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lr=1"], "unknown config keys ['lr']"),
        (["batch_size"], "is not key=value"),
        (["loss=focal"], "config loss='focal' is not one of"),
        (["stages=[]"], "stages is empty"),
        (["stages=[{epochs: 1}]"], "needs epochs and learning_rate"),
        (["activation=softmax"], "softmax goes with loss cce"),
        (["balance=pos_weight"], "balance='pos_weight' with loss='bce' does nothing"),
        (["threshold_rule=best"], "threshold rule 'best' is not one of"),
        (["lr_reference_batch=0"], "lr_reference_batch=0"),
        (["batch_size=abc"], "config batch_size='abc' (str) should be int, e.g. --set batch_size="),
        (["dropout=high"], "config dropout='high' (str) should be float"),
        (["image_size=12.5"], "config image_size=12.5 (float) should be int"),
        (["augment_in_model=3"], "config augment_in_model=3 (int) should be bool"),
        (["steps_per_epoch=0"], "config steps_per_epoch=0 must be at least 1"),
        (["stages=5"], "config stages=5 (int) should be list"),
        (["lr_schedule=step"], "config lr_schedule='step' is not one of ('plateau', 'cosine')"),
        (["warmup_epochs=-1"], "config warmup_epochs=-1 is negative"),
        (["warmup_epochs=one"], "config warmup_epochs='one' (str) should be float"),
        (["ema=1"], "config ema=1 is not a momentum in (0, 1); use e.g. 0.999, or null"),
        (["ema=true"], "config ema=True (bool) should be float or null"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config.load(CONFIGS[0], overrides)


def test_dotted_overrides_reach_into_stages_and_augment():
    cfg = config.load(
        DEMO, ["stages.0.epochs=2", "stages.0.learning_rate=0.003", "augment.rotation_deg=3"]
    )
    assert cfg.stages == [{"epochs": 2, "learning_rate": 0.003, "train_backbone": True}]
    assert cfg.augment["rotation_deg"] == 3 and cfg.augment["crop_scale"] == [0.8, 1.0]
    cfg = config.load(DEMO, ["epochs=3", "learning_rate=0.01", "train_backbone=false"])
    assert cfg.stages == [{"epochs": 3, "learning_rate": 0.01, "train_backbone": False}]
    cfg = config.load(DEMO, [TWO_STAGES, "stages.1.epochs=5", "augment.crop_scale.0=0.5"])
    assert [s["epochs"] for s in cfg.stages] == [1, 5] and cfg.augment["crop_scale"] == [0.5, 1.0]
    # a key the YAML leaves out starts from its default
    cfg = config.load(ROOT / "training" / "nih14_densenet121.yaml", ["augment.zoom=0"])
    assert cfg.augment == {"hflip": True, "zoom": 0}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.1.epochs=2"], "no index '1' in stages, which has 1 entry (valid indices: 0)"),
        (["stages.x.epochs=2"], "no index 'x' in stages"),
        (
            ["stages.0.epoch=2"],
            "unknown key 'epoch' in stages.0; valid keys: epochs, learning_rate, train_backbone",
        ),
        (["augment.rotaton=3"], "unknown key 'rotaton' in augment; valid keys: crop_scale,"),
        (["nope.x=1"], "unknown config keys ['nope'] in --set nope.x; allowed: ['activation'"),
        (
            ["model.weights=w.h5"],
            "model is densenet_tiny, not a mapping or a list, so it has no key 'weights'; did you "
            "mean --set weights=w.h5?",
        ),
        (
            [TWO_STAGES, "epochs=3"],
            "epochs is per stage and this config has 2 stages; use --set stages.K.epochs=3 with K "
            "in 0..1",
        ),
        (["augment={a: 1"], "the value '{a: 1' is not valid YAML (expected ',' or '}'"),
        (["stages=[5]"], "config stages[0]=5 is not a mapping"),
    ],
)
def test_bad_dotted_overrides_name_the_key_and_what_is_valid(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config.load(DEMO, overrides)


def test_single_label_balance_on_nih14_says_which_balance_to_set():
    for balance in ("oversample", "class_weight"):
        with pytest.raises(ValueError) as err:
            config.load(DEMO, ["dataset=nih14", f"balance={balance}"])
        assert f"balance={balance!r} is for single-label data, and nih14 is multi-label" in str(
            err.value
        )
        assert "--set balance=none, or --set balance=pos_weight --set loss=weighted_bce" in str(
            err.value
        )
    assert config.load(DEMO, ["dataset=nih14", "balance=none"]).dataset == "nih14"


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "dataset: pneumonia\nchannels 1\nbatch_size: 16\n",
            ":2:1: YAML syntax error: 'channels 1' is not `key: value` (could not find "
            "expected ':')",
        ),
        (
            "dataset: pneumonia\n  model: x\n",
            ":2:8: YAML syntax error: mapping values are not allowed here in 'model: x'",
        ),
        ("stages: [{epochs: 1}\n", ":2:1: YAML syntax error: expected ',' or ']'"),
    ],
)
def test_yaml_syntax_errors_give_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        config.load(path)
    assert str(err.value).startswith(f"{path}{where}") and "\n" not in str(err.value)


def test_a_config_that_is_not_a_mapping_is_named(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="holds a list, not `key: value` lines"):
        config.load(tmp_path / "list.yaml")


def test_reference_lists_every_key_and_docs_config_md_is_it():
    text = config.reference()
    for f in dataclasses.fields(config.Config):
        assert f"\n- `{f.name}` (" in text, f.name
        assert f.metadata["help"].split()[0] in text
    for name in config.STAGE_KEYS:
        assert f"\n- `{name}` (" in text
    from cxr_tf.augment import Augment

    for f in dataclasses.fields(Augment):
        assert f"\n- `{f.name}` (" in text
    docs = ROOT / "docs" / "config.md"
    assert docs.is_file() and docs.read_text() == text, (
        "docs/config.md is not the generated reference; regenerate it with "
        "`python -m cxr_tf.train --list-config > docs/config.md`"
    )


def _cli(*args, env=None):
    """`python -m cxr_tf.train ARGS` in a subprocess: (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "cxr_tf.train", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def test_list_config_needs_no_config_file():
    code, out, err = _cli("--list-config")
    assert code == 0 and out == config.reference() and err == ""
    code, _, err = _cli()
    assert code == 2 and "--config (or --list-config)" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "stages.3.epochs=2"], "no index '3' in stages, which has 1 entry"),
        (["--set", "stages.0.epoch=2"], "unknown key 'epoch' in stages.0; valid keys: epochs,"),
        (["--set", "model.weights=w.h5"], "did you mean --set weights=w.h5?"),
        (["--set", TWO_STAGES, "--set", "epochs=3"], "use --set stages.K.epochs=3 with K in 0..1"),
        (["--set", "augment={a: 1"], "the value '{a: 1' is not valid YAML"),
        (["--set", "dataset=nih14"], "balance='oversample' is for single-label data"),
        (["--config", "BAD"], "BAD:13:1: YAML syntax error: 'channels 1' is not `key: value`"),
    ],
)
def test_cli_config_mistakes_are_one_line(tmp_path, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.read_text().replace("channels: 1", "channels 1"))
    args = [str(bad) if a == "BAD" else a for a in args]
    if "--config" not in args:
        args = ["--config", str(DEMO), *args]
    code, out, err = _cli(*args, "--data", str(tmp_path), "--workdir", str(tmp_path / "w"))
    message = message.replace("BAD", str(bad))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_demo_config_runs_on_nih14_as_its_header_says(nih14_data, tmp_path, capsys):
    """demo.yaml's header: on nih14, `--set dataset=nih14 --set balance=none` (a short run)."""
    from cxr_tf.train import main

    header = "\n".join(line for line in DEMO.read_text().splitlines() if line.startswith("#"))
    assert "--set dataset=nih14 --set balance=none" in header
    args = ["--config", str(DEMO), "--data", str(nih14_data), "--strategy", "cpu"]
    assert main([*args, "--workdir", str(tmp_path / "x"), "--set", "dataset=nih14"]) == 2
    assert "use --set balance=none" in capsys.readouterr().err
    short = ["--set", "epochs=1", "--set", "steps_per_epoch=2"]
    nih = ["--set", "dataset=nih14", "--set", "balance=none"]
    assert main([*args, "--workdir", str(tmp_path / "run"), *nih, *short]) == 0
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert config.load(tmp_path / "run" / "config.yaml").dataset == "nih14"


def test_imagenet_weights_offline_is_one_line_with_the_right_key(monkeypatch):
    """Keras' download raises a bare Exception offline; the CLIs print it as one line that
    names the model and gives keys that work (`weights`, not `model.weights`)."""
    from keras.src.utils import file_utils

    from cxr_tf import models
    from cxr_tf.cli import user_errors

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://x/y.h5: None -- [Errno -2] Name unknown")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(user_errors()) as err:
        models.build_model("densenet121", num_classes=1, image_size=32, weights="imagenet")
    msg = str(err.value)
    assert "\n" not in msg and "the ImageNet weights of densenet121 could not be downloaded" in msg
    assert "--set weights=PATH (a .h5, .weights.h5 or .keras file)" in msg
    assert "--set weights=none" in msg and "model.weights" not in msg
