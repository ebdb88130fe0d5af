"""A trial: the project's trainer (`p2p_dist.train.loop.train`) with the trial's parameters, reporting to Tune.

Two shapes, one training loop:

- one process: `run_trial` is the Tune function trainable itself and calls ``train(cfg, reporter, evaluation)``;
- N data-parallel DeepSpeed workers: `run_distributed_trial` is the Tune function and fits a Ray Train
  ``TorchTrainer`` whose workers each call ``train(cfg, reporter, evaluation)`` in a process group Ray Train
  set up (gloo on CPU, nccl on GPU). Rank 0's reports come back to the Tune function, which reports them to
  Tune.

The trainer's periodic evaluation (the objective's source) is `p2p_dist.eval.periodic.PeriodicEvaluation`,
handed to it here.

A trial's files live in ``<storage_path>/<name>/trial_<id>/``: Tune's results and checkpoints, and ``run/``,
the trainer's run directory (metrics.jsonl, samples/, TensorBoard, checkpoints/, summary.json) plus
``restores.jsonl``, one line per start from a Tune checkpoint (a retry after a failure, a resumed sweep, or a
PBT exploit of another trial's checkpoint, whose directory ``from`` names): its step, the parameters the
trial continues with, and ``metrics_line``, the first line of metrics.jsonl written after it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from p2p_dist.config import Config
from p2p_dist.run_dir import TRAINER_STATE_NAME, RunDir, checkpoint_name, write_latest
from p2p_dist.train.checkpoint import TrainerState
from p2p_dist.tune.space import Objective, objective, trial_config

RUN_SUBDIR = "run"
RESTORES_LOG = "restores.jsonl"
CHECKPOINT_KEY = "checkpoint_dir"  # rank 0's checkpoint path, passed from Train workers to the Tune function


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (put into Ray's object store once)."""

    base: Config  # the sweep's config, paths made absolute
    experiment_dir: str  # <storage_path>/<name>, on storage every node can reach
    use_gpu: bool = False

    @property
    def workers(self) -> int:
        return self.base.tune.workers_per_trial

    @property
    def cpus_per_worker(self) -> int:
        return self.base.tune.cpus_per_worker

    def trial_dir(self, trial_id: str) -> Path:
        return Path(self.experiment_dir) / trial_dirname_for(trial_id)


def trial_dirname_for(trial_id: str) -> str:
    return f"trial_{trial_id}"


def trial_dirname(trial) -> str:
    """Tune's trial_dirname_creator: short names (the parameters are in the results table, not the path)."""
    return trial_dirname_for(trial.trial_id)


def tune_metrics(step: int, metrics: dict[str, float], goal: Objective) -> dict[str, Any]:
    """One Tune result: the step (the schedulers' time axis), the objective under its tune.metric name, and
    every evaluation metric (``fcn/mean_iou`` -> ``fcn_mean_iou``: Tune nests keys at slashes)."""
    row: dict[str, Any] = {"step": step, goal.name: metrics[goal.eval_key]}
    row.update({key.replace("/", "_"): value for key, value in metrics.items()})
    return row


def place_checkpoint(checkpoint: tune.Checkpoint, run_dir: Path) -> int:
    """Make a Tune checkpoint the one the trainer resumes from (``checkpoints/step_NNNNNN`` + ``latest``) and
    return its step. Other checkpoints of the run are removed: they belong to a history this start discards
    (a failed attempt's later steps, or this trial's own past before a PBT exploit)."""
    root = RunDir(run_dir).checkpoints
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with checkpoint.as_directory() as source:
        step = TrainerState(**json.loads((Path(source) / TRAINER_STATE_NAME).read_text())).step
        name = checkpoint_name(step)
        shutil.copytree(source, root / name)
    write_latest(root, name)
    return step


