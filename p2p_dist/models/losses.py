"""The adversarial loss of pix2pix: the discriminator's patch logits against an all-real or all-fake target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p2p_dist.config import GAN_MODES


class GANLoss(nn.Module):
    """``vanilla``: BCE with logits (the paper); ``lsgan``: MSE on the raw outputs (least-squares GAN).

    ``loss(prediction, target_is_real)`` compares every patch of `prediction` with the real or fake label
    and returns the mean, in fp32 whatever the prediction's dtype (bf16 logits would round the loss).
    """

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"GAN loss mode must be one of {', '.join(GAN_MODES)}; got {mode!r}")
        self.mode = mode
        self.real_label = real_label
        self.fake_label = fake_label

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        prediction = prediction.float()
        target = torch.full_like(prediction, self.real_label if target_is_real else self.fake_label)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(prediction, target)
        return F.mse_loss(prediction, target)
