"""Evaluate a generator over (part of) a split: the one function behind launch/evaluate.py and the periodic
evaluation during training. Every rank calls it on its share; the metrics come back synced and equal."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from p2p_dist.eval.metrics import Evaluator


def evaluate(
    generate: Callable[[dict], Tensor],
    loader,
    evaluator: Evaluator,
    segmenter: nn.Module | None,
    max_images: int | None = None,
    progress: Callable | None = None,
) -> dict[str, float]:
    """Run `generate` (a loader batch -> photos in [-1, 1]) over the loader's epoch 0 (validation order)
    and return the evaluator's metrics over all ranks, each sample counted once (the loader's wrap-around
    repeats are dropped). `max_images` scores exactly the first N samples of that order, over all ranks
    together. `progress(batches, total)` may wrap the iterator of this rank's batches."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    order = loader.order
    limit = order.num_samples if max_images is None else min(max_images, order.num_samples)
    per_step = order.world_size * order.batch_size
    num_batches = -(-limit // per_step)
    batches = itertools.islice(loader.epoch(0), num_batches)
    if progress is not None:
        batches = progress(batches, num_batches)
    evaluator.reset()
    with torch.no_grad():
        for step, batch in enumerate(batches):
            # Step b fills slots b * per_step.. of the epoch's sequence, this rank the rank-th batch_size of
            # them (p2p_dist.data.order). Slots from `limit` on are past the prefix or, from num_samples on,
            # the wrap-around repeats.
            slots = step * per_step + order.rank * order.batch_size + torch.arange(order.batch_size)
            evaluator.update(generate(batch), batch["photo"], batch["ids"], segmenter, keep=slots < limit)
    return evaluator.compute()
