"""Transposed convolutions that run on small maps as one matmul and a fold (col2im): the same sums, other kernels.

On a CPU, oneDNN's transposed convolution on maps of 4x4 and less (the U-Net's innermost decoder levels,
1024->512 channels on 1x1 to 4x4 maps) spends its time reordering the 1024x512x4x4 weights and in a
backward-weights kernel at a few percent of the matmul peak: forward and backward of one such layer took 45-50 ms
in bf16 and 54-66 ms in fp32, against 17-20 ms and 19-33 ms as a matmul and a fold (2-core native-bf16 CPU, batch
4, torch 2.14); the training step 1.04-1.05x. At 8x8 the two are even, above it the convolution wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p2p_dist.config import SMALL_DECONV_MODES
from p2p_dist.runtime import resolve_small_deconv

MATMUL_MAX_SIZE = 4  # maps of at most 4x4 take the matmul (train.small_deconv says where: SMALL_DECONV_MODES)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters and state dict) whose forward takes the matmul on small maps."""

    def __init__(self, *args, small_deconv: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if small_deconv not in SMALL_DECONV_MODES:
            raise ValueError(f"small_deconv must be one of {', '.join(SMALL_DECONV_MODES)}; got {small_deconv!r}")
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("the matmul form covers groups=1 with zero padding only")
        self.small_deconv = small_deconv

    def runs_as_matmul(self, x: torch.Tensor) -> bool:
        small = max(x.shape[-2:]) <= MATMUL_MAX_SIZE
        return small and resolve_small_deconv(self.small_deconv, x.device) == "matmul"

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and self.runs_as_matmul(x):
            return _as_matmul(self, x)
        return super().forward(x, output_size)


def _as_matmul(m: ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """Every input pixel times the weight gives its k x k patch of every output channel (one matmul, the
    framework's GEMM); fold sums the overlapping patches into the output, in fp32 as the convolution kernels do."""
    n, c_in, height, width = x.shape
    c_out = m.out_channels
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    pixels = x.permute(0, 2, 3, 1).reshape(n * height * width, c_in)
    # One matrix whatever the weight's layout (a view of channels_last weights, a copy of contiguous ones), so
    # that both layouts give the same roundings, as the convolution kernels do.
    weight = m.weight.permute(0, 2, 3, 1).reshape(c_in, kh * kw * c_out)
    patches = (pixels @ weight).view(n, height * width, kh * kw, c_out)
    columns = patches.permute(0, 3, 2, 1).reshape(n, c_out * kh * kw, height * width)
    out_h = (height - 1) * sh - 2 * ph + dh * (kh - 1) + m.output_padding[0] + 1
    out_w = (width - 1) * sw - 2 * pw + dw * (kw - 1) + m.output_padding[1] + 1
    columns = columns.to(torch.promote_types(columns.dtype, torch.float32))
    y = F.fold(columns, (out_h, out_w), (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    if m.bias is not None:
        y = y + m.bias.view(1, -1, 1, 1)
    # The convolution's output layout: channels_last when the input or the weight is (torch's rule on CPU and CUDA).
    formats = (memory_format_of(x), memory_format_of(m.weight))
    layout = torch.channels_last if torch.channels_last in formats else torch.contiguous_format
    return y.to(dtype=patches.dtype, memory_format=layout)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout torch reads from a 4-D tensor's strides (c10's is_channels_last_strides_2d, which its convolutions
    follow): also for maps of 1x1, which are contiguous in both layouts."""
    if t.stride(1) == 0:
        return torch.contiguous_format
    lowest = 0
    for dim in (1, 3, 2, 0):
        if t.shape[dim] == 0 or t.stride(dim) < lowest or (dim == 0 and lowest == t.stride(1)):
            return torch.contiguous_format
        lowest = t.stride(dim) * (t.shape[dim] if t.shape[dim] > 1 else 1)
    return torch.channels_last


def use_convolution_kernels(model: nn.Module) -> None:
    """Every transposed convolution of `model` on the framework's kernel (exports: one portable graph)."""
    for module in model.modules():
        if isinstance(module, ConvTranspose2d):
            module.small_deconv = "conv"
