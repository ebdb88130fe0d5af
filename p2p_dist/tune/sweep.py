"""Run a sweep end to end: inputs every trial shares, Ray, the scheduler, the Tuner (new or restored), results."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining, TrialScheduler

from p2p_dist.config import Config, ConfigError, load_config, save_config
from p2p_dist.data.demo.shard_set import ensure_demo_shards_if_default
from p2p_dist.data.shards.read import read_manifest
from p2p_dist.process_defaults import environment_for
from p2p_dist.train.schedule import total_steps
from p2p_dist.tune import results
from p2p_dist.tune.space import check_sweep_config, mutations, objective, search_space, searched_keys
from p2p_dist.tune.trial import TrialSetup, run_distributed_trial, run_trial, trial_dirname

SWEEP_CONFIG = "sweep_config.yaml"  # the config the sweep was started with; --resume continues with it
DRIVER_MEMORY = 512 * 2**20  # bytes: what a distributed trial's own process (it imports torch) holds
PATH_KEYS = (
    ("data", "shards"),
    ("eval", "segmenter"),
    ("model", "pretrained_g"),
    ("model", "pretrained_d"),
    ("tune", "storage_path"),
)


@dataclass
class SweepReport:
    experiment_dir: Path
    rows: list[results.TrialSummary]  # best first
    markdown: str
    best_config: Path | None  # None when no trial reported a finite objective
    segmenter_train_s: float | None  # time spent training the FCN segmenter first; None if cached or unused
    sweep_s: float  # Tuner.fit wall time

    @property
    def unfinished(self) -> int:
        """Trials an interruption (Ctrl-C) left running or pending."""
        return sum(row.status == "unfinished" for row in self.rows)

    def render(self) -> str:
        segmenter = (
            ""
            if self.segmenter_train_s is None
            else f"segmenter trained first in {self.segmenter_train_s:.0f} s (cached for later sweeps)\n"
        )
        interrupted = (
            ""
            if not self.unfinished
            else f"INTERRUPTED: {self.unfinished} trial(s) unfinished (the table shows them as they were); "
            f"continue with the same command plus --resume\n"
        )
        best = f"  best config:  {self.best_config}\n" if self.best_config else "  no trial reported a finite result\n"
        return (
            f"{self.markdown}\n\n{interrupted}{segmenter}sweep finished in {self.sweep_s:.0f} s\n"
            f"  results:      {self.experiment_dir / results.RESULTS_CSV}\n"
            f"                {self.experiment_dir / results.RESULTS_MD}\n{best}"
            f"  plot:         {self.experiment_dir / results.PLOT}\n  trials:       {self.experiment_dir}/trial_*/run/"
        )


def experiment_dir(cfg: Config) -> Path:
    return Path(os.path.abspath(cfg.tune.storage_path)) / cfg.tune.name


def absolute_paths(cfg: Config) -> Config:
    """Trials run with another working directory (and maybe on another node): paths must not be relative."""
    cfg = copy.deepcopy(cfg)
    for section, key in PATH_KEYS:
        holder = getattr(cfg, section)
        if getattr(holder, key):
            setattr(holder, key, os.path.abspath(getattr(holder, key)))
    return cfg


def prepare_inputs(user_cfg: Config) -> tuple[Config, float | None]:
    """The trials' base config, after building what concurrent trials would otherwise race to build: the
    demo shards and the FCN-score segmenter. Returns it with the seconds spent training the segmenter.

    Trials hold tune.holdout_images train images out of training (data.holdout) and score the objective on
    them, so the val split stays untouched for the final report."""
    ensure_demo_shards_if_default(user_cfg.data.shards)
    cfg = absolute_paths(user_cfg)
    cfg.data.holdout = holdout_images(cfg)
    if not (cfg.eval.fcn and not cfg.eval.segmenter):
        return cfg, None
    from p2p_dist.eval.segmenter.ensure import ensure_run_segmenter, run_segmenter_ready

    ready = run_segmenter_ready(cfg)
    start = time.perf_counter()
    cfg.eval.segmenter = str(ensure_run_segmenter(cfg))
    return cfg, None if ready else time.perf_counter() - start


def holdout_images(cfg: Config) -> int:
    """tune.holdout_images, checked against the train split: at least one image must remain to train on."""
    count = cfg.tune.holdout_images
    if count:
        num_train = read_manifest(Path(cfg.data.shards))["splits"]["train"]["num_samples"]
        if count >= num_train:
            raise ConfigError(
                f"tune.holdout_images={count}: the train split of {cfg.data.shards} has only "
                f"{num_train} images; hold out fewer (0 scores the objective on val)"
            )
    return count


def run_length(cfg: Config) -> int:
    """Optimiser steps of each trial, as the trainer will count them (for ASHA's max_t)."""
    t = cfg.train
    if t.steps > 0:
        return t.steps
    num_train = read_manifest(Path(cfg.data.shards))["splits"]["train"]["num_samples"] - cfg.data.holdout
    batches_per_epoch = math.ceil(num_train / (cfg.tune.workers_per_trial * t.batch_size))
    return total_steps(t.steps, t.epochs, batches_per_epoch, t.grad_accum)


def make_scheduler(cfg: Config, length: int) -> TrialScheduler:
    """Both schedulers count in training steps; their intervals are whole evaluations (eval.every steps)."""
    t, every = cfg.tune, cfg.eval.every
    if t.scheduler == "asha":
        # max_t past the last step: ASHA stops every trial that reaches max_t at once, before the trainer
        # gets to write its summary; a trial that reaches the end should finish by itself.
        return ASHAScheduler(
            time_attr="step",
            max_t=length + 1,
            grace_period=min(t.grace_period * every, length),
            reduction_factor=t.reduction_factor,
        )
    # Keep-all checkpoints (see run_sweep): an exploit may copy a checkpoint the donor reported long ago.
    return PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=t.perturbation_interval * every,
        hyperparam_mutations=mutations(t),
        synch=t.pbt_synch,
    )


