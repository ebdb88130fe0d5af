"""Test-time behaviour of a generator: dropout on or off (the paper keeps it on as the noise source) and which
statistics its batch-norm layers normalise with, without ever changing the stored statistics.

Norm modes (`NORM_MODES`) for batch-norm and syncbatch generators:

- ``"per-image"`` (the default everywhere): every image is normalised with its OWN statistics, the pix2pix
  paper's protocol (section 3.3: batch normalisation with "the statistics of the test batch" at batch size 1;
  the reference's test.py keeps the model in train mode unless ``--eval``), and what the generator normalised
  with while training at batch size 1. `translation_modes` yields a function that runs the generator one image
  at a time, and each batch-norm layer computes the mean and (biased) variance of each image over its height
  and width, never across images or ranks (no all-reduce, even for syncbatch): photos do not depend on the
  batch size, on wrap-around repeats in a padded last batch, nor on the world size.
- ``"running"``: the running statistics accumulated during training (eval mode); on request only.

Instance-norm generators always normalise each image with its own statistics; `recorded_norm_mode` names that
``"instance"`` in reports. The stored statistics (running mean and variance, ``num_batches_tracked``) are never
changed by either mode.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2p_dist.config import NORM_MODES
from p2p_dist.models.dropout import CoinFlipDropout

PER_IMAGE, RUNNING = NORM_MODES  # config.py owns the names (it stays free of torch)
INSTANCE = "instance"  # what reports record for instance-norm generators
DEFAULT_NORM_MODE = PER_IMAGE

Translate = Callable[[Tensor], Tensor]


def _check(norm_mode: str) -> None:
    if norm_mode not in NORM_MODES:
        raise ValueError(f"norm_mode must be one of {', '.join(NORM_MODES)}, got {norm_mode!r}")


def _batch_norms(generator: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [layer for layer in generator.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]


def has_batch_norm(generator: nn.Module) -> bool:
    """Whether the norm mode matters for `generator` (batch norm or syncbatch; instance norm has no choice)."""
    return bool(_batch_norms(generator))


def recorded_norm_mode(generator: nn.Module, norm_mode: str) -> str:
    """What a report says the norm layers used: `norm_mode` for batch-norm generators, ``"instance"`` else."""
    _check(norm_mode)
    return norm_mode if has_batch_norm(generator) else INSTANCE


def _own_statistics(layer: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch norm at batch size 1, for each image of `x` separately: its per-channel mean and biased variance over
    height and width (what ``F.batch_norm(training=True)`` computes for a batch of one), then the layer's affine.
    No running buffer is read or written and nothing is all-reduced, so this is also syncbatch's per-image form."""
    return F.instance_norm(x, None, None, layer.weight, layer.bias, use_input_stats=True, eps=layer.eps)


def apply_test_time_modes(generator: nn.Module, dropout: bool, norm_mode: str) -> None:
    """Eval mode everywhere except dropout when `dropout`, which then draws torch's masks (the noise a TorchScript
    export draws from the same seed; the masks from random bits of train.dropout_masks are a training speed-up);
    with ``norm_mode == "per-image"`` every batch-norm layer normalises each image with its own statistics (its
    ``forward`` is replaced on the instance). For a generator that is then exported or discarded;
    `translation_modes` restores what it changes."""
    _check(norm_mode)
    generator.eval()
    for layer in generator.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            layer.train(dropout)
        if isinstance(layer, CoinFlipDropout):
            layer.masks = "bernoulli"
    if norm_mode == PER_IMAGE:
        for layer in _batch_norms(generator):
            layer.forward = types.MethodType(_own_statistics, layer)


def one_image_at_a_time(generator: Callable[[Tensor], Tensor]) -> Translate:
    """`generator` applied to each image of a batch on its own, results concatenated: the output for an image
    does not depend on the others in its batch, and the dropout noise is drawn image by image in batch order,
    so a seeded run gives the same photos at any batch size."""

    def translate(label: Tensor) -> Tensor:
        return torch.cat([generator(image) for image in label.split(1)])

    return translate


@contextmanager
def translation_modes(
    generator: nn.Module, *, dropout: bool = True, norm_mode: str = DEFAULT_NORM_MODE
) -> Iterator[Translate]:
    """Run `generator` with the given test-time behaviour; yields the function to call (label maps -> photos):
    one image at a time where per-image statistics apply (batch norm, ``"per-image"``), the generator itself
    otherwise. Modes and layers are restored on exit."""
    _check(norm_mode)
    saved = [(layer, layer.training) for layer in generator.modules()]
    masks = [(layer, layer.masks) for layer in generator.modules() if isinstance(layer, CoinFlipDropout)]
    patched = [(layer, layer.__dict__.get("forward")) for layer in _batch_norms(generator)]
    try:
        apply_test_time_modes(generator, dropout, norm_mode)
        yield one_image_at_a_time(generator) if norm_mode == PER_IMAGE and patched else generator
    finally:
        for layer, training in saved:
            layer.training = training
        for layer, kind in masks:
            layer.masks = kind
        for layer, forward in patched:
            if forward is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = forward


__all__ = [
    "DEFAULT_NORM_MODE",
    "INSTANCE",
    "NORM_MODES",
    "PER_IMAGE",
    "RUNNING",
    "apply_test_time_modes",
    "has_batch_norm",
    "one_image_at_a_time",
    "recorded_norm_mode",
    "translation_modes",
]
