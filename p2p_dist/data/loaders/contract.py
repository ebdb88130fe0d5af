"""The loader contract, shared by both backends and the front (``build``): options, base class, outputs.

    for batch in loader.epoch(epoch, start_batch=0):    # batches_per_epoch - start_batch batches
        batch["photo"]      # float32 (B, 3, H, W) in [-1, 1], on the options' device
        batch["label"]      # float32 (B, 3, H, W) colour map in [-1, 1], or (B, 34, H, W) one-hot ids
        batch["ids"]        # uint8 (B, H, W) Cityscapes label ids (for the FCN-score)
        batch["key"]        # list[str] sample keys
        batch["is_repeat"]  # bool (B,): a wrap-around repeat of a sample already in this epoch

Both backends follow ``order.SampleOrder`` (the same samples, batches and crop/flip draws for a given seed) and
check the shard set on opening (``shards.read.ShardSet``). Every rank of a data-parallel run gets
``batches_per_epoch`` full batches; across ranks every sample comes once per epoch, plus ``padding`` repeats in
the last step (their keys repeat too, and ``is_repeat`` marks them, so an evaluator can drop them).

``batch["label"]`` is ``apply_label_encoding(batch["ids"], options.label_encoding)``; label maps are resized
nearest-neighbour with the pixel-centre rule of ``nearest_indices``. The DALI backend computes both inside its
pipeline; these torch/numpy versions are the definitions that the webdataset backend and inference use.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2p_dist.config import BACKENDS, LABEL_ENCODINGS, PREFETCH_MODES, DataConfig
from p2p_dist.data import labels
from p2p_dist.data.holdout import holdout_indices, kept_indices
from p2p_dist.data.order import EpochPlan, Geometry, SampleOrder
from p2p_dist.data.shards.read import ShardSet

CPU = torch.device("cpu")


@dataclass(frozen=True)
class LoaderOptions:
    """Everything a loader needs besides the shard directory and split.

    The data settings default to ``DataConfig``'s (``p2p_dist/config.py``, their one owner); a run builds its
    options from its config with ``build.loader_options``. ``train=False`` is evaluation: no shuffling, images
    resized straight to ``crop_size`` (``load_size`` and ``flip`` do not apply).

    ``holdout`` > 0 sets that many samples of the split aside (``p2p_dist.data.holdout``, evenly spread): the
    loader reads every other sample, or with ``holdout_only`` just those.
    """

    batch_size: int
    backend: str = DataConfig.loader
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    train: bool = True
    load_size: int = DataConfig.load_size
    crop_size: int = DataConfig.crop_size
    flip: bool = DataConfig.flip
    label_encoding: str = DataConfig.label_encoding
    device: torch.device = CPU
    num_workers: int = DataConfig.num_workers
    prefetch: str = DataConfig.prefetch
    holdout: int = 0
    holdout_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.label_encoding not in LABEL_ENCODINGS:
            raise ValueError(f"label_encoding must be one of {LABEL_ENCODINGS}, got {self.label_encoding!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} requested but CUDA is not available")
        if self.prefetch not in PREFETCH_MODES:
            raise ValueError(f"prefetch must be one of {PREFETCH_MODES}, got {self.prefetch!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.holdout < 0 or (self.holdout_only and self.holdout == 0):
            raise ValueError(f"holdout must be >= 0, and > 0 with holdout_only; got {self.holdout}")

    @property
    def geometry(self) -> Geometry:
        """Training: resize to ``load_size``, random crop, flip if ``flip``. Evaluation: resize to ``crop_size``."""
        if not self.train:
            return Geometry(self.crop_size, self.crop_size, random=False, flip=False)
        return Geometry(self.load_size, self.crop_size, random=True, flip=self.flip)


class ShardLoader(ABC):
    """What both implementations share: the checked shard set, the sample order and ``epoch``."""

    def __init__(self, shards_dir: Path, split: str, options: LoaderOptions) -> None:
        self.options = options
        self.shards = ShardSet(shards_dir, split)
        if options.holdout:
            total = self.shards.num_samples
            if options.holdout >= total:
                raise ValueError(
                    f"{shards_dir} split {split!r}: cannot hold out {options.holdout} of its {total} "
                    f"samples (at least one must remain)"
                )
            select = holdout_indices if options.holdout_only else kept_indices
            self.shards.select(select(total, options.holdout))
        self.order = SampleOrder(
            self.shards.num_samples,
            options.batch_size,
            options.geometry,
            rank=options.rank,
            world_size=options.world_size,
            seed=options.seed,
            shuffle=options.train,
        )
        self._current_epoch: object | None = None

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch on this rank: the same on every rank."""
        return self.order.batches_per_epoch

    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return self.shards.num_samples

    @property
    def padding(self) -> int:
        """Samples repeated per epoch (over all ranks) to give every rank equally many full batches."""
        return self.order.padding

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        """Batches ``start_batch..batches_per_epoch-1`` of ``epoch``; skipped batches are never read.

        Starting another epoch abandons the previous iterator of this loader.
        """
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is not in [0, batches_per_epoch={self.batches_per_epoch}]")
        self._current_epoch = token = object()
        plan = self.order.plan(epoch)
        return self._with_repeat_marks(plan, self._batches(plan, start_batch, token), start_batch)

    def _with_repeat_marks(self, plan: EpochPlan, batches: Iterator[dict], start_batch: int) -> Iterator[dict]:
        for index, batch in enumerate(batches, start=start_batch):
            batch["is_repeat"] = torch.from_numpy(plan.is_repeat[index]).to(self.options.device)
            yield batch

    def _ensure_current(self, token: object) -> None:
        """Called by implementations before reading each batch: a superseded iterator must not read on, it
        would take batches from the newer one."""
        if token is not self._current_epoch:
            raise RuntimeError("this epoch iterator was superseded by a later loader.epoch() call")

    @abstractmethod
    def _batches(self, plan: EpochPlan, start_batch: int, token: object) -> Iterator[dict]:
        """Yield the batches of ``plan`` from ``start_batch`` on as the contract's dicts, calling
        ``_ensure_current(token)`` before reading each."""

    def close(self) -> None:
        """Release worker processes, pipelines and open files."""
        self.shards.close()


def apply_label_encoding(ids: torch.Tensor, label_encoding: str) -> torch.Tensor:
    """(B, H, W) uint8 label ids -> float32 (B, C, H, W) on ``ids``' device: the colour map in [-1, 1]
    (``"color"``, 3 channels) or one-hot ids (``"onehot"``, 34 channels). Ids are not checked."""
    if label_encoding == "onehot":
        return torch.nn.functional.one_hot(ids.long(), labels.NUM_IDS).permute(0, 3, 1, 2).float()
    # A table lookup: 2.5x faster on a CPU than indexing the table with the ids tensor (0.25 vs 0.62 ms at 4x256x256).
    return torch.nn.functional.embedding(ids.long(), _colours(ids.device)).permute(0, 3, 1, 2)


def label_colours() -> np.ndarray:
    """float32 (NUM_IDS, 3): each label id's palette colour in [-1, 1], the ``"color"`` encoding's values
    (computed in float32, so that every backend's table holds the same numbers)."""
    return labels.PALETTE.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


@functools.cache
def _colours(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(label_colours()).to(device)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output pixel under nearest-neighbour resizing (pixel centres aligned)."""
    return np.minimum(((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.int64), size_in - 1)
