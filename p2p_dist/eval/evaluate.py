"""Evaluate a generator over (part of) a split: the one function behind launch/evaluate.py and the periodic
evaluation during training. Every rank calls it on its share; the metrics come back synced and equal."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from p2p_dist.eval.metrics import Evaluator


def evaluate(generate: Callable[[dict], Tensor], loader, evaluator: Evaluator, segmenter: nn.Module | None,
             max_batches: int | None = None, progress: Callable | None = None) -> dict[str, float]:
    """Run `generate` (a loader batch -> photos in [-1, 1]) over the loader's epoch 0 (validation order)
    and return the evaluator's metrics over all ranks, each sample counted once (the loader's wrap-around
    repeats are dropped). `max_batches` takes a fixed prefix of the split."""
    evaluator.reset()
    batches = loader.epoch(0)
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    if progress is not None:
        batches = progress(batches)
    with torch.no_grad():
        for batch in batches:
            evaluator.update(generate(batch), batch["photo"], batch["ids"], segmenter,
                             keep=~batch["is_repeat"])
    return evaluator.compute()