def quiet_ray_logs() -> None:
    """Keep the terminal to the trainer's progress and Tune's status: no line per checkpoint or report."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def prepare_run(params: dict[str, Any], setup: TrialSetup) -> Config:
    """The trial's training config; restores Tune's checkpoint for this trial into its run directory."""
    run_dir = setup.trial_dir(tune.get_context().get_trial_id()) / RUN_SUBDIR
    cfg = trial_config(setup.base, params, run_dir)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        step = place_checkpoint(checkpoint, run_dir)
        metrics = RunDir(run_dir).metrics
        # The trainer appends to metrics.jsonl: its records from line `metrics_line` on come from this start.
        lines = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        record = {"time": time.time(), "step": step, "from": checkpoint.path, "params": params, "metrics_line": lines}
        with open(run_dir / RESTORES_LOG, "a") as log:
            log.write(json.dumps(record) + "\n")
    return cfg


def report_to_tune(goal: Objective) -> Callable[[int, dict, Path], None]:
    def report(step: int, metrics: dict, checkpoint_dir: Path) -> None:
        tune.report(tune_metrics(step, metrics, goal), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    return report


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: one training process."""
    # DeepSpeed and the metrics load in the trial processes only.
    from p2p_dist.eval.periodic import PeriodicEvaluation
    from p2p_dist.train.loop import train

    quiet_ray_logs()
    cfg = prepare_run(params, setup)
    train(cfg, reporter=report_to_tune(objective(cfg.tune)), evaluation=PeriodicEvaluation)


# ---------------------------------------------------------------------------------- data-parallel trials


def _train_worker(loop_config: dict) -> None:
    """One Ray Train worker: a rank of the trainer. Every rank reports (Ray Train pairs up the workers'
    reports); rank 0 adds its checkpoint path (complete on shared storage once the trainer calls back) and
    waits until the Tune function has copied it: the trainer deletes old checkpoints as it goes on, and the
    other ranks wait for rank 0 at their next collective."""
    from p2p_dist.eval.periodic import PeriodicEvaluation
    from p2p_dist.train.loop import train

    quiet_ray_logs()
    cfg: Config = loop_config["cfg"]
    copied: Queue = loop_config["copied"]
    goal = objective(cfg.tune)
    is_rank0 = ray.train.get_context().get_world_rank() == 0

    def report(step: int, metrics: dict, checkpoint_dir: Path) -> None:
        row = tune_metrics(step, metrics, goal)
        if is_rank0:
            row[CHECKPOINT_KEY] = str(checkpoint_dir)
        ray.train.report(row)
        if is_rank0:
            copied.get()

    train(cfg, reporter=report, evaluation=PeriodicEvaluation)


class _ForwardReports(UserCallback):
    """Runs in the Ray Train controller: hands rank 0's report to the Tune function through a queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put(metrics[0])


def run_distributed_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: fits a TorchTrainer of `setup.workers` DeepSpeed ranks and reports their
    evaluations to Tune, each with the checkpoint of that step (so PBT and retries work as for one process).

    Failures are retried by Tune (FailureConfig), from the trial's last checkpoint, not by Ray Train."""
    quiet_ray_logs()
    cfg = prepare_run(params, setup)
    trial_dir = Path(cfg.run.dir).parent
    reports, copied = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg, "copied": copied},
        scaling_config=ray.train.ScalingConfig(
            num_workers=setup.workers, use_gpu=setup.use_gpu, resources_per_worker={"CPU": setup.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="nccl" if setup.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name="workers", storage_path=str(trial_dir), callbacks=[_ForwardReports(reports)]
        ),
    )
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # re-raised in this thread, where Tune sees it
            errors.append(err)

    fitting = threading.Thread(target=fit, name="torch-trainer-fit", daemon=True)
    fitting.start()
    while True:
        finished = not fitting.is_alive()  # read first: every report of a finished fit is already queued
        try:
            row = reports.get(timeout=1.0)
        except Empty:
            if finished:
                break
            continue
        checkpoint_dir = row.pop(CHECKPOINT_KEY)
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))  # returns once copied
        copied.put(row["step"])
    if errors:
        raise errors[0]
