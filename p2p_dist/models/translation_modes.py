"""Test-time behaviour of a generator, as the paper's evaluation protocol varies it: dropout on or off (the
paper keeps it on as the noise source) and batch norm with running statistics (eval) or with each batch's
own statistics (train), without ever changing the stored statistics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

NORM_MODES = ("eval", "train")


def apply_test_time_modes(generator: nn.Module, dropout: bool, norm_mode: str) -> None:
    """Eval mode everywhere, except dropout when `dropout` and batch norm when ``norm_mode == "train"``."""
    if norm_mode not in NORM_MODES:
        raise ValueError(f"norm_mode must be one of {', '.join(NORM_MODES)}, got {norm_mode!r}")
    generator.eval()
    for layer in generator.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            layer.train(dropout)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and norm_mode == "train":
            # Training mode without tracking: normalise with the batch's statistics, and pass no running
            # buffers to the kernel, so they (and num_batches_tracked) cannot change.
            layer.train(True)
            layer.track_running_stats = False


@contextmanager
def translation_modes(generator: nn.Module, *, dropout: bool = True, norm_mode: str = "eval") -> Iterator[nn.Module]:
    """Run `generator` with the given test-time behaviour; its modes are restored on exit."""
    saved = [(layer, layer.training, getattr(layer, "track_running_stats", None)) for layer in generator.modules()]
    try:
        apply_test_time_modes(generator, dropout, norm_mode)
        yield generator
    finally:
        for layer, training, tracking in saved:
            layer.training = training
            if tracking is not None:
                layer.track_running_stats = tracking
