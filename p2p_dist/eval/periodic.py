"""Evaluation during training: the hook `p2p_dist.train.loop.train` is handed (as ``evaluation=``) by
launch/train.py and Ray Tune trials when ``eval.every`` > 0. The trainer never imports this package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from p2p_dist.config import Config
from p2p_dist.data.loaders.build import build_loader, loader_options
from p2p_dist.eval.evaluate import evaluate
from p2p_dist.eval.metrics import Evaluator
from p2p_dist.eval.segmenter.ensure import segmenter_for
from p2p_dist.runtime import Runtime


class PeriodicEvaluation:
    """Image quality on a fixed subset during training (FCN-score, L1/SSIM/PSNR, FID/KID if enabled), so that a
    sweep can optimise what users look at, not a loss. All ranks share the work. The subset is the first
    eval.num_images of the train images held out from training (data.holdout > 0, as sweeps set it: the val
    split stays untouched for the final report), else of val. Batch norm uses eval.norm_mode's statistics
    (the trainer's `translate`).

    Built by the trainer on every rank as ``PeriodicEvaluation(cfg, rt, shards)``; called with the generator
    as a function of label maps, it returns the metrics (equal on every rank)."""

    def __init__(self, cfg: Config, rt: Runtime, shards: Path) -> None:
        self.segmenter = segmenter_for(cfg, rt) if cfg.eval.fcn else None
        holdout = cfg.data.holdout > 0
        self.loader = build_loader(
            shards,
            "train" if holdout else "val",
            loader_options(
                cfg.data,
                batch_size=cfg.train.batch_size,
                train=False,
                seed=cfg.seed,
                rank=rt.rank,
                world_size=rt.world_size,
                device=rt.device,
                holdout_only=holdout,
            ),
        )
        self.num_images = cfg.eval.num_images
        self.evaluator = Evaluator(rt.device, fid_kid=cfg.eval.fid, fcn=cfg.eval.fcn)

    def __call__(self, translate: Callable[[Tensor], Tensor]) -> dict[str, float]:
        return evaluate(
            lambda batch: translate(batch["label"]), self.loader, self.evaluator, self.segmenter, self.num_images
        )

    def close(self) -> None:
        self.loader.close()
