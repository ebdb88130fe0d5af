"""The one loader contract and ``build_loader``, which picks an implementation.

    loader = build_loader("shards/demo", "train", backend="dali", batch_size=16, rank=r, world_size=w,
                          device=torch.device("cuda", local_rank))
    for batch in loader.epoch(epoch, start_batch=0):    # batches_per_epoch - start_batch batches
        batch["photo"]  # float32 (B, 3, H, W) in [-1, 1], on `device`
        batch["label"]  # float32 (B, 3, H, W) colour map in [-1, 1], or (B, 34, H, W) one-hot ids
        batch["ids"]    # uint8 (B, H, W) Cityscapes label ids (for the FCN-score)
        batch["key"]    # list[str] sample keys

Both implementations follow ``order.SampleOrder`` (the same samples, batches and crop/flip draws for a given
seed) and check the shard set on opening (``shards.ShardSet``):

* ``backend="dali"`` (``dali_loader``): NVIDIA DALI decodes, resizes, crops, flips, normalises and encodes
  the labels; on the GPU of ``device`` when it is a CUDA device, on the CPU otherwise.
* ``backend="webdataset"`` (``wds_loader``): webdataset's tar reader and decoders in torch DataLoader worker
  processes, for machines without DALI.

Every rank of a data-parallel run gets ``batches_per_epoch`` full batches; across ranks every sample comes
once per epoch, plus ``padding`` repeats in the last step (their keys repeat too, so an evaluator can drop
them).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from p2p_dist.config import BACKENDS, LABEL_ENCODINGS
from p2p_dist.data import labels
from p2p_dist.data.order import EpochPlan, Geometry, SampleOrder
from p2p_dist.data.shards.read import ShardSet

CPU = torch.device("cpu")


@dataclass(frozen=True)
class LoaderOptions:
    """The arguments of ``build_loader`` after the shard directory, split and backend."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    train: bool = True
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    label_encoding: str = "color"
    device: torch.device = CPU
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.label_encoding not in LABEL_ENCODINGS:
            raise ValueError(f"label_encoding must be one of {LABEL_ENCODINGS}, got {self.label_encoding!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} requested but CUDA is not available")

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.load_size, self.crop_size, random=self.train, flip=self.flip and self.train)


class ShardLoader(ABC):
    """What both implementations share: the checked shard set, the sample order and ``epoch``."""

    def __init__(self, shards_dir: Path, split: str, options: LoaderOptions) -> None:
        self.options = options
        self.shards = ShardSet(shards_dir, split)
        self.order = SampleOrder(self.shards.num_samples, options.batch_size, options.geometry,
                                 rank=options.rank, world_size=options.world_size, seed=options.seed,
                                 shuffle=options.train)
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


def encode_label(ids: torch.Tensor, encoding: str) -> torch.Tensor:
    """(B, H, W) uint8 label ids -> float32 (B, C, H, W): the colour map in [-1, 1] or one-hot ids.

    The DALI pipeline computes the same inside DALI; this is the torch version for the other loader.
    """
    if encoding == "onehot":
        return torch.nn.functional.one_hot(ids.long(), labels.NUM_IDS).permute(0, 3, 1, 2).float()
    return _palette(ids.device)[ids.long()].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


@functools.cache
def _palette(device: torch.device) -> torch.Tensor:
    return torch.tensor(labels.PALETTE, device=device)


def build_loader(
    shards_dir: Path | str,
    split: str,
    *,
    backend: str = "dali",
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    train: bool = True,
    load_size: int = 286,
    crop_size: int = 256,
    flip: bool = True,
    label_encoding: str = "color",
    device: torch.device = CPU,
    num_workers: int = 2,
) -> ShardLoader:
    """Open ``split`` of the shard set in ``shards_dir`` with the chosen backend (see module docstring).

    ``train=False`` is validation mode: no shuffling, no random crop or flip, images resized straight to
    ``crop_size``. The shard set is checked against its manifest here; a mismatch raises ``ShardError``.
    """
    options = LoaderOptions(batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, train=train,
                            load_size=load_size, crop_size=crop_size, flip=flip, label_encoding=label_encoding,
                            device=torch.device(device), num_workers=num_workers)
    if backend == "dali":
        from p2p_dist.data.dali_loader import DaliLoader  # DALI is optional on machines using the fallback

        return DaliLoader(Path(shards_dir), split, options)
    if backend == "webdataset":
        from p2p_dist.data.wds_loader import WebDatasetLoader

        return WebDatasetLoader(Path(shards_dir), split, options)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
