"""The paper's learning-rate schedule: constant, then linear decay to zero, stepped per iteration."""

from __future__ import annotations


def total_steps(steps: int, epochs: float, batches_per_epoch: int, grad_accum: int) -> int:
    """Optimiser steps of the run, from train.steps or train.epochs (exactly one is set). An epoch is
    `batches_per_epoch` micro-batches per rank, `grad_accum` of them per step: the count is rounded once over
    the whole run, so every configured epoch of data is seen even when grad_accum does not divide an epoch."""
    return steps if steps > 0 else max(1, round(epochs * batches_per_epoch / grad_accum))


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Multiplier of the base lr before optimiser step `step` (0-based): 1 until decay_start * total, then
    linear, reaching 0 after the last step (the paper's 100 + 100 epochs with decay_start=0.5)."""
    start = int(decay_start * total)
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start + 1) / (total - start + 1))
