"""GANLoss: patch predictions against all-real / all-fake targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from p2p_dist.models import GANLoss


def test_vanilla_loss_is_bce_with_logits_against_ones_for_real_and_zeros_for_fake():
    prediction = torch.randn(2, 1, 30, 30)
    loss = GANLoss("vanilla")
    for target_is_real, target in [(True, torch.ones_like(prediction)), (False, torch.zeros_like(prediction))]:
        expected = F.binary_cross_entropy_with_logits(prediction, target)
        torch.testing.assert_close(loss(prediction, target_is_real), expected)
    # A confident correct discriminator has a small loss, a confident wrong one a large loss.
    assert loss(torch.full((1, 1, 4, 4), 10.0), True) < 1e-3 < 9 < loss(torch.full((1, 1, 4, 4), 10.0), False)


def test_lsgan_loss_is_mse_against_the_labels():
    prediction = torch.randn(1, 1, 30, 30)
    loss = GANLoss("lsgan", real_label=0.9)
    torch.testing.assert_close(loss(prediction, True), F.mse_loss(prediction, torch.full_like(prediction, 0.9)))
    torch.testing.assert_close(loss(prediction, False), prediction.square().mean())


def test_bf16_predictions_give_an_fp32_loss_that_backpropagates():
    prediction = torch.randn(1, 1, 30, 30).bfloat16().requires_grad_()
    value = GANLoss("vanilla")(prediction, True)
    assert value.dtype == torch.float32
    value.backward()
    assert prediction.grad is not None and prediction.grad.dtype == torch.bfloat16


def test_unknown_mode_is_rejected_by_name():
    with pytest.raises(ValueError, match="'wgan'"):
        GANLoss("wgan")
