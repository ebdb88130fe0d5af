"""Getting a segmenter: the cached one, trained first when missing or stale; a run's segmenter, which rank 0
trains when needed while the other ranks wait (collective)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from p2p_dist.config import Config
from p2p_dist.eval.segmenter.cache import (
    SegmenterTrainConfig,
    cache_is_valid,
    default_checkpoint_path,
    is_stale,
    load_segmenter,
)
from p2p_dist.eval.segmenter.fit import train_segmenter
from p2p_dist.runtime import Runtime

# How long the other ranks wait for rank 0 to train the segmenter: hours on a CPU for a full data set, far
# past the default 30-minute collective timeout. A week means "never time out"; a rank 0 that dies still
# ends the wait at once (its gloo connections close, and the launcher stops the job).
TRAINING_WAIT = timedelta(days=7)


def ensure_segmenter(
    shards_dir: str | os.PathLike, *, out_path: str | os.PathLike | None = None, **train_kwargs
) -> Path:
    """The cached segmenter's path, training it first unless the cache entry is fresh (not
    :func:`~p2p_dist.eval.segmenter.cache.is_stale`) and was trained with the requested settings
    (``train_kwargs``, same names as :func:`train_segmenter`; ``device`` and ``progress`` do not count).
    """
    setting_names = set(SegmenterTrainConfig.__dataclass_fields__)
    unknown = set(train_kwargs) - setting_names - {"device", "progress"}
    if unknown:
        raise TypeError(f"ensure_segmenter got unknown settings: {sorted(unknown)}")
    config = SegmenterTrainConfig(**{k: v for k, v in train_kwargs.items() if k in setting_names})
    out_path = Path(out_path) if out_path is not None else default_checkpoint_path(shards_dir, config.crop_size)
    if cache_is_valid(shards_dir, out_path, config):
        return out_path
    return train_segmenter(shards_dir, out_path=out_path, **train_kwargs)


def run_segmenter_path(cfg: Config) -> Path:
    """The segmenter file a run's FCN-score uses: ``eval.segmenter`` if set, else the cache entry for
    ``data.shards`` at ``data.crop_size``."""
    if cfg.eval.segmenter:
        return Path(cfg.eval.segmenter)
    return default_checkpoint_path(cfg.data.shards, cfg.data.crop_size)


def run_segmenter_ready(cfg: Config) -> bool:
    """True when a run has its segmenter without training one: ``eval.segmenter`` is set, or the cache entry for
    the run's shards and crop size is not stale (trained on these very shards at that crop size, by
    launch/train_segmenter.py with any other settings, or by an earlier run)."""
    if cfg.eval.segmenter:
        return True
    return not is_stale(run_segmenter_path(cfg), cfg.data.shards, cfg.data.crop_size)


def ensure_run_segmenter(cfg: Config, device: torch.device | str | None = None) -> Path:
    """The path of a run's segmenter, training it first (default settings at the run's crop size, with the
    run's loader) when :func:`run_segmenter_ready` says there is none."""
    path = run_segmenter_path(cfg)
    if not run_segmenter_ready(cfg):
        print(
            f"training the FCN-score segmenter on {cfg.data.shards} at {cfg.data.crop_size}x{cfg.data.crop_size} "
            f"(once: cached as {path})",
            file=sys.stderr,
            flush=True,
        )
        train_segmenter(cfg.data.shards, crop_size=cfg.data.crop_size, backend=cfg.data.loader, device=device)
    return path


def segmenter_for(cfg: Config, rt: Runtime) -> nn.Module:
    """A run's segmenter on ``rt.device``, in eval mode. Collective (call it on every rank): rank 0 trains
    it first when needed while the others wait, then every rank loads it."""
    if not cfg.eval.segmenter:
        # Rank 0 alone decides whether to train (ranks checking the cache themselves could disagree, one
        # seeing it before rank 0 writes it, another after). A barrier on the default group would time out
        # (30 minutes) during a long training: this group exists only for this wait; gloo works beside an
        # NCCL default group and needs no device.
        waiting = dist.new_group(backend="gloo", timeout=TRAINING_WAIT)
        try:
            if rt.is_main:
                ensure_run_segmenter(cfg, rt.device)
            dist.barrier(group=waiting)
        finally:
            dist.destroy_process_group(waiting)
    return load_segmenter(run_segmenter_path(cfg), rt.device)
