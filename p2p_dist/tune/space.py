"""What a sweep searches and optimises, and the training config each trial runs with.

Searched keys are dotted config keys (``train.lr_g``, ``model.norm``), so a trial's parameters apply to the
one typed config exactly like command-line overrides, and its table columns name real options.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.sample import Domain

from p2p_dist.config import Config, ConfigError, TuneConfig, load_config

# Each gets a log-uniform range in the tune section (tune.lambda_l1: [low, high]) ...
LOG_UNIFORM_KEYS = {"lambda_l1": "train.lambda_l1", "lr_g": "train.lr_g", "lr_d": "train.lr_d"}
# ... and these are set by the sweep itself, so tune.choices may not name them.
RESERVED_PREFIXES = ("run.dir", "tune.")


@dataclass(frozen=True)
class Objective:
    """A tune.metric value: the trainer's evaluation key it reads, its direction, and the eval switch it needs."""

    name: str  # as reported to Tune and shown in the results (tune.metric)
    eval_key: str  # key in the trainer's periodic evaluation metrics
    mode: str  # "max" or "min"
    requires: str  # eval.* switch that must be on for the key to exist ("" if always computed)


OBJECTIVES = {
    "fcn_miou": Objective("fcn_miou", "fcn/mean_iou", "max", "fcn"),
    "fid": Objective("fid", "fid", "min", "fid"),
    "l1": Objective("l1", "l1", "min", ""),
}


def objective(tune_cfg: TuneConfig) -> Objective:
    return OBJECTIVES[tune_cfg.metric]


def searched_keys(tune_cfg: TuneConfig) -> list[str]:
    """The dotted keys a trial's parameters set, in table order."""
    return [*LOG_UNIFORM_KEYS.values(), *tune_cfg.choices]


def search_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    """Ray Tune's param_space: dotted key -> distribution (a range with low == high pins the value)."""
    space: dict[str, Any] = {}
    for short, key in LOG_UNIFORM_KEYS.items():
        low, high = getattr(tune_cfg, short)
        space[key] = tune.loguniform(low, high) if low < high else low
    space.update({key: tune.choice(list(values)) for key, values in tune_cfg.choices.items()})
    return space


def mutations(tune_cfg: TuneConfig) -> dict[str, Any]:
    """PBT's hyperparam_mutations: ranges are resampled or scaled, choices step to a neighbouring value.
    Pinned ranges and single-value choices cannot change, so they are left out."""
    mutable: dict[str, Any] = {}
    for key, value in search_space(tune_cfg).items():
        if key in tune_cfg.choices:
            if len(tune_cfg.choices[key]) > 1:
                mutable[key] = list(tune_cfg.choices[key])
        elif isinstance(value, Domain):
            mutable[key] = value
    return mutable


def trial_config(base: Config, params: Mapping[str, Any], run_dir: str | Path) -> Config:
    """`base` with a trial's parameters and its run directory applied, validated like any config."""
    # JSON is valid YAML, so each value reaches the config exactly as a command-line override would.
    overrides = [f"{key}={json.dumps(value)}" for key, value in params.items()]
    overrides.append(f"run.dir={json.dumps(str(run_dir))}")
    return load_config(None, overrides, base=copy.deepcopy(base))


def check_sweep_config(cfg: Config) -> None:
    """Reject a sweep that could not report its objective or whose choices are not valid options."""
    t, goal = cfg.tune, objective(cfg.tune)
    if cfg.eval.every <= 0:
        raise ConfigError(
            f"eval.every: a sweep needs periodic evaluation for its objective tune.metric="
            f"{t.metric}; set eval.every > 0 (got {cfg.eval.every})"
        )
    if goal.requires and not getattr(cfg.eval, goal.requires):
        raise ConfigError(f"tune.metric={t.metric} needs eval.{goal.requires}=true")
    for key, values in t.choices.items():
        if key in LOG_UNIFORM_KEYS.values():
            short = next(s for s, k in LOG_UNIFORM_KEYS.items() if k == key)
            raise ConfigError(
                f"tune.choices.{key}: searched by the range tune.{short}; set it there ([value, value] pins it)"
            )
        if key.startswith(RESERVED_PREFIXES):
            raise ConfigError(f"tune.choices.{key}: set by the sweep itself, it cannot be searched")
        for value in values:
            try:
                trial_config(cfg, {key: value}, cfg.run.dir)
            except ConfigError as err:
                raise ConfigError(f"tune.choices.{key}: value {value!r} is not usable: {err}") from None
    if t.scheduler == "asha" and t.reduction_factor < 2:
        raise ConfigError(
            f"tune.reduction_factor: ASHA keeps 1/reduction_factor of the trials at each rung, "
            f"so it must be >= 2, got {t.reduction_factor}"
        )
    if t.scheduler == "pbt" and not mutations(t):
        raise ConfigError(
            "tune.scheduler=pbt needs something to mutate: a range with low < high in "
            "tune.lambda_l1 / tune.lr_g / tune.lr_d, or a tune.choices key with several values"
        )
