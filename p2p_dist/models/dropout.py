"""The generator's dropout (p=0.5) with masks drawn from random bits on a CPU.

torch's CPU dropout draws each element's Bernoulli(0.5) with its own generator call (`bernoulli_`, ~10 ns an element
on a 2-core CPU): 5.4 ms for a 4x512x16x16 map, ~7 ms a step for unet_256's three dropout layers at batch 4. A
uniformly random byte holds eight independent fair coins, so one generator call covers eight elements: the same
distribution (each element kept with probability 1/2, independently, and scaled by 2), other random numbers, 0.4 ms.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p_dist.config import DROPOUT_MASKS
from p2p_dist.runtime import resolve_dropout_masks


class CoinFlipDropout(nn.Dropout):
    """nn.Dropout(0.5) (an nn.Dropout for every check and export) whose masks are random bits where `masks`
    resolves to "bits" (train.dropout_masks: DROPOUT_MASKS)."""

    def __init__(self, masks: str = "auto") -> None:
        super().__init__(0.5)
        if masks not in DROPOUT_MASKS:
            raise ValueError(f"dropout masks must be one of {', '.join(DROPOUT_MASKS)}; got {masks!r}")
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or resolve_dropout_masks(self.masks, x.device) == "bernoulli":
            return super().forward(x)
        return x * coin_flip_scales(x)


def coin_flip_scales(x: torch.Tensor) -> torch.Tensor:
    """For each element of `x`, 0 or 2 (dropped, or kept and scaled by 1 / (1 - p)) by one random bit; laid out
    like `x` (the bits are independent, so any order of them is as good)."""
    count = x.numel()
    random_bytes = torch.empty(((count + 7) // 8, 1), dtype=torch.uint8, device=x.device).random_()
    bits = (random_bytes >> torch.arange(8, dtype=torch.uint8, device=x.device)) & 1
    scales = bits.view(-1)[:count].to(x.dtype).mul_(2)
    return scales.as_strided(x.shape, torch.empty_like(x, device="meta").stride())
