"""Convolutions that run on small maps as matmuls on a CPU in bf16: the same sums, other kernels.

The U-Net's innermost levels convolve 512-1024 channels on maps of 1x1 to 16x16. There oneDNN's bf16 kernels spend
their time reordering the 512x512x4x4 and 1024x512x4x4 weights at every call and in backward-weights kernels at a
few percent of the matmul peak. As one matmul over the pixels (an im2col gather before it for a convolution, the
overlapping patches summed after it for a transposed one) the same layers ran fwd+bwd in bf16 at batch 4 (2-core
native-bf16 CPU, torch 2.14):

| layer (low-resolution side) | kernel | matmul |
|---|---|---|
| Conv2d 512->512, 1x1 to 8x8 out | 7.3, 8.9, 11.2, 16.5 ms | 2.5, 3.2, 5.2, 13.2 ms |
| ConvTranspose2d 1024->512, 4x4 and 8x8 in | 30.5, 41.6 ms | 10.3, 28.1 ms |

At 16x16 (the next level) the kernels win the forward and the input gradient, but not the weight gradient: there the
layers keep the kernels and compute the weight gradient as one matmul (a gather of the receptive fields, then the
product with the output gradient): 7.4 -> 6.0 ms for the 256->512 convolution to 16x16, 15.1 -> 11.2 ms for the
1024->256 transposed convolution from 16x16; 4-9 ms a training step (interleaved A/B runs). In fp32 the matmul is
no faster (a contiguous fp32 Conv2d 1.3-1.8x slower), so `auto` takes the matmuls only for bf16 operands on a CPU
(p2p_dist.runtime.resolve_small_maps).

The PatchGAN's head (512 -> 1 channel, k4 s1, on 31x31 maps) is another layer oneDNN runs at a few percent of the peak,
and an im2col gather would copy 16 shifted maps. It runs as one matmul of every input pixel with every kernel offset's
weights (16 columns), each output pixel then summing the 16 products its receptive field holds: 3.3-3.9 -> 1.0 ms
fwd+bwd. It computes a few more products than a convolution counts (every input pixel meets every offset, also where
no output pixel takes the product: 31x31 against 30x30 per offset there), and FLOP counters count them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p2p_dist.config import SMALL_MAPS_MODES
from p2p_dist.runtime import resolve_small_maps

# Layers whose low-resolution side (a convolution's output, a transposed convolution's input) is at most 8x8 take
# the matmul (train.small_maps says where: SMALL_MAPS_MODES); up to 16x16, the matmul for the weight gradient only.
MATMUL_MAX_SIZE = 8
MATMUL_WEIGHT_GRAD_MAX_SIZE = 16
# A convolution to one channel takes the per-offset products from this many input elements (n * c * h * w) on: its 2 x
# k*k strided slices cost ~0.35 ms of fixed overhead. bf16, fwd+bwd, kernel against per-offset: 512 channels at 31x31
# (the paper's head) 0.99 -> 0.58 ms at batch 1, 5.8 -> 1.0 ms at batch 4; 256 at 15x15 (the demo's) 0.50 -> 0.49 ms
# at batch 4, 0.26 -> 0.44 ms at batch 1.
PER_OFFSET_MIN_INPUT = 2**18


class _MatmulOnSmallMaps:
    """What the two layer kinds share: the mode and the rule that picks the matmul for one input."""

    small_maps: str

    def _check_small_maps(self, mode: str) -> None:
        if mode not in SMALL_MAPS_MODES:
            raise ValueError(f"small_maps must be one of {', '.join(SMALL_MAPS_MODES)}; got {mode!r}")
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("the matmul form covers groups=1 with zero padding only")
        self.small_maps = mode

    def runs_as_matmul(self, x: torch.Tensor) -> bool:
        small = max(self.low_resolution_size(x)) <= MATMUL_MAX_SIZE
        return small and resolve_small_maps(self.small_maps, x.device, x.dtype) == "matmul"

    def weight_grad_as_matmul(self, x: torch.Tensor) -> bool:
        """Kernels for the forward and the input gradient, a matmul for the weight gradient."""
        side = max(self.low_resolution_size(x))
        return (
            MATMUL_MAX_SIZE < side <= MATMUL_WEIGHT_GRAD_MAX_SIZE
            and resolve_small_maps(self.small_maps, x.device, x.dtype) == "matmul"
        )

    def _forward_with_matmul_weight_grad(self, x: torch.Tensor) -> torch.Tensor:
        # Autocast casts a convolution's operands to its dtype; a custom autograd Function's inputs it leaves alone.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        x, weight, bias = (
            t.to(dtype) if dtype is not None and t is not None else t for t in (x, self.weight, self.bias)
        )
        return _KernelsWithMatmulWeightGrad.apply(x, weight, bias, self)


class Conv2d(_MatmulOnSmallMaps, nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) whose forward takes the matmul on small output maps."""

    def __init__(self, *args, small_maps: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_small_maps(small_maps)

    def low_resolution_size(self, x: torch.Tensor) -> tuple[int, int]:
        return _conv_output_size(self, x)

    def runs_per_offset(self, x: torch.Tensor) -> bool:
        """A convolution to one channel (the PatchGAN's head) on an input that is not tiny: per-offset products
        summed, `_conv_per_offset`."""
        return (
            self.out_channels == 1
            and x.numel() >= PER_OFFSET_MIN_INPUT
            and resolve_small_maps(self.small_maps, x.device, x.dtype) == "matmul"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runs_per_offset(x):
            return _conv_per_offset(self, x)
        if self.runs_as_matmul(x):
            return _conv_as_matmul(self, x)
        if self.weight_grad_as_matmul(x):
            return self._forward_with_matmul_weight_grad(x)
        return super().forward(x)


class ConvTranspose2d(_MatmulOnSmallMaps, nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters and state dict) whose forward takes the matmul on small input maps."""

    def __init__(self, *args, small_maps: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_small_maps(small_maps)

    def low_resolution_size(self, x: torch.Tensor) -> tuple[int, int]:
        return x.shape[-2], x.shape[-1]

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and self.runs_as_matmul(x):
            return _deconv_as_matmul(self, x)
        if output_size is None and self.weight_grad_as_matmul(x):
            return self._forward_with_matmul_weight_grad(x)
        return super().forward(x, output_size)


def _conv_output_size(m: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    height, width = x.shape[-2:]
    return (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _conv_as_matmul(m: Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Every output pixel's receptive field (kernel rows, kernel columns, channels: gathered from the padded NHWC
    input) times the weight as a (k*k*in) x out matrix: one matmul, the framework's GEMM."""
    n, c_in, _, _ = x.shape
    kh, kw = m.kernel_size
    out_h, out_w = _conv_output_size(m, x)
    fields = _ReceptiveFields.apply(_padded_nhwc(x, m.padding), (out_h, out_w), m.kernel_size, m.stride, m.dilation)
    # One matrix whatever the weight's layout (a view of channels_last weights, a copy of contiguous ones), so
    # that both layouts give the same roundings, as the convolution kernels do.
    weight = m.weight.permute(0, 2, 3, 1).reshape(m.out_channels, kh * kw * c_in)
    y = (fields @ weight.t()).view(n, out_h, out_w, m.out_channels).permute(0, 3, 1, 2)
    if m.bias is not None:
        y = y + m.bias.view(1, -1, 1, 1)
    return _as_from_the_kernel(y, x, m.weight)


def _conv_per_offset(m: Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A convolution to one channel without a gather: every input pixel times the weight gives its product with each
    kernel offset (one matmul to k*k*out columns), and each output pixel sums the k*k products its receptive field
    holds, in fp32 as the convolution kernels do (`_OffsetProductsSummed`)."""
    n, c_in, height, width = x.shape
    kh, kw = m.kernel_size
    pixels = x.permute(0, 2, 3, 1).reshape(n * height * width, c_in)
    # One matrix whatever the weight's layout (a view of a channels_last weight), as in _conv_as_matmul.
    weight = m.weight.permute(2, 3, 0, 1).reshape(kh * kw * m.out_channels, c_in)
    products = (pixels @ weight.t()).view(n, height, width, kh, kw, m.out_channels)
    y = _OffsetProductsSummed.apply(products, _conv_output_size(m, x), m.stride, m.padding, m.dilation)
    if m.bias is not None:
        y = y + m.bias
    return _as_from_the_kernel(y.permute(0, 3, 1, 2).to(products.dtype), x, m.weight)


class _OffsetProductsSummed(torch.autograd.Function):
    """A convolution's output from the products of every input pixel with every kernel offset (n, h, w, kh, kw,
    channels): output pixel o sums, over the offsets, the product at o*stride + offset*dilation - padding where that
    lies inside the map (zero padding adds nothing), one strided slice per offset. The PatchGAN's 512 -> 1 head at
    31x31, bf16, batch 4: 3.8 -> 1.0 ms fwd+bwd (oneDNN's kernels run a single output channel at a few percent of the
    peak; an im2col gather copies 16 shifted maps, 47 ms)."""

    @staticmethod
    def forward(ctx, products: torch.Tensor, out_size, stride, padding, dilation) -> torch.Tensor:
        n, height, width, kh, kw, channels = products.shape
        meets = []  # (output pixels, the products they add) per kernel offset that reaches into the map
        for i in range(kh):
            rows = _where_an_offset_lands(i * dilation[0], height, out_size[0], stride[0], padding[0])
            for j in range(kw):
                cols = _where_an_offset_lands(j * dilation[1], width, out_size[1], stride[1], padding[1])
                if rows is not None and cols is not None:
                    meets.append(((slice(None), rows[0], cols[0]), (slice(None), rows[1], cols[1], i, j)))
        y = products.new_zeros((n, *out_size, channels), dtype=torch.promote_types(products.dtype, torch.float32))
        for output_pixels, their_products in meets:
            y[output_pixels] += products[their_products]
        ctx.meets, ctx.shape, ctx.dtype = meets, products.shape, products.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_products = grad.new_zeros(ctx.shape, dtype=ctx.dtype)  # products that reach no output pixel: zero
        grad = grad.to(ctx.dtype)
        for output_pixels, their_products in ctx.meets:
            grad_products[their_products] = grad[output_pixels]  # one output pixel per product and offset
        return grad_products, None, None, None, None


def _where_an_offset_lands(offset: int, map_size: int, grid_size: int, stride: int, padding: int):
    """Along one axis: the pixels o of a grid (a convolution's output, a transposed convolution's input) for which
    kernel offset `offset` lands inside a map (the convolution's input, the transposed convolution's padded output)
    at o*stride + offset - padding, and the map pixels it lands on; None where it lands on none."""
    first = max(0, -((offset - padding) // stride))
    last = min(grid_size - 1, (map_size - 1 + padding - offset) // stride)
    if last < first:
        return None
    start = first * stride + offset - padding
    return slice(first, last + 1), slice(start, start + stride * (last - first) + 1, stride)


def _receptive_fields(padded: torch.Tensor, out_size, kernel_size, stride, dilation) -> torch.Tensor:
    """im2col of a padded NHWC map: one row per output pixel, (kernel row, kernel column, channel) along it; a
    strided view copied out."""
    n, _, _, channels = padded.shape
    (out_h, out_w), (kh, kw), (sh, sw), (dh, dw) = out_size, kernel_size, stride, dilation
    s_batch, s_row, s_col, s_chan = padded.stride()
    fields = padded.as_strided(
        (n, out_h, out_w, kh, kw, channels), (s_batch, s_row * sh, s_col * sw, s_row * dh, s_col * dw, s_chan)
    )
    return fields.reshape(n * out_h * out_w, kh * kw * channels)


def _padded_nhwc(x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, padding[1], padding[1], padding[0], padding[0])).contiguous()


class _ReceptiveFields(torch.autograd.Function):
    """`_receptive_fields` with a backward that adds each of the k*k kernel offsets' gradients back into the map
    through strided slices. (Autograd's own backward of as_strided scatters with index_add: 6.6 ms against 0.5 ms
    for a 4x512x16x16 bf16 map, 2-core CPU.)"""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, out_size, kernel_size, stride, dilation) -> torch.Tensor:
        ctx.shape, ctx.geometry = padded.shape, (out_size, kernel_size, stride, dilation)
        return _receptive_fields(padded, out_size, kernel_size, stride, dilation)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_size, kernel_size, stride, dilation = ctx.geometry
        n, _, _, channels = ctx.shape
        per_offset = grad.view(n, *out_size, *kernel_size, channels)
        return _overlap_add(per_offset, ctx.shape, stride, dilation, grad.dtype), None, None, None, None


def _overlap_add(per_offset: torch.Tensor, padded_shape, stride, dilation, dtype: torch.dtype) -> torch.Tensor:
    """The adjoint of `_receptive_fields`: every pixel's (kernel row, kernel column) slice of `per_offset`
    (n, h, w, kh, kw, channels) added into a zero padded NHWC map, one strided slice per kernel offset."""
    _, h, w, kh, kw, _ = per_offset.shape
    padded = per_offset.new_zeros(padded_shape, dtype=dtype)
    for i in range(kh):
        _, rows = _where_an_offset_lands(i * dilation[0], padded_shape[1], h, stride[0], 0)
        for j in range(kw):
            _, cols = _where_an_offset_lands(j * dilation[1], padded_shape[2], w, stride[1], 0)
            padded[:, rows, cols, :] += per_offset[:, :, :, i, j, :]
    return padded


class _PatchesSummed(torch.autograd.Function):
    """A transposed convolution's output from every input pixel's k x k patch (n, h, w, kh, kw, channels): the
    overlapping patches added up in NHWC through strided slices, in fp32 as the convolution kernels sum; its backward
    is the receptive-field gather. (F.fold wants the patches channel-major, a transposing copy each way: 35.2 ms
    against 27.5 ms fwd+bwd for the 1024->512 transposed convolution from 8x8, bf16, batch 4, 2-core CPU.)"""

    @staticmethod
    def forward(ctx, patches: torch.Tensor, out_size, stride, padding, dilation) -> torch.Tensor:
        n, h, w, kh, kw, channels = patches.shape
        (out_h, out_w), (ph, pw) = out_size, padding
        ctx.dtype, ctx.geometry = patches.dtype, ((h, w), (kh, kw), stride, padding, dilation)
        padded_shape = (n, out_h + 2 * ph, out_w + 2 * pw, channels)
        padded = _overlap_add(
            patches, padded_shape, stride, dilation, torch.promote_types(patches.dtype, torch.float32)
        )
        return padded[:, ph : ph + out_h, pw : pw + out_w, :]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        in_size, kernel_size, stride, (ph, pw), dilation = ctx.geometry
        padded = F.pad(grad.to(ctx.dtype), (0, 0, pw, pw, ph, ph))
        fields = _receptive_fields(padded, in_size, kernel_size, stride, dilation)
        return fields.view(grad.shape[0], *in_size, *kernel_size, -1), None, None, None, None


class _KernelsWithMatmulWeightGrad(torch.autograd.Function):
    """A layer's forward and input gradient on the framework's kernels, its weight gradient as one matmul: the
    output gradient against every output pixel's receptive field in the input (a convolution), or every input
    pixel against its k x k patch of the output gradient (a transposed convolution)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: nn.Module):
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.has_bias = layer, bias is not None
        if isinstance(layer, nn.ConvTranspose2d):
            return F.conv_transpose2d(
                x, weight, bias, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation
            )
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        m, transposed = ctx.layer, isinstance(ctx.layer, nn.ConvTranspose2d)
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_x, _, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [m.out_channels] if ctx.has_bias else None,
            m.stride,
            m.padding,
            m.dilation,
            transposed,
            m.output_padding if transposed else (0, 0),
            m.groups,
            [needs_x, False, ctx.has_bias and needs_bias],
        )
        grad_weight = None
        if needs_weight:
            kh, kw = m.kernel_size
            if transposed:  # every input pixel against its k x k patch of the output gradient
                patches = _receptive_fields(
                    _padded_nhwc(grad, m.padding), x.shape[-2:], m.kernel_size, m.stride, m.dilation
                )
                pixels = x.permute(0, 2, 3, 1).reshape(-1, m.in_channels)
                grad_weight = (pixels.t() @ patches).view(m.in_channels, kh, kw, m.out_channels)
            else:  # the output gradient against every output pixel's receptive field in x
                fields = _receptive_fields(
                    _padded_nhwc(x, m.padding), grad.shape[-2:], m.kernel_size, m.stride, m.dilation
                )
                grad_pixels = grad.permute(0, 2, 3, 1).reshape(-1, m.out_channels)
                grad_weight = (grad_pixels.t() @ fields).view(m.out_channels, kh, kw, m.in_channels)
            # Rows run (kernel row, kernel column, channel): channels_last; the kernels give the weight's layout.
            grad_weight = grad_weight.permute(0, 3, 1, 2).contiguous(memory_format=memory_format_of(weight))
        return grad_x, grad_weight, grad_bias, None


