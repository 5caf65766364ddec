"""cxr_tf.config: every shipped config loads and documents itself; overrides; clear errors."""

import re
from pathlib import Path

import pytest

from cxr_tf import config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "training").glob("*.yaml"))


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
