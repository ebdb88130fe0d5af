"""p2p_dist.models.deconv: transposed convolutions that run on small maps as one matmul and a fold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.models.deconv import MATMUL_MAX_SIZE, ConvTranspose2d, use_convolution_kernels

LAYOUTS = [torch.contiguous_format, torch.channels_last]
# (in, out, kernel, stride, padding, output_padding, input size, bias): the U-Net's k4 s2 p1, and other shapes.
SHAPES = [
    (16, 8, 4, 2, 1, 0, 1, False),
    (16, 8, 4, 2, 1, 0, 2, True),
    (16, 8, 4, 2, 1, 0, 4, False),
    (6, 5, 3, 2, 1, 1, 3, True),
]


def _pair(shape, layout, dtype=torch.float64):
    c_in, c_out, k, s, p, op, _, bias = shape
    torch.manual_seed(0)
    ours = ConvTranspose2d(c_in, c_out, k, s, p, output_padding=op, bias=bias, small_deconv="matmul")
    theirs = nn.ConvTranspose2d(c_in, c_out, k, s, p, output_padding=op, bias=bias)
    theirs.load_state_dict(ours.state_dict())
    return ours.to(dtype, memory_format=layout), theirs.to(dtype, memory_format=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_matmul_form_gives_the_convolutions_output_gradients_and_layout(shape, layout):
    ours, theirs = _pair(shape, layout)
    x = torch.randn(3, shape[0], shape[6], shape[6], dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_(True)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-12, atol=1e-12)
    assert y_ours.stride() == y_theirs.stride()
    grad = torch.randn_like(y_theirs)
    for a, b in zip(
        torch.autograd.grad(y_ours, [x, *ours.parameters()], grad),
        torch.autograd.grad(y_theirs, [x, *theirs.parameters()], grad),
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_under_bf16_autocast_it_stays_within_bf16_rounding_of_the_convolution():
    ours, theirs = _pair((64, 32, 4, 2, 1, 0, 4, False), torch.channels_last, torch.float32)
    x = torch.randn(2, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours.float(), y_theirs.float(), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize(
    "mode, device, size, expected",
    [
        ("auto", "cpu", MATMUL_MAX_SIZE, True),
        ("auto", "cpu", 2 * MATMUL_MAX_SIZE, False),
        ("auto", "meta", 1, False),  # any device but a CPU (CUDA in practice): cuDNN's kernel
        ("matmul", "meta", MATMUL_MAX_SIZE, True),
        ("matmul", "cpu", 2 * MATMUL_MAX_SIZE, False),
        ("conv", "cpu", 1, False),
    ],
)
def test_which_maps_take_the_matmul(mode, device, size, expected):
    module = ConvTranspose2d(4, 4, 4, 2, 1, small_deconv=mode)
    assert module.runs_as_matmul(torch.empty(1, 4, size, size, device=device)) is expected


def test_exports_trace_the_convolution_kernels():
    model = nn.Sequential(
        ConvTranspose2d(4, 4, 4, 2, 1), nn.ReLU(), ConvTranspose2d(4, 2, 4, 2, 1, small_deconv="matmul")
    )
    use_convolution_kernels(model)
    assert not any(m.runs_as_matmul(torch.empty(1, 4, 1, 1)) for m in model if isinstance(m, ConvTranspose2d))


def test_an_unknown_mode_is_rejected_by_name():
    with pytest.raises(ValueError, match="small_deconv must be one of auto, matmul, conv; got 'fast'"):
        ConvTranspose2d(4, 4, 4, 2, 1, small_deconv="fast")


def test_a_1x1_map_with_channels_last_strides_comes_out_channels_last_as_from_the_convolution():
    """A 1x1 map is contiguous in both layouts; torch reads its strides, and so must the matmul form (a layout
    that differs sends the next batch norm down another kernel: other roundings than a channels_last run's)."""
    ours, theirs = _pair((16, 8, 4, 2, 1, 0, 1, False), torch.contiguous_format)
    x = torch.randn(3, 1, 1, 16, dtype=torch.float64).permute(0, 3, 1, 2)  # a channels_last 3x16x1x1
    assert (
        ours(x).stride()
        == theirs(x).stride()
        == torch.empty(3, 8, 2, 2).contiguous(memory_format=torch.channels_last).stride()
    )
