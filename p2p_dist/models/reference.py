"""Import checkpoints of the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix).

Its ``latest_net_G.pth`` (``--netG unet_256`` / ``unet_128``) and ``latest_net_D.pth`` (``--netD basic`` /
``n_layers``) are plain state dicts of a recursive ``UnetGenerator`` and a flat ``NLayerDiscriminator``.
We map each key's module path onto our modules; the parameter and buffer names (weight, bias,
running_mean, ...) are the same on both sides.

Reference generator layout: level 0 is ``model.model``, level 1 ``model.model.1.model``, and every deeper
level nests ``.3.model`` once more. Inside a level's ``nn.Sequential``:

    outermost:     0 down-conv, 1 submodule, 2 ReLU, 3 up-conv, 4 Tanh
    intermediate:  0 LeakyReLU, 1 down-conv, 2 down-norm, 3 submodule, 4 ReLU, 5 up-conv, 6 up-norm [, 7 Dropout]
    innermost:     0 LeakyReLU, 1 down-conv, 2 ReLU, 3 up-conv, 4 up-norm

Reference discriminator layout: ``model.<i>``, with conv 0, then conv 3k-1 and norm 3k for block k >= 1,
and the 1-channel conv at 3n+2 (n = n_layers).

Accepted quirks, as the reference's own loader accepts them: a ``module.`` prefix on every key
(checkpoints saved from ``nn.DataParallel``), and ``running_mean`` / ``running_var`` / ``num_batches_tracked``
on InstanceNorm layers (written by PyTorch < 0.4 and by reference versions that tracked InstanceNorm
statistics; dropped, as the reference drops them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from p2p_dist.errors import BadFileError
from p2p_dist.models.patchgan import PatchDiscriminator
from p2p_dist.models.unet import UNetGenerator
from p2p_dist.safe_load import load_tensors

StateDict = Mapping[str, torch.Tensor]
_DATA_PARALLEL_PREFIX = "module."
_LEGACY_INSTANCE_NORM_STATS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


class ReferenceCheckpointError(BadFileError):
    """A reference checkpoint that does not fit the model; the message names the offending key."""


def load_reference_generator(checkpoint: str | os.PathLike | StateDict, model: UNetGenerator) -> UNetGenerator:
    """Load a reference ``UnetGenerator`` checkpoint (path or state dict) into `model`, in place."""
    _load(checkpoint, model, generator_module_map(model.num_downs))
    return model


def load_reference_discriminator(
    checkpoint: str | os.PathLike | StateDict, model: PatchDiscriminator
) -> PatchDiscriminator:
    """Load a reference ``NLayerDiscriminator`` checkpoint (path or state dict) into `model`, in place."""
    _load(checkpoint, model, discriminator_module_map(model.n_layers))
    return model


def generator_module_map(num_downs: int) -> dict[str, str]:
    """Reference ``UnetGenerator`` module path -> `UNetGenerator` module path, for each conv and norm."""
    innermost = num_downs - 1
    mapping = {}
    for level in range(num_downs):
        sequential = "model.model" + ".1.model" * min(level, 1) + ".3.model" * max(level - 1, 0)
        if level == 0:
            layers = {0: "encoder.0.conv", 3: "decoder.0.conv"}
        elif level == innermost:
            layers = {1: f"encoder.{level}.conv", 3: f"decoder.{level}.conv", 4: f"decoder.{level}.norm"}
        else:
            layers = {
                1: f"encoder.{level}.conv",
                2: f"encoder.{level}.norm",
                5: f"decoder.{level}.conv",
                6: f"decoder.{level}.norm",
            }
        mapping.update({f"{sequential}.{index}": ours for index, ours in layers.items()})
    return mapping


def discriminator_module_map(n_layers: int) -> dict[str, str]:
    """Reference ``NLayerDiscriminator`` module path -> `PatchDiscriminator` module path."""
    mapping = {"model.0": "blocks.0.conv", f"model.{3 * n_layers + 2}": "head"}
    for block in range(1, n_layers + 1):
        mapping[f"model.{3 * block - 1}"] = f"blocks.{block}.conv"
        mapping[f"model.{3 * block}"] = f"blocks.{block}.norm"
    return mapping


def _load(checkpoint: str | os.PathLike | StateDict, model: nn.Module, module_map: dict[str, str]) -> None:
    source = "state dict" if isinstance(checkpoint, Mapping) else f"checkpoint {os.fspath(checkpoint)!r}"
    reference_state = _strip_data_parallel_prefix(_read(checkpoint, source))
    own_state = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in reference_state.items():
        module_path, _, leaf = key.rpartition(".")
        own_module = module_map.get(module_path)
        own_key = f"{own_module}.{leaf}"
        if own_module is None or own_key not in own_state:
            if own_module is not None and _is_legacy_instance_norm_stat(model, own_module, leaf):
                continue
            raise ReferenceCheckpointError(
                f"{source}: unexpected key {key!r}: {_describe(model)} has no such parameter or buffer "
                "(another architecture, depth or norm?)"
            )
        if value.shape != own_state[own_key].shape:
            raise ReferenceCheckpointError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, but {_describe(model)} expects "
                f"{tuple(own_state[own_key].shape)} for {own_key!r} (another width or channel count?)"
            )
        converted[own_key] = value

    missing = [own_key for own_key in own_state if own_key not in converted]
    if missing:
        reference_module = {ours: theirs for theirs, ours in module_map.items()}
        own_module, _, leaf = missing[0].rpartition(".")
        raise ReferenceCheckpointError(
            f"{source}: missing key {reference_module[own_module] + '.' + leaf!r} (for {missing[0]!r} of "
            f"{_describe(model)}; {len(missing)} key(s) missing in all)"
        )
    model.load_state_dict(converted, strict=True)


def _is_legacy_instance_norm_stat(model: nn.Module, own_module: str, leaf: str) -> bool:
    return leaf in _LEGACY_INSTANCE_NORM_STATS and isinstance(model.get_submodule(own_module), nn.InstanceNorm2d)


def _read(checkpoint: str | os.PathLike | StateDict, source: str) -> StateDict:
    # A reference checkpoint is a plain state dict, never pickled objects.
    state = checkpoint if isinstance(checkpoint, Mapping) else load_tensors(checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ReferenceCheckpointError(f"{source} is not a state dict (a mapping of names to tensors)")
    return state


def _strip_data_parallel_prefix(state: StateDict) -> StateDict:
    if state and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def _describe(model: nn.Module) -> str:
    if isinstance(model, UNetGenerator):
        return f"UNetGenerator(num_downs={model.num_downs}, norm={model.norm!r})"
    if isinstance(model, PatchDiscriminator):
        return f"PatchDiscriminator(n_layers={model.n_layers}, norm={model.norm!r})"
    return type(model).__name__
