"""The training loop: resume, step, log, sample, checkpoint, stop cleanly. Read it top to bottom."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from p2p_dist.config import Config, save_config
from p2p_dist.data.loader import build_loader
from p2p_dist.data.shards import ensure_demo_shards_if_default
from p2p_dist.eval.evaluate import evaluate
from p2p_dist.eval.metrics import Evaluator
from p2p_dist.eval.segmenter import segmenter_for
from p2p_dist.train import checkpoint
from p2p_dist.train.checkpoint import TrainerState
from p2p_dist.train.engines import Pix2Pix
from p2p_dist.train.logger import RunLogger, Throughput, format_duration
from p2p_dist.train.runtime import Runtime, init_runtime, shutdown
from p2p_dist.train.samples import sample_grid, save_grid
from p2p_dist.train.schedule import total_steps

NO_BAD_STEP = 2**62


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

    def _set(self, signum, frame) -> None:  # noqa: ARG002
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


def _mean_over_ranks(values: torch.Tensor) -> list[float]:
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return (values / dist.get_world_size()).tolist()


Reporter = Callable[[int, dict, Path], None]


def train(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Train to the end (or to a stop request); returns the summary. Raises NonFiniteLoss on divergence.

    `reporter(step, metrics, checkpoint_dir)` is called on every rank after each periodic evaluation (every
    eval.every steps and at the end), once the checkpoint of that step is complete: how Ray Tune trials
    report (p2p_dist.tune)."""
    rt = init_runtime(cfg)
    try:
        # Loaders hold DALI threads or DataLoader worker processes: release them even when a trial in a
        # long-lived Ray worker ends with an error.
        with contextlib.ExitStack() as loaders:
            return _train(cfg, rt, reporter, loaders)
    finally:
        shutdown()


def _train(cfg: Config, rt: Runtime, reporter: Reporter | None, loaders: contextlib.ExitStack) -> dict:
    run_dir, ckpt_root = Path(cfg.run.dir), Path(cfg.run.dir) / "checkpoints"
    if rt.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(ckpt_root)
    shards = _shards_dir(cfg, rt)
    d, t = cfg.data, cfg.train
    loader = loaders.enter_context(contextlib.closing(build_loader(
        shards, "train", backend=d.loader, batch_size=t.batch_size, rank=rt.rank, world_size=rt.world_size,
        seed=cfg.seed, train=True, load_size=d.load_size, crop_size=d.crop_size, flip=d.flip,
        label_encoding=d.label_encoding, device=rt.device, num_workers=d.num_workers)))
    steps_per_epoch = loader.batches_per_epoch / t.grad_accum
    total = total_steps(t.steps, t.epochs, loader.batches_per_epoch, t.grad_accum)

    torch.manual_seed(cfg.seed)  # identical initial weights everywhere (DeepSpeed also broadcasts them)
    model = Pix2Pix(cfg, rt, total)
    torch.manual_seed(cfg.seed + 1 + rt.rank)  # independent dropout noise per rank
    state = TrainerState(world_size=rt.world_size, batch_size=t.batch_size, zero_stage=cfg.zero_stage)
    dist.barrier()
    latest = checkpoint.latest_checkpoint(ckpt_root)
    if latest is not None:
        state = checkpoint.load(latest, model, rt.rank, rt.world_size, t.batch_size)
        model.apply_config_learning_rates()
        if rt.is_main:
            print(f"resumed from {latest} (step {state.step}, epoch {state.epoch})", flush=True)
    if rt.is_main:
        save_config(cfg, run_dir / "config.yaml")
        print(f"training {total} steps on {rt.world_size} x {rt.device.type} ({rt.precision}), "
              f"{loader.num_samples} train pairs, global batch {t.batch_size * t.grad_accum * rt.world_size}; "
              f"run dir {run_dir}", flush=True)

    samples = _fixed_val_batch(cfg, rt, shards) if rt.is_main else None
    periodic_eval = (loaders.enter_context(contextlib.closing(PeriodicEvaluation(cfg, rt, shards)))
                     if cfg.eval.every > 0 else None)
    logger = RunLogger(run_dir, total, enabled=rt.is_main)
    stop = StopFlag()
    meter = Throughput()
    batches = _batches(loader, state)
    loss_sums = torch.zeros(3, device=rt.device)
    first_bad_step = torch.full((1,), NO_BAD_STEP, device=rt.device, dtype=torch.long)
    start_time, start_step, stopped_early = time.perf_counter(), state.step, False

    while state.step < total:
        lr_g, lr_d = model.lr  # the rates this step uses (the schedule advances inside the step)
        wait_start = time.perf_counter()
        micro_batches = [next(batches) for _ in range(t.grad_accum)]
        meter.data_wait += time.perf_counter() - wait_start
        losses = model.train_step(micro_batches)
        loss_sums += torch.stack([losses.loss_D, losses.loss_G_gan, losses.loss_G_l1])
        first_bad_step = torch.minimum(first_bad_step,
                                       torch.where(losses.finite(), NO_BAD_STEP, state.step + 1))
        state.step += 1
        step_images = t.batch_size * t.grad_accum * rt.world_size
        state.images_seen += step_images
        meter.images += step_images
        meter.steps += 1

        at_end = state.step == total
        if state.step % cfg.run.log_every == 0 or at_end:
            _check_finite(first_bad_step, ckpt_root)
            loss_D, loss_G_gan, loss_G_l1 = _mean_over_ranks(loss_sums / meter.steps)
            skipped_g, skipped_d = model.skipped_steps
            logger.log({"step": state.step, "epoch": state.step / steps_per_epoch, "lr": lr_g, "lr_d": lr_d,
                        "loss_D": loss_D, "loss_G_gan": loss_G_gan, "loss_G_l1": loss_G_l1, **meter.summary(),
                        "skipped_steps_G": skipped_g, "skipped_steps_D": skipped_d})
            loss_sums.zero_()
            meter.reset()
            stopped_early = not at_end and stop.agreed(rt.device)
        housekeeping_start = time.perf_counter()
        if rt.is_main and (state.step % cfg.run.sample_every == 0 or at_end):
            _write_samples(model, samples, run_dir, logger, state.step)
        evaluating = periodic_eval is not None and (state.step % cfg.eval.every == 0 or at_end)
        if state.step % cfg.run.checkpoint_every == 0 or at_end or stopped_early or evaluating:
            _check_finite(first_bad_step, ckpt_root)
            state.elapsed_s += time.perf_counter() - start_time
            start_time = time.perf_counter()
            saved = checkpoint.save(ckpt_root, model, state, cfg.run.keep_checkpoints, rt.rank)
        if evaluating:
            metrics = periodic_eval(model)
            logger.log({"step": state.step, "epoch": state.step / steps_per_epoch,
                        **{f"eval/{k}": v for k, v in metrics.items()}})
            if reporter is not None:
                reporter(state.step, metrics, saved)
        meter.excluded += time.perf_counter() - housekeeping_start
        if stopped_early:
            if rt.is_main:
                print(f"stop requested: checkpoint written at step {state.step}; run again to resume", flush=True)
            break

    state.elapsed_s += time.perf_counter() - start_time
    summary = {"steps": state.step, "total_steps": total, "images_seen": state.images_seen,
               "wall_time_s": state.elapsed_s, "mean_images_per_s": state.images_seen / max(state.elapsed_s, 1e-9),
               "steps_this_process": state.step - start_step, "stopped_early": stopped_early,
               "world_size": rt.world_size, "precision": rt.precision, "device": rt.device.type,
               "run_dir": str(run_dir), "samples": str(run_dir / "samples"),
               "checkpoint": str(checkpoint.latest_checkpoint(ckpt_root))}
    if rt.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"done: {state.step}/{total} steps, {state.images_seen} images in "
              f"{format_duration(state.elapsed_s)} ({summary['mean_images_per_s']:.1f} img/s).\n"
              f"  samples:     {run_dir / 'samples'}\n  metrics:     {run_dir / 'metrics.jsonl'}\n"
              f"  checkpoints: {ckpt_root}\n  summary:     {run_dir / 'summary.json'}\n"
              f"  tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}", flush=True)
    logger.close()
    return summary


