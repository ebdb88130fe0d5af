"""Named ranges of one training step, shared by `Pix2Pix.train_step` and the reference step, so that a profile of
either splits its time the same way (benchmarks/bench_step.py turns them into the per-step breakdown table).

A range costs nothing measurable when no profiler runs: `step_range` hands out a null context then (a
`torch.profiler.record_function` would still cost ~8 us to enter and leave, ~0.1 ms a step; a step takes ~1 s
on a CPU). Ranges do not nest and do not synchronise anything.
"""

from __future__ import annotations

import contextlib

import torch
from torch.profiler import record_function

# In step order. The D ranges repeat per micro-batch (train.grad_accum); a profile sums them.
INPUTS = "step/inputs: to device, dtype, layout"
G_FORWARD = "step/G forward"
D_FORWARD = "step/D forward on real and fake pairs + loss"
D_BACKWARD = "step/D backward"
D_OPTIMIZER = "step/D optimizer step"
G_STEP_D_FORWARD = "step/D forward for G's loss + L1"
G_BACKWARD = "step/G backward"
G_OPTIMIZER = "step/G optimizer step"
RANGES = (INPUTS, G_FORWARD, D_FORWARD, D_BACKWARD, D_OPTIMIZER, G_STEP_D_FORWARD, G_BACKWARD, G_OPTIMIZER)

_NULL = contextlib.nullcontext()


def step_range(name: str) -> contextlib.AbstractContextManager:
    """A profiler range named `name` while a profiler runs; otherwise a (reusable) null context."""
    return record_function(name) if torch.autograd._profiler_enabled() else _NULL
