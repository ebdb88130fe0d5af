"""The pix2pix training step as the reference implementation writes it (its `optimize_parameters`), in plain
eager PyTorch: the specification `Pix2Pix.train_step` is tested against, and the peer the benchmarks measure it
against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from p2p_dist.config import Config
from p2p_dist.models import GANLoss, build_models


class ReferenceStep:
    """The training step as the reference implementation writes it, in plain eager fp32 PyTorch: G forward;
    D on the detached fake pair, then on the real pair, loss halved, Adam step; D frozen, D on the fake pair
    again for G's GAN loss plus lambda * L1, Adam step. No DeepSpeed, contiguous tensors, torch.optim.Adam."""

    def __init__(self, cfg: Config, device: torch.device, channels_last: bool = False) -> None:
        t = cfg.train
        self.G, self.D = (network.to(device) for network in build_models(cfg))
        self.optimizer_G = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        self.optimizer_D = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        self.criterion = GANLoss(t.gan_loss)
        self.lambda_l1 = t.lambda_l1
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, batch: dict) -> None:
        label = batch["label"].to(self.device, memory_format=self.memory_format)
        real = batch["photo"].to(self.device, memory_format=self.memory_format)
        fake = self.G(label)

        self.D.requires_grad_(True)
        self.optimizer_D.zero_grad()
        loss_fake = self.criterion(self.D(torch.cat([label, fake.detach()], 1)), False)
        loss_real = self.criterion(self.D(torch.cat([label, real], 1)), True)
        (0.5 * (loss_fake + loss_real)).backward()
        self.optimizer_D.step()

        self.D.requires_grad_(False)
        self.optimizer_G.zero_grad()
        loss_G = self.criterion(self.D(torch.cat([label, fake], 1)), True) + self.lambda_l1 * F.l1_loss(fake, real)
        loss_G.backward()
        self.optimizer_G.step()

    def state_roots(self) -> list[object]:
        return [self.G, self.D, self.optimizer_G, self.optimizer_D]
