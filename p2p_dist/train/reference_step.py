"""The pix2pix training step as the reference implementation writes it (its `optimize_parameters`), in plain
eager PyTorch: the specification `Pix2Pix.train_step` is tested against, and the peer the benchmarks measure it
against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from p2p_dist.config import Config
from p2p_dist.models import GANLoss, build_models
from p2p_dist.models.unet import use_framework_kernels
from p2p_dist.train import step_ranges as ranges
from p2p_dist.train.step_ranges import step_range

# The step's precisions (as peers in the benchmarks): the autocast dtype of each; fp16 also scales the loss.
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ReferenceStep:
    """The training step as the reference implementation writes it, in plain eager fp32 PyTorch: G forward;
    D on the detached fake pair, then on the real pair, loss halved, Adam step; D frozen, D on the fake pair
    again for G's GAN loss plus lambda * L1, Adam step. No DeepSpeed, contiguous tensors, torch.optim.Adam, the
    framework's convolution kernels and torch.cat (p2p_dist.models.unet.use_framework_kernels).

    As a peer (``reference_peers``) the same step runs under ``torch.autocast`` in bf16, or in fp16 with one
    ``torch.amp.GradScaler`` for both optimizers (stepped for each, updated once per step, as PyTorch's AMP
    recipe for several optimizers says), and with channels_last parameters and inputs."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        channels_last: bool = False,
        precision: str = "fp32",
        channels_last_model: bool = False,
    ) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"reference precision must be one of {sorted(AUTOCAST_DTYPES)}, got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("the fp16 reference peer (autocast + GradScaler) needs a CUDA device")
        t = cfg.train
        self.G, self.D = (network.to(device) for network in build_models(cfg))
        for network in (self.G, self.D):
            use_framework_kernels(network)  # the reference's layers: none of p2p_dist's kernel choices
        if channels_last_model:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.optimizer_G = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        self.optimizer_D = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        self.criterion = GANLoss(t.gan_loss)
        self.lambda_l1 = t.lambda_l1
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def _autocast(self):
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def _step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def __call__(self, batch: dict) -> None:
        # The same named ranges as Pix2Pix.train_step: a profile of either splits the step alike.
        with step_range(ranges.INPUTS):
            label = batch["label"].to(self.device, memory_format=self.memory_format)
            real = batch["photo"].to(self.device, memory_format=self.memory_format)
        with step_range(ranges.G_FORWARD), self._autocast():
            fake = self.G(label)

        self.D.requires_grad_(True)
        with step_range(ranges.D_OPTIMIZER):
            self.optimizer_D.zero_grad()
        with step_range(ranges.D_FORWARD), self._autocast():
            loss_fake = self.criterion(self.D(torch.cat([label, fake.detach()], 1)), False)
            loss_real = self.criterion(self.D(torch.cat([label, real], 1)), True)
            loss_D = 0.5 * (loss_fake + loss_real)
        with step_range(ranges.D_BACKWARD):
            self._backward(loss_D)
        with step_range(ranges.D_OPTIMIZER):
            self._step(self.optimizer_D)

        self.D.requires_grad_(False)
        with step_range(ranges.G_OPTIMIZER):
            self.optimizer_G.zero_grad()
        with step_range(ranges.G_STEP_D_FORWARD), self._autocast():
            loss_G = self.criterion(self.D(torch.cat([label, fake], 1)), True) + self.lambda_l1 * F.l1_loss(fake, real)
        with step_range(ranges.G_BACKWARD):
            self._backward(loss_G)
        with step_range(ranges.G_OPTIMIZER):
            self._step(self.optimizer_G)
            if self.scaler is not None:
                self.scaler.update()

    def state_roots(self) -> list[object]:
        return [self.G, self.D, self.optimizer_G, self.optimizer_D]
