"""build_generator / build_discriminator: depth from the training size, initialised weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.models import build_discriminator, build_generator


@pytest.mark.parametrize("image_size, num_downs", [(128, 7), (256, 8), (512, 9)])
def test_image_size_selects_the_unet_depth_with_a_1x1_bottleneck(image_size, num_downs):
    generator = build_generator(3, 3, image_size=image_size, ngf=2).eval()
    assert generator.num_downs == num_downs
    with torch.no_grad():
        assert generator(torch.randn(1, 3, image_size, image_size)).shape == (1, 3, image_size, image_size)


def test_unsupported_image_size_is_rejected_naming_it_and_the_allowed_sizes():
    with pytest.raises(ValueError, match="300") as error:
        build_generator(3, 3, image_size=300)
    assert all(str(size) in str(error.value) for size in (128, 256, 512))


def test_built_models_are_initialised_with_the_given_gain():
    torch.manual_seed(0)
    generator = build_generator(3, 3, image_size=128, ngf=8, norm="batch", dropout=False, init_gain=0.05)
    discriminator = build_discriminator(6, ndf=8, n_layers=3, norm="instance")
    g_weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, nn.Conv2d)])
    d_weights = torch.cat([m.weight.flatten() for m in discriminator.modules() if isinstance(m, nn.Conv2d)])
    assert g_weights.std().item() == pytest.approx(0.05, rel=0.03)
    assert d_weights.std().item() == pytest.approx(0.02, rel=0.03)
    assert not any(isinstance(m, nn.Dropout) for m in generator.modules())
    assert discriminator.norm == "instance"