def worker_env() -> dict[str, str]:
    """Environment of the trial processes."""
    # Ray Train copies workers' prints into its log stream as well: every progress line would show twice.
    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    # Ray's worker processes load torch before any trial code runs: give them the process settings at start,
    # those of processes that share the cores (concurrent trials).
    env.update(environment_for(sharing_cores=True))
    # DeepSpeed's CPU communication op is JIT-built into this cache; without it every trial rebuilds it.
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    return env


def start_ray(cfg: Config) -> bool:
    """Join tune.address, or start a local Ray. Returns whether this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    t = cfg.tune
    # "local" starts a Ray of our own even when `ray start` left a cluster running on this machine.
    options = {
        "address": t.address or "local",
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": worker_env()},
    }
    if not t.address:
        # The dashboard runs the state API Ray Train needs to release a stopped trial's placement group;
        # without it the next distributed trial waits for resources forever.
        options.update(
            num_cpus=max(os.cpu_count() or 1, t.workers_per_trial * t.cpus_per_worker), include_dashboard=True
        )
    ray.init(**options)
    return True


def resolve_use_gpu(cfg: Config) -> bool:
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.tune.use_gpu == "yes" and gpus == 0:
        raise ConfigError("tune.use_gpu=yes but the Ray cluster has no GPUs")
    return cfg.tune.use_gpu == "yes" or (cfg.tune.use_gpu == "auto" and gpus > 0)


def make_trainable(setup: TrialSetup):
    """The Tune function with its resources. A distributed trial's own process only waits for its Train
    workers, which reserve the CPUs/GPUs, so it takes no CPU (Ray needs a non-empty request: it asks for the
    memory it uses); the caller limits how many such trials run at once (max_concurrent_trials)."""
    if setup.workers == 1:
        return tune.with_resources(
            tune.with_parameters(run_trial, setup=setup), {"cpu": setup.cpus_per_worker, "gpu": int(setup.use_gpu)}
        )
    return tune.with_resources(
        tune.with_parameters(run_distributed_trial, setup=setup), {"cpu": 0, "memory": DRIVER_MEMORY}
    )


def concurrent_distributed_trials(setup: TrialSetup) -> int:
    """Trials whose worker groups fit the cluster at once; more would start Train runs that wait for workers."""
    available = ray.cluster_resources()
    fits = int(available.get("CPU", 0) // (setup.workers * setup.cpus_per_worker))
    if setup.use_gpu:
        fits = min(fits, int(available.get("GPU", 0) // setup.workers))
    return max(1, fits)


def run_sweep(user_cfg: Config, resume: bool = False) -> SweepReport:
    """Run (or with `resume`, continue) the sweep `user_cfg.tune` describes; write and return its results.

    `resume` continues the interrupted sweep at tune.storage_path/tune.name with the config it was started
    with (saved there), from each unfinished trial's last checkpoint."""
    exp_dir = experiment_dir(user_cfg)
    if resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise ConfigError(f"--resume: no sweep to resume in {exp_dir} (tune.storage_path / tune.name)")
        user_cfg = load_config(exp_dir / SWEEP_CONFIG)
    elif exp_dir.exists() and any(exp_dir.iterdir()):
        raise ConfigError(f"{exp_dir} already holds a sweep: continue it with --resume, or set another tune.name")
    check_sweep_config(user_cfg)
    cfg, segmenter_train_s = prepare_inputs(user_cfg)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(user_cfg, exp_dir / SWEEP_CONFIG)

    started_ray = start_ray(cfg)
    try:
        t, goal, length = cfg.tune, objective(cfg.tune), run_length(cfg)
        setup = TrialSetup(cfg, str(exp_dir), resolve_use_gpu(cfg))
        trainable = make_trainable(setup)
        start = time.perf_counter()
        if resume:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(t),
                tune_config=tune.TuneConfig(
                    metric=goal.name,
                    mode=goal.mode,
                    scheduler=make_scheduler(cfg, length),
                    num_samples=t.num_samples,
                    reuse_actors=False,
                    trial_dirname_creator=trial_dirname,
                    max_concurrent_trials=concurrent_distributed_trials(setup) if setup.workers > 1 else None,
                ),
                run_config=tune.RunConfig(
                    name=t.name,
                    storage_path=str(exp_dir.parent),
                    verbose=1,
                    failure_config=tune.FailureConfig(max_failures=t.max_failures),
                    # PBT restores trials from checkpoints other trials reported earlier: deleting old ones
                    # makes those exploits fail (FileNotFoundError). ASHA only ever resumes a trial's latest.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None if t.scheduler == "pbt" else 2),
                ),
            )
        grid = tuner.fit()
        sweep_s = time.perf_counter() - start
    finally:
        if started_ray:
            ray.shutdown()
    return write_results(user_cfg, grid, length, exp_dir, segmenter_train_s, sweep_s)


