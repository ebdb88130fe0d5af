"""Image sets for the metric tests (a module of its own: `conftest` names clash across test folders)."""

import torch


def smooth_photos(num: int, size: int, seed: int) -> torch.Tensor:
    """Photo-like images in [-1, 1]: low-resolution noise upsampled (smooth, unlike white noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num, 3, 8, 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def white_noise(num: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, 3, size, size, generator=generator) * 2 - 1
