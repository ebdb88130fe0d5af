"""The sample order both loaders follow: which samples each rank reads, in which batch, with which crop and flip.

Everything here is a pure function of ``(seed, epoch, global sample index)`` and the run's shape (samples,
batch size, world size), so

* the DALI and the webdataset loader read the same samples in the same order with the same augmentation,
* every rank computes its share without talking to the others (all ranks must pass the same seed),
* resuming at ``(epoch, batch)`` is a slice of the epoch's plan: no skipped batch is read or decoded.

Layout of one epoch. The epoch's sample sequence is a seeded permutation of ``0..N-1`` (the identity when
not shuffling), extended by wrapping around to its start until it fills ``batches_per_epoch * world_size *
batch_size`` slots: every rank gets the same number of FULL batches (unequal ranks hang collective
training) and every sample appears at least once. Global step ``b`` takes the next ``world_size *
batch_size`` slots and rank ``r`` the ``r``-th ``batch_size`` of them, so the wrapped repeats (``padding``
of them, fewer than ``world_size * batch_size``) all fall into the last step.

Augmentation draws are per sample, not per slot: a repeated sample gets the same crop and flip as its first
occurrence in that epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Separate random streams for the permutation and the augmentation draws, so that changing one (e.g.
# turning flips off) never changes the other.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


@dataclass(frozen=True)
class Geometry:
    """The paired resize / crop / flip applied to photo and label map alike.

    Training (``random=True``): resize to ``load_size`` x ``load_size``, crop ``crop_size`` x ``crop_size``
    at a drawn position, flip horizontally with probability 1/2 when ``flip``. Validation: resize straight
    to ``crop_size`` x ``crop_size``; no crop, no flip.
    """

    load_size: int
    crop_size: int
    random: bool
    flip: bool

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.random and self.load_size < self.crop_size:
            raise ValueError(f"load_size ({self.load_size}) must be at least crop_size ({self.crop_size})")

    @property
    def resize_to(self) -> int:
        """Side of the square every image is resized to before cropping."""
        return self.load_size if self.random else self.crop_size

    @property
    def max_offset(self) -> int:
        return self.resize_to - self.crop_size


@dataclass(frozen=True)
class EpochPlan:
    """One rank's batches for one epoch: ``indices[b]`` are the global sample indices of batch ``b``.

    ``crop_x``/``crop_y`` are integer pixel offsets into the resized square, ``flip`` says whether to
    mirror horizontally, ``is_repeat`` marks the wrap-around padding slots (samples already seen this epoch,
    which evaluation must not count twice); all have the shape of ``indices``.
    """

    epoch: int
    indices: np.ndarray
    crop_x: np.ndarray
    crop_y: np.ndarray
    flip: np.ndarray
    is_repeat: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


class SampleOrder:
    """Deterministic, rank-aware sample order with per-sample augmentation draws (see module docstring)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        geometry: Geometry,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"need at least one sample, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.geometry = geometry
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = math.ceil(num_samples / (world_size * batch_size))
        self.padding = self.batches_per_epoch * world_size * batch_size - num_samples
        """Slots per epoch (over all ranks) filled by repeating samples from the start of the epoch."""

    def epoch_sequence(self, epoch: int) -> np.ndarray:
        """All ranks' slots of ``epoch`` in step-major order (length ``N + padding``)."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, _PERMUTATION_STREAM])
            sequence = rng.permutation(self.num_samples)
        else:
            sequence = np.arange(self.num_samples)
        total = self.num_samples + self.padding
        return np.resize(sequence, total)  # np.resize repeats from the start: the wrap-around padding

    def plan(self, epoch: int) -> EpochPlan:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        shape = (self.batches_per_epoch, self.world_size, self.batch_size)
        indices = self.epoch_sequence(epoch).reshape(shape)[:, self.rank, :]
        is_repeat = (np.arange(np.prod(shape)).reshape(shape) >= self.num_samples)[:, self.rank, :]
        crop_x, crop_y, flip = self._draws(epoch)
        return EpochPlan(epoch, indices, crop_x[indices], crop_y[indices], flip[indices], is_repeat)

    def _draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crop offsets and flips for every sample of the split (indexed by global sample index)."""
        n = self.num_samples
        if not self.geometry.random:
            zeros = np.zeros(n, dtype=np.int64)
            return zeros, zeros, np.zeros(n, dtype=bool)
        uniform = np.random.default_rng([self.seed, epoch, _AUGMENTATION_STREAM]).random((n, 3))
        positions = self.geometry.max_offset + 1
        crop_x = np.minimum((uniform[:, 0] * positions).astype(np.int64), self.geometry.max_offset)
        crop_y = np.minimum((uniform[:, 1] * positions).astype(np.int64), self.geometry.max_offset)
        flip = (uniform[:, 2] < 0.5) if self.geometry.flip else np.zeros(n, dtype=bool)
        return crop_x, crop_y, flip
