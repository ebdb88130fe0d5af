"""A held-out slice of a split: `count` samples spread evenly over it, set aside from training.

Sweeps score their objective on such a slice of the TRAIN split (``tune.holdout_images``, copied into every
trial's ``data.holdout``), so that the val split stays untouched for the final report. Trials never train on
the slice: their training loader reads the other samples only. Evenly spread rather than the first or last N:
shard order follows the source tree (Cityscapes: city by city), so a contiguous slice would be one city.
"""

from __future__ import annotations

import numpy as np


def holdout_indices(num_samples: int, count: int) -> np.ndarray:
    """The `count` held-out sample indices of a split of `num_samples`: sample ``floor((i + 0.5) * N / count)``
    for i = 0..count-1, sorted and distinct."""
    if not 0 < count < num_samples:
        raise ValueError(f"a held-out slice needs 0 < count < samples in the split ({num_samples}); got {count}")
    return ((np.arange(count) + 0.5) * (num_samples / count)).astype(np.int64)


def kept_indices(num_samples: int, count: int) -> np.ndarray:
    """Every sample index of the split except the held-out ones, in order (all of them when `count` is 0)."""
    if count == 0:
        return np.arange(num_samples)
    return np.setdiff1d(np.arange(num_samples), holdout_indices(num_samples, count))