def write_results(
    user_cfg: Config, grid, length: int, exp_dir: Path, segmenter_train_s: float | None, sweep_s: float
) -> SweepReport:
    goal, keys = objective(user_cfg.tune), searched_keys(user_cfg.tune)
    # Statuses as saved for --resume: Tune marks the trials an interruption stopped as TERMINATED in memory.
    saved_status = {Path(t.path).name: t.status for t in tune.ExperimentAnalysis(str(exp_dir)).trials}
    rows = []
    for result in grid:
        frame, name = result.metrics_dataframe, Path(result.path).name
        has_curve = frame is not None and goal.name in frame and "step" in frame
        curve = [(int(s), float(v)) for s, v in zip(frame["step"], frame[goal.name])] if has_curve else []
        rows.append(
            results.summarize(
                name,
                {k: result.config.get(k) for k in keys},
                curve,
                goal,
                length,
                result.path,
                saved_status.get(name, "ERROR" if result.error else "TERMINATED"),
            )
        )
    rows = results.rank(rows, goal)
    markdown = results.write_tables(rows, keys, goal, exp_dir, scored=results.scored_on(user_cfg))
    best = rows[0] if rows and math.isfinite(rows[0].best) else None
    best_config = (
        results.write_best_config(user_cfg, best, goal, user_cfg.tune.name, exp_dir / results.BEST_CONFIG)
        if best
        else None
    )
    title = f"{user_cfg.tune.name}: {user_cfg.tune.scheduler.upper()}, {len(rows)} trials"
    results.plot_curves(rows, goal, title, exp_dir / results.PLOT)
    return SweepReport(exp_dir, rows, markdown, best_config, segmenter_train_s, sweep_s)
