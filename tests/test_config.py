"""The config: defaults <- YAML <- dotted overrides, validated with errors that name the key and value."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from p2p_dist.config import Config, ConfigError, describe, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_apply_after_the_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\n  lr_g: 0.001\nprecision: fp32\n")
    cfg = load_config(path, ["train.steps=20", "data.loader=webdataset", "train.lr_d=1e-5"])
    assert (cfg.train.steps, cfg.train.lr_g, cfg.train.lr_d) == (20, 0.001, 1e-5)
    assert cfg.precision == "fp32" and cfg.data.loader == "webdataset"


def test_required_keys_exist_under_their_documented_names():
    cfg = load_config(
        None,
        [
            "train.steps=1",
            "train.batch_size=2",
            "data.shards=x",
            "data.loader=dali",
            "run.dir=r",
            "precision=bf16",
            "zero_stage=2",
            "seed=3",
        ],
    )
    assert (cfg.train.batch_size, cfg.data.shards, cfg.run.dir, cfg.zero_stage, cfg.seed) == (2, "x", "r", 2, 3)


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.foo=1", "train.foo"),
        ("nosuch=1", "nosuch"),
        ("train.steps=abc", "train.steps"),
        ("precision=fp8", "fp8"),
        ("zero_stage=3", "zero_stage"),
        ("data.loader=pil", "data.loader"),
        ("data.crop_size=100", "data.crop_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.decay_start=1.5", "train.decay_start"),
        ("data.flip=maybe", "data.flip"),
        ("train.steps", "key=value"),
    ],
)
def test_bad_override_is_rejected_naming_the_key_or_value(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, ["train.steps=5", override])


def test_exactly_one_of_steps_and_epochs_is_required(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of train.steps and train.epochs"):
        load_config(None, [])
    path = tmp_path / "both.yaml"
    path.write_text("train:\n  steps: 5\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(path)


def test_setting_steps_replaces_epochs_from_an_earlier_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 12\n")
    cfg = load_config(path, ["train.steps=4"])
    assert (cfg.train.steps, cfg.train.epochs) == (4, 0.0)
    cfg = load_config(path, ["train.steps=4", "train.epochs=2"])  # the last layer wins
    assert (cfg.train.steps, cfg.train.epochs) == (0, 2.0)


def test_bad_yaml_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {steps: 5\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)
    path.write_text("train:\n  stepz: 5\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*train\.stepz"):
        load_config(path)


def test_saved_config_loads_back_identical(tmp_path):
    cfg = load_config(None, ["train.steps=7", "model.norm=instance", "train.lambda_l1=10"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_shipped_configs_are_valid():
    for path in (ROOT / "configs").glob("*.yaml"):
        assert isinstance(load_config(path), Config), path


def _options(section, prefix=""):
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _options(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.metadata["help"]


def test_help_documents_every_option():
    text = " ".join(describe().split())
    options = list(_options(Config()))
    assert len(options) > 50
    for key, help_text in options:
        assert key in text and " ".join(help_text.split()) in text, key
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "train.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "train.lambda_l1" in result.stdout and "dotted overrides" in result.stdout


def test_cli_rejects_unknown_key_with_exit_code_2():
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "train.py"), "train.nosuch=1"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "train.nosuch" in result.stderr