def _deconv_as_matmul(m: ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """Every input pixel times the weight gives its k x k patch of every output channel (one matmul, the
    framework's GEMM); the overlapping patches are summed into the output (`_PatchesSummed`)."""
    n, c_in, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    pixels = x.permute(0, 2, 3, 1).reshape(n * height * width, c_in)
    # One matrix whatever the weight's layout, as in _conv_as_matmul.
    weight = m.weight.permute(0, 2, 3, 1).reshape(c_in, kh * kw * m.out_channels)
    patches = (pixels @ weight).view(n, height, width, kh, kw, m.out_channels)
    out_h = (height - 1) * sh - 2 * ph + dh * (kh - 1) + m.output_padding[0] + 1
    out_w = (width - 1) * sw - 2 * pw + dw * (kw - 1) + m.output_padding[1] + 1
    y = _PatchesSummed.apply(patches, (out_h, out_w), m.stride, m.padding, m.dilation)
    if m.bias is not None:
        y = y + m.bias
    return _as_from_the_kernel(y.permute(0, 3, 1, 2).to(patches.dtype), x, m.weight)


def _as_from_the_kernel(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`y` with the strides the convolution kernel's output would have, also along dimensions of size 1 (torch reads
    them: on a 1x1 map or a 1-channel one a matmul's view passes for either layout) and dense (without a bias, a
    transposed convolution's output is still a view into its padded sums)."""
    layout = _output_layout(x, weight)
    if y.stride() != torch.empty(y.shape, device="meta", memory_format=layout).stride():
        y = y.clone(memory_format=layout)
    return y


def _output_layout(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The convolution's output layout: channels_last when the input or the weight is (torch's rule on CPU and
    CUDA)."""
    formats = (memory_format_of(x), memory_format_of(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


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