def _check_finite(first_bad_step: torch.Tensor, ckpt_root: Path) -> None:
    """Collective: all ranks stop together, or the healthy ones would hang in the next all-reduce."""
    bad = first_bad_step.clone()
    dist.all_reduce(bad, op=dist.ReduceOp.MIN)
    bad = int(bad.item())
    if bad != NO_BAD_STEP:
        latest = checkpoint.latest_checkpoint(ckpt_root)
        raise NonFiniteLoss(f"non-finite loss at step {bad}; stopping without saving. Last good checkpoint: "
                            f"{latest or 'none yet'}")


class PeriodicEvaluation:
    """Image quality on a fixed val subset during training (FCN-score, L1/SSIM/PSNR, FID/KID if enabled), so
    that a sweep can optimise what users look at, not a loss. All ranks share the work."""

    def __init__(self, cfg: Config, rt: Runtime, shards: Path) -> None:
        d = cfg.data
        self.segmenter = segmenter_for(cfg, rt) if cfg.eval.fcn else None
        self.loader = build_loader(shards, "val", backend=d.loader, batch_size=cfg.train.batch_size, rank=rt.rank,
                                   world_size=rt.world_size, seed=cfg.seed, train=False, load_size=d.crop_size,
                                   crop_size=d.crop_size, flip=False, label_encoding=d.label_encoding,
                                   device=rt.device, num_workers=d.num_workers)
        self.num_images = cfg.eval.num_images
        self.evaluator = Evaluator(rt.device, fid_kid=cfg.eval.fid, fcn=cfg.eval.fcn)

    def __call__(self, model: Pix2Pix) -> dict:
        return evaluate(lambda batch: model.translate(batch["label"]), self.loader, self.evaluator, self.segmenter,
                        self.num_images)

    def close(self) -> None:
        self.loader.close()


def _fixed_val_batch(cfg: Config, rt: Runtime, shards: Path) -> dict:
    """The first validation pairs, unaugmented: the same rows in every sample grid of the run."""
    d = cfg.data
    val = build_loader(shards, "val", backend=d.loader, batch_size=cfg.run.sample_rows, rank=0, world_size=1,
                       seed=cfg.seed, train=False, load_size=d.crop_size, crop_size=d.crop_size, flip=False,
                       label_encoding=d.label_encoding, device=rt.device, num_workers=1)
    with contextlib.closing(val):
        return next(iter(val.epoch(0)))


def _write_samples(model: Pix2Pix, samples: dict, run_dir: Path, logger: RunLogger, step: int) -> None:
    fake = model.translate(samples["label"])
    grid = sample_grid(samples["ids"], fake, samples["photo"])
    save_grid(grid, run_dir / "samples" / f"step_{step:06d}.png")
    logger.image("samples", grid, step)
