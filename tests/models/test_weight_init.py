"""init_weights: N(0, gain) convs with zero bias, N(1, gain) batch-norm scales with zero shift."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.models import PatchDiscriminator, UNetGenerator, init_weights


@pytest.mark.parametrize("norm", ["batch", "syncbatch"])
def test_conv_weights_are_n_0_002_and_norm_scales_n_1_002_with_zero_biases(norm):
    torch.manual_seed(0)
    generator = init_weights(UNetGenerator(in_channels=3, num_downs=8, ngf=16, norm=norm))
    conv_weights = torch.cat(
        [m.weight.flatten() for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    )
    assert conv_weights.numel() > 3_000_000
    assert conv_weights.mean().abs() < 1e-4
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.01)

    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 13
    scales = torch.cat([m.weight for m in norms])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.005)
    assert scales.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(m.bias.abs().sum() == 0 for m in norms)
    assert generator.decoder[0].conv.bias.abs().sum() == 0


def test_gain_sets_the_weight_standard_deviation_and_conv_biases_are_zeroed():
    torch.manual_seed(0)
    discriminator = init_weights(PatchDiscriminator(in_channels=6, ndf=16, norm="instance"), gain=0.1)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([conv.weight.flatten() for conv in convs])
    assert weights.std().item() == pytest.approx(0.1, rel=0.02)
    assert all(conv.bias.abs().sum() == 0 for conv in convs)
