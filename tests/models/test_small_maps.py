"""p2p_dist.models.small_maps: convolutions and transposed convolutions that run on small maps as matmuls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.models import small_maps
from p2p_dist.models.small_maps import (
    MATMUL_MAX_SIZE,
    MATMUL_WEIGHT_GRAD_MAX_SIZE,
    PER_OFFSET_MIN_INPUT,
    Conv2d,
    ConvTranspose2d,
)

LAYOUTS = [torch.contiguous_format, torch.channels_last]
# (kind, in, out, kernel, stride, padding, output_padding, input size, bias): the U-Net's k4 s2 p1 from and to
# 1x1 maps, and other shapes.
SHAPES = [
    ("deconv", 16, 8, 4, 2, 1, 0, 1, False),
    ("deconv", 16, 8, 4, 2, 1, 0, 2, True),
    ("deconv", 16, 8, 4, 2, 1, 0, 8, False),
    ("deconv", 6, 5, 3, 2, 1, 1, 3, True),
    ("conv", 16, 8, 4, 2, 1, 0, 2, False),
    ("conv", 16, 8, 4, 2, 1, 0, 16, True),
    ("conv", 6, 5, 3, 1, 1, 0, 5, True),
    ("conv", 6, 5, 3, 2, 0, 0, 7, False),
    # to one channel (the PatchGAN's head is k4 s1 p1): per-offset products summed, whatever the map's size
    ("conv", 16, 1, 4, 1, 1, 0, 9, True),
    ("conv", 16, 1, 4, 1, 1, 0, 4, False),
    ("conv", 6, 1, 3, 2, 0, 0, 7, True),
    ("conv", 5, 1, 4, 3, 2, 0, 10, True),  # padding wider than some offsets reach
]
# Shapes whose low-resolution side is above MATMUL_MAX_SIZE and at most MATMUL_WEIGHT_GRAD_MAX_SIZE: the U-Net's level
# at 16x16 both ways, and other shapes.
WEIGHT_GRAD_SHAPES = [
    ("conv", 16, 8, 4, 2, 1, 0, 32, False),
    ("conv", 16, 8, 4, 2, 1, 0, 24, True),
    ("conv", 6, 5, 3, 1, 1, 0, 14, True),
    ("deconv", 16, 8, 4, 2, 1, 0, 16, False),
    ("deconv", 6, 5, 3, 2, 1, 1, 10, True),
]
OURS = {"conv": Conv2d, "deconv": ConvTranspose2d}
THEIRS = {"conv": nn.Conv2d, "deconv": nn.ConvTranspose2d}


@pytest.fixture
def per_offset_on_any_input(monkeypatch):
    """The per-offset form for convolutions to one channel however small the input (the tests' maps are tiny)."""
    monkeypatch.setattr(small_maps, "PER_OFFSET_MIN_INPUT", 0)


def _pair(shape, layout, dtype=torch.float64):
    kind, c_in, c_out, k, s, p, op, _, bias = shape
    extra = {"output_padding": op} if kind == "deconv" else {}
    torch.manual_seed(0)
    ours = OURS[kind](c_in, c_out, k, s, p, bias=bias, small_maps="matmul", **extra)
    theirs = THEIRS[kind](c_in, c_out, k, s, p, bias=bias, **extra)
    theirs.load_state_dict(ours.state_dict())
    return ours.to(dtype, memory_format=layout), theirs.to(dtype, memory_format=layout)


def _shape_id(shape) -> str:
    return f"{shape[0]}-{shape[1]}x{shape[7]}x{shape[7]}-k{shape[3]}s{shape[4]}p{shape[5]}"


def _input_for(shape, layout) -> torch.Tensor:
    x = torch.randn(3, shape[1], shape[7], shape[7], dtype=torch.float64).contiguous(memory_format=layout)
    return x.requires_grad_(True)


def _gradients_after_matching_outputs(ours, theirs, x) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Checks that both layers give the same output in the same layout (float64, 1e-12); returns the pairs of
    gradients (input, then parameters), checked equal the same way."""
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-12, atol=1e-12)
    assert y_ours.stride() == y_theirs.stride()
    grad = torch.randn_like(y_theirs)
    pairs = list(
        zip(
            torch.autograd.grad(y_ours, [x, *ours.parameters()], grad),
            torch.autograd.grad(y_theirs, [x, *theirs.parameters()], grad),
        )
    )
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    return pairs


@pytest.mark.usefixtures("per_offset_on_any_input")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_the_matmul_forms_give_the_kernels_output_gradients_and_layout(shape, layout):
    ours, theirs = _pair(shape, layout)
    x = _input_for(shape, layout)
    assert ours.runs_as_matmul(x) or (isinstance(ours, Conv2d) and ours.runs_per_offset(x))
    pairs = _gradients_after_matching_outputs(ours, theirs, x)
    if layout == torch.channels_last:  # the layout they run in; their gathers make the input's gradient NHWC anyway
        for a, b in pairs:
            # A dimension of size 1 (a one-channel weight's) has no layout: autograd's layout contract skips it.
            assert _strides_of_longer_dims(a) == _strides_of_longer_dims(b)


def _strides_of_longer_dims(t: torch.Tensor) -> list[int]:
    return [stride for stride, size in zip(t.stride(), t.shape) if size > 1]


@pytest.mark.usefixtures("per_offset_on_any_input")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind, out_channels", [("conv", 5), ("deconv", 5), ("conv", 1)])
def test_a_dilated_kernel_as_a_matmul_gives_the_kernels_output_gradients_and_layout(kind, out_channels, layout):
    extra = {"output_padding": 1} if kind == "deconv" else {}
    torch.manual_seed(0)
    ours = OURS[kind](6, out_channels, 3, 2, 2, dilation=2, small_maps="matmul", **extra)
    theirs = THEIRS[kind](6, out_channels, 3, 2, 2, dilation=2, **extra)
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = (m.to(torch.float64, memory_format=layout) for m in (ours, theirs))
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    assert ours.runs_as_matmul(x) or ours.runs_per_offset(x)
    _gradients_after_matching_outputs(ours, theirs, x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", WEIGHT_GRAD_SHAPES, ids=_shape_id)
def test_the_matmul_weight_gradient_gives_the_kernels_output_gradients_and_layout(shape, layout):
    ours, theirs = _pair(shape, layout)
    x = _input_for(shape, layout)
    assert ours.weight_grad_as_matmul(x) and not ours.runs_as_matmul(x)
    for a, b in _gradients_after_matching_outputs(ours, theirs, x):
        assert a.stride() == b.stride() or a.dim() < 4


def test_the_matmul_weight_gradient_leaves_out_what_autograd_does_not_ask_for():
    ours, _ = _pair(WEIGHT_GRAD_SHAPES[1], torch.channels_last)
    ours.requires_grad_(False)
    x = torch.randn(3, 16, 24, 24, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(ours(x).sum(), [x])
    assert grad_x.shape == x.shape


@pytest.mark.usefixtures("per_offset_on_any_input")
@pytest.mark.parametrize(
    "shape",
    [
        ("conv", 64, 32, 4, 2, 1, 0, 16, False),
        ("deconv", 64, 32, 4, 2, 1, 0, 8, False),
        ("conv", 64, 32, 4, 2, 1, 0, 32, False),  # the weight gradient only
        ("deconv", 64, 32, 4, 2, 1, 0, 16, False),
        ("conv", 64, 1, 4, 1, 1, 0, 16, True),  # per-offset products
    ],
    ids=_shape_id,
)
def test_under_bf16_autocast_it_stays_within_bf16_rounding_of_the_kernel(shape):
    ours, theirs = _pair(shape, torch.channels_last, torch.float32)
    size = shape[7]
    x = torch.randn(2, 64, size, size).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        x = x.to(torch.bfloat16).requires_grad_(True)  # what the previous layer hands on under autocast
        per_offset = isinstance(ours, Conv2d) and ours.runs_per_offset(x)
        assert ours.runs_as_matmul(x) or ours.weight_grad_as_matmul(x) or per_offset
        y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours.float(), y_theirs.float(), rtol=1.6e-2, atol=1e-2)
    grad = torch.randn_like(y_theirs)
    ours_grads = torch.autograd.grad(y_ours, [x, ours.weight], grad)
    theirs_grads = torch.autograd.grad(y_theirs, [x, theirs.weight], grad)
    for a, b in zip(ours_grads, theirs_grads):
        assert a.dtype == b.dtype  # the weight's gradient in fp32, the input's in bf16, as from the kernels
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.abs().max().item())


@pytest.mark.parametrize("kind", ["conv", "deconv"])
@pytest.mark.parametrize(
    "mode, device, dtype, small, expected",
    [
        ("auto", "cpu", torch.bfloat16, True, True),
        ("auto", "cpu", torch.bfloat16, False, False),
        ("auto", "cpu", torch.float32, True, False),  # fp32: the kernels are as fast or faster
        ("auto", "meta", torch.bfloat16, True, False),  # any device but a CPU (CUDA in practice): cuDNN's kernels
        ("matmul", "meta", torch.float32, True, True),
        ("matmul", "cpu", torch.bfloat16, False, False),
        ("conv", "cpu", torch.bfloat16, True, False),
    ],
)
def test_which_inputs_take_the_matmul(kind, mode, device, dtype, small, expected):
    # The low-resolution side decides: a k4 s2 p1 convolution's output is half its input.
    low_resolution = MATMUL_MAX_SIZE if small else 2 * MATMUL_MAX_SIZE
    size = 2 * low_resolution if kind == "conv" else low_resolution
    module = OURS[kind](4, 4, 4, 2, 1, small_maps=mode)
    assert module.runs_as_matmul(torch.empty(1, 4, size, size, device=device, dtype=dtype)) is expected


@pytest.mark.parametrize("kind", ["conv", "deconv"])
@pytest.mark.parametrize(
    "mode, dtype, low_resolution, expected",
    [
        ("auto", torch.bfloat16, MATMUL_MAX_SIZE, False),  # the whole layer is a matmul there
        ("auto", torch.bfloat16, MATMUL_MAX_SIZE + 1, True),
        ("auto", torch.bfloat16, MATMUL_WEIGHT_GRAD_MAX_SIZE, True),
        ("auto", torch.bfloat16, 2 * MATMUL_WEIGHT_GRAD_MAX_SIZE, False),
        ("auto", torch.float32, MATMUL_WEIGHT_GRAD_MAX_SIZE, False),
        ("conv", torch.bfloat16, MATMUL_WEIGHT_GRAD_MAX_SIZE, False),
    ],
)
def test_which_inputs_take_the_matmul_for_the_weight_gradient_only(kind, mode, dtype, low_resolution, expected):
    size = 2 * low_resolution if kind == "conv" else low_resolution
    module = OURS[kind](4, 4, 4, 2, 1, small_maps=mode)
    assert module.weight_grad_as_matmul(torch.empty(1, 4, size, size, dtype=dtype)) is expected


@pytest.mark.parametrize(
    "mode, dtype, out_channels, elements, expected",
    [
        ("auto", torch.bfloat16, 1, PER_OFFSET_MIN_INPUT, True),
        ("auto", torch.bfloat16, 1, PER_OFFSET_MIN_INPUT // 2, False),  # tiny: the slices' overhead outweighs it
        ("auto", torch.float32, 1, PER_OFFSET_MIN_INPUT, False),
        ("auto", torch.bfloat16, 2, PER_OFFSET_MIN_INPUT, False),
        ("matmul", torch.float32, 1, PER_OFFSET_MIN_INPUT, True),
        ("conv", torch.bfloat16, 1, PER_OFFSET_MIN_INPUT, False),
    ],
)
def test_which_convolutions_sum_per_offset_products(mode, dtype, out_channels, elements, expected):
    module = Conv2d(4, out_channels, 4, 1, 1, small_maps=mode)
    assert module.runs_per_offset(torch.empty(elements // (4 * 32 * 32), 4, 32, 32, dtype=dtype)) is expected


@pytest.mark.parametrize("layer", [Conv2d, ConvTranspose2d])
def test_an_unknown_mode_is_rejected_by_name(layer):
    with pytest.raises(ValueError, match="small_maps must be one of auto, matmul, conv; got 'fast'"):
        layer(4, 4, 4, 2, 1, small_maps="fast")


def test_a_1x1_map_with_channels_last_strides_comes_out_channels_last_as_from_the_kernel():
    """A 1x1 map is contiguous in both layouts; torch reads its strides, and so must the matmul form (a layout
    that differs sends the next batch norm down another kernel: other roundings than a channels_last run's)."""
    ours, theirs = _pair(("deconv", 16, 8, 4, 2, 1, 0, 1, False), torch.contiguous_format)
    x = torch.randn(3, 1, 1, 16, dtype=torch.float64).permute(0, 3, 1, 2)  # a channels_last 3x16x1x1
    assert (
        ours(x).stride()
        == theirs(x).stride()
        == torch.empty(3, 8, 2, 2).contiguous(memory_format=torch.channels_last).stride()
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_convolution_to_a_1x1_map_has_the_kernels_strides(layout):
    """The matmul's output viewed as NCHW passes for either layout on a 1x1 map: it must take the kernel's strides."""
    ours, theirs = _pair(("conv", 16, 8, 4, 2, 1, 0, 2, False), layout)
    x = torch.randn(3, 16, 2, 2, dtype=torch.float64).contiguous(memory_format=layout)
    assert ours(x).stride() == theirs(x).stride()
