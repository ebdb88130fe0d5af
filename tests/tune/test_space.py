"""What a sweep searches, and the config each trial trains with (no Ray cluster needed)."""

import math

import numpy as np
import pytest
from ray.tune.search.sample import Categorical, Domain

from p2p_dist.config import ConfigError, load_config
from p2p_dist.tune.space import check_sweep_config, mutations, search_space, searched_keys, trial_config

from runs import ROOT

BASE = ["train.steps=10", "eval.every=5"]


def sweep_config(*overrides: str):
    return load_config(None, [*BASE, *overrides])


def test_lambda_and_learning_rates_are_sampled_log_uniformly_within_their_ranges():
    cfg = sweep_config("tune.lambda_l1=[10, 1000]", "tune.lr_g=[1e-5, 1e-3]", "tune.lr_d=[1e-4, 1e-2]")
    space = search_space(cfg.tune)
    rng = np.random.default_rng(0)
    for key, (low, high) in {
        "train.lambda_l1": (10, 1000),
        "train.lr_g": (1e-5, 1e-3),
        "train.lr_d": (1e-4, 1e-2),
    }.items():
        samples = np.asarray(space[key].sample(size=4000, random_state=rng))
        assert samples.min() >= low and samples.max() <= high
        # Log-uniform: the median is the geometric mean of the bounds, each decade gets the same share.
        assert math.isclose(np.median(samples), math.sqrt(low * high), rel_tol=0.15)
        assert abs(np.mean(samples < low * 10) - 0.5) < 0.05


def test_a_range_with_equal_bounds_pins_the_value_and_pbt_does_not_mutate_it():
    cfg = sweep_config("tune.lr_d=[2e-4, 2e-4]")
    assert search_space(cfg.tune)["train.lr_d"] == 2e-4
    assert "train.lr_d" not in mutations(cfg.tune)
    assert isinstance(mutations(cfg.tune)["train.lr_g"], Domain)


def test_choices_are_searched_as_categorical_keys_and_mutated_between_their_values():
    cfg = sweep_config("tune.choices={model.norm: [batch, instance], model.ngf: [32]}")
    space = search_space(cfg.tune)
    assert isinstance(space["model.norm"], Categorical) and space["model.norm"].categories == ["batch", "instance"]
    assert searched_keys(cfg.tune) == ["train.lambda_l1", "train.lr_g", "train.lr_d", "model.norm", "model.ngf"]
    assert mutations(cfg.tune)["model.norm"] == ["batch", "instance"]
    assert "model.ngf" not in mutations(cfg.tune)  # a single value cannot change


def test_trial_config_applies_the_trials_values_and_run_dir_to_a_copy_of_the_base():
    base = sweep_config("train.lr_g=2e-4")
    cfg = trial_config(
        base,
        {"train.lr_g": 1.5e-5, "train.lambda_l1": 42.0, "model.norm": "instance", "model.ngf": 32},
        "/sweeps/a/trial_1/run",
    )
    assert (cfg.train.lr_g, cfg.train.lambda_l1, cfg.model.norm, cfg.model.ngf) == (1.5e-5, 42.0, "instance", 32)
    assert cfg.run.dir == "/sweeps/a/trial_1/run"
    assert base.train.lr_g == 2e-4 and base.model.norm == "batch"


def test_trial_config_rejects_a_value_the_config_does_not_accept():
    with pytest.raises(ConfigError, match="model.norm"):
        trial_config(sweep_config(), {"model.norm": "group"}, "run")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.every=0"], "eval.every"),
        (["eval.fcn=false"], "tune.metric=fcn_miou needs eval.fcn=true"),
        (["tune.metric=fid"], "tune.metric=fid needs eval.fid=true"),
        (["tune.choices={train.lr_g: [1e-4, 2e-4]}"], "searched by the range tune.lr_g"),
        (["tune.choices={run.dir: [a, b]}"], "set by the sweep itself"),
        (["tune.choices={model.norm: [batch, group]}"], "tune.choices.model.norm: value 'group'"),
        (["tune.choices={model.widht: [1, 2]}"], "tune.choices.model.widht"),
        (
            ["tune.scheduler=pbt", "tune.lambda_l1=[100, 100]", "tune.lr_g=[1e-4, 1e-4]", "tune.lr_d=[1e-4, 1e-4]"],
            "needs something to mutate",
        ),
        (["tune.reduction_factor=1"], "tune.reduction_factor"),
    ],
)
def test_sweep_config_errors_name_the_key_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        check_sweep_config(sweep_config(*overrides))


@pytest.mark.parametrize(
    "path",
    ["tune_demo.yaml", "tune_demo_recipe.yaml", *(f"demo_recipe_sweep/round{n}/sweep_config.yaml" for n in (1, 2, 3))],
)
def test_the_shipped_sweep_configs_are_valid(path):
    check_sweep_config(load_config(ROOT / "configs" / path))
