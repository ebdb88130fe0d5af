"""UNetGenerator: the reference unet_256 / unet_128 layer for layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.models import UNetGenerator, small_maps, unet


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def meta_generator(**kwargs) -> UNetGenerator:
    """Full-size networks on the meta device: structure and counts without allocating 200 MB."""
    with torch.device("meta"):
        return UNetGenerator(**kwargs)


def test_unet256_with_batch_norm_has_the_papers_54_413_955_parameters():
    assert count_parameters(meta_generator(in_channels=3, out_channels=3, num_downs=8, ngf=64)) == 54_413_955


def test_output_has_the_input_resolution_and_out_channels_within_tanh_range():
    generator = UNetGenerator(in_channels=5, out_channels=3, num_downs=8, ngf=4).eval()
    with torch.no_grad():
        y = generator(torch.randn(2, 5, 256, 256))
    assert y.shape == (2, 3, 256, 256)
    assert y.abs().max() <= 1.0


def test_non_square_inputs_divisible_by_2_pow_num_downs_are_accepted():
    generator = UNetGenerator(in_channels=3, num_downs=7, ngf=2).eval()
    with torch.no_grad():
        assert generator(torch.randn(1, 3, 128, 256)).shape == (1, 3, 128, 256)


@pytest.mark.parametrize("height, width", [(250, 256), (256, 384)])
def test_input_size_not_divisible_by_2_pow_num_downs_raises_naming_the_size(height, width):
    generator = UNetGenerator(in_channels=3, num_downs=8, ngf=2)
    with pytest.raises(ValueError, match=f"{height}x{width}") as error:
        generator(torch.randn(1, 3, height, width))
    assert "256" in str(error.value)


def test_too_shallow_unet_is_rejected():
    with pytest.raises(ValueError, match="num_downs"):
        UNetGenerator(in_channels=3, num_downs=4)


def test_unknown_norm_is_rejected_by_name():
    with pytest.raises(ValueError, match="'group'"):
        UNetGenerator(in_channels=3, norm="group")


def test_dropout_sits_in_exactly_the_three_innermost_512_channel_decoder_blocks_below_the_innermost():
    generator = meta_generator(in_channels=3, num_downs=8, ngf=64)
    with_dropout = [
        level for level, block in enumerate(generator.decoder) if any(isinstance(layer, nn.Dropout) for layer in block)
    ]
    assert with_dropout == [4, 5, 6]
    for level in with_dropout:
        assert generator.decoder[level].conv.out_channels == 512
        assert generator.decoder[level].dropout.p == 0.5
    # unet_128 has two such blocks, and dropout=False removes them all.
    assert sum(isinstance(m, nn.Dropout) for m in meta_generator(in_channels=3, num_downs=7).modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in meta_generator(in_channels=3, dropout=False).modules())


def test_encoder_widths_follow_64_128_256_512_512_512_512_512():
    generator = meta_generator(in_channels=3, num_downs=8, ngf=64)
    assert [block.conv.out_channels for block in generator.encoder] == [64, 128, 256] + [512] * 5


@pytest.mark.parametrize("norm, norm_type", [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d)])
def test_no_norm_on_the_outermost_down_conv_nor_in_the_innermost_down_path(norm, norm_type):
    generator = meta_generator(in_channels=3, num_downs=8, norm=norm)
    has_norm = [any(isinstance(layer, norm_type) for layer in block) for block in generator.encoder]
    assert has_norm == [False] + [True] * 6 + [False]
    # Up path: every level but the outermost (which ends in Tanh) normalises.
    has_norm = [any(isinstance(layer, norm_type) for layer in block) for block in generator.decoder]
    assert has_norm == [False] + [True] * 7
    assert isinstance(generator.decoder[0][-1], nn.Tanh)


def test_activations_are_leaky_relu_0_2_down_and_relu_up():
    generator = meta_generator(in_channels=3, num_downs=8)
    assert all(block.act.negative_slope == 0.2 for block in generator.encoder[1:])
    assert all(isinstance(block.act, nn.ReLU) for block in generator.decoder)


@pytest.mark.parametrize("norm, expect_bias", [("batch", False), ("syncbatch", False), ("instance", True)])
def test_conv_bias_only_with_instance_norm_except_the_output_conv_which_always_has_one(norm, expect_bias):
    generator = meta_generator(in_channels=3, num_downs=8, norm=norm)
    convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    output_conv = generator.decoder[0].conv
    assert output_conv.bias is not None
    assert all((conv.bias is not None) == expect_bias for conv in convs if conv is not output_conv)


def test_channels_last_input_gives_the_same_output_as_contiguous_input():
    torch.manual_seed(0)
    generator = UNetGenerator(in_channels=3, num_downs=8, ngf=4).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = generator(x)
        actual = generator.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter_in_training_mode():
    generator = UNetGenerator(in_channels=3, num_downs=7, ngf=2).train()
    generator(torch.randn(2, 3, 128, 128)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


def _gradients(generator: UNetGenerator, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(1)  # the same dropout masks
    generator.zero_grad()
    generator(x).square().mean().backward()
    return [p.grad.clone() for p in generator.parameters()]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_skip_concatenation_gives_the_gradients_of_torch_cat(monkeypatch, layout):
    torch.manual_seed(0)
    generator = UNetGenerator(in_channels=3, num_downs=7, ngf=4).double().train().to(memory_format=layout)
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64).contiguous(memory_format=layout)
    ours = _gradients(generator, x)
    monkeypatch.setattr(unet._SkipConcat, "apply", lambda skip, up: torch.cat([skip, up], dim=1))
    for a, b in zip(ours, _gradients(generator, x)):  # batch norm sums dense and strided gradients in other orders
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_skip_concatenation_hands_each_input_a_dense_gradient_in_its_own_layout(layout):
    """Channel slices of the concatenation's gradient would send batch norm's CPU backward down a slow path."""
    skip, up = (torch.randn(2, c, 8, 8).contiguous(memory_format=layout).requires_grad_() for c in (3, 5))
    unet._SkipConcat.apply(skip, up).mul(torch.arange(8.0).view(8, 1, 1)).sum().backward()
    for tensor, channels in ((skip, range(3)), (up, range(3, 8))):
        assert tensor.grad.is_contiguous(memory_format=layout)
        assert torch.equal(
            tensor.grad, torch.tensor(list(channels), dtype=torch.float32).view(-1, 1, 1).expand_as(tensor)
        )


def test_framework_kernels_turn_off_the_matmul_and_the_dense_skip_gradients(monkeypatch):
    """What exports and the reference step run: torch's own convolutions and torch.cat, none of p2p_dist's choices."""
    generator = UNetGenerator(in_channels=3, num_downs=5, ngf=4, small_maps="matmul").to(torch.bfloat16)
    x = torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)
    assert any(m.runs_as_matmul(torch.empty(1, 4, 2, 2, dtype=torch.bfloat16)) for m in _small_map_layers(generator))
    unet.use_framework_kernels(generator)
    assert not any(
        m.runs_as_matmul(torch.empty(1, 4, 1, 1, dtype=torch.bfloat16)) for m in _small_map_layers(generator)
    )
    monkeypatch.setattr(unet._SkipConcat, "apply", lambda *_: pytest.fail("the dense-gradient concatenation ran"))
    generator(x).sum().backward()


def _small_map_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (small_maps.Conv2d, small_maps.ConvTranspose2d))]
