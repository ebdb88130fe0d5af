"""The pix2pix PatchGAN discriminator (the reference implementation's ``basic`` / ``n_layers`` D).

``n_layers`` stride-2 4x4 conv blocks (the first without norm), one stride-1 block, then a 1-channel 4x4
conv: one real/fake logit per overlapping patch. With ``n_layers=3`` (C64-C128-C256-C512) each logit sees a
70x70 patch and a 256x256 input gives a 30x30 map. Widths double per block up to 8*ndf. Convs followed by a
norm carry a bias only with InstanceNorm; the first and last convs always do. The caller concatenates
the condition (label map) and the image along channels: ``in_channels`` counts both.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from p2p_dist.models.norm import check_norm, conv_bias, make_norm
from p2p_dist.models.small_maps import Conv2d


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``blocks`` (conv [+ norm] + LeakyReLU 0.2) then a 1-channel ``head`` conv, all 4x4."""

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch", small_maps: str = "auto"
    ) -> None:
        super().__init__()
        check_norm(norm)
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1; got {n_layers}")
        self.norm = norm
        widths = [ndf * min(2**index, 8) for index in range(n_layers + 1)]
        blocks = []
        for index, width in enumerate(widths):
            previous = in_channels if index == 0 else widths[index - 1]
            stride = 2 if index < n_layers else 1
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if index == 0:
                layers["conv"] = nn.Conv2d(previous, width, kernel_size=4, stride=stride, padding=1)
            else:
                layers["conv"] = nn.Conv2d(
                    previous, width, kernel_size=4, stride=stride, padding=1, bias=conv_bias(norm)
                )
                layers["norm"] = make_norm(norm, width)
            layers["act"] = nn.LeakyReLU(0.2, inplace=True)
            blocks.append(nn.Sequential(layers))
        self.blocks = nn.Sequential(*blocks)
        # One output channel: p2p_dist.models.small_maps sums per-offset products there (train.small_maps).
        self.head = Conv2d(widths[-1], 1, kernel_size=4, stride=1, padding=1, small_maps=small_maps)

    @property
    def n_layers(self) -> int:
        return len(self.blocks) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (no sigmoid: the losses take logits), shape (N, 1, H', W')."""
        return self.head(self.blocks(x))
