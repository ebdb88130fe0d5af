"""The paper's learning-rate schedule: constant, then linear decay to zero, stepped per iteration."""

from __future__ import annotations


def total_steps(steps: int, epochs: float, steps_per_epoch: int) -> int:
    """Optimiser steps of the run, from train.steps or train.epochs (exactly one is set)."""
    return steps if steps > 0 else max(1, round(epochs * steps_per_epoch))


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Multiplier of the base lr before optimiser step `step` (0-based): 1 until decay_start * total, then
    linear, reaching 0 after the last step (the paper's 100 + 100 epochs with decay_start=0.5)."""
    start = int(decay_start * total)
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start + 1) / (total - start + 1))
