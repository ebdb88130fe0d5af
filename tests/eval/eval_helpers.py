"""Image sets and plain torchmetrics FID/KID for the metric tests (a module of its own: `conftest` names clash
across test folders)."""

import warnings

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from p2p_dist.eval.fid import build_inception, inception_weights_path


def smooth_photos(num: int, size: int, seed: int) -> torch.Tensor:
    """Photo-like images in [-1, 1]: low-resolution noise upsampled (smooth, unlike white noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num, 3, 8, 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def white_noise(num: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, 3, size, size, generator=generator) * 2 - 1


def plain_fid(feature: int, cache_dir) -> FrechetInceptionDistance:
    """torchmetrics' own FID pipeline on the converted weights: ``update(uint8_images, real=...)``."""
    return FrechetInceptionDistance(
        feature=feature, antialias=False, feature_extractor_weights_path=str(inception_weights_path(cache_dir))
    )


def plain_kid(feature: int, cache_dir, subset_size: int, subsets: int) -> KernelInceptionDistance:
    """torchmetrics' own KID pipeline: ``update(uint8_images, real=...)``. It cannot take a weights path, so it
    gets the extractor as a custom feature module."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(
            feature=build_inception("cpu", cache_dir, feature), subsets=subsets, subset_size=subset_size
        )
