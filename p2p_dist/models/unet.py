"""The pix2pix U-Net generator (the reference implementation's ``unet_256`` / ``unet_128``).

Level ``i`` of a U-Net with ``num_downs`` levels halves the resolution on the way down (``encoder[i]``)
and doubles it on the way up (``decoder[i]``); the decoder output of every level but the outermost is
concatenated with the encoder output one level up (skip first, then upsampled features, the reference's
channel order). Channel widths after each down-conv: ngf, 2ngf, 4ngf, then 8ngf for all deeper levels
(64-128-256-512-512-512-512-512 for ``unet_256``).

Layer for layer as the reference:
- encoder[0] = Conv; encoder[1..n-2] = LeakyReLU(0.2), Conv, Norm; encoder[n-1] (innermost) = LeakyReLU, Conv.
- decoder[n-1] (innermost) = ReLU, ConvT, Norm; decoder[1..n-2] = ReLU, ConvT, Norm [, Dropout(0.5)];
  decoder[0] = ReLU, ConvT (always with bias), Tanh.
- Dropout sits in the 8ngf -> 8ngf levels between level 4 and the innermost (levels 4, 5, 6 of unet_256:
  three 512-channel decoder blocks; two for unet_128). The innermost block has none.
- Convs carry a bias only with InstanceNorm (batch norm's shift makes it redundant).

The reference's down LeakyReLU is in place, so its skips carry LeakyReLU(x) rather than x; the decoder
applies ReLU before using them and ReLU(LeakyReLU(x)) == ReLU(x), so keeping the skip intact (as here) gives
identical outputs and gradients.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from p2p_dist.models.dropout import CoinFlipDropout
from p2p_dist.models.norm import check_norm, conv_bias, make_norm
from p2p_dist.models.small_maps import Conv2d, ConvTranspose2d, memory_format_of

# Below 5 levels the reference's 64-128-256-512 ramp does not fit; 7, 8 and 9 are the useful depths.
MIN_NUM_DOWNS = 5
# First level (0-based) whose input and output are both 8*ngf wide: where the dropout blocks start.
FIRST_WIDE_LEVEL = 4


class _SkipConcat(torch.autograd.Function):
    """torch.cat of a skip and the decoder's output along channels, whose backward hands each a dense gradient.

    torch.cat's backward hands out channel slices of the output's gradient: strided views, on which batch norm's
    CPU backward (the decoder output's last layer) takes a slow path: 27-34 ms instead of 3 ms for a bf16
    4x64x128x128 map, ~30 ms of a 0.7 s step (2-core CPU, torch 2.14). Copying each slice dense costs one pass."""

    @staticmethod
    def forward(ctx, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.skip_channels = skip.shape[1]
        ctx.layouts = (memory_format_of(skip), memory_format_of(x))
        return torch.cat([skip, x], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad_skip, grad_x = grad.split([ctx.skip_channels, grad.shape[1] - ctx.skip_channels], dim=1)
        skip_layout, x_layout = ctx.layouts
        return grad_skip.contiguous(memory_format=skip_layout), grad_x.contiguous(memory_format=x_layout)


class UNetGenerator(nn.Module):
    """U-Net generator; input height and width must be divisible by ``2 ** num_downs``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: bool = True,
        small_maps: str = "auto",
        dropout_masks: str = "auto",
    ) -> None:
        super().__init__()
        check_norm(norm)
        if num_downs < MIN_NUM_DOWNS:
            raise ValueError(f"num_downs must be at least {MIN_NUM_DOWNS}; got {num_downs}")
        self.num_downs = num_downs
        self.norm = norm
        widths = [ngf * min(2**level, 8) for level in range(num_downs)]
        innermost = num_downs - 1
        bias = conv_bias(norm)

        encoder, decoder = [], []
        for level, width in enumerate(widths):
            outer_width = in_channels if level == 0 else widths[level - 1]
            down: OrderedDict[str, nn.Module] = OrderedDict()
            if level > 0:
                down["act"] = nn.LeakyReLU(0.2)
            down["conv"] = Conv2d(outer_width, width, 4, 2, 1, bias=bias, small_maps=small_maps)
            if 0 < level < innermost:
                down["norm"] = make_norm(norm, width)
            encoder.append(nn.Sequential(down))

            # The ReLU's input is always a fresh tensor (the bottleneck or a concatenation): safe in place.
            up: OrderedDict[str, nn.Module] = OrderedDict(act=nn.ReLU(inplace=True))
            up_in = width if level == innermost else 2 * width
            if level == 0:
                up["conv"] = ConvTranspose2d(up_in, out_channels, 4, 2, 1, small_maps=small_maps)
                up["out"] = nn.Tanh()
            else:
                up["conv"] = ConvTranspose2d(up_in, outer_width, 4, 2, 1, bias=bias, small_maps=small_maps)
                up["norm"] = make_norm(norm, outer_width)
                if dropout and FIRST_WIDE_LEVEL <= level < innermost:
                    up["dropout"] = CoinFlipDropout(dropout_masks)
            decoder.append(nn.Sequential(up))

        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.dense_skip_grads = True  # _SkipConcat when a backward will run; use_framework_kernels turns it off

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (each level halves them)."""
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"UNetGenerator with num_downs={self.num_downs} needs height and width divisible by "
                f"{self.size_multiple}; got an input of size {height}x{width}"
            )
        skips = []
        for down in self.encoder:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck feeds the innermost decoder block directly
        for level in reversed(range(self.num_downs)):
            x = self.decoder[level](x)
            if level > 0:
                skip = skips.pop()
                needs_grad = torch.is_grad_enabled() and (skip.requires_grad or x.requires_grad)
                dense = needs_grad and self.dense_skip_grads
                x = _SkipConcat.apply(skip, x) if dense else torch.cat([skip, x], dim=1)
        return x


def use_framework_kernels(model: nn.Module) -> None:
    """Every layer of `model` as the reference implementation runs it: convolutions on the framework's kernels
    (no matmul on small maps), torch's dropout and skips joined by plain torch.cat. For exports (one portable graph:
    TorchScript cannot trace the custom autograd Functions) and for the reference step (the peer a user writes)."""
    for module in model.modules():
        if isinstance(module, (Conv2d, ConvTranspose2d)):
            module.small_maps = "conv"
        if isinstance(module, CoinFlipDropout):
            module.masks = "bernoulli"
        if isinstance(module, UNetGenerator):
            module.dense_skip_grads = False
