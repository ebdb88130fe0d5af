"""The training loop: set up (and resume), then step, log, sample, checkpoint, evaluate and stop cleanly, with a
Cadence deciding when. Read it top to bottom, from `train`."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from p2p_dist.config import Config, save_config
from p2p_dist.data.demo.shard_set import ensure_demo_shards_if_default
from p2p_dist.data.loaders.build import build_loader, loader_options
from p2p_dist.data.loaders.contract import ShardLoader
from p2p_dist.run_dir import RunDir, latest_checkpoint
from p2p_dist.runtime import Runtime, init_runtime, resolved_choices, shutdown
from p2p_dist.train import checkpoint
from p2p_dist.train.cadence import Cadence
from p2p_dist.train.checkpoint import TrainerState
from p2p_dist.train.engines import Pix2Pix
from p2p_dist.train.logger import RunLogger, Throughput, format_duration
from p2p_dist.train.loss_tracking import LossMeans, NonFiniteWatch
from p2p_dist.train.samples import sample_grid, save_grid
from p2p_dist.train.schedule import total_steps


class NonFiniteLoss(RuntimeError):
    pass


class StopFlag:
    """Set by SIGTERM (cluster preemption) or SIGINT; ranks agree on it before acting, or they would hang."""

    def __init__(self) -> None:
        self.requested = False
        if threading.current_thread() is not threading.main_thread():
            return  # a Ray Tune / Ray Train worker thread: Ray stops trials itself, and only main may set handlers
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _shards_dir(cfg: Config, rt: Runtime) -> Path:
    shards = Path(cfg.data.shards)
    if rt.is_main:
        ensure_demo_shards_if_default(shards)
    dist.barrier()  # the other ranks open the shards only once rank 0 has (re)built them
    if not (shards / "manifest.json").is_file():
        found = "no manifest.json there" if shards.is_dir() else "no such directory"
        raise FileNotFoundError(f"data.shards={shards}: {found}; pack a data set with launch/pack.py")
    return shards


def _batches(loader, state: TrainerState):
    """Micro-batches forever from the saved data position, advancing it as they are handed out."""
    while True:
        # A checkpoint at an epoch's end says "all batches consumed"; resumed with another world or batch
        # size, that count may even exceed this grouping's batches per epoch.
        if state.batch_in_epoch >= loader.batches_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        for batch in loader.epoch(state.epoch, start_batch=state.batch_in_epoch):
            state.batch_in_epoch += 1
            yield batch


Reporter = Callable[[int, dict, Path], None]


class Evaluation(Protocol):
    """Periodic evaluation as the trainer sees it: called with the generator (label maps -> photos in
    [-1, 1]) on every rank, returns the metrics; closed at the end."""

    def __call__(self, translate: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]: ...

    def close(self) -> None: ...


EvaluationFactory = Callable[[Config, Runtime, Path], Evaluation]  # (cfg, runtime, shards dir) -> Evaluation


def train(cfg: Config, reporter: Reporter | None = None, evaluation: EvaluationFactory | None = None) -> dict:
    """Train to the end (or to a stop request); returns the summary. Raises NonFiniteLoss on divergence.

    `evaluation(cfg, rt, shards)` builds the periodic evaluation, run every eval.every steps and at the end;
    it is required when eval.every > 0 (launch/train.py and Ray Tune trials pass
    p2p_dist.eval.periodic.PeriodicEvaluation). `reporter(step, metrics, checkpoint_dir)` is called on
    every rank after each periodic evaluation, once the checkpoint of that step is complete: how Ray Tune
    trials report (p2p_dist.tune)."""
    if cfg.eval.every > 0 and evaluation is None:
        raise ValueError(
            f"eval.every={cfg.eval.every} asks for periodic evaluation, but train() was given no "
            f"evaluation hook (pass evaluation=p2p_dist.eval.periodic.PeriodicEvaluation)"
        )
    rt = init_runtime(cfg)
    try:
        # Loaders hold DALI threads or DataLoader worker processes: release them even when a trial in a
        # long-lived Ray worker ends with an error.
        with contextlib.ExitStack() as loaders:
            return _train(cfg, rt, reporter, evaluation, loaders)
    finally:
        shutdown()


@dataclass
class Session:
    """Everything the loop works with, set up (and resumed) before the first step."""

    run_dir: RunDir
    loader: ShardLoader
    model: Pix2Pix
    state: TrainerState  # step, data position, images seen: what a checkpoint resumes
    total_steps: int
    steps_per_epoch: float
    samples: dict | None  # the fixed val pairs of every sample grid (rank 0)
    evaluation: Evaluation | None
    logger: RunLogger


def _set_up(cfg: Config, rt: Runtime, evaluation: EvaluationFactory | None, closing: contextlib.ExitStack) -> Session:
    run_dir = RunDir(cfg.run.dir)
    if rt.is_main:
        run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(run_dir.checkpoints)
    shards = _shards_dir(cfg, rt)
    t = cfg.train
    loader = closing.enter_context(
        contextlib.closing(
            build_loader(
                shards,
                "train",
                loader_options(
                    cfg.data,
                    batch_size=t.batch_size,
                    train=True,
                    seed=cfg.seed,
                    rank=rt.rank,
                    world_size=rt.world_size,
                    device=rt.device,
                ),
            )
        )
    )
    total = total_steps(t.steps, t.epochs, loader.batches_per_epoch, t.grad_accum)

    torch.manual_seed(cfg.seed)  # identical initial weights everywhere (DeepSpeed also broadcasts them)
    model = Pix2Pix(cfg, rt, total)
    torch.manual_seed(cfg.seed + 1 + rt.rank)  # independent dropout noise per rank
    state = TrainerState(world_size=rt.world_size, batch_size=t.batch_size, zero_stage=cfg.zero_stage)
    dist.barrier()
    latest = latest_checkpoint(run_dir.checkpoints)
    if latest is not None:
        state = checkpoint.load(latest, model, rt.rank, rt.world_size, t.batch_size)
        model.apply_config_learning_rates()
        if rt.is_main:
            print(f"resumed from {latest} (step {state.step}, epoch {state.epoch})", flush=True)
    if rt.is_main:
        save_config(cfg, run_dir.config)
        print(
            f"training {total} steps on {rt.world_size} x {rt.device.type}, {loader.num_samples} train pairs, "
            f"global batch {t.batch_size * t.grad_accum * rt.world_size}; run dir {run_dir.path}\n"
            f"automatic choices for this machine: {_describe(resolved_choices(cfg, rt))}",
            flush=True,
        )
    return Session(
        run_dir,
        loader,
        model,
        state,
        total,
        steps_per_epoch=loader.batches_per_epoch / t.grad_accum,
        samples=_fixed_val_batch(cfg, rt, shards) if rt.is_main else None,
        evaluation=closing.enter_context(contextlib.closing(evaluation(cfg, rt, shards))) if cfg.eval.every else None,
        logger=closing.enter_context(contextlib.closing(RunLogger(run_dir, total, enabled=rt.is_main))),
    )


def _train(
    cfg: Config,
    rt: Runtime,
    reporter: Reporter | None,
    evaluation: EvaluationFactory | None,
    closing: contextlib.ExitStack,
) -> dict:
    s = _set_up(cfg, rt, evaluation, closing)
    model, state, logger = s.model, s.state, s.logger
    cadence = Cadence.of(cfg, s.total_steps)
    step_images = cfg.train.batch_size * cfg.train.grad_accum * rt.world_size
    batches = _batches(s.loader, state)
    losses, non_finite, meter, stop = LossMeans(rt.device), NonFiniteWatch(rt.device), Throughput(), StopFlag()
    started, first_step, stopping = time.perf_counter(), state.step, False

    while state.step < s.total_steps and not stopping:
        lr_g, lr_d = model.lr  # the rates this step uses (the schedule advances inside the step)
        with meter.waiting_for_data():
            micro_batches = [next(batches) for _ in range(cfg.train.grad_accum)]
        step_losses = model.train_step(micro_batches)
        state.step += 1
        state.images_seen += step_images
        losses.add(step_losses)
        non_finite.record(step_losses, state.step)
        meter.count_step(step_images)

        if cadence.log(state.step):
            _stop_if_non_finite(non_finite, s.run_dir)
            skipped_g, skipped_d = model.skipped_steps
            logger.log(
                {
                    "step": state.step,
                    "epoch": state.step / s.steps_per_epoch,
                    "lr": lr_g,
                    "lr_d": lr_d,
                    **losses.read_and_reset(),
                    **meter.summary(),
                    "skipped_steps_G": skipped_g,
                    "skipped_steps_D": skipped_d,
                }
            )
            meter.reset()
            stopping = state.step < s.total_steps and stop.agreed(rt.device)
        with meter.not_training():
            if rt.is_main and cadence.sample(state.step):
                _write_samples(model, s.samples, s.run_dir, logger, state.step)
            if cadence.checkpoint(state.step, stopping):
                _stop_if_non_finite(non_finite, s.run_dir)
                state.elapsed_s, started = state.elapsed_s + time.perf_counter() - started, time.perf_counter()
                saved = checkpoint.save(s.run_dir.checkpoints, model, state, cfg.run.keep_checkpoints, rt.rank)
            if cadence.evaluate(state.step):  # the checkpoint of this step was just saved (see Cadence)
                metrics = s.evaluation(model.translate)
                logger.log(
                    {
                        "step": state.step,
                        "epoch": state.step / s.steps_per_epoch,
                        **{f"eval/{k}": v for k, v in metrics.items()},
                    }
                )
                if reporter is not None:
                    reporter(state.step, metrics, saved)

    state.elapsed_s += time.perf_counter() - started
    if stopping and rt.is_main:
        print(f"stop requested: checkpoint written at step {state.step}; run again to resume", flush=True)
    return _finish(cfg, rt, s, steps_this_process=state.step - first_step, stopped_early=stopping)


def _finish(cfg: Config, rt: Runtime, s: Session, steps_this_process: int, stopped_early: bool) -> dict:
    state, run_dir = s.state, s.run_dir
    summary = {
        "steps": state.step,
        "total_steps": s.total_steps,
        "images_seen": state.images_seen,
        "wall_time_s": state.elapsed_s,
        "mean_images_per_s": state.images_seen / max(state.elapsed_s, 1e-9),
        "steps_this_process": steps_this_process,
        "stopped_early": stopped_early,
        "world_size": rt.world_size,
        "precision": rt.precision,
        "device": rt.device.type,
        "automatic_choices": resolved_choices(cfg, rt),
        "run_dir": str(run_dir.path),
        "samples": str(run_dir.samples),
        "checkpoint": str(latest_checkpoint(run_dir.checkpoints)),
    }
    if rt.is_main:
        run_dir.summary.write_text(json.dumps(summary, indent=1))
        print(
            f"done: {state.step}/{s.total_steps} steps, {state.images_seen} images in "
            f"{format_duration(state.elapsed_s)} ({summary['mean_images_per_s']:.1f} img/s).\n"
            f"  samples:     {run_dir.samples}\n  metrics:     {run_dir.metrics}\n"
            f"  checkpoints: {run_dir.checkpoints}\n  summary:     {run_dir.summary}\n"
            f"  tensorboard: tensorboard --logdir {run_dir.tensorboard}",
            flush=True,
        )
    return summary


def _describe(choices: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in choices.items())


def _stop_if_non_finite(non_finite: NonFiniteWatch, run_dir: RunDir) -> None:
    """Collective. Raised before any checkpoint of a poisoned step is written."""
    bad = non_finite.first_bad_step()
    if bad is not None:
        latest = latest_checkpoint(run_dir.checkpoints)
        raise NonFiniteLoss(
            f"non-finite loss at step {bad}; stopping without saving. Last good checkpoint: {latest or 'none yet'}"
        )


def _fixed_val_batch(cfg: Config, rt: Runtime, shards: Path) -> dict:
    """The first validation pairs, unaugmented: the same rows in every sample grid of the run."""
    d = cfg.data
    val = build_loader(
        shards,
        "val",
        loader_options(d, batch_size=cfg.run.sample_rows, train=False, seed=cfg.seed, device=rt.device, num_workers=1),
    )
    with contextlib.closing(val):
        return next(iter(val.epoch(0)))


def _write_samples(model: Pix2Pix, samples: dict, run_dir: RunDir, logger: RunLogger, step: int) -> None:
    fake = model.translate(samples["label"])
    grid = sample_grid(samples["ids"], fake, samples["photo"])
    save_grid(grid, run_dir.sample_grid(step))
    logger.image("samples", grid, step)
