"""pix2pix networks: the U-Net generator, the PatchGAN discriminator, their init, losses and the import of
reference-implementation checkpoints. `build_models(cfg)` returns both networks as a run's config describes
them (`generator_for(cfg)` the generator alone); `build_generator` / `build_discriminator` take explicit sizes.
What the generator takes and gives: `LABEL_CHANNELS` per label encoding, `PHOTO_CHANNELS`, and photos in
[-1, 1], which `to_uint8` turns into image bytes and `to_unit_range` into [0, 1] floats. `sidecar_path` names
the JSON file that describes a model file beside it."""

from __future__ import annotations

from pathlib import Path

import torch

from p2p_dist.config import Config
from p2p_dist.models.init import init_weights
from p2p_dist.models.losses import GAN_MODES, GANLoss
from p2p_dist.models.norm import NORMS, SyncBatchNorm2d
from p2p_dist.models.patchgan import PatchDiscriminator
from p2p_dist.models.reference import (
    ReferenceCheckpointError,
    load_reference_discriminator,
    load_reference_generator,
)
from p2p_dist.models.unet import UNetGenerator

PHOTO_CHANNELS = 3
# Generator input channels per label encoding: the Cityscapes palette colour, or one channel per label id.
LABEL_CHANNELS = {"color": 3, "onehot": 34}

# Training resolution -> U-Net depth: the bottleneck is 1x1 at this square size (unet_128, unet_256, ...).
NUM_DOWNS_BY_IMAGE_SIZE = {128: 7, 256: 8, 512: 9}


def to_uint8(photos: torch.Tensor) -> torch.Tensor:
    """Float photos (B,3,H,W) in [-1, 1] -> uint8 in [0, 255] (clamped, rounded to nearest): how generated
    photos are saved, and what the FID Inception network reads."""
    if not photos.is_floating_point() or photos.dim() != 4 or photos.shape[1] != PHOTO_CHANNELS:
        raise ValueError(
            f"expected float photos of shape (B,3,H,W) in [-1, 1], got {photos.dtype} {tuple(photos.shape)}"
        )
    return ((photos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped: generators with a tanh head stay inside, others may overshoot): what the
    image metrics compare and the sample grids show."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def sidecar_path(path: str | Path) -> Path:
    """The JSON file describing a model file beside it: ``generator.onnx`` -> ``generator.json`` (generator
    exports in p2p_dist.inference.export, the FCN-score segmenter's checkpoints in p2p_dist.eval.segmenter)."""
    return Path(path).with_suffix(".json")


def build_generator(
    in_channels: int,
    out_channels: int = 3,
    image_size: int = 256,
    ngf: int = 64,
    norm: str = "batch",
    dropout: bool = True,
    init_gain: float = 0.02,
    small_maps: str = "auto",
    dropout_masks: str = "auto",
) -> UNetGenerator:
    """An initialised U-Net whose depth fits square `image_size` training crops (256 -> unet_256)."""
    if image_size not in NUM_DOWNS_BY_IMAGE_SIZE:
        allowed = ", ".join(map(str, NUM_DOWNS_BY_IMAGE_SIZE))
        raise ValueError(f"image_size must be one of {allowed} (the U-Net depths built); got {image_size}")
    generator = UNetGenerator(
        in_channels,
        out_channels,
        NUM_DOWNS_BY_IMAGE_SIZE[image_size],
        ngf=ngf,
        norm=norm,
        dropout=dropout,
        small_maps=small_maps,
        dropout_masks=dropout_masks,
    )
    return init_weights(generator, init_gain)


def build_discriminator(
    in_channels: int,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "batch",
    init_gain: float = 0.02,
    small_maps: str = "auto",
) -> PatchDiscriminator:
    """An initialised PatchGAN; `in_channels` counts label and image channels together (conditional D)."""
    discriminator = PatchDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, norm=norm, small_maps=small_maps)
    return init_weights(discriminator, init_gain)


def generator_for(cfg: Config) -> UNetGenerator:
    """The initialised generator of a run's config (its weights are then trained or loaded)."""
    m = cfg.model
    return build_generator(
        LABEL_CHANNELS[cfg.data.label_encoding],
        PHOTO_CHANNELS,
        cfg.data.crop_size,
        m.ngf,
        m.norm,
        m.dropout,
        m.init_gain,
        cfg.train.small_maps,
        cfg.train.dropout_masks,
    )


def build_models(cfg: Config) -> tuple[UNetGenerator, PatchDiscriminator]:
    """Generator and discriminator of a run's config, initialised in that order (one seed gives the same weights
    everywhere), then started from the reference checkpoints of model.pretrained_g/d where set."""
    m = cfg.model
    generator = generator_for(cfg)
    discriminator = build_discriminator(
        LABEL_CHANNELS[cfg.data.label_encoding] + PHOTO_CHANNELS,
        m.ndf,
        m.d_layers,
        m.norm,
        m.init_gain,
        cfg.train.small_maps,
    )
    if m.pretrained_g:
        load_reference_generator(m.pretrained_g, generator)
    if m.pretrained_d:
        load_reference_discriminator(m.pretrained_d, discriminator)
    return generator, discriminator


__all__ = [
    "GAN_MODES",
    "LABEL_CHANNELS",
    "NORMS",
    "NUM_DOWNS_BY_IMAGE_SIZE",
    "PHOTO_CHANNELS",
    "GANLoss",
    "PatchDiscriminator",
    "ReferenceCheckpointError",
    "SyncBatchNorm2d",
    "UNetGenerator",
    "build_discriminator",
    "build_generator",
    "build_models",
    "generator_for",
    "init_weights",
    "load_reference_discriminator",
    "load_reference_generator",
    "sidecar_path",
    "to_uint8",
    "to_unit_range",
]
