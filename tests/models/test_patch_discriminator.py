"""PatchDiscriminator: the reference 70x70 PatchGAN (netD basic)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.config import load_config
from p2p_dist.models import PatchDiscriminator, build_models
from p2p_dist.models.unet import use_framework_kernels


def test_conditional_70x70_patchgan_with_batch_norm_has_2_768_705_parameters():
    with torch.device("meta"):
        discriminator = PatchDiscriminator(in_channels=6, ndf=64, n_layers=3, norm="batch")
    assert sum(p.numel() for p in discriminator.parameters()) == 2_768_705


def test_256x256_input_gives_a_30x30_map_of_logits():
    discriminator = PatchDiscriminator(in_channels=6, ndf=4)
    assert discriminator(torch.randn(2, 6, 256, 256)).shape == (2, 1, 30, 30)


def test_blocks_are_c64_without_norm_then_c128_c256_stride_2_then_c512_stride_1():
    with torch.device("meta"):
        discriminator = PatchDiscriminator(in_channels=6)
    convs = [block.conv for block in discriminator.blocks]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(64, 2), (128, 2), (256, 2), (512, 1)]
    assert [hasattr(block, "norm") for block in discriminator.blocks] == [False, True, True, True]
    assert all(block.act.negative_slope == 0.2 for block in discriminator.blocks)
    assert discriminator.head.out_channels == 1 and discriminator.head.kernel_size == (4, 4)


@pytest.mark.parametrize("norm, expect_bias", [("batch", False), ("instance", True)])
def test_normalised_convs_have_a_bias_only_with_instance_norm(norm, expect_bias):
    discriminator = PatchDiscriminator(in_channels=6, ndf=4, norm=norm)
    assert discriminator.blocks[0].conv.bias is not None and discriminator.head.bias is not None
    assert all((block.conv.bias is not None) == expect_bias for block in discriminator.blocks[1:])


def test_channels_last_input_gives_the_same_output_as_contiguous_input():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(in_channels=6, ndf=8).eval()
    x = torch.randn(1, 6, 128, 128)
    with torch.no_grad():
        expected = discriminator(x)
        actual = discriminator.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_unknown_norm_and_zero_layers_are_rejected():
    with pytest.raises(ValueError, match="'layer'"):
        PatchDiscriminator(in_channels=6, norm="layer")
    with pytest.raises(ValueError, match="n_layers"):
        PatchDiscriminator(in_channels=6, n_layers=0)


def test_instance_norm_layers_carry_no_affine_parameters_nor_running_statistics():
    discriminator = PatchDiscriminator(in_channels=6, ndf=4, norm="instance")
    norms = [m for m in discriminator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3
    assert all(not norm.affine and not norm.track_running_stats for norm in norms)


def test_the_head_follows_train_small_maps_and_the_framework_kernels_switch_it_off():
    x = torch.empty(1, 512, 31, 31, dtype=torch.bfloat16)
    _, discriminator = build_models(load_config(None, ["train.steps=1", "train.small_maps=matmul"]))
    assert discriminator.head.runs_per_offset(x)
    _, discriminator = build_models(load_config(None, ["train.steps=1", "train.small_maps=conv"]))
    assert not discriminator.head.runs_per_offset(x)
    discriminator = PatchDiscriminator(in_channels=6, small_maps="matmul")
    use_framework_kernels(discriminator)  # what the reference step runs
    assert not discriminator.head.runs_per_offset(x)
