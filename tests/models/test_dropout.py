"""p2p_dist.models.dropout: the generator's dropout with masks drawn from random bits on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from p2p_dist.models import build_generator
from p2p_dist.models.dropout import CoinFlipDropout, coin_flip_scales
from p2p_dist.models.unet import use_framework_kernels
from p2p_dist.runtime import resolve_dropout_masks


def test_each_element_is_kept_and_doubled_or_zeroed_by_a_fair_coin():
    torch.manual_seed(0)
    x = torch.ones(64, 512, 8, 8)  # 2M elements
    y = CoinFlipDropout("bits").train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    kept = (y > 0).flatten().float()
    assert abs(kept.mean().item() - 0.5) < 0.002  # 5 standard deviations of a fair coin over 2M draws
    # Neighbours (the same byte, the next byte) are independent: no correlation beyond the draws' noise.
    for lag in (1, 7, 8, 9):
        correlation = torch.corrcoef(torch.stack([kept[:-lag], kept[lag:]]))[0, 1].item()
        assert abs(correlation) < 0.004, lag


def test_every_bit_position_of_the_random_bytes_is_a_fair_coin():
    torch.manual_seed(1)
    scales = coin_flip_scales(torch.empty(8 * 200_000))
    kept_by_position = (scales.view(-1, 8) > 0).float().mean(0)
    assert ((kept_by_position - 0.5).abs() < 0.006).all(), kept_by_position


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_output_keeps_the_inputs_layout_and_dtype_and_the_gradient_takes_the_same_mask(layout, dtype):
    torch.manual_seed(2)
    x = torch.randn(2, 8, 5, 5, dtype=dtype).contiguous(memory_format=layout).requires_grad_(True)
    y = CoinFlipDropout("bits").train()(x)
    assert y.dtype == dtype and y.stride() == x.stride()
    kept = y.detach() != 0
    torch.testing.assert_close(y.detach()[kept], 2 * x.detach()[kept])
    (grad,) = torch.autograd.grad(y, [x], torch.ones_like(y))
    assert torch.equal(grad, 2 * kept.to(dtype))


def test_a_seed_fixes_the_masks_and_successive_calls_draw_new_ones():
    layer, x = CoinFlipDropout("bits").train(), torch.ones(4, 64, 8, 8)
    torch.manual_seed(3)
    first, second = layer(x), layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first) and not torch.equal(first, second)


def test_in_eval_mode_it_is_the_identity_and_with_bernoulli_masks_it_is_torchs_dropout():
    x = torch.randn(4, 64, 8, 8)
    assert torch.equal(CoinFlipDropout("bits").eval()(x), x)
    torch.manual_seed(4)
    ours = CoinFlipDropout("bernoulli").train()(x)
    torch.manual_seed(4)
    assert torch.equal(ours, nn.Dropout(0.5).train()(x))


def test_auto_draws_bits_on_a_cpu_and_leaves_other_devices_to_torchs_kernel():
    assert resolve_dropout_masks("auto", torch.device("cpu")) == "bits"
    assert resolve_dropout_masks("auto", torch.device("cuda")) == "bernoulli"
    assert resolve_dropout_masks("bernoulli", torch.device("cpu")) == "bernoulli"


def test_an_unknown_mask_kind_is_rejected_by_name():
    with pytest.raises(ValueError, match="dropout masks must be one of auto, bits, bernoulli; got 'fast'"):
        CoinFlipDropout("fast")


def test_the_generators_dropout_layers_take_the_configured_masks_and_the_framework_kernels_torchs():
    generator = build_generator(3, image_size=256, ngf=2, dropout_masks="bits")
    layers = [m for m in generator.modules() if isinstance(m, nn.Dropout)]
    assert len(layers) == 3 and all(isinstance(m, CoinFlipDropout) and m.masks == "bits" for m in layers)
    use_framework_kernels(generator)
    assert all(m.masks == "bernoulli" for m in layers)
